"""`python -m steering bench` on a tiny model: the JSON it promises, and a clean consistency check."""

from __future__ import annotations

import json

from steering.bench import run_bench
from steering.cli import build_parser
from tests.steering_support import tiny_sm

KEYS = ("steering_overhead_b1", "steering_overhead_b8", "batching_gain_8", "engine_vs_generate_b1",
        "decode_tps_b1", "dtype", "ttft_ms_p50", "ttft_ms_p95", "conditions")


def test_bench_reports_every_figure_and_no_differing_request(tiny_llama, tiny_tokenizer):
    result = run_bench(tiny_sm(tiny_llama, tiny_tokenizer), threads=1, reps=1, max_tokens=6, consistency=8)
    json.dumps(result)  # one JSON object
    for key in KEYS:
        assert key in result, key
    assert result["consistency"]["requests"] == 8 and result["consistency"]["differing"] == 0
    assert result["conditions"]["threads"] == 1 and result["conditions"]["forward"] == "FastBackend"
    assert result["decode_tps_b1"] > 0 and result["ttft_ms_p95"] >= result["ttft_ms_p50"] > 0


def test_bench_is_a_cli_subcommand():
    args = build_parser().parse_args(["bench", "--json", "--reps", "2", "--consistency", "0"])
    assert args.reps == 2 and args.consistency == 0 and args.json
