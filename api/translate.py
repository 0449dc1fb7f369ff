"""The boundary: a ChatCompletionRequest becomes engine objects here, and only here.

    layers = check_steering(request, served, presets)     # cheap checks, before any concept search
    steering = resolve_steering(layers, auto)             # once: what the steered rows apply
    job = to_engine(request, served, steering)            # [steered choice 0..n-1, baseline 0..n-1]

Rules:
- Choice i samples with seed + i; the baseline of choice i (choice n + i)
  shares that seed, so steered and unsteered answers differ only by the clamp.
  A request without a seed gets one random seed, drawn here, once.
- Steering merges in three layers, each over the one before (on the same
  feature index the later wins): the preset's features, then auto-steer's
  for `steering.concept` (an `AutoSteerResult` the caller has computed),
  then the request's own `features`. `positions` and `generated_limit` are a
  pair: the request's if it sets either, else auto-steer's for a concept,
  else the preset's, else `all` with no limit. A preset's system prompt is
  prepended when the messages have none. `inspect` and `monitors` (the
  preset's monitors, then the request's) apply to every choice, baselines
  too, except that a `steer` monitor only flags on a baseline.
- max_tokens: max_completion_tokens, else max_tokens, else
  min(settings.default_max_tokens, context left after the prompt).
- top_p == 0 keeps only the likeliest token: it is decoded greedily.

The result of `resolve_steering` is the one value both the engine job and
the response's `steering` report are made from (`api.render.steering_report`).
Errors are `APIError`s naming the OpenAI (or `steering.`) parameter. Below
this module nobody sees pydantic models.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Callable, Sequence

from api.errors import bad_request, not_found
from api.protocol import ChatCompletionRequest, ChatMessage
from steering.chat_template import ChatFormatError
from steering.concepts import DEFAULT_METHOD, AutoSteerResult
from steering.engine import SamplingParams, SequenceRequest
from steering.errors import SteeringError
from steering.interventions import FeatureClamp, SteeringSpec
from steering.monitors import MAX_MONITORS, Monitor, validate_monitors
from steering.presets import PresetRegistry
from steering.readings import InspectSpec
from steering.sae import SparseAutoencoder

# No tokenizer packs more characters than this into one token on average.
MAX_CHARS_PER_TOKEN = 64


@dataclass(frozen=True)
class ServedModel:
    """What translation needs to know about the loaded model (no tensors, no HTTP)."""

    model_id: str
    aliases: frozenset[str]
    context_length: int
    sae: SparseAutoencoder | None
    render: Callable[[Sequence[dict[str, str]]], tuple[int, ...]]
    default_max_tokens: int = 1024

    def accepts(self, name: str) -> bool:
        return name == self.model_id or name in self.aliases


@dataclass(frozen=True)
class SteeringLayers:
    """A request's `steering` block, checked: the layers `resolve_steering` merges."""

    preset_name: str | None
    preset: SteeringSpec  # the preset's clamps and window (empty without a preset)
    system_prompt: str | None
    own: tuple[FeatureClamp, ...]  # the request's own features
    window: tuple[str, int | None] | None  # the request's (positions, generated_limit), if it set either
    concept: str | None
    strength: float
    inspect: InspectSpec | None = None
    monitors: tuple[Monitor, ...] = ()  # the preset's, then the request's
    method: str = DEFAULT_METHOD  # auto-steer's method for `concept` (`steering.concepts.METHODS`)


@dataclass(frozen=True)
class ResolvedSteering:
    """What a request's steering comes to: the merged spec (empty: nothing to apply), what every choice
    reads (inspection, monitors), and where it came from."""

    spec: SteeringSpec
    preset: str | None = None
    system_prompt: str | None = None
    concept: AutoSteerResult | None = None
    inspect: InspectSpec | None = None
    monitors: tuple[Monitor, ...] = ()

    @property
    def applied(self) -> SteeringSpec | None:
        """The spec the steered rows carry (None when it has no clamps)."""
        return None if self.spec.is_empty else self.spec


@dataclass(frozen=True)
class EngineJob:
    """One chat request as the engine sees it, plus what the response needs."""

    requests: tuple[SequenceRequest, ...]
    n: int
    compare: bool
    prompt_tokens: int
    seed: int
    steering: ResolvedSteering | None = None  # None: the request had no `steering` block

    @property
    def steered(self) -> tuple[bool, ...]:
        """Per choice: steering acts on it (clamps, a preset's system prompt, a `steer` monitor); never on a
        compare baseline, nor on any choice of a request that steers nothing (it may only read)."""
        s = self.steering
        acts = s is not None and (s.applied is not None or bool(s.system_prompt)
                                  or any(m.action == "steer" for m in s.monitors))
        return tuple(acts and i < self.n for i in range(len(self.requests)))


def check_model(name: str, served: ServedModel) -> None:
    if not served.accepts(name):
        raise not_found(
            f"The model `{name}` does not exist. This server serves `{served.model_id}` (GET /v1/models).",
            "model",
            "model_not_found",
        )


def check_steering(request: ChatCompletionRequest, served: ServedModel,
                   presets: PresetRegistry) -> SteeringLayers | None:
    """The request's model and steering block checked (None without one); run before a concept search,
    so that a bad steering block never costs one (the messages and sampling are checked by `to_engine`)."""
    check_model(request.model, served)
    opts = request.steering
    if opts is None:
        return None
    for name in ("strength", "method"):
        if opts.concept is None and name in opts.model_fields_set:
            raise bad_request(f"steering.{name} only applies with steering.concept.", f"steering.{name}")
    preset, system_prompt, preset_monitors = SteeringSpec(), None, ()
    if opts.preset is not None:
        entry = presets.get(opts.preset)
        if entry is None:
            names = ", ".join(e.preset.name for e in presets.all()) or "none"
            raise not_found(f"Unknown preset {opts.preset!r}; available: {names} (GET /v1/presets).",
                            "steering.preset", "preset_not_found")
        if not entry.available:
            raise bad_request(f"Preset {opts.preset!r} cannot be used here: {entry.reason}.",
                              "steering.preset", "preset_unavailable")
        preset, system_prompt, preset_monitors = entry.preset.spec, entry.preset.system_prompt, entry.preset.monitors
    window_set = bool({"positions", "generated_limit"} & opts.model_fields_set)
    window = ((opts.positions or "all"), opts.generated_limit) if window_set else None
    own = tuple(FeatureClamp(f.index, f.value, f.mode, f.unit) for f in opts.features)
    mine = SteeringSpec(own, *(window or (preset.positions, preset.generated_limit)))
    try:
        mine.validate_window()  # even without clamps: a contradictory window is an error, not ignored
        if own or not preset.is_empty or opts.concept is not None:
            if served.sae is None:
                raise bad_request("This server runs without an SAE; steering is unavailable.", "steering")
            mine.validate(served.sae, "features")
    except SteeringError as e:
        raise bad_request(str(e), f"steering.{e.param}") from None
    inspect = None
    if opts.inspect is not None:
        i = opts.inspect
        inspect = InspectSpec(i.top_k, tuple(i.features), i.positions)
    monitors = tuple(Monitor(m.index, m.threshold, m.unit, m.action, m.name,
                             tuple(FeatureClamp(c.index, c.value, c.mode, c.unit) for c in m.clamps), m.duration)
                     for m in opts.monitors)
    if inspect is not None or monitors or preset_monitors:
        if served.sae is None:
            raise bad_request("This server runs without an SAE; there are no features to read.", "steering")
        try:
            if inspect is not None:
                inspect.validate(served.sae, "steering.inspect")
            validate_monitors(monitors, served.sae, "steering.monitors")
            if len(preset_monitors) + len(monitors) > MAX_MONITORS:
                raise SteeringError(f"the preset's and the request's monitors come to more than {MAX_MONITORS}",
                                    "steering.monitors")
        except SteeringError as e:
            raise bad_request(str(e), e.param) from None
    return SteeringLayers(opts.preset, preset, system_prompt, own, window, opts.concept, opts.strength, inspect,
                          tuple(preset_monitors) + monitors, opts.method)


def resolve_steering(layers: SteeringLayers | None, auto: AutoSteerResult | None = None) -> ResolvedSteering | None:
    """Merge the layers (module docstring) once; `auto` is auto-steer's result for the layers' concept."""
    if layers is None:
        return None
    if layers.concept is not None and auto is None:
        raise ValueError("resolve_steering needs auto-steer's result for steering.concept")
    concept = auto.spec if auto is not None and layers.concept is not None else SteeringSpec()
    under = concept if layers.concept is not None else layers.preset
    positions, limit = layers.window or (under.positions, under.generated_limit)
    spec = SteeringSpec(layers.own, positions, limit).merged_over(concept.merged_over(layers.preset))
    return ResolvedSteering(spec, layers.preset_name, layers.system_prompt,
                            auto if layers.concept is not None else None, layers.inspect, layers.monitors)


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Chat messages as the library takes them ("developer", OpenAI's newer name for system, read as system)."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def _messages(request: ChatCompletionRequest, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = message_dicts(request.messages)
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def _max_tokens(request: ChatCompletionRequest, prompt_tokens: int, served: ServedModel) -> int:
    left = served.context_length - prompt_tokens
    if left <= 0:
        raise bad_request(
            f"This model's maximum context length is {served.context_length} tokens; the messages take "
            f"{prompt_tokens}. Shorten the messages.",
            "messages",
            "context_length_exceeded",
        )
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    asked = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if asked is None:
        return min(served.default_max_tokens, left)
    if asked > left:
        raise bad_request(
            f"This model's maximum context length is {served.context_length} tokens. You asked for "
            f"{prompt_tokens + asked} tokens ({prompt_tokens} in the messages, {asked} in the completion). "
            f"Lower {param} to at most {left}.",
            param,
            "context_length_exceeded",
        )
    return asked


# A request's budget: generated tokens over all its rows (n choices, twice with compare), and logprob entries
# (tokens x (1 + top_logprobs)). n 8 with compare at 2,048 tokens fits; the same with top_logprobs 20 does not.
MAX_REQUEST_TOKENS = 32_768
MAX_LOGPROB_ENTRIES = 131_072


def _check_budget(request: ChatCompletionRequest, rows: int, max_tokens: int) -> None:
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    if rows * max_tokens > MAX_REQUEST_TOKENS:
        raise bad_request(
            f"This request could generate {rows} x {max_tokens} = {rows * max_tokens} tokens ({rows} rows: n, "
            f"twice with compare); the limit is {MAX_REQUEST_TOKENS}. Lower {param} to at most "
            f"{MAX_REQUEST_TOKENS // rows} or ask for fewer choices.", param, "request_too_large")
    if request.logprobs:
        entries = rows * max_tokens * (1 + (request.top_logprobs or 0))
        if entries > MAX_LOGPROB_ENTRIES:
            raise bad_request(
                f"This request could return {entries} log-probabilities (rows x tokens x (1 + top_logprobs)); the "
                f"limit is {MAX_LOGPROB_ENTRIES}. Lower top_logprobs, {param} or n.", "top_logprobs",
                "request_too_large")


def to_engine(request: ChatCompletionRequest, served: ServedModel, steering: ResolvedSteering | None) -> EngineJob:
    """Translate a request whose steering is resolved; raises APIError (4xx) for anything the engine would refuse."""
    if request.top_logprobs and not request.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true.", "top_logprobs")
    chars = sum(len(m.text()) for m in request.messages)
    if chars > MAX_CHARS_PER_TOKEN * served.context_length:  # too long to be worth tokenising on the event loop
        raise bad_request(f"The messages ({chars} characters) cannot fit this model's context of "
                          f"{served.context_length} tokens. Shorten the messages.", "messages", "context_length_exceeded")
    try:
        prompt = served.render(_messages(request, steering.system_prompt if steering else None))
    except ChatFormatError as e:
        raise bad_request(str(e), e.param) from None
    if not prompt:
        raise bad_request("The messages render to an empty prompt.", "messages")
    max_tokens = _max_tokens(request, len(prompt), served)
    compare = bool(request.steering and request.steering.compare)
    _check_budget(request, request.n * (2 if compare else 1), max_tokens)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    greedy = request.top_p == 0.0
    spec = steering.applied if steering is not None else None
    inspect = steering.inspect if steering is not None else None
    monitors = steering.monitors if steering is not None else ()

    def params(i: int) -> SamplingParams:
        p = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else request.temperature,
            top_p=1.0 if greedy else request.top_p,
            seed=seed + i,
            stop=request.stop_list(),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            ignore_eos=request.ignore_eos,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            repetition_penalty=request.repetition_penalty,
            logit_bias=tuple((int(t), float(b)) for t, b in (request.logit_bias or {}).items()),
            min_tokens=request.min_tokens,
            top_k=max(request.top_k, 0),
            min_p=request.min_p,
        )
        try:
            return p.validate()
        except SteeringError as e:  # the protocol's bounds should have caught it
            raise bad_request(str(e), e.param) from None

    # Every choice reads alike: the baselines of a compare are inspected and monitored as the steered ones are,
    # but never steered: a `steer` monitor only flags on a baseline.
    plain_monitors = tuple(dataclasses.replace(m, action="flag", clamps=(), duration=None) if m.action == "steer"
                           else m for m in monitors)
    steered = [SequenceRequest(prompt, params(i), spec, inspect, monitors) for i in range(request.n)]
    baseline = ([SequenceRequest(prompt, params(i), None, inspect, plain_monitors) for i in range(request.n)]
                if compare else [])
    return EngineJob(tuple(steered + baseline), request.n, compare, len(prompt), seed, steering)
