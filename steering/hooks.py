"""Forward hooks on a Hugging Face causal LM, attached only through context managers.

Hooks are global state on a shared model: every context manager here removes
what it attached in `finally`, so an exception (or a cancelled request) never
leaves a hook behind. A hook may read the activations it is given and return
a new tensor in their place; it must not touch model parameters, the SAE, or
any other request's rows.

Sites, in SAELens terms, for decoder layer L (`hook_layer`):
    resid_pre   the residual stream entering layer L  (a forward pre-hook)
    resid_post  the residual stream leaving layer L   (a forward hook)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from steering.interventions import BatchPlan, apply_plan
from steering.sae.autoencoder import SparseAutoencoder

EditFn = Callable[[Tensor], Tensor | None]


def find_submodule(model: nn.Module, paths: tuple[str, ...], kind: type = nn.Module) -> nn.Module | None:
    """The first of the dotted attribute `paths` that exists on model as a `kind`, else None."""
    for path in paths:
        obj: object = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, kind):
            return obj
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama-like, GPT-2, GPT-NeoX, Phi...)."""
    paths = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
    layers = find_submodule(model, paths, nn.ModuleList)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers  # type: ignore[return-value]


def layer_device(model: nn.Module, layer: int) -> torch.device:
    """Where decoder layer `layer` runs (with a `device_map`, layers may sit on different devices)."""
    block = decoder_layers(model)[layer]
    param = next(block.parameters(), None)
    return param.device if param is not None else next(model.parameters()).device


def _replace_hidden(value: object, new_hidden: Tensor) -> object:
    if isinstance(value, Tensor):
        return new_hidden
    return (new_hidden, *value[1:])  # type: ignore[index]


@contextmanager
def edit_site(model: nn.Module, layer: int, site: str, fn: EditFn) -> Iterator[None]:
    """Call fn(hidden [B, T, d]) at the site on every forward; a returned tensor replaces hidden."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"hook_layer {layer} is out of range: the model has {len(layers)} layers")
    block = layers[layer]
    if site == "resid_post":

        def post_hook(module: nn.Module, args: tuple, output: object) -> object:
            hidden = output if isinstance(output, Tensor) else output[0]  # type: ignore[index]
            new = fn(hidden)
            return output if new is None else _replace_hidden(output, new)

        handle = block.register_forward_hook(post_hook)
    elif site == "resid_pre":

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        raise ValueError(f"unknown hook site {site!r}; valid: resid_post, resid_pre")
    try:
        yield
    finally:
        handle.remove()


class SteeringHook:
    """Applies a BatchPlan to the SAE's hook site.

    `positions` [B, T] are the absolute positions of the tokens of the forward
    it is attached for (None: 0..T-1 in every row). Both are given when the
    hook is attached and never change: values of the caller's forward, never
    state of the model or SAE.
    """

    def __init__(self, sae: SparseAutoencoder, plan: BatchPlan | None = None, positions: Tensor | None = None):
        self.sae = sae
        self.plan = plan
        self.positions = positions

    def __call__(self, hidden: Tensor) -> Tensor | None:
        if self.plan is None or self.plan.is_empty:
            return None
        return apply_plan(self.sae, self.plan, hidden, self.positions)


@contextmanager
def steering(
    model: nn.Module, sae: SparseAutoencoder, plan: BatchPlan | None = None, positions: Tensor | None = None
) -> Iterator[SteeringHook]:
    """Attach a SteeringHook at the SAE's site for the duration of the block (`positions`: see SteeringHook)."""
    hook = SteeringHook(sae, plan, positions)
    with edit_site(model, sae.cfg.hook_layer, sae.cfg.hook_site, hook):
        yield hook


class StopForward(Exception):
    """Raised by a capture hook to stop the forward pass once the site is reached."""


@contextmanager
def capture(model: nn.Module, layer: int, site: str, stop: bool = False) -> Iterator[list[Tensor]]:
    """Record the activations [B, T, d] at a site; with stop=True, end the forward there.

    With stop=True, run the forward inside `run_until_capture`, which catches
    StopForward. Stopping at a middle layer skips the rest of the network
    (more than twice as fast for harvesting).
    """
    store: list[Tensor] = []

    def record(hidden: Tensor) -> None:
        store.append(hidden.detach())
        if stop:
            raise StopForward

    with edit_site(model, layer, site, record):
        yield store


def run_until_capture(model: nn.Module, **inputs: object) -> None:
    """model(**inputs) that treats StopForward as the normal end of the pass."""
    try:
        with torch.no_grad():
            model(**inputs)
    except StopForward:
        pass


def activations_at(model: nn.Module, layer: int, site: str, rows: Sequence[Sequence[int]],
                   batch_size: int = 16) -> Iterator[tuple[int, Tensor]]:
    """(i, activations [len(rows[i]), d]) at the site for every row of token ids, in order.

    Rows are right-padded into batches of `batch_size` with an attention mask, so
    a row's activations equal its own forward (up to float rounding); each
    forward stops at the site.
    """
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = [list(r) for r in rows[start : start + batch_size]]
        width = max(1, max(len(r) for r in chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, row in enumerate(chunk):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        with capture(model, layer, site, stop=True) as store:
            run_until_capture(model, input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        for r, row in enumerate(chunk):
            yield start + r, store[0][r, : len(row)]
