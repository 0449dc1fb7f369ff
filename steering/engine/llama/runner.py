"""A lean forward pass for Llama-family models over a slot KV cache, with per-row clamps.

Hugging Face's forward spends most of a small model's decoding step in Python
(cache objects, mask building, module calls, per-layer bookkeeping), not in
the matrix products. `LlamaRunner` computes the same function with the same
weights (the HF modules' own tensors; q/k/v and gate/up concatenated once so
each is one matrix product) and nothing else. For tokens x [B, T] at absolute
positions p [B, T], rows in KV slots s0..s0+B-1, per layer l:

    a   = rmsnorm(h) ;  q, k, v = a @ W_qkv^T                  (split by heads)
    q, k = rope(q, p), rope(k, p) ; K[s, :, p], V[s, :, p] = k, v
    h   = h + o_proj( softmax(q K^T / sqrt(hd) + mask) V )     mask: key pos <= p
    h   = h + down( silu(a' @ W_gate^T) * (a' @ W_up^T) ),  a' = rmsnorm(h)

Two ways to run a layer, chosen once per model:

- kernels (`steering.engine.llama.kernels`, CPUs with AVX2/FMA and a C compiler;
  float32 or bfloat16 weights): the layers run in one C loop
  (`DecoderStack`), up to the SAE's site and from it (the edit in between
  through `kernels.clamp` where the SAE allows, else `apply_plan`);
  per layer five products with RMSNorm, SwiGLU and the residual adds fused
  in, RoPE + K/V store + attention in one more. Activations, KV cache and
  logits are float32 whatever the weights (bfloat16 weights: half the memory
  traffic of float32, none of bfloat16's rounding of activations), and every
  token's result depends on its own row only (batch-invariant, bit for bit).
  So rows of one prefill that are the same prompt from position 0 run the
  layers below the SAE's site once (no clamp has acted there yet) and the
  others copy that h and K/V (`_shared_first_layers`): a probe's candidates,
  `n` samples and A/B compare rows prefill their prompt's first layers once.
- torch ops (any device and dtype): the model's dtype throughout, SDPA with
  an additive mask; grouped-query heads are folded into the query length,
  so K/V are never copied.

The SAE edit runs at its site (`resid_post` after layer L, `resid_pre`
before it) with the batch's BatchPlan: the function `steering.hooks` applies
to the HF model (up to float rounding in the C clamp). Logits come only for each row's last
(or `last`) token. Hooks on the HF modules are not run, except on `lm_head`
(then the model's own `norm` and `lm_head` run, for tests and debugging):
the engine owns the model while it generates (see `api.gate`).
`unsupported_reason(model)` says which models qualify; the others use the HF
forward (`steering.engine.backends.HFBackend`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from steering.engine.kv_cache import KVPool
from steering.engine.llama import kernels
from steering.interventions import BatchPlan, apply_plan
from steering.sae.autoencoder import SparseAutoencoder


def unsupported_reason(model: nn.Module) -> str | None:
    """None if LlamaRunner computes exactly this model's forward, else why not."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return "not a Llama model"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biased projections"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    if getattr(cfg, "pretraining_tp", 1) not in (1, None):
        return "pretraining_tp > 1"
    if len(set(str(d) for d in (getattr(model, "hf_device_map", None) or {}).values())) > 1:
        return "spread over several devices (device_map)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    return None


class LlamaRunner:
    """Runs a Llama-family HF model's forward on a KVPool (see the module docstring)."""

    def __init__(self, model: nn.Module, use_kernels: bool = True):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LlamaRunner cannot run {type(model).__name__}: {reason}")
        cfg = model.config
        inner = model.model
        self.model = model
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.group = self.n_heads // self.n_kv_heads
        self.max_length = int(getattr(cfg, "max_position_embeddings", 2048))
        self.embed = inner.embed_tokens
        self.norm = inner.norm
        self.lm_head = model.lm_head
        w = inner.embed_tokens.weight
        self.dtype, self.device = w.dtype, w.device
        # bfloat16 or float32 weights on a CPU with the AVX2 kernels: float32 activations.
        usable = w.dtype in (torch.bfloat16, torch.float32) and w.device.type == "cpu" and use_kernels
        kernel = kernels.load() if usable else None
        self.linear = kernels.linear if kernel is not None else F.linear
        self.act_dtype = torch.float32 if kernel is not None else self.dtype
        act = self.act_dtype
        self.layers: list[tuple] = []
        with torch.no_grad():
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                w_qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).contiguous()
                w_gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
                self.layers.append((
                    layer.input_layernorm.weight.to(act), layer.input_layernorm.variance_epsilon, w_qkv,
                    att.o_proj.weight.contiguous(), layer.post_attention_layernorm.weight.to(act),
                    layer.post_attention_layernorm.variance_epsilon, w_gu, mlp.down_proj.weight.contiguous(),
                ))
            self.norm_weight, self.norm_eps = inner.norm.weight.to(act), inner.norm.variance_epsilon
            self.w_head = model.lm_head.weight.contiguous()
            positions = torch.arange(self.max_length, device=self.device)[None]
            cos, sin = inner.rotary_emb(w[:1].float(), positions)
            self.cos = cos[0].to(act)  # [max_length, head_dim]
            half = self.head_dim // 2
            self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).to(act)
        self.stack = kernels.DecoderStack(self.layers, self.n_heads, self.n_kv_heads, self.head_dim) if kernel is not None else None
        self._clamp_cache: tuple | None = None  # (plan, sae, clamp kernel arguments) of the latest plan
        self._norm = _rmsnorm_f32 if act == torch.float32 else _rmsnorm
        self._fingerprint = _fingerprint(model)
        self.n_q = self.n_heads * self.head_dim
        self.n_kv = self.n_kv_heads * self.head_dim
        self.inter = layer.mlp.gate_proj.weight.shape[0]

    def is_current(self, model: nn.Module) -> bool:
        """Whether the copies made here still match the model's parameters (none replaced or edited in place)."""
        return model is self.model and _fingerprint(model) == self._fingerprint

    def new_pool(self, slots: int, keep: int = 0, max_length: int | None = None) -> KVPool:
        # The kernels never read a position past a row's own: fresh storage needs no zeroing.
        return KVPool(len(self.layers), self.n_kv_heads, self.head_dim, slots, self.act_dtype, self.device,
                      min(max_length or self.max_length, self.max_length), keep=keep, zero_fill=self.stack is None)

    def position_bytes(self) -> int:
        """K/V bytes per position and sequence (`KVPool.bytes_per_position`)."""
        return KVPool.bytes_per_position(len(self.layers), self.n_kv_heads, self.head_dim, self.act_dtype)

    def forward(
        self,
        pool: KVPool,
        slot0: int,
        ids: Tensor,
        positions: Tensor,
        sae: SparseAutoencoder | None = None,
        plan: BatchPlan | None = None,
        last: Tensor | None = None,
        read: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """ids, positions [B, T] for slots slot0..slot0+B-1 -> logits [B, V] of each row's last token.

        `last` [B] picks another token than the last for each row's logits
        (a right-padded row's last real token). `read` [R] (rows of the batch):
        also return their activations at the SAE's site before its edit,
        (logits, site [R, T, d]), for inspection and monitors.

        Every row's positions must be consecutive and follow what its slot
        already holds (the K/V at positions < p[:, 0] are those of its prefix).
        """
        B, T = ids.shape
        span = int(positions[:, -1].max()) + 1
        pool.reserve(span)
        edit = sae is not None and plan is not None and not plan.is_empty
        split = None  # the SAE's site: after layers 0..split-1
        if sae is not None and (edit or read is not None):
            split = sae.cfg.hook_layer + (1 if sae.cfg.hook_site == "resid_post" else 0)
            if not 0 <= split <= len(self.layers):
                raise ValueError(f"the SAE hooks layer {sae.cfg.hook_layer}; the model has {len(self.layers)} layers")
        h = self.embed(ids).to(self.act_dtype).contiguous()
        state = self._prepare(pool, slot0, positions, span)
        site = None
        if self.stack is not None:
            first = 0
            stops = ([split] if split is not None else []) + [len(self.layers)]
            if stops[0] > 0 and T > 1:
                first, h = self._shared_first_layers(pool, slot0, ids, positions, h, stops[0])
            for stop in stops:
                if stop > first:
                    self.stack.run(h, first, stop, pool.kv, state["pos"], state["slots"], self.cos, self.sin_signed)
                if stop == split:
                    site = h.index_select(0, read) if read is not None else None  # a copy: the clamp is in place
                    if edit:
                        h = self._clamp(sae, plan, h, state["pos"], positions)  # type: ignore[arg-type]
                first = stop
        else:
            for index, weights in enumerate(self.layers):
                if index == split:
                    site = h.index_select(0, read) if read is not None else None
                    h = apply_plan(sae, plan, h, positions) if edit else h  # type: ignore[arg-type]
                h = self._layer_torch(h, weights, pool.kv[index], state)
            if split == len(self.layers):
                site = h.index_select(0, read) if read is not None else None
                h = apply_plan(sae, plan, h, positions) if edit else h  # type: ignore[arg-type]
        h = h[:, -1] if last is None else h[torch.arange(B, device=self.device), last.to(self.device)]
        head = self.lm_head
        if self.linear is F.linear or head._forward_hooks or head._forward_pre_hooks:
            # the modules themselves, so that hooks on them (tests, debugging) still run
            logits = head(self.norm(h.to(self.dtype))).float()
        else:
            logits = self.linear(h, self.w_head, norm=self.norm_weight, eps=self.norm_eps)
        return logits if read is None else (logits, site)

    def _shared_first_layers(self, pool: KVPool, slot0: int, ids: Tensor, positions: Tensor, h: Tensor,
                             stop: int) -> tuple[int, Tensor]:
        """Layers 0..stop-1 once for rows that are the same prompt from position 0 (kernels path).

        Below the SAE's site no clamp has acted yet, so rows with the same tokens at the same
        positions and nothing before them (a probe's candidates on one prompt, `n` samples, A/B
        compare) compute the same h and the same K/V there, bit for bit (batch-invariant kernels).
        The first of each such group runs those layers; the others get copies of its h and of its
        K/V at layers < stop. Returns (the first layer still to run for every row, h); (0, h) when
        no two rows share."""
        B, T = ids.shape
        if B < 2:
            return 0, h
        fresh = (positions[:, 0] == 0).tolist()
        first_of: dict[tuple, int] = {}
        owner = list(range(B))
        for b in range(B):
            if fresh[b]:
                owner[b] = first_of.setdefault((tuple(ids[b].tolist()), tuple(positions[b].tolist())), b)
        if len(first_of) == sum(fresh):
            return 0, h
        reps = sorted(set(owner))
        rep_rows = torch.tensor(reps, device=self.device)
        h_reps = h.index_select(0, rep_rows).contiguous()
        pos_reps = positions.index_select(0, rep_rows)
        slots = (rep_rows[:, None] + slot0).expand(len(reps), T)
        self.stack.run(h_reps, 0, stop, pool.kv, pos_reps.reshape(-1).contiguous(), slots.reshape(-1).contiguous(),
                       self.cos, self.sin_signed)
        where = {b: k for k, b in enumerate(reps)}
        h = h_reps.index_select(0, torch.tensor([where[owner[b]] for b in range(B)], device=self.device)).contiguous()
        copies = [(b, owner[b]) for b in range(B) if owner[b] != b]
        dst = torch.tensor([slot0 + b for b, _ in copies], device=self.device)
        src = torch.tensor([slot0 + o for _, o in copies], device=self.device)
        span = int(positions.max()) + 1
        for layer in range(stop):
            kv = pool.kv[layer]
            kv[dst, :span] = kv[src, :span]
        return stop, h

    def _prepare(self, pool: KVPool, slot0: int, positions: Tensor, span: int) -> dict:
        """Per-forward values every layer shares."""
        B, T = positions.shape
        slots = (torch.arange(B, device=self.device)[:, None] + slot0).expand(B, T)
        if self.stack is not None:
            return {"pos": positions.reshape(-1).contiguous(), "slots": slots.reshape(-1).contiguous()}
        # additive mask [B, 1, g*T, span]: query (head-in-group, t) sees keys at positions <= p[b, t]
        seen = torch.arange(span, device=self.device)[None, None, :] <= positions[:, :, None]
        mask = torch.zeros(seen.shape, dtype=self.act_dtype, device=self.device).masked_fill_(~seen, float("-inf"))
        mask = mask[:, None, None].expand(B, 1, self.group, T, span).reshape(B, 1, self.group * T, span)
        return {
            "mask": mask, "span": span, "slot0": slot0,
            "cos": self.cos[positions][:, :, None], "sin": self.sin_signed[positions][:, :, None],  # [B, T, 1, hd]
            "where": (slots * pool.capacity + positions).flatten(),  # rows of the flattened [slots * capacity]
        }

    def _clamp(self, sae: SparseAutoencoder, plan: BatchPlan, h: Tensor, flat_positions: Tensor, positions: Tensor) -> Tensor:
        """The batch's SAE edit on h [B, T, d] (kernels path): in place through `kernels.clamp`
        where the SAE encodes a feature from its own column (ReLU / threshold) and scales its input
        by a constant, else `apply_plan`. Same function either way, up to float rounding."""
        cached = self._clamp_cache
        if cached is None or cached[0] is not plan or cached[1] is not sae:
            cached = self._clamp_cache = (plan, sae, _clamp_arguments(sae, plan))
        args = cached[2]
        if args is None:
            return apply_plan(sae, plan, h, positions).contiguous()
        return kernels.clamp(h, plan.rows, flat_positions, plan.start, plan.end, *args)

    def _layer_torch(self, h: Tensor, weights: tuple, kv: Tensor, state: dict) -> Tensor:
        """One decoder layer in torch ops (any device and dtype)."""
        ln1, eps1, w_qkv, w_o, ln2, eps2, w_gu, w_down = weights
        B, T, _ = h.shape
        H, KV, hd, g = self.n_heads, self.n_kv_heads, self.head_dim, self.group
        qkv = F.linear(self._norm(h, ln1, eps1), w_qkv).view(B, T, H + 2 * KV, hd)
        qk = qkv[:, :, : H + KV]
        qk.copy_(torch.addcmul(qk * state["cos"], _swap_halves(qk), state["sin"]))  # RoPE on q and k at once
        kv.view(-1, 2 * KV * hd).index_copy_(0, state["where"], qkv[:, :, H:].reshape(B * T, 2 * KV * hd))
        rows = kv[state["slot0"] : state["slot0"] + B, : state["span"]]
        keys, values = rows[:, :, :KV].transpose(1, 2), rows[:, :, KV:].transpose(1, 2)  # [B, KV, span, hd], views
        q = qkv[:, :, :H].reshape(B, T, KV, g, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, g * T, hd)
        att = F.scaled_dot_product_attention(q, keys, values, attn_mask=state["mask"])
        att = att.view(B, KV, g, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, self.n_q)
        h = h + F.linear(att, w_o)
        gate, up = F.linear(self._norm(h, ln2, eps2), w_gu).split(self.inter, dim=-1)
        return h + F.linear(F.silu(gate) * up, w_down)


def _clamp_arguments(sae: SparseAutoencoder, plan: BatchPlan) -> tuple | None:
    """`kernels.clamp`'s SAE arguments for this plan (float32, contiguous), or None where it
    cannot compute this SAE's edit (TopK encoders, per-token normalisation, not on the CPU)."""
    mode = sae.cfg.normalize_activations
    if plan.encoder == "full" or mode not in ("none", "expected_average_only_in") or plan.rows.device.type != "cpu":
        return None
    scale = float(sae.cfg.norm_scaling_factor) if mode == "expected_average_only_in" else 1.0
    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    b_dec = f32(sae.b_dec) if sae.cfg.apply_b_dec_to_input else None
    return (f32(plan.a), f32(plan.b), f32(plan.W_enc.T), f32(plan.b_enc), f32(plan.threshold), f32(plan.W_dec),
            b_dec, scale, plan.encoder == "threshold")


def _fingerprint(model: nn.Module) -> tuple:
    # storage, dtype and in-place edit counter of every parameter: cheap, and changes on any edit
    return tuple((p.data_ptr(), p.dtype, p._version) for p in model.parameters())


def _rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # As LlamaRMSNorm: statistics in float32, the product in the model dtype.
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rmsnorm_f32(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # torch's F.rms_norm is several times slower here than these five small ops
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps)) * weight


def _swap_halves(x: Tensor) -> Tensor:
    """[x1, x2] -> [x2, x1] on the last dim; with sin_signed = [-sin, sin] this is HF's rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x.unflatten(-1, (2, half)).flip(-2).flatten(-2)
