"""What every resource's schemas share: model configs, the clamp vocabulary's field types, errors.

The clamp vocabulary (modes, units, positions) and its bounds are the
library's (`steering.interventions`), as are the sampling bounds
(`steering.engine`) and auto-steer's (`steering.concepts`): the schemas are
built from them, so a request, a preset file and a command offer the same
choices and bounds (types are strict in a request, as in a preset file:
`true` is not 1 and `"7"` is not 7; a request's unknown fields are errors,
except inside a message, where OpenAI's clients echo response fields).
NaN and +-inf are rejected everywhere: Python's json (and so FastAPI) reads
the non-standard literals NaN and Infinity, and 1e999 becomes inf.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from steering.concepts import MAX_CONCEPT_CHARS, MAX_STRENGTH
from steering.engine import MAX_STOP_STRINGS, MAX_TOP_LOGPROBS
from steering.interventions import (
    CLAMP_MODES,
    CLAMP_UNITS,
    MAX_CLAMP_VALUE,
    MAX_CLAMPS,
    MAX_GENERATED_LIMIT,
    POSITIONS,
)

# Documented bounds (also in docs/api.md); the library's where the library enforces them too.
MAX_N = 8
MAX_STOP = MAX_STOP_STRINGS
MAX_STEERING_FEATURES = MAX_CLAMPS
MAX_FEATURE_VALUE = MAX_CLAMP_VALUE
MAX_SEED = 2**63 - 1

# Shared field types of a clamp spec (the request's `steering`, a preset, the response's report).
ClampMode = Literal[tuple(CLAMP_MODES)]  # type: ignore[valid-type]
ClampUnit = Literal[tuple(CLAMP_UNITS)]  # type: ignore[valid-type]
Positions = Literal[tuple(POSITIONS)]  # type: ignore[valid-type]
GeneratedLimit = Annotated[int | None, Field(ge=0, le=MAX_GENERATED_LIMIT)]
MODES_DOC = "; ".join(f"`{m.name}`: {m.description}" for m in CLAMP_MODES.values())
UNITS_DOC = "; ".join(f"`{name}`: {doc}" for name, doc in CLAMP_UNITS.items())
POSITIONS_DOC = "; ".join(f"`{name}`: {doc}" for name, doc in POSITIONS.items())

STRICT = ConfigDict(allow_inf_nan=False, extra="forbid", strict=True)  # true is not 1, "7" is not 7
LENIENT = ConfigDict(allow_inf_nan=False, extra="ignore")

__all__ = [
    "MAX_N", "MAX_STOP", "MAX_TOP_LOGPROBS", "MAX_STEERING_FEATURES", "MAX_FEATURE_VALUE", "MAX_GENERATED_LIMIT",
    "MAX_SEED", "MAX_CLAMPS", "MAX_CLAMP_VALUE", "MAX_CONCEPT_CHARS", "MAX_STRENGTH", "ClampMode", "ClampUnit", "Positions", "GeneratedLimit",
    "STRICT", "LENIENT", "ErrorInfo", "ErrorResponse",
]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
