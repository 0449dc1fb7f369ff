"""Inspect existing text: per-token features of a conversation or a plain text, and a summary.

A conversation is rendered with the chat template (it may end in an
assistant message: what the model said, or what a user wants read); a plain
text is tokenised as it is, after a sink token. Either way position 0 is an
attention sink whose norms are orders of magnitude above the others, so it
is never read. Per text, besides the per-token readings of `readout`:

    total_i = sum over read tokens of f_i       max_i = max over them
    fires_i = number of read tokens with f_i > 0

and the summary ranks the features by `total` (or `max`). The forwards run
the shared model up to the SAE's hook site: a server runs them alone on the
model (`api.gate`), on its compute thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

import torch

from steering.chat_template import render_chat
from steering.hooks import activations_at
from steering.readings import FeatureValue, InspectSpec, TokenReading, max_activations, readings
from steering.tokens import sink_token_id

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

Conversation = Sequence[dict[str, str]]
Text = Union[str, Conversation]
SUMMARY_ORDERS: tuple[str, ...] = ("total", "max")


@dataclass(frozen=True)
class FeatureTotal:
    """A feature over one text: summed and largest activation, and how many read tokens it fired on."""

    index: int
    total: float
    max: FeatureValue
    fires: int


@dataclass(frozen=True)
class TextInspection:
    """One text read: its token ids (position 0 included), the readings of positions 1.., the summary."""

    token_ids: tuple[int, ...]
    readings: tuple[TokenReading, ...]
    summary: tuple[FeatureTotal, ...]


def token_rows(sm: "SteeredModel", texts: Sequence[Text]) -> list[list[int]]:
    """Token ids per text: a conversation through the chat template (no generation prompt when it ends with
    the assistant), a string after the sink token."""
    tok = sm.loaded.tokenizer
    rows = []
    for text in texts:
        if isinstance(text, str):
            rows.append([sink_token_id(tok), *tok(text, add_special_tokens=False)["input_ids"]])
        else:
            ends_with_answer = bool(text) and text[-1].get("role") == "assistant"
            rows.append(list(render_chat(tok, list(text), add_generation_prompt=not ends_with_answer)))
    return rows


@torch.no_grad()
def inspect_texts(sm: "SteeredModel", texts: Sequence[Text], spec: InspectSpec = InspectSpec(),
                  summary_limit: int = 20, order: str = "total", batch_size: int = 8) -> list[TextInspection]:
    """Read every text (module docstring); `summary_limit` features per summary, ranked by `order`."""
    sae = sm.sae
    if sae is None:
        raise ValueError("inspection needs an SAE")
    spec.validate(sae)
    if order not in SUMMARY_ORDERS:
        raise ValueError(f"order must be one of {', '.join(SUMMARY_ORDERS)}")
    scale = max_activations(sae)
    rows = token_rows(sm, texts)
    out: list[TextInspection] = []
    for i, hidden in activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, rows, batch_size):
        ids = rows[i]
        f = sae.encode(hidden[1:].to(sae.W_enc.dtype)).float()  # [T - 1, d_sae]: position 0 never read
        per_token = readings(f, spec, range(1, len(ids)), ids[1:], scale)
        out.append(TextInspection(tuple(ids), tuple(per_token), _summary(f, scale, summary_limit, order)))
    return out


def _summary(f: torch.Tensor, scale: list[float | None], limit: int, order: str) -> tuple[FeatureTotal, ...]:
    if f.shape[0] == 0 or limit <= 0:
        return ()
    total, peak, fires = f.sum(0), f.amax(0), (f > 0).sum(0)
    key = total if order == "total" else peak
    n = min(limit, int((fires > 0).sum()))
    best = key.topk(n).indices.tolist() if n else []
    total, peak, fires = total.tolist(), peak.tolist(), fires.tolist()
    return tuple(FeatureTotal(i, total[i], FeatureValue(i, peak[i], peak[i] / scale[i] if scale[i] else None),
                              int(fires[i])) for i in best)
