"""Find an SAE's concept features (not token features) for a concept word.

Two views of each feature i, combined:

(a) Specificity: how much more, and how consistently, i fires on text about
    the concept than on unrelated text. Concept texts are the caller's, or
    the concept filled into short templates (CONCEPT_TEMPLATES); the
    unrelated bank is the same templates filled with mundane control topics
    plus plain neutral sentences (so the templates' own wording cancels).
    With f_i(t, p) the activation at position p of text t (each text gets a
    sink token at position 0, which is left out) and m_i the feature's max activation (the
    larger of the SAE's statistic and the largest value seen here, so a
    statistic measured on too little text cannot inflate the score):

        mean_C(i)   = mean over concept texts t of  mean_p f_i(t, p) / m_i
        mean_N(i)   = the same over the unrelated texts
        fire_C(i)   = share of concept texts where i fires (f_i > 0 somewhere)
        specificity = (mean_C - mean_N) * fire_C

    Averaging over positions favours features that stay on across a text
    about the concept over a token feature that fires only on the word
    itself; `word_share` (the share of i's activation on the concept texts
    that falls on the concept word's own tokens; near 1 for a token
    feature) is reported to show which is which.

(b) Logit effect: what i's decoder direction promotes through the
    unembedding, with the final norm's elementwise weight folded in (its
    1/rms factor is a positive per-token scale and does not change ranks):

        effect[v]   = (W_dec[i] * g) . W_U[v]                 [V]
        logit_rank  = min over concept tokens v of #{u : effect[u] > effect[v]}
        logit_score = 1 - log(1 + logit_rank) / log(V)        (1 at rank 0)

    Concept tokens: the first non-blank token of the concept (and of any
    extra concept words), singular and plural, as written, capitalised, and
    with a leading space.

Ranking: the `pool` features of highest specificity (> 0) get their logit
effect computed (the full [d_sae, V] product would not fit in memory) and
are ranked by  score = specificity * logit_score.

The forwards run the shared model up to the SAE's hook site, with a capture
hook. Each batch of texts (TEXT_BATCH) and the logit view are one call of a
`Runner` (`steering.evaluation.run`): inline by default, or short calls on a
server's compute thread between decoding steps. The unrelated bank does not
depend on the concept: `neutral_bank_stats` reads it once per SAE, and a
search given those statistics runs only its concept texts (the bank's texts
naming the concept are left out by row).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from steering.errors import SteeringError
from steering.evaluation.metrics import concept_word_pattern
from steering.evaluation.run import INLINE, Runner
from steering.hooks import activations_at, find_submodule
from steering.tokens import sink_token_id

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

CONCEPT_TEMPLATES: tuple[str, ...] = (
    "This is a text about {c}.",
    "Let me tell you everything I know about {c}.",
    "I have been thinking about {c} all day long.",
    "Here are some interesting facts about {c}.",
    "My favourite subject to talk about is {c}.",
    "People often ask me questions about {c}.",
    "The whole story was about {c}, from the beginning to the end.",
    "Everything in this picture reminds me of {c}.",
)
CONTROL_TOPICS: tuple[str, ...] = (
    "furniture", "the weather", "arithmetic", "paperwork", "shoes", "a bus timetable",
    "plastic bags", "office chairs", "the alphabet", "umbrellas", "printers", "traffic lights",
)
NEUTRAL_SENTENCES: tuple[str, ...] = (
    "Please remember to close the door when you leave the room.",
    "The meeting has been moved to Thursday afternoon.",
    "She wrote the numbers in a small notebook and put it away.",
    "There are three steps in this process, and the second one is the longest.",
    "Thank you for your message; I will reply as soon as I can.",
    "The report should be finished by the end of the month.",
    "He opened the window and sat down at the table.",
    "If the light is green, you may continue along the road.",
    "Most of the pages were blank, except for a few short notes.",
    "We need to buy a new lamp and some batteries for the clock.",
    "The instructions were printed on the back of the box.",
    "It was a quiet morning, and nothing much happened.",
)
# Texts per forward: one Runner call each (a server's other requests decode between them).
TEXT_BATCH = 8


@dataclass(frozen=True)
class ConceptCandidate:
    """One feature's scores for a concept (see the module docstring)."""

    index: int
    score: float
    specificity: float
    concept_mean: float
    neutral_mean: float
    concept_fire_rate: float
    neutral_fire_rate: float
    word_share: float | None
    logit_rank: int
    logit_score: float
    promoted_tokens: tuple[str, ...]
    max_activation: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def concept_texts(concept: str) -> list[str]:
    return [t.format(c=concept) for t in CONCEPT_TEMPLATES]


def neutral_bank() -> list[str]:
    """Every unrelated text: the templates on control topics, then the plain sentences."""
    n = len(CONCEPT_TEMPLATES)
    return [CONCEPT_TEMPLATES[(k * 3 + s) % n].format(c=topic)
            for k, topic in enumerate(CONTROL_TOPICS) for s in (0, 1)] + list(NEUTRAL_SENTENCES)


def neutral_rows(concept: str = "") -> list[int]:
    """Rows of `neutral_bank()` that do not name the concept."""
    pattern = concept_word_pattern([concept]) if concept.strip() else None
    return [k for k, t in enumerate(neutral_bank()) if pattern is None or not pattern.search(t)]


def neutral_texts(concept: str = "") -> list[str]:
    """The unrelated bank minus any text naming the concept."""
    bank = neutral_bank()
    return [bank[k] for k in neutral_rows(concept)]


@dataclass(frozen=True)
class TextStats:
    """Per-text, per-feature aggregates: mean, max and activation on concept-word tokens [n_texts, d_sae];
    the median norm of the text's residual vectors at the hook site as the SAE's encoder sees them (after
    its input normalisation, the units its decoder rows live in) [n_texts]: the scale a clamp's push is
    measured against (auto-steer's strength calibration)."""

    mean: Tensor
    max: Tensor
    on_word: Tensor
    total: Tensor
    resid_norm: Tensor

    def rows(self, keep: Sequence[int]) -> "TextStats":
        index = torch.tensor(list(keep), dtype=torch.long)
        return TextStats(*(getattr(self, f.name).index_select(0, index) for f in dataclasses.fields(self)))

    @staticmethod
    def concat(parts: Sequence["TextStats"]) -> "TextStats":
        return TextStats(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(TextStats)))


def _word_mask(tokenizer: Any, text: str, ids: list[int], pattern: Any) -> list[bool]:
    """Per token: does it overlap a concept-word match? (all False without offsets)."""
    if pattern is None:
        return [False] * len(ids)
    spans = [m.span() for m in pattern.finditer(text)]
    try:
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return [False] * len(ids)
    if len(offsets) != len(ids):
        return [False] * len(ids)
    return [any(a < e and s < b for s, e in spans) for a, b in offsets]


def _batch_stats(sm: "SteeredModel", texts: Sequence[str], concept: str) -> TextStats:
    """`text_stats` of a few texts in one padded forward."""
    model, tok, sae = sm.loaded.model, sm.loaded.tokenizer, sm.sae
    pattern = concept_word_pattern([concept]) if concept.strip() else None
    sink = sink_token_id(tok)
    plain = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    masks = [[False, *_word_mask(tok, t, ids, pattern)] for t, ids in zip(texts, plain)]
    out = {k: torch.zeros(len(texts), sae.d_sae) for k in ("mean", "max", "on_word", "total")}
    out["resid_norm"] = torch.zeros(len(texts))
    rows = [[sink, *ids] for ids in plain]
    for t, hidden in activations_at(model, sae.cfg.hook_layer, sae.cfg.hook_site, rows, len(rows)):
        if len(rows[t]) < 2:  # an empty text: all zeros
            continue
        with torch.no_grad():
            # the encoder's input, once: its norm is in the SAE's units (a decoded push sum_i v_i W_dec[i] is
            # comparable with it for any input normalisation; the shipped SAE scales inputs by 0.138)
            x_n, _ = sae.normalize(hidden[1:].to(sae.W_dec.dtype))  # the sink left out
            a = sae.activate(sae.pre_activations(x_n)).float().cpu()  # [T, d_sae] = sae.encode(hidden[1:])
        on = torch.tensor(masks[t][1:], dtype=torch.float32)
        out["mean"][t], out["max"][t] = a.mean(0), a.amax(0)
        out["on_word"][t], out["total"][t] = on @ a, a.sum(0)
        out["resid_norm"][t] = x_n.float().norm(dim=-1).median().cpu()
    return TextStats(**out)


def text_stats(sm: "SteeredModel", texts: Sequence[str], concept: str = "", batch_size: int = TEXT_BATCH,
               runner: Runner = INLINE) -> TextStats:
    """Run texts to the SAE's hook site; aggregate feature activations per text.

    Each text is prefixed with `sink_token_id` and position 0 (that sink) is
    left out, so every token of the text counts, the first one too. Each
    batch of `batch_size` texts is one `runner` call.
    """
    texts = list(texts)
    parts = [runner.run(_batch_stats, sm, texts[s : s + batch_size], concept) for s in range(0, len(texts), batch_size)]
    if not parts:
        return TextStats(*(torch.zeros(0, sm.sae.d_sae) for _ in range(4)), torch.zeros(0))
    return TextStats.concat(parts)


def neutral_bank_stats(sm: "SteeredModel", runner: Runner = INLINE) -> TextStats:
    """`text_stats` of the whole unrelated bank (`neutral_bank()`): the same for every concept on this SAE."""
    return text_stats(sm, neutral_bank(), runner=runner)


def specificity_scores(concept: TextStats, neutral: TextStats, max_activation: Tensor) -> dict[str, Tensor]:
    """The (a) scores of the module docstring, each [d_sae]."""
    seen = torch.maximum(concept.max.amax(0), neutral.max.amax(0))
    known = torch.isfinite(max_activation) & (max_activation > 0)
    m = torch.where(known, torch.maximum(max_activation.float(), seen), seen).clamp(min=1e-8)
    c_mean = (concept.mean / m).mean(0)
    n_mean = (neutral.mean / m).mean(0)
    c_fire = (concept.max > 0).float().mean(0)
    n_fire = (neutral.max > 0).float().mean(0)
    total = concept.total.sum(0)
    word_share = torch.where(total > 0, concept.on_word.sum(0) / total.clamp(min=1e-12), torch.zeros_like(total))
    return {"specificity": (c_mean - n_mean) * c_fire, "concept_mean": c_mean, "neutral_mean": n_mean,
            "concept_fire_rate": c_fire, "neutral_fire_rate": n_fire, "word_share": word_share, "max": m}


def _final_norm(model: nn.Module) -> nn.Module | None:
    return find_submodule(model, ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"))


def logit_effects(model: nn.Module, directions: Tensor) -> Tensor:
    """directions [m, d] (residual-stream space) -> effect on each token's logit [m, V]."""
    W_U = model.get_output_embeddings().weight  # [V, d]
    d = directions.to(W_U.dtype)
    norm = _final_norm(model)
    if isinstance(norm, nn.LayerNorm):  # a LayerNorm also centres its input
        d = d - d.mean(-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, Tensor) and weight.shape == d.shape[-1:]:
        d = d * weight
    return d @ W_U.T


def number_forms(word: str) -> list[str]:
    """The word, and its simple singular (a trailing s dropped) or plural (s added)."""
    if word.lower().endswith("s") and len(word) > 3:
        return [word, word[:-1]]
    return [word, word + "s"] if word.isalpha() else [word]


def concept_token_ids(tokenizer: Any, concept: str, words: Sequence[str] = ()) -> list[int]:
    """First non-blank token of the concept (and of `words`), in simple singular and plural,
    as written, capitalised, and after a space."""
    ids: list[int] = []
    for word in [concept.strip(), *(w.strip() for w in words if w.strip())]:
        for form in number_forms(word):
            for variant in (form, form.capitalize(), " " + form, " " + form.capitalize()):
                for tid in tokenizer(variant, add_special_tokens=False)["input_ids"]:
                    if tokenizer.decode([tid]).strip():
                        ids.append(int(tid))
                        break
    return list(dict.fromkeys(ids))


def logit_ranks(effects: Tensor, token_ids: Sequence[int]) -> Tensor:
    """Best rank (0 = most promoted) of any of token_ids in each row of effects [m, V] -> [m]."""
    if not token_ids:
        return torch.full((effects.shape[0],), effects.shape[1] - 1, dtype=torch.long)
    target = effects[:, list(token_ids)]  # [m, k]
    above = (effects[:, None, :] > target[:, :, None]).sum(-1)  # [m, k]
    return above.min(-1).values


def logit_score(rank: int, vocab_size: int) -> float:
    return 1.0 - math.log1p(rank) / math.log(max(vocab_size, 2))


def _logit_view(sm: "SteeredModel", features: Tensor, token_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(b) of the module docstring for `features` [m]: (effects [m, V], logit ranks [m])."""
    sae = sm.sae
    with torch.no_grad():
        effects = logit_effects(sm.loaded.model, sae.W_dec[features.to(sae.W_dec.device)]).float().cpu()
    return effects, logit_ranks(effects, token_ids)


def concept_statistics(sm: "SteeredModel", concept: str, texts: list[str] | None = None,
                       neutral: TextStats | None = None, runner: Runner = INLINE) -> tuple[TextStats, TextStats]:
    """`text_stats` of the concept's texts (`texts`, else the templates) and of the unrelated bank's texts that
    do not name it (from `neutral`, this SAE's `neutral_bank_stats`, when given)."""
    c_stats = text_stats(sm, texts or concept_texts(concept), concept, runner=runner)
    if neutral is None:
        return c_stats, text_stats(sm, neutral_texts(concept), runner=runner)
    if neutral.mean.shape != (len(neutral_bank()), sm.sae.d_sae):
        raise SteeringError("the neutral statistics are not this SAE's bank", "neutral")
    return c_stats, neutral.rows(neutral_rows(concept))


def describe_candidates(sm: "SteeredModel", concept: str, indices: Sequence[int], scores: dict[str, Tensor],
                        c_stats: TextStats, words: Sequence[str] = (),
                        runner: Runner = INLINE) -> list[ConceptCandidate]:
    """ConceptCandidates for `indices` (in that order) from `specificity_scores` and their logit view."""
    if not indices:
        return []
    tok = sm.loaded.tokenizer
    top = torch.tensor(list(indices), dtype=torch.long)
    effects, ranks = runner.run(_logit_view, sm, top, concept_token_ids(tok, concept, words))
    vocab = effects.shape[1]
    promoted = effects.topk(5, dim=-1).indices
    spec = scores["specificity"]
    out: list[ConceptCandidate] = []
    for j, i in enumerate(top.tolist()):
        ls = logit_score(int(ranks[j]), vocab)
        out.append(ConceptCandidate(
            index=i, score=float(spec[i]) * ls, specificity=float(spec[i]),
            concept_mean=float(scores["concept_mean"][i]), neutral_mean=float(scores["neutral_mean"][i]),
            concept_fire_rate=float(scores["concept_fire_rate"][i]),
            neutral_fire_rate=float(scores["neutral_fire_rate"][i]),
            word_share=float(scores["word_share"][i]) if c_stats.on_word.any() else None,
            logit_rank=int(ranks[j]), logit_score=ls,
            promoted_tokens=tuple(tok.decode([int(v)]) for v in promoted[j]),
            max_activation=float(scores["max"][i])))
    return out


def find_concept_features(
    sm: "SteeredModel",
    concept: str,
    texts: list[str] | None = None,
    limit: int = 10,
    pool: int | None = None,
    words: Sequence[str] = (),
    extra: Sequence[int] = (),
    neutral: TextStats | None = None,
    runner: Runner = INLINE,
) -> list[ConceptCandidate]:
    """Rank the SAE's features for `concept` by specificity x logit score (module docstring).

    `texts` replace the templated concept texts; `words` (e.g. a preset's
    concept_words) add concept tokens for the logit view; `extra` feature
    indices (e.g. a catalogue's matches) join the pool whatever their
    specificity, and are ranked by the same score. `neutral`: this SAE's
    `neutral_bank_stats`, read once (else the bank is run here); `runner`:
    where the forwards run.
    """
    if sm.sae is None:
        raise SteeringError("no SAE is loaded: there are no features to search", "sae")
    if not isinstance(concept, str) or not concept.strip():
        raise SteeringError("the concept must be a non-empty string", "concept")
    if limit <= 0:
        raise SteeringError("limit must be positive", "limit")
    sae = sm.sae
    concept = concept.strip()
    c_stats, n_stats = concept_statistics(sm, concept, texts, neutral, runner)
    scores = specificity_scores(c_stats, n_stats, sae.max_activation.detach().float().cpu())
    spec = scores["specificity"]
    pool = min(pool or max(4 * limit, 32), sae.d_sae)
    top = spec.topk(pool).indices
    top = top[spec[top] > 0].tolist()
    top = list(dict.fromkeys(top + [int(i) for i in extra if 0 <= int(i) < sae.d_sae]))
    out = describe_candidates(sm, concept, top, scores, c_stats, words, runner)
    out.sort(key=lambda c: (-c.score, c.index))
    return out[:limit]
