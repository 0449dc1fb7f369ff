"""The commands: `python -m steering COMMAND ...` (also installed as `steering`).

    generate         answer one prompt, optionally steered and compared   (generate)
    eval-steering    concept rate and fluency of presets, clamps, auto-steer (evaluate)
    sweep            the same per strength multiplier, and the knee        (sweep)
    concept-search   rank an SAE's features for a concept                  (concept_search)
    inspect          the SAE features active at each token of a text      (inspect)
    attribute, eval-attribution
                     which SAE features drove the next token; checked     (attribute)
    screen-monitors, eval-monitors
                     choose monitors from examples, measure flag rates     (monitors)
    bench            the engine's speed and consistency                    (bench)
    loadtest         soak a running (or started) server: errors, latency, memory (loadtest)
    build-corpus, harvest, train-sae, eval-sae, build-catalogue, layer-sweep
                     dictionary learning                                   (training)
    write-topic-text, extend-sae
                     corpus text the model writes; new features on a trained SAE (extension)

Commands parse arguments and call the library; nothing in the library parses
arguments. Shared pieces (model arguments, loading, the clamp form, the one
error printer) are in `common`. A library `ParameterError` raised by any
command is printed as `error (param): message` with exit status 2.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from steering.cli import (attribute, bench, concept_search, evaluate, extension, generate, inspect, loadtest, monitors,
                          sweep, training)
from steering.cli.common import report
from steering.errors import ParameterError

# Every command, in the order `--help` lists them.
REGISTRARS = (generate.add_parser, evaluate.add_parser, sweep.add_parser, concept_search.add_parser,
              inspect.add_parser, attribute.add_parsers, monitors.add_parsers, bench.add_parser, loadtest.add_parser,
              training.add_parsers, extension.add_parsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steering", description="Steer a chat model with SAE feature clamps.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ParameterError as exc:
        return report(exc)
