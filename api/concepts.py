"""Auto-steer in the server: `steering.concept` becomes features, and the response says which.

    auto = await resolve_concept(state, body)       # None without steering.concept
    job = to_engine(body, state.served, state.presets, auto)
    report = applied_steering(body, job.spec, auto, state.features)

`resolve_concept` runs `steering.concepts.autosteer.auto_steer` (concept search plus
the catalogue's label matches, a short generation probe of each candidate,
then value = DEFAULT_MULTIPLIER x strength in `max` units for the first
DEFAULT_WINDOW generated tokens). The library caches a concept's search and
probe per SAE; a cached concept runs no forward pass and is resolved at
once. An uncached one runs forwards and a short generation on the shared
model, so it takes the model gate exclusively (`ServerState.run_alone`,
`api.gate`) like a search by text: it waits for running generations (503 `model_busy` after
the wait) and holds new ones back while it runs. The request's cheap checks
(model, preset, features) run first, so a bad request never costs a search.

`applied_steering` is the response's `steering` extension: the merged
clamps as `{index, value, mode, unit}`, `positions` and `generated_limit` (fields a preset file
and a request's `steering` both take), the preset's name, and auto-steer's
choice with its ranked candidates (`match: concept`, as in
/v1/features/search) and each candidate's probe.

Nothing here touches tensors; errors are `APIError`s naming the parameter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.errors import bad_request
from api.features import FeatureService
from api.protocol import AppliedFeature, AppliedSteering, ChatCompletionRequest, ConceptProbe, ConceptSteering
from api.translate import check_steering
from steering.concepts import autosteer
from steering.concepts.autosteer import AutoSteerResult
from steering.interventions import SteeringError, SteeringSpec


async def resolve_concept(state: Any, body: ChatCompletionRequest) -> AutoSteerResult | None:
    """Auto-steer's result for the request's concept (None without one); raises APIError."""
    opts = body.steering
    if opts is None or opts.concept is None:
        return None
    check_steering(body, state.served, state.presets)
    # The catalogue's label matches join the probed candidates (the search alone misses features
    # whose decoder promotes no concept token, such as the shipped `mountains` preset's).
    extra: list[int] = []
    if state.features is not None and opts.concept.strip():
        matches = await asyncio.to_thread(state.features.label_matches, opts.concept, autosteer.LABEL_CANDIDATES)
        extra = [m.index for m in matches]
    try:
        if autosteer.is_cached(state.sm, opts.concept, extra):
            return autosteer.auto_steer(state.sm, opts.concept, opts.strength, extra=extra)
        return await state.run_alone(lambda: autosteer.auto_steer(state.sm, opts.concept, opts.strength, extra=extra))
    except SteeringError as e:  # params are already steering.concept / steering.strength / steering
        raise bad_request(str(e), e.param) from None


def applied_steering(
    body: ChatCompletionRequest,
    spec: SteeringSpec | None,
    auto: AutoSteerResult | None,
    features: FeatureService | None,
) -> AppliedSteering | None:
    """The steering a response used; None when the request had no `steering` block."""
    opts = body.steering
    if opts is None:
        return None
    spec = spec if spec is not None else SteeringSpec(positions=opts.positions or "all",
                                                      generated_limit=opts.generated_limit)
    clamps = [AppliedFeature(index=c.index, value=float(c.value), mode=c.mode, unit=c.unit) for c in spec.features]
    concept = None
    if auto is not None and opts.concept is not None:
        candidates = [features.concept_match(c) for c in auto.candidates] if features is not None else []
        concept = ConceptSteering(concept=auto.concept, strength=auto.strength,
                                  features=[f.index for f in auto.features], rationale=auto.rationale,
                                  candidates=candidates, probe=[ConceptProbe(**p.to_dict()) for p in auto.probes])
    return AppliedSteering(features=clamps, positions=spec.positions, generated_limit=spec.generated_limit,
                           preset=opts.preset, concept=concept)
