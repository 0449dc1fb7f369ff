"""`python -m steering bench` on a tiny model: the JSON it promises, and a clean consistency check."""

from __future__ import annotations

import json

import torch

from steering.cli import build_parser
from steering.evaluation.benchmark import decode_weight_bytes, read_bandwidth_gbs, run_bench
from tests.support import tiny_sm

KEYS = ("steering_overhead_b1", "steering_overhead_b8", "batching_gain_8", "engine_vs_generate_b1",
        "decode_tps_b1", "decode_ceiling_tps_b1", "decode_fraction_of_ceiling_b1", "dtype", "ttft_ms_p50",
        "ttft_ms_p95", "conditions", "monitor_overhead_b1", "monitor_overhead_b8", "inspect_overhead_b8",
        "conditional_overhead_b8", "conditional_vs_clamped_b8", "conditional_triggered", "busy_neighbour_b1")


def test_bench_reports_every_figure_and_no_differing_request(tiny_llama, tiny_tokenizer):
    result = run_bench(tiny_sm(tiny_llama, tiny_tokenizer), threads=1, reps=1, max_tokens=6, consistency=8)
    json.dumps(result)  # one JSON object
    for key in KEYS:
        assert key in result, key
    assert result["consistency"]["requests"] == 8 and result["consistency"]["differing"] == 0
    assert result["conditional_triggered"]["rows"] == 8  # the conditional rows measure steering, not waiting
    assert result["conditions"]["threads"] == 1 and result["conditions"]["forward"] == "FastBackend"
    assert result["decode_tps_b1"] > 0 and result["ttft_ms_p95"] >= result["ttft_ms_p50"] > 0
    ceiling = result["conditions"]["memory_read_gbs"] * 1e9 / result["conditions"]["decode_weight_bytes"]
    assert abs(result["decode_ceiling_tps_b1"] - ceiling) <= 0.01 * ceiling + 0.1


def test_decode_weight_bytes_counts_every_linear_once_in_its_dtype(tiny_llama):
    linears = [m for m in tiny_llama.modules() if isinstance(m, torch.nn.Linear)]
    per_layer = sum(m.weight.numel() for m in tiny_llama.model.layers[0].modules() if isinstance(m, torch.nn.Linear))
    expected = len(tiny_llama.model.layers) * per_layer + tiny_llama.lm_head.weight.numel()
    assert len(linears) == 7 * len(tiny_llama.model.layers) + 1
    assert decode_weight_bytes(tiny_llama) == expected * tiny_llama.lm_head.weight.element_size()


def test_read_bandwidth_is_a_plausible_rate():
    gbs = read_bandwidth_gbs(threads=1, mbytes=64, reps=3)
    assert 0.1 < gbs < 2000


def test_bench_is_a_cli_subcommand():
    args = build_parser().parse_args(["bench", "--json", "--reps", "2", "--consistency", "0"])
    assert args.reps == 2 and args.consistency == 0 and args.json
