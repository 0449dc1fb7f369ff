"""One error shape for every failure: OpenAI's.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

Client mistakes are 4xx and name the parameter in OpenAI's path notation
(`messages[1].role`, `steering.features[0].value`):

    400 invalid_request_error   validation errors, malformed JSON, bad steering,
                                prompt or max_tokens past the context
    404 invalid_request_error   unknown model (code model_not_found), preset,
                                feature index or route
    429 requests                the engine's queue is full (Retry-After header)
    503 server_error            the model is still loading (GET /ready says when),
                                a search by text found the model busy too long, or
                                the server is shutting down (code server_shutting_down)

A 500 means a bug in this server, never bad input. After a stream has
started its status line is gone, so the error travels as a last SSE event
(`sse_error_event`) followed by `data: [DONE]`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from steering.engine import EngineShutdown, QueueFullError
from steering.errors import ParameterError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "requests", 503: "server_error"}


class APIError(Exception):
    """An error with its HTTP status and OpenAI's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param, code)


def request_timeout(limit_s: float, tokens: int) -> APIError:
    """A request that generated past the server's wall-time limit (--max-request-seconds)."""
    return APIError(408, f"The request ran past this server's limit of {limit_s:g} s (--max-request-seconds) and "
                    f"was stopped after {tokens} tokens; ask for fewer max_tokens or choices.", "max_tokens",
                    "request_timeout")


def shutting_down(retry_after: float = 5.0) -> APIError:
    return APIError(503, "The server is shutting down; retry the request.", None, "server_shutting_down",
                    headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


def from_exception(exc: BaseException) -> APIError:
    """Map any exception to an APIError (unknown ones become a 500 and are logged)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        retry = max(1, math.ceil(exc.retry_after))
        return APIError(429, str(exc), None, "rate_limit_exceeded", headers={"Retry-After": str(retry)})
    if isinstance(exc, EngineShutdown):
        return shutting_down(exc.retry_after)
    if isinstance(exc, ParameterError):  # the library's one base class for errors that name a parameter
        return bad_request(str(exc), exc.param)
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    return APIError(500, "The server had an error while processing your request.", None, "internal_error")


def sse_error_event(exc: BaseException) -> str:
    """The `data:` payload of a mid-stream error (followed by `[DONE]`)."""
    return json.dumps(from_exception(exc).body())


# ------------------------------------------------------------ validation
def _field_names(models: Iterable[type]) -> set[str]:
    """All field names reachable from these pydantic models (to tell fields from union tags in a loc)."""
    from pydantic import BaseModel

    names: set[str] = set()
    todo, seen = list(models), set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
    return names


def _types_in(annotation: Any) -> list[Any]:
    from typing import get_args

    out, todo = [], [annotation]
    while todo:
        a = todo.pop()
        out.append(a)
        todo.extend(get_args(a))
    return out


def loc_to_param(loc: Iterable[Any], fields: set[str], tags: frozenset[str] = frozenset()) -> str | None:
    """('body', 'messages', 1, 'role') -> 'messages[1].role'; union tags ('str', 'list[str]', and the
    discriminator values in `tags` right after a list index: ('messages', 0, 'user', 'content')) are dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    parts = [p for k, p in enumerate(parts) if not (p in tags and k > 0 and isinstance(parts[k - 1], int))]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in fields or not out:
            out += f".{p}" if out else str(p)
    return out or None


def validation_error(exc: RequestValidationError, fields: set[str], tags: frozenset[str] = frozenset()) -> APIError:
    errors = exc.errors()
    if not errors:
        return bad_request("Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request(
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}. Send valid JSON (RFC 8259).",
            None,
            "invalid_json",
        )
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return bad_request("The request body must be a JSON object, sent with Content-Type: application/json.",
                           None, "invalid_json")
    param = loc_to_param(loc, fields, tags)
    msg = first.get("msg", "invalid value")
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # a message's role picks its schema
        tag = str(first.get("ctx", {}).get("discriminator", "")).strip("'")
        param = f"{param}.{tag}" if param and tag else param
    if first.get("type") == "extra_forbidden":  # the unknown key itself is the parameter
        parent = loc_to_param(loc[:-1], fields, tags)
        param, msg = (f"{parent}.{loc[-1]}" if parent else str(loc[-1])), "unknown field"
    return bad_request(f"Invalid value for '{param}': {msg}." if param else f"{msg}.", param, "invalid_value")


def install_error_handlers(app: FastAPI, models: Iterable[type], union_tags: Iterable[str] = ()) -> None:
    """Register handlers so that every error leaves in OpenAI's shape (`union_tags`: the values of the models'
    discriminators, such as a message's roles, which are not part of a parameter's name)."""
    tags = frozenset(union_tags)
    fields = _field_names(models)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, fields, tags).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown route: {request.method} {request.url.path}"
        if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
            return bad_request("We could not read the body of your request: send JSON (RFC 8259) encoded as "
                               "UTF-8.", None, "invalid_json").response()
        return APIError(exc.status_code, message, None, None, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()
