"""The commands' shared pieces: the clamp form, the one error printer, the command list."""

from __future__ import annotations

import pytest

from steering.cli import build_parser, main
from steering.cli.common import parse_clamp, report
from steering.errors import ParameterError, SteeringError
from steering.interventions import CLAMP_MODES, POSITIONS, FeatureClamp


def test_parse_clamp_cli_form():
    assert parse_clamp("123=10") == FeatureClamp(123, 10.0)
    assert parse_clamp("456=-3:add") == FeatureClamp(456, -3.0, "add")
    assert parse_clamp("7=2.5:clamp:raw") == FeatureClamp(7, 2.5, "clamp", "raw")
    with pytest.raises(ParameterError) as err:
        parse_clamp("seven=1")
    assert err.value.param == "clamp"


def test_every_command_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for command in ("generate", "eval-steering", "sweep", "concept-search", "bench", "build-corpus", "harvest",
                    "train-sae", "eval-sae", "build-catalogue", "layer-sweep"):
        assert command in out


def test_choices_come_from_the_library(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    out = capsys.readouterr().out
    assert all(p in out for p in POSITIONS) and all(m in out for m in CLAMP_MODES)


def test_one_error_printer(capsys):
    assert report(SteeringError("feature index 9 is out of range", "features[0].index")) == 2
    assert capsys.readouterr().err == "error (features[0].index): feature index 9 is out of range\n"
    assert main(["generate", "Hi", "--clamp", "x=1"]) == 2  # refused before any model loads
    assert capsys.readouterr().err == "error (clamp): bad clamp 'x=1': expected INDEX=VALUE[:MODE][:UNIT]\n"
