"""The neutral prompts a steering evaluation answers.

A text file, one prompt a line (blank lines and '#' lines skipped); the
project's own set is steering/data/neutral_prompts.txt (no animals, places,
food, emotions, pirates, sports or code).
"""

from __future__ import annotations

from pathlib import Path

NEUTRAL_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "neutral_prompts.txt"


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a text file (one a line; blank and '#' lines skipped), default the shipped neutral set."""
    path = Path(path) if path is not None else NEUTRAL_PROMPTS
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts
