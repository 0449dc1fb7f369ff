"""What every command shares: model arguments, loading, clamp and window arguments, errors.

    add_model_arguments(parser)      --model --sae --dtype --device --device-map --threads
    add_window_arguments(parser)     --positions --generated-limit (choices from the library)
    load_steered(args)               threads set, SteeredModel loaded, its SAE note printed
    load_language_model(args)        the same without an SAE (training commands)
    parse_clamp("123=10:add:raw")    the command-line form of a FeatureClamp

Errors: a command raises the library's `ParameterError` (or `CommandError`
for a bad option value); `steering.cli.main` prints every one the same way,
`error (param): message`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from steering.errors import ParameterError
from steering.interventions import CLAMP_MODES, CLAMP_UNITS, POSITIONS, FeatureClamp

if TYPE_CHECKING:
    from steering.models import LoadedModel
    from steering.steered_model import SteeredModel

CLAMP_FORM = "INDEX=VALUE[:MODE][:UNIT]"


class CommandError(ParameterError):
    """A bad command-line value; `param` names the option (e.g. `multipliers`)."""


def parse_clamp(text: str) -> FeatureClamp:
    """`INDEX=VALUE[:MODE][:UNIT]`, e.g. `123=10`, `456=-3:add`, `7=2.5:clamp:raw` (mode and unit are
    checked against the SAE when the spec is validated)."""
    try:
        index_text, rest = text.split("=", 1)
        parts = rest.split(":")
        value = float(parts[0])
        index = int(index_text)
    except ValueError:
        raise CommandError(f"bad clamp {text!r}: expected {CLAMP_FORM}", "clamp") from None
    mode = parts[1] if len(parts) > 1 and parts[1] else "clamp"
    unit = parts[2] if len(parts) > 2 and parts[2] else "max"
    return FeatureClamp(index=index, value=value, mode=mode, unit=unit)


def clamp_help() -> str:
    return f"clamp a feature; MODE {'|'.join(CLAMP_MODES)} (default clamp), UNIT {'|'.join(CLAMP_UNITS)} (default max)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--sae/--dtype/--device/--threads, shared by every command that loads a model."""
    parser.add_argument("--model", default=None, help="HF model directory or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--sae", default=None, help="SAE folder or file (default: the shipped SAE for the model)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--device-map", default=None, help="spread a model larger than one GPU over several: auto, "
                        "balanced or sequential (default: one device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def add_window_arguments(parser: argparse.ArgumentParser, default: str | None, override: bool = False) -> None:
    """--positions and --generated-limit; with `override`, they replace a preset's window as a pair."""
    extra = " (with --generated-limit a pair: setting either replaces the preset's window)" if override else ""
    parser.add_argument("--positions", choices=tuple(POSITIONS), default=default,
                        help=f"where clamps apply{extra}")
    parser.add_argument("--generated-limit", type=int, default=None, metavar="N",
                        help="clamp only the first N generated tokens (default: all of them)")


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def load_steered(args: argparse.Namespace) -> "SteeredModel":
    """The model and SAE the arguments name (threads set first; the SAE's note, if any, on stderr)."""
    from steering.steered_model import SteeredModel

    set_threads(args)
    sm = SteeredModel.load(args.model, args.sae, device=args.device, dtype=args.dtype,
                           device_map=getattr(args, "device_map", None))
    if sm.sae_note:
        print(f"note: {sm.sae_note}", file=sys.stderr)
    return sm


def load_language_model(args: argparse.Namespace) -> "LoadedModel":
    """The model the arguments name, without an SAE (threads set first)."""
    from steering.models import load_model

    set_threads(args)
    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=getattr(args, "device_map", None))


def report(exc: ParameterError) -> int:
    """The one error printer of the commands: `error (param): message` on stderr; exit status 2."""
    where = f" ({exc.param})" if exc.param else ""
    print(f"error{where}: {exc}", file=sys.stderr)
    return 2
