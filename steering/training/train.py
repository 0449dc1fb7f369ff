"""Train a BatchTopK SAE on harvested activations; export it to run as JumpReLU.

Recipe (chosen by measurement; see the shipped SAE's README and report):
    * inputs scaled by one constant c so that E||c x||^2 = d_model
      (cfg.normalize_activations = "expected_average_only_in", c stored);
    * b_dec initialised to the geometric median of a sample (Weiszfeld);
      decoder rows random unit vectors, kept at unit norm (the gradient
      component along each row is removed before every step, rows are
      renormalised after); encoder initialised as the decoder's transpose;
    * BatchTopK (Bussmann et al. 2024): the N*k largest pre-activations of a
      batch of N tokens are kept, so L0 averages k but varies per token;
    * AuxK dead-feature loss (Gao et al. 2024): a feature is dead after
      `dead_tokens` tokens without firing; the aux_k largest dead
      pre-activations reconstruct the residual, weight aux_coef;
    * Adam, linear warm-up, constant, then linear decay over the last 20%;
    * the sparse backward of `sparse_step` (one dense matmul per step);
    * optionally Matryoshka prefixes (`matryoshka`: nested sizes, each prefix
      of the dictionary trained to reconstruct alone; `sparse_step`).
At the end a global threshold theta is calibrated so that the JumpReLU SAE
f = pre * (pre > theta) fires k features per token on average over training
batches; the result is a `SparseAutoencoder` with architecture "batchtopk"
and its threshold set, so the sparse clamp path works.

Checkpoints (parameters, Adam state, step, dead-feature counters, log) are
written atomically every `checkpoint_every` steps; `train` resumes from one.
A new run may instead warm-start from a trained SAE (`init_from`): its four
parameters and its input scale c are copied, while the optimiser, the
learning-rate schedule and the dead-feature counters start afresh, so more
data can be added to a dictionary without retraining it from scratch and
without renumbering its features.
Batches come from `ActivationStore.batches`, a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steering.sae.autoencoder import SAEConfig, SparseAutoencoder
from steering.training.sparse_step import batch_topk, decode, prefix_bounds, sae_step
from steering.training.store import ActivationStore


@dataclass
class TrainConfig:
    d_sae: int = 16_384
    k: int = 32
    lr: float = 8e-4
    batch_size: int = 2048
    total_tokens: int | None = None  # token-steps; None = epochs x stored tokens
    epochs: float = 1.0
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    aux_k: int = 256
    aux_coef: float = 1 / 32
    aux_rows: int = 512
    dead_tokens: int = 200_000
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    scale_sample: int = 65_536
    median_sample: int = 16_384
    calibration_batches: int = 64
    # Mean L0 the exported JumpReLU threshold is set for (None: k). A little
    # below k leaves room for the shift between training and held-out text.
    calibration_l0: float | None = None
    # Warm starts only: tokens scanned for features that never fire (0: no resampling).
    resample_tokens: int = 0
    # Matryoshka prefix sizes, increasing, below d_sae (empty: one dictionary).
    matryoshka: tuple[int, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def steps(self, n_tokens: int) -> int:
        total = self.total_tokens if self.total_tokens is not None else int(self.epochs * n_tokens)
        return max(1, total // self.batch_size)


def lr_factor(step: int, total_steps: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up over `warmup` steps, flat, linear decay to 0 over the last fraction."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(total_steps * (1 - decay_fraction))
    if step >= decay_start and total_steps > decay_start:
        return max(0.0, (total_steps - step) / (total_steps - decay_start))
    return 1.0


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: argmin_m sum_i ||x_i - m|| for x [n, d]."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < eps * max(1.0, float(m.norm())):
            return new
        m = new
    return m


def scaling_factor(store: ActivationStore, n: int, seed: int) -> float:
    """c with E||c x||^2 = d_model, from n random stored rows."""
    rows = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed))[: min(n, len(store))]
    x = store.get(rows.sort().values.numpy())
    return math.sqrt(store.d_model / float(x.pow(2).sum(-1).mean()))


class Trainer:
    """Holds parameters [S, d]-shaped for row gathers, the optimiser and counters."""

    def __init__(self, store: ActivationStore, cfg: TrainConfig):
        self.store, self.cfg = store, cfg
        self.total_steps = cfg.steps(len(store))
        self.step = 0
        self.log: list[dict[str, Any]] = []
        gen = torch.Generator().manual_seed(cfg.seed)
        d, S = store.d_model, cfg.d_sae
        prefix_bounds(cfg.matryoshka, S)  # refuse bad prefixes before any work
        self.scale = scaling_factor(store, cfg.scale_sample, cfg.seed)
        sample = torch.randperm(len(store), generator=gen)[: min(cfg.median_sample, len(store))]
        b_dec = geometric_median(store.get(sample.sort().values.numpy()) * self.scale)
        W_dec = torch.randn(S, d, generator=gen)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc_T, self.b_enc = W_dec.clone(), torch.zeros(S)
        self.W_dec, self.b_dec = W_dec, b_dec
        self.params = [self.W_enc_T, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.999))
        self.last_fired = torch.zeros(S, dtype=torch.int64)  # tokens seen when each feature last fired
        self.tokens_seen = 0
        self.threshold_hint: float | None = None
        self.kth_history: list[float] = []
        self.train_seconds = 0.0
        self.resampled: dict[str, int] | None = None  # what resample_dead did at a warm start

    def warm_start(self, sae: SparseAutoencoder) -> None:
        """Copy a trained SAE's parameters and input scale c (same d_in, d_sae; k-sparse or JumpReLU)."""
        cfg = sae.cfg
        if (cfg.d_in, cfg.d_sae) != (self.store.d_model, self.cfg.d_sae):
            raise ValueError(f"init_from has d_in={cfg.d_in}, d_sae={cfg.d_sae}; "
                             f"this run has d_in={self.store.d_model}, d_sae={self.cfg.d_sae}")
        if cfg.normalize_activations not in ("expected_average_only_in", "none"):
            raise ValueError(f"init_from normalises inputs by {cfg.normalize_activations!r}; "
                             "only a constant input scale can be carried over")
        with torch.no_grad():
            self.W_enc_T.copy_(sae.W_enc.detach().float().T)
            self.b_enc.copy_(sae.b_enc.detach().float())
            W_dec = sae.W_dec.detach().float()
            self.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
            self.b_dec.copy_(sae.b_dec.detach().float())
        self.scale = cfg.norm_scaling_factor if cfg.normalize_activations == "expected_average_only_in" else 1.0

    def resample_dead(self, n_tokens: int) -> torch.Tensor:
        """Re-initialise the features that never fire on `n_tokens` training tokens; returns their ids.

        Firing is the training rule (BatchTopK over batches of `batch_size`).
        Each resampled feature i takes a token drawn with probability
        proportional to its squared reconstruction error e = x - x_hat
        (Anthropic's resampling, 2023, with the residual as the direction, so
        the new feature covers what the dictionary misses):
            W_dec[i]   = e / ||e||
            W_enc_T[i] = W_dec[i] * mean ||W_enc_T[j]|| over live j
            b_enc[i]   = median b_enc[j] over live j
        Only for a warm start, whose Adam state is fresh. The draw uses the
        run's seed; the error pool is the scan's last 64 batches.
        """
        cfg = self.cfg
        stream = self.store.batches(cfg.batch_size, cfg.seed + 2)
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
        pool_residuals, pool_err = [], []
        n_batches = max(1, n_tokens // cfg.batch_size)
        with torch.no_grad():
            for b in range(n_batches):
                x = next(stream) * self.scale
                pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc_T.T)
                sel, _ = batch_topk(pre, cfg.k * x.shape[0])
                fired[sel.cols] = True
                if b >= n_batches - 64:
                    err = x - self.b_dec - decode(sel, self.W_dec)
                    pool_residuals.append(err)
                    pool_err.append(err.pow(2).sum(-1))
            dead = torch.nonzero(~fired).squeeze(1)
            if dead.numel() == 0:
                return dead
            errors, weights = torch.cat(pool_residuals), torch.cat(pool_err)
            gen = torch.Generator().manual_seed(cfg.seed + 3)
            pick = torch.multinomial(weights, dead.numel(), replacement=dead.numel() > weights.numel(), generator=gen)
            direction = errors[pick] / errors[pick].norm(dim=-1, keepdim=True).clamp_min(1e-8)
            live = fired
            self.W_dec[dead] = direction
            self.W_enc_T[dead] = direction * self.W_enc_T[live].norm(dim=-1).mean()
            self.b_enc[dead] = self.b_enc[live].median()
        return dead

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "cfg": dataclasses.asdict(self.cfg), "step": self.step, "tokens_seen": self.tokens_seen,
            "params": [p.clone() for p in self.params], "opt": self.opt.state_dict(),
            "last_fired": self.last_fired, "scale": self.scale, "threshold_hint": self.threshold_hint,
            "kth_history": self.kth_history, "log": self.log, "train_seconds": self.train_seconds,
            "resampled": self.resampled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v)
        self.opt.load_state_dict(state["opt"])
        for key in ("step", "tokens_seen", "last_fired", "scale", "threshold_hint", "kth_history", "log", "train_seconds"):
            setattr(self, key, state[key])
        self.resampled = state.get("resampled")

    def save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------------ training
    def dead_mask(self) -> torch.Tensor:
        return (self.tokens_seen - self.last_fired) > self.cfg.dead_tokens

    def train_step(self, x: torch.Tensor) -> dict[str, Any]:
        cfg = self.cfg
        x = x * self.scale
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(self.step, self.total_steps, cfg.warmup_steps, cfg.decay_fraction)
        dead = self.dead_mask()
        res = sae_step(x, *self.params, k=cfg.k, dead=dead, aux_k=cfg.aux_k, aux_coef=cfg.aux_coef,
                       aux_rows=cfg.aux_rows, threshold_hint=self.threshold_hint, prefixes=cfg.matryoshka)
        self.opt.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.tokens_seen += x.shape[0]
        self.last_fired[res.fired] = self.tokens_seen
        self.threshold_hint = res.kth
        self.kth_history = (self.kth_history + [res.kth])[-256:]
        self.step += 1
        return {"step": self.step, "tokens": self.tokens_seen, "loss": res.loss, "mse": res.mse, "aux": res.aux,
                "variance_explained": 1 - res.fvu, "l0": res.l0, "dead_fraction": float(dead.float().mean()),
                "lr": self.opt.param_groups[0]["lr"]}

    def calibrate_threshold(self) -> float:
        """theta such that pre > theta holds for L per token on average over fresh training batches.

        L is cfg.calibration_l0 (default k). The (L * n)-th largest pre-activation over all n sampled tokens pooled
        (a BatchTopK over one big batch), found among the entries above half
        the smallest per-batch k-th value.
        """
        cfg = self.cfg
        target_l0 = cfg.k if cfg.calibration_l0 is None else cfg.calibration_l0
        if not 0 < target_l0 <= cfg.k:
            raise ValueError(f"calibration_l0 must be in (0, k={cfg.k}], got {target_l0}")
        stream = self.store.batches(cfg.batch_size, cfg.seed + 1)
        pools, kths, n = [], [], 0
        with torch.no_grad():
            for _ in range(cfg.calibration_batches):
                x = next(stream) * self.scale
                pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc_T.T).reshape(-1)
                kths.append(float(pre.kthvalue(pre.numel() - cfg.k * x.shape[0] + 1).values))
                pools.append(pre[pre > 0.5 * min(kths)])
                n += x.shape[0]
        pool = torch.cat(pools)
        pool = pool[pool > 0.5 * min(kths)]
        return float(pool.topk(min(int(round(target_l0 * n)), pool.numel())).values[-1])

    def to_sae(self, threshold: float, sae_cfg: dict[str, Any]) -> SparseAutoencoder:
        cfg = SAEConfig(
            d_in=self.store.d_model, d_sae=self.cfg.d_sae, architecture="batchtopk", k=self.cfg.k,
            normalize_activations="expected_average_only_in", norm_scaling_factor=self.scale, **sae_cfg,
        )
        sae = SparseAutoencoder(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(self.W_enc_T.T)
            sae.b_enc.copy_(self.b_enc)
            sae.W_dec.copy_(self.W_dec)
            sae.b_dec.copy_(self.b_dec)
            sae.threshold.fill_(threshold)
        return sae


def train(
    store: ActivationStore,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    sae_cfg: dict[str, Any] | None = None,
    max_seconds: float | None = None,
    follow: bool = False,
    init_from: SparseAutoencoder | None = None,
    progress: bool = True,
) -> tuple[SparseAutoencoder | None, Trainer]:
    """Train (resuming from run_dir/checkpoint.pt) and return (sae, trainer).

    `sae_cfg` holds SAEConfig fields besides the sizes (hook_layer, hook_site,
    model_name, metadata). With `max_seconds`, stops early after a checkpoint
    and returns (None, trainer): call again to resume. With `follow`, the
    store may still be growing (a harvest running beside): batches are drawn
    uniformly with replacement from the tokens stored so far, and the store
    is reopened at every checkpoint; such a run is resumable but, unlike the
    default epoch-based order, not bit-reproducible. `init_from` warm-starts
    a new run (ignored when resuming from a checkpoint).
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(store, cfg)
    ckpt = run / "checkpoint.pt"
    if ckpt.exists():
        trainer.load_state_dict(torch.load(ckpt, weights_only=False))
    elif init_from is not None:
        trainer.warm_start(init_from)
        if cfg.resample_tokens > 0:
            resampled = trainer.resample_dead(cfg.resample_tokens)
            trainer.resampled = {"features": int(resampled.numel()), "scanned_tokens": cfg.resample_tokens}
    log_file = run / "log.jsonl"
    stream = store.batches(cfg.batch_size, cfg.seed, start_step=trainer.step)
    if follow:
        if cfg.total_tokens is None:
            raise ValueError("follow=True needs total_tokens: the store size is not known in advance")
        stream = (trainer.store.random_batch(cfg.batch_size, cfg.seed, trainer.step) for _ in iter(int, 1))
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", desc="train-sae", disable=not progress)
    t_start = time.perf_counter()
    seconds_at_start = trainer.train_seconds
    tokens_at_start = trainer.tokens_seen
    while trainer.step < trainer.total_steps:
        t0 = time.perf_counter()
        row = trainer.train_step(next(stream))
        trainer.train_seconds += time.perf_counter() - t0
        row["tokens_per_s"] = (trainer.tokens_seen - tokens_at_start) / max(1e-9, trainer.train_seconds - seconds_at_start)
        bar.update(1)
        if trainer.step % cfg.log_every == 0 or trainer.step == trainer.total_steps:
            trainer.log.append(row)
            with log_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(ve=f"{row['variance_explained']:.3f}", l0=f"{row['l0']:.1f}",
                            dead=f"{row['dead_fraction']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if trainer.step % cfg.checkpoint_every == 0:
            trainer.save_checkpoint(ckpt)
            if follow:
                trainer.store = ActivationStore(store.dir)
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                bar.close()
                return None, trainer
    bar.close()
    trainer.save_checkpoint(ckpt)
    threshold = trainer.calibrate_threshold()
    extra = dict(sae_cfg or {})
    extra["metadata"] = {**extra.get("metadata", {}), **cfg.metadata, "training": {
        "architecture": "BatchTopK, exported as JumpReLU with a global threshold",
        "k": cfg.k, "calibration_l0": cfg.calibration_l0 or cfg.k, "resampled": trainer.resampled,
        "tokens_seen": trainer.tokens_seen, "steps": trainer.step, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "threshold": threshold, "scale": trainer.scale,
        "matryoshka_prefixes": list(cfg.matryoshka)}}
    return trainer.to_sae(threshold, extra), trainer
