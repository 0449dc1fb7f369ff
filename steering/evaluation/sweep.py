"""Strength calibration: evaluate a spec at several multipliers and pick the knee.

Each multiplier m scales every clamp's value (`SteeringSpec.scaled`): a preset at 2x
max swept with m = 1.5 runs at 3x max. All multipliers share one baseline
(`evaluate_specs`), so the sweep costs (len(multipliers) + 1) answers a prompt.

The knee (`pick_knee`), with bounds from the project's targets (concept rate
>= 0.8, repeated 4-grams <= 0.2, delta loss <= 1.0 nat):

1. "target": the smallest multiplier whose answers are fluent (repeated
   4-grams and delta loss within bounds) and reach the concept target while
   the baseline stays under its bound (baseline concept rate <= 0.05: else
   the concept words or features fire without steering and prove nothing);
2. else "best fluent": among fluent multipliers, the highest concept rate
   (the smaller multiplier on a tie);
3. else "least broken": the multiplier with the smallest fluency excess,
   (rep - max_rep)+ / max_rep + (dloss - max_dloss)+ / max_dloss, the higher
   concept rate on a tie.

A missing figure (no concept words or features: concept rate None; no
answer tokens: delta loss None) counts as 0 concept rate and as in bounds.

Command: `python -m steering sweep --preset NAME | --feature ... --multipliers 0.5,1,2 [--json] [--plot out.png]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from steering.errors import SteeringError
from steering.evaluation.results import EvalResult
from steering.evaluation.run import evaluate_specs
from steering.evaluation.targets import Bounds, Concept, EvalSettings
from steering.interventions import SteeringSpec

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class SweepPoint:
    multiplier: float
    concept_rate: float | None
    baseline_concept_rate: float | None
    repeated_4gram: float
    delta_loss: float | None


@dataclass(frozen=True)
class Knee:
    multiplier: float
    rule: str  # "target", "best fluent" or "least broken"
    reason: str


def _excess(p: SweepPoint, b: Bounds) -> float:
    rep = max(0.0, p.repeated_4gram - b.repeated_4gram) / b.repeated_4gram
    dl = max(0.0, (p.delta_loss or 0.0) - b.delta_loss) / b.delta_loss
    return rep + dl


def pick_knee(points: Sequence[SweepPoint], bounds: Bounds = Bounds()) -> Knee:
    """The knee of a sweep by the module docstring's rule."""
    if not points:
        raise ValueError("a sweep needs at least one point")
    pts = sorted(points, key=lambda p: p.multiplier)
    fluent = [p for p in pts if _excess(p, bounds) == 0.0]
    def judged(p: SweepPoint) -> bool:
        return (p.baseline_concept_rate or 0.0) <= bounds.baseline_concept_rate

    for p in fluent:
        if (p.concept_rate or 0.0) >= bounds.concept_rate and judged(p):
            return Knee(p.multiplier, "target",
                        f"smallest multiplier with concept rate {p.concept_rate:.2f} >= {bounds.concept_rate} "
                        f"(baseline {p.baseline_concept_rate or 0.0:.2f}) and fluency within bounds")
    if fluent:
        best = max(fluent, key=lambda p: (p.concept_rate or 0.0, -p.multiplier))
        why = (f"no fluent multiplier reaches concept rate {bounds.concept_rate}" if judged(best) else
               f"the baseline's concept rate {best.baseline_concept_rate:.2f} exceeds "
               f"{bounds.baseline_concept_rate}: the concept words or features fire without steering")
        return Knee(best.multiplier, "best fluent",
                    f"{why}; the best fluent multiplier reaches {best.concept_rate or 0.0:.2f}")
    best = min(pts, key=lambda p: (_excess(p, bounds), -(p.concept_rate or 0.0), p.multiplier))
    return Knee(best.multiplier, "least broken",
                f"no multiplier keeps fluency within bounds; smallest excess {_excess(best, bounds):.2f}")


@dataclass
class SweepResult:
    label: str
    points: list[SweepPoint]
    knee: Knee
    bounds: Bounds
    results: list[EvalResult]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "points": [asdict(p) for p in self.points], "knee": asdict(self.knee),
                "bounds": asdict(self.bounds), "results": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        def pct(v: float | None) -> str:
            return "  n/a" if v is None else f"{100 * v:4.0f}%"

        lines = [f"{'mult':>6} {'concept':>8} {'baseline':>9} {'rep4':>6} {'dloss':>7}"]
        for p in self.points:
            dl = "    n/a" if p.delta_loss is None else f"{p.delta_loss:+7.3f}"
            mark = "  <- knee" if p.multiplier == self.knee.multiplier else ""
            lines.append(f"{p.multiplier:6g} {pct(p.concept_rate):>8} {pct(p.baseline_concept_rate):>9} "
                         f"{pct(p.repeated_4gram):>6} {dl}{mark}")
        lines.append(f"knee: x{self.knee.multiplier:g} ({self.knee.rule}: {self.knee.reason})")
        return "\n".join(lines)


def sweep(sm: "SteeredModel", spec: SteeringSpec, concept: Concept, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
          prompts: Sequence[str] | None = None, settings: EvalSettings = EvalSettings(),
          bounds: Bounds = Bounds(), label: str = "sweep") -> SweepResult:
    """Evaluate spec x m for each multiplier m (one shared baseline) and pick the knee."""
    if not multipliers:
        raise SteeringError("give at least one multiplier", "multipliers")
    specs = [spec.scaled(m) for m in multipliers]
    results = evaluate_specs(sm, specs, concept, prompts, settings, [f"{label} x{m:g}" for m in multipliers])
    points = [SweepPoint(m, r.concept_rate, r.baseline_concept_rate, r.repeated_4gram, r.delta_loss)
              for m, r in zip(multipliers, results)]
    return SweepResult(label, points, pick_knee(points, bounds), bounds, results)


def plot_sweep(result: SweepResult, path: str) -> None:
    """Concept rate, baseline rate and repetition (left axis) and delta loss (right) per multiplier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.multiplier for p in result.points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(xs, [p.concept_rate or 0.0 for p in result.points], "o-", label="concept rate")
    ax.plot(xs, [p.baseline_concept_rate or 0.0 for p in result.points], "o:", label="baseline concept rate")
    ax.plot(xs, [p.repeated_4gram for p in result.points], "s-", label="repeated 4-grams")
    ax.axhline(result.bounds.concept_rate, color="grey", lw=0.5, ls="--")
    ax.axhline(result.bounds.baseline_concept_rate, color="grey", lw=0.5, ls=":")
    ax.axhline(result.bounds.repeated_4gram, color="grey", lw=0.5, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("multiplier of the preset's values")
    ax.set_ylabel("share of answers / of 4-grams")
    right = ax.twinx()
    right.plot(xs, [p.delta_loss if p.delta_loss is not None else float("nan") for p in result.points],
               "^--", color="tab:red", label="delta loss (nats)")
    right.axhline(result.bounds.delta_loss, color="tab:red", lw=0.5, ls="--")
    right.set_ylabel("delta next-token loss (nats)", color="tab:red")
    ax.axvline(result.knee.multiplier, color="black", lw=1.0, alpha=0.4)
    lines = ax.get_legend_handles_labels()
    rlines = right.get_legend_handles_labels()
    ax.legend(lines[0] + rlines[0], lines[1] + rlines[1], fontsize=8, loc="upper left")
    ax.set_title(f"{result.label}: knee x{result.knee.multiplier:g} ({result.knee.rule})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
