"""Monitors: watch a feature while a row generates, and flag or stop when it crosses a threshold.

A monitor reads feature i at every generated token t (at the token's own
position, at the SAE's hook site, before any clamp edits it), from the
feature's own encoder column, as clamps do:

    v_t = f_i(x_t)                 threshold in `raw` units, or th x max_activation_i with `max`
    crossed at t  when  v_t >= threshold  and  (t == 0  or  v_{t-1} < threshold)

Each crossing is a `MonitorEvent` (monitor name, feature, token index among
the generated tokens, position, value). Actions: `flag` only reports it;
`stop` ends the row at that token: the crossing token is not released, and
the row finishes with `content_filter` (other rows never notice); `steer`
(conditional steering, Goodfire's set_when, IBM's CAST) applies the
monitor's `clamps` to that row from the next position on, p + 1 where p is
the crossing token's position, for `duration` positions (None: to the end),
over the row's own clamps (on the same feature the monitor's win). Rows that
never cross are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steering.errors import SteeringError
from steering.interventions import CLAMP_UNITS, MAX_GENERATED_LIMIT, NO_END, FeatureClamp, SteeringSpec, WindowedClamps
from steering.sae import SparseAutoencoder

MONITOR_ACTIONS: dict[str, str] = {
    "flag": "report the crossing and go on",
    "stop": "end the choice before the crossing token (finish_reason content_filter)",
    "steer": "apply the monitor's clamps from the next token on (for `duration` tokens; null: to the end)",
}
MAX_MONITORS = 16
MAX_MONITOR_NAME = 64


@dataclass(frozen=True)
class Monitor:
    """Watch feature `index` against `threshold` (in `unit`); see the module docstring."""

    index: int
    threshold: float
    unit: str = "max"
    action: str = "flag"
    name: str | None = None
    clamps: tuple[FeatureClamp, ...] = ()  # with action `steer`
    duration: int | None = None  # positions the clamps last once triggered (None: to the end)

    @property
    def label(self) -> str:
        return self.name or f"feature {self.index}"

    def validate(self, sae: SparseAutoencoder, param: str = "monitors[0]") -> "Monitor":
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < sae.d_sae:
            raise SteeringError(f"feature {self.index!r} does not exist: this SAE has {sae.d_sae} features",
                                f"{param}.index")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold) or self.threshold <= 0:
            raise SteeringError("threshold must be a finite number > 0 (a feature at 0 is not active)",
                                f"{param}.threshold")
        if not isinstance(self.unit, str) or self.unit not in CLAMP_UNITS:
            raise SteeringError(f"unknown unit {self.unit!r}; valid: {', '.join(CLAMP_UNITS)}", f"{param}.unit")
        if self.unit == "max" and not math.isfinite(float(sae.max_activation[self.index])):
            raise SteeringError(f"feature {self.index} has no known max activation; use unit 'raw'", f"{param}.unit")
        if not isinstance(self.action, str) or self.action not in MONITOR_ACTIONS:
            raise SteeringError(f"unknown action {self.action!r}; valid: {', '.join(MONITOR_ACTIONS)}",
                                f"{param}.action")
        if self.name is not None and (not isinstance(self.name, str) or len(self.name) > MAX_MONITOR_NAME):
            raise SteeringError(f"name must be a string of at most {MAX_MONITOR_NAME} characters", f"{param}.name")
        if self.action == "steer":
            if not self.clamps:
                raise SteeringError("a `steer` monitor needs clamps to apply", f"{param}.clamps")
            SteeringSpec(tuple(self.clamps)).validate(sae, f"{param}.clamps")
        elif self.clamps or self.duration is not None:
            raise SteeringError("clamps and duration go with action `steer`", f"{param}.clamps")
        d = self.duration
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 < d <= MAX_GENERATED_LIMIT):
            raise SteeringError(f"duration must be an integer in [1, {MAX_GENERATED_LIMIT}] or null", f"{param}.duration")
        return self

    def window(self, position: int) -> WindowedClamps:
        """The clamps a `steer` crossing at `position` adds: from position + 1, for `duration` positions."""
        start = position + 1
        return WindowedClamps(tuple(self.clamps), start, NO_END if self.duration is None else start + self.duration)

    def raw_threshold(self, sae: SparseAutoencoder) -> float:
        if self.unit == "max":
            return float(self.threshold) * float(sae.max_activation[self.index])
        return float(self.threshold)


def validate_monitors(monitors: tuple[Monitor, ...], sae: SparseAutoencoder, param: str = "monitors") -> None:
    if len(monitors) > MAX_MONITORS:
        raise SteeringError(f"at most {MAX_MONITORS} monitors", param)
    for k, m in enumerate(monitors):
        m.validate(sae, f"{param}[{k}]")


@dataclass(frozen=True)
class MonitorEvent:
    """A monitor's threshold crossed at generated token `token_index` (0-based) at `position`."""

    name: str
    index: int
    token_index: int
    position: int
    value: float
    threshold: float
    action: str
