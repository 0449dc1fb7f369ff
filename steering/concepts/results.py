"""What auto-steer returns: the features it used and why (`steering.concepts.autosteer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steering.concepts.probe import ProbeResult
from steering.concepts.search import ConceptCandidate
from steering.interventions import SteeringSpec


@dataclass(frozen=True)
class UsedFeature:
    index: int
    value: float
    mode: str
    unit: str
    score: float
    specificity: float
    logit_rank: int
    promoted_tokens: tuple[str, ...]


@dataclass(frozen=True)
class AutoSteerResult:
    concept: str
    strength: float
    spec: SteeringSpec
    features: tuple[UsedFeature, ...]
    rationale: str
    candidates: tuple[ConceptCandidate, ...] = field(default=(), repr=False)
    probes: tuple[ProbeResult, ...] = field(default=(), repr=False)
    method: str = "feature"  # `direction` or `feature` (`autosteer.METHODS`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; `features` can be pasted into a preset's `features`."""
        return {
            "concept": self.concept,
            "strength": self.strength,
            "method": self.method,
            "positions": self.spec.positions,
            "generated_limit": self.spec.generated_limit,
            "features": [
                {"index": f.index, "value": f.value, "mode": f.mode, "unit": f.unit, "score": f.score,
                 "specificity": f.specificity, "logit_rank": f.logit_rank, "promoted_tokens": list(f.promoted_tokens)}
                for f in self.features
            ],
            "rationale": self.rationale,
            "probe": [p.to_dict() for p in self.probes],
        }
