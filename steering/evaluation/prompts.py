"""The prompts a steering evaluation answers, in named sets with a selection half and a check half.

A text file holds one prompt a line (blank lines and '#' lines skipped).
Settings (a preset's strengths, auto-steer's calibration) are chosen on a
set's `select` half and reported on its `check` half, which nothing was
tuned on:

    neutral   data/neutral_prompts.txt (select, 46) and data/neutral_check.txt (check, 46):
              no animals, places, food, emotions, pirates, sports or code, so a preset
              for any of those concepts starts from a low baseline rate
    NAME      data/topic_prompts/NAME_select.txt and NAME_check.txt: prompts about one
              concept (a suppression preset's, e.g. `dogs`; `self`, self-description);
              else data/monitor_prompts/NAME_select.txt and NAME_eval.txt (the monitors'
              sets, e.g. `food`, `code`, whose check half is named eval)
"""

from __future__ import annotations

from pathlib import Path

from steering.errors import SteeringError

DATA = Path(__file__).resolve().parent.parent / "data"
NEUTRAL_PROMPTS = DATA / "neutral_prompts.txt"
NEUTRAL_CHECK = DATA / "neutral_check.txt"
TOPIC_PROMPTS = DATA / "topic_prompts"
MONITOR_PROMPTS = DATA / "monitor_prompts"
HALVES = ("select", "check")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def prompt_set_path(name: str = "neutral", half: str = "check") -> Path:
    """The file of one half of a named prompt set (see the module docstring)."""
    if half not in HALVES:
        raise SteeringError(f"prompt half must be one of {', '.join(HALVES)}, got {half!r}", "half")
    if name == "neutral":
        return NEUTRAL_PROMPTS if half == "select" else NEUTRAL_CHECK
    if name and set(name) <= NAME_CHARS:
        for path in (TOPIC_PROMPTS / f"{name}_{half}.txt",
                     MONITOR_PROMPTS / f"{name}_{'eval' if half == 'check' else half}.txt"):
            if path.is_file():
                return path
    known = ["neutral"] + sorted({p.stem.rsplit("_", 1)[0] for d in (TOPIC_PROMPTS, MONITOR_PROMPTS)
                                  for p in d.glob("*_select.txt")})
    raise SteeringError(f"no prompt set {name!r} (known: {', '.join(known)})", "prompt_set")


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a text file (one a line; blank and '#' lines skipped), default the neutral selection half."""
    path = Path(path) if path is not None else NEUTRAL_PROMPTS
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts
