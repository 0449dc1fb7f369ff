"""Engine events -> OpenAI's response objects (chat.completion and chat.completion.chunk).

The engine yields per decoding step a list of `TokenEvent`s (whole-character
text, optional log-probabilities, a finish reason on a row's last event). A
row index is a choice index: 0..n-1 steered, n..2n-1 compare baselines.

Log-probabilities follow OpenAI: per generated token its text, log p, its
UTF-8 bytes and the `top_logprobs` alternatives. The end-of-sequence token is
not reported (it has no text), as OpenAI does not report it either.

The steering report (`steering_report`) renders the request's resolved
steering (`api.translate.ResolvedSteering`); nothing here decides it.

Nothing here touches the network or the model.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field

from api.features import FeatureService
from api.protocol import (
    AppliedFeature,
    AppliedSteering,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ConceptProbe,
    ConceptSteering,
    DeltaMessage,
    FeatureActivation,
    MonitorEventOut,
    MonitorOptions,
    ResponseMessage,
    TokenFeatures,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from api.protocol.chat import FINISH_REASONS
from api.translate import ResolvedSteering
from steering.engine import TokenEvent
from steering.readings import FeatureValue, TokenReading
from steering.tokens import TokenTexts


def token_logprob(texts: TokenTexts, event: TokenEvent) -> TokenLogprob | None:
    """OpenAI's log-probability entry for the event's token (None for an event without one)."""
    if event.token_id is None or event.logprob is None:
        return None
    text, raw = texts.lookup(event.token_id)
    top = []
    for tid, lp in event.top_logprobs:
        t, b = texts.lookup(tid)
        top.append(TopLogprob(token=t, logprob=lp, bytes=list(b)))
    return TokenLogprob(token=text, logprob=event.logprob, bytes=list(raw), top_logprobs=top)


def readout(meta: "ResponseMeta", texts: TokenTexts, e: TokenEvent) -> tuple[list[TokenFeatures] | None,
                                                                          list[MonitorEventOut] | None]:
    """The event's readings and monitor crossings in their wire form (None where the request asked for none)."""
    fs = meta.features
    readings = [token_features(r, texts, fs) for r in e.readings] if meta.inspect else None
    events = [MonitorEventOut(name=m.name, index=m.index, label=fs.label(m.index) if fs is not None else None,
                              token_index=m.token_index, position=m.position, value=m.value, threshold=m.threshold,
                              action=m.action) for m in e.monitor_events] if meta.monitors else None
    return readings, events


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass
class ResponseMeta:
    """Fields shared by every object of one response."""

    model: str
    steered: tuple[bool, ...]
    prompt_tokens: int
    logprobs: bool
    system_fingerprint: str | None = None
    steering: AppliedSteering | None = None  # the extension's report: on the completion, or the first chunk
    inspect: bool = False  # the choices report `inspection` (steering.inspect)
    monitors: bool = False  # the choices report `monitor_events` (steering.monitors, a preset's)
    features: FeatureService | None = None  # labels for readings and events
    id: str = field(default_factory=new_id)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Collector:
    """Accumulates events into a non-streamed chat.completion."""

    meta: ResponseMeta
    texts: TokenTexts

    def __post_init__(self) -> None:
        n = len(self.meta.steered)
        self.content = [""] * n
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.tokens = [0] * n
        self.inspection: list[list[TokenFeatures]] = [[] for _ in range(n)]
        self.events: list[list[MonitorEventOut]] = [[] for _ in range(n)]

    def add(self, events: list[TokenEvent]) -> None:
        for e in events:
            self.content[e.index] += e.text
            self.tokens[e.index] = max(self.tokens[e.index], e.completion_tokens)
            if self.meta.logprobs:
                lp = token_logprob(self.texts, e)
                if lp is not None:
                    self.logprobs[e.index].append(lp)
            readings, events = readout(self.meta, self.texts, e)
            self.inspection[e.index] += readings or []
            self.events[e.index] += events or []
            if e.finish_reason in FINISH_REASONS:
                self.finish[e.index] = e.finish_reason

    def result(self) -> ChatCompletion:
        m = self.meta
        choices = [
            Choice(
                index=i,
                message=ResponseMessage(content=self.content[i]),
                logprobs=ChoiceLogprobs(content=self.logprobs[i]) if m.logprobs else None,
                finish_reason=self.finish[i],  # type: ignore[arg-type]
                steered=m.steered[i],
                inspection=self.inspection[i] if m.inspect else None,
                monitor_events=self.events[i] if m.monitors else None,
            )
            for i in range(len(m.steered))
        ]
        return ChatCompletion(
            id=m.id, created=m.created, model=m.model, choices=choices,
            system_fingerprint=m.system_fingerprint, usage=usage(m.prompt_tokens, self.tokens), steering=m.steering,
        )


def usage(prompt_tokens: int, completion: list[int]) -> Usage:
    """Like OpenAI with n > 1: the prompt counted once, every choice's completion tokens summed."""
    total = sum(completion)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=total, total_tokens=prompt_tokens + total)


@dataclass
class Chunker:
    """Turns events into chat.completion.chunk objects (as JSON text for SSE)."""

    meta: ResponseMeta
    texts: TokenTexts
    include_usage: bool

    def __post_init__(self) -> None:
        self.tokens = [0] * len(self.meta.steered)

    def _chunk(self, choices: list[ChunkChoice], usage_value: Usage | None = None,
               steering: AppliedSteering | None = None) -> str:
        m = self.meta
        chunk = ChatCompletionChunk(
            id=m.id, created=m.created, model=m.model, system_fingerprint=m.system_fingerprint, choices=choices
        )
        data = chunk.model_dump(mode="json", exclude={"usage", "steering"})
        # Deltas carry only what changed, as OpenAI's do ({"content": "..."}, {} at the end).
        for c, d in zip(data["choices"], choices):
            c["delta"] = d.delta.model_dump(mode="json", exclude_unset=True)
            for key in ("inspection", "monitor_events"):  # extension fields: only on chunks that carry them
                if c[key] is None:
                    del c[key]
        if self.include_usage:  # null on every chunk but the last
            data["usage"] = usage_value.model_dump(mode="json") if usage_value is not None else None
        if steering is not None:  # extension: the first chunk only
            data["steering"] = steering.model_dump(mode="json")
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def first(self) -> list[str]:
        """One chunk per choice with the role (OpenAI sends role and empty content first); the first
        also carries the steering report (extension)."""
        return [
            self._chunk([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""), steered=s)],
                        steering=self.meta.steering if i == 0 else None)
            for i, s in enumerate(self.meta.steered)
        ]

    def step(self, events: list[TokenEvent]) -> list[str]:
        """One chunk per event that carries text or a finish reason."""
        out = []
        for e in events:
            self.tokens[e.index] = max(self.tokens[e.index], e.completion_tokens)
            finish = e.finish_reason if e.finish_reason in FINISH_REASONS else None
            lp = token_logprob(self.texts, e) if self.meta.logprobs else None
            readings, events = readout(self.meta, self.texts, e)
            if not e.text and finish is None and lp is None and not readings and not events:
                continue
            logprobs = ChoiceLogprobs(content=[lp] if lp is not None else []) if self.meta.logprobs else None
            delta = DeltaMessage(content=e.text) if e.text or lp is not None else DeltaMessage()
            out.append(self._chunk([ChunkChoice(index=e.index, delta=delta, logprobs=logprobs,
                                                finish_reason=finish, steered=self.meta.steered[e.index],
                                                inspection=readings or None, monitor_events=events or None)]))
        return out

    def last(self) -> list[str]:
        """The usage chunk (choices empty) when stream_options.include_usage is set."""
        if not self.include_usage:
            return []
        return [self._chunk([], usage(self.meta.prompt_tokens, self.tokens))]


def steering_report(steering: ResolvedSteering | None, features: FeatureService | None) -> AppliedSteering | None:
    """The response's `steering` extension, rendered from the resolved steering (None without a `steering` block):
    the merged clamps as `{index, value, mode, unit}`, `positions` and `generated_limit` (fields a preset file
    and a request's `steering` both take), the preset's name, and auto-steer's choice with its ranked
    candidates (`match: concept`, as in /v1/features/search) and each candidate's probe, and where the
    `max` unit's scale came from."""
    if steering is None:
        return None
    spec = steering.spec
    clamps = [AppliedFeature(index=c.index, value=float(c.value), mode=c.mode, unit=c.unit) for c in spec.features]
    concept = None
    auto = steering.concept
    if auto is not None:
        candidates = [features.concept_match(c) for c in auto.candidates] if features is not None else []
        concept = ConceptSteering(concept=auto.concept, strength=auto.strength, method=auto.method,
                                  features=[f.index for f in auto.features], rationale=auto.rationale,
                                  candidates=candidates, probe=[ConceptProbe(**p.to_dict()) for p in auto.probes])
    monitors = [MonitorOptions(index=m.index, threshold=m.threshold, unit=m.unit, action=m.action, name=m.name,
                               clamps=[dataclasses.asdict(c) for c in m.clamps], duration=m.duration)
                for m in steering.monitors]
    return AppliedSteering(features=clamps, positions=spec.positions, generated_limit=spec.generated_limit,
                           monitors=monitors, preset=steering.preset, concept=concept,
                           max_unit=features.sm.max_unit_source if features is not None else "sae")


def feature_activation(value: FeatureValue, features: FeatureService | None) -> FeatureActivation:
    return FeatureActivation(index=value.index, activation=value.activation, relative_activation=value.relative,
                             label=features.label(value.index) if features is not None else None)


def token_features(reading: TokenReading, texts: TokenTexts, features: FeatureService | None) -> TokenFeatures:
    """One token's readout in its wire form (the token's text, its features with their labels)."""
    return TokenFeatures(position=reading.position, token=texts.lookup(reading.token_id)[0], token_id=reading.token_id,
                         top=[feature_activation(v, features) for v in reading.top],
                         features=[feature_activation(v, features) for v in reading.named])
