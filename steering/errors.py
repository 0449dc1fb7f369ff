"""The library's one base class for errors that name a parameter.

    raise SteeringError("feature index 99999 is out of range ...", "features[0].index")

`param` names the offending argument in the caller's own terms (a request
field such as `features[0].value` or `messages[1].role`, a command-line
option, an SAE config key), so a front end can report it without knowing
which module raised: the server maps every `ParameterError` to a 400 that
names `param` (`api.errors`), the commands print `error (param): message`
(`steering.cli.common`). Subclasses say which part of the library refused:
`SteeringError` (clamps, sampling, generation requests, concepts, presets),
`steering.sae.SAEConfigError`, `steering.chat_template.ChatFormatError`,
`steering.models.ModelOptionError`.
"""

from __future__ import annotations


class ParameterError(ValueError):
    """A bad argument; `param` names it (see the module docstring)."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


class SteeringError(ParameterError):
    """A bad steering or generation request (clamps, window, sampling, prompt, concept, preset)."""
