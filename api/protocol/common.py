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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from steering.concepts import DEFAULT_METHOD, DIRECTION_FEATURES, MAX_CONCEPT_CHARS, MAX_STRENGTH, METHODS
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

def _integral(value: object) -> object:
    """JSON Schema's integers include 2.0: read it as 2 (a bool or a string stays an error, strictly)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field of a request: strict, but 2.0 counts (JSON Schema's definition, which the OpenAPI page gives).
JsonInt = Annotated[int, BeforeValidator(_integral)]


def bounded_int(ge: int | None = None, le: int | None = None) -> object:
    """JsonInt within [ge, le]: the bounds come before the validator, so the schema shows minimum/maximum."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]

# Shared field types of a clamp spec (the request's `steering`, a preset, the response's report).
ClampMode = Literal[tuple(CLAMP_MODES)]  # type: ignore[valid-type]
ClampUnit = Literal[tuple(CLAMP_UNITS)]  # type: ignore[valid-type]
Positions = Literal[tuple(POSITIONS)]  # type: ignore[valid-type]
AutoSteerMethod = Literal[tuple(METHODS)]  # type: ignore[valid-type]
# Bounds go inside the Annotated: on `X | None` they would not reach the OpenAPI schema as minimum/maximum.
GeneratedLimit = bounded_int(0, MAX_GENERATED_LIMIT) | None  # type: ignore[operator]
MODES_DOC = "; ".join(f"`{m.name}`: {m.description}" for m in CLAMP_MODES.values())
UNITS_DOC = "; ".join(f"`{name}`: {doc}" for name, doc in CLAMP_UNITS.items())
POSITIONS_DOC = "; ".join(f"`{name}`: {doc}" for name, doc in POSITIONS.items())

STRICT = ConfigDict(allow_inf_nan=False, extra="forbid", strict=True)  # true is not 1, "7" is not 7
LENIENT = ConfigDict(allow_inf_nan=False, extra="ignore")

__all__ = [
    "MAX_N", "MAX_STOP", "MAX_TOP_LOGPROBS", "MAX_STEERING_FEATURES", "MAX_FEATURE_VALUE", "MAX_GENERATED_LIMIT",
    "MAX_CLAMPS", "MAX_CLAMP_VALUE", "MAX_CONCEPT_CHARS", "MAX_STRENGTH", "ClampMode", "ClampUnit", "Positions",
    "AutoSteerMethod", "DEFAULT_METHOD", "DIRECTION_FEATURES",
    "GeneratedLimit", "JsonInt", "bounded_int",
    "STRICT", "LENIENT", "ErrorInfo", "ErrorResponse",
]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
