"""Hold a model's nonlinearities at their values for one prompt, so that gradients are exact direct effects.

Inside `frozen_nonlinearities(model)` the forward computes the same values,
but the backward treats three things as constants of this prompt:

    attention patterns   softmax(q k^T): q_proj and k_proj outputs are detached, so the
                         output of attention is linear in the values (v_proj)
    norm scales          an RMSNorm's y = w * x * s(x) (any form of w): y' = y + r * (x - x.detach())
                         with r = (y / x).detach(), the same value, gradient w * s
    MLP gates            act_fn(gate_proj(x)) is detached, so the MLP is linear through up_proj

With all three held, a decoder layer is linear in its input (no biases in
Llama-family projections), and so is everything between two SAE layers: the
model in between is a linear map A at this prompt, and for any output p,
p = sum_u value(u) * dp/dvalue(u) + (the constants' share) exactly. This is
the "local replacement model" idea of circuit tracing, with the MLPs kept
(gates held) instead of replaced by transcoders.

`Linearisation` says what was held: an architecture without separate q/k
projections (GPT-2's fused c_attn), a non-gated MLP or a LayerNorm keeps that
part nonlinear, and the gradients there are local slopes, not exact effects.
Hooks come off in `finally` (`steering.hooks` rules).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from steering.hooks import decoder_layers


@dataclass(frozen=True)
class Linearisation:
    """How many of the model's layers had each nonlinearity held (out of `layers`)."""

    layers: int
    attention: int
    mlp_gates: int
    norms: int  # RMSNorm modules held, the final norm included
    other_norms: int  # norm modules of other kinds (LayerNorm...), left nonlinear

    @property
    def exact(self) -> bool:
        """True when every layer's attention and MLP and every norm was held: direct effects are exact."""
        return self.attention == self.layers and self.mlp_gates == self.layers and self.other_norms == 0


def _detach_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return output.detach()


def _freeze_norm_scale(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    x = args[0]
    ratio = torch.where(x != 0, output / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x))
    return output.detach() + ratio.detach() * (x - x.detach())


def _is_rms_norm(module: nn.Module) -> bool:
    return "RMSNorm" in type(module).__name__  # Llama, Mistral, Qwen, Gemma (its 1 + w form too)


@contextmanager
def frozen_nonlinearities(model: nn.Module) -> Iterator[Linearisation]:
    """Hold attention patterns, RMSNorm scales and MLP gates for the forwards of the block (module docstring)."""
    layers = decoder_layers(model)
    attention = gates = norms = other_norms = 0
    with ExitStack() as stack:
        def hook(module: nn.Module, fn) -> None:  # type: ignore[no-untyped-def]
            handle = module.register_forward_hook(fn)
            stack.callback(handle.remove)

        for block in layers:
            attn = getattr(block, "self_attn", None)
            q, k = getattr(attn, "q_proj", None), getattr(attn, "k_proj", None)
            if isinstance(q, nn.Module) and isinstance(k, nn.Module):
                hook(q, _detach_output)
                hook(k, _detach_output)
                attention += 1
            mlp = getattr(block, "mlp", None)
            act = getattr(mlp, "act_fn", None)
            if isinstance(act, nn.Module) and isinstance(getattr(mlp, "gate_proj", None), nn.Module):
                hook(act, _detach_output)
                gates += 1
        for module in model.modules():
            if _is_rms_norm(module):
                hook(module, _freeze_norm_scale)
                norms += 1
            elif "Norm" in type(module).__name__:
                other_norms += 1
        yield Linearisation(len(layers), attention, gates, norms, other_norms)
