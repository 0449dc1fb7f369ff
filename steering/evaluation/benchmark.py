"""The engine's speed and consistency, measured side by side (`python -m steering bench`).

Every figure comes from one run on the current machine, against the model and
SAE that `SteeredModel.load` serves by default. Each repetition runs every
configuration once, in turn (interleaved, so a change in machine load hits
all of them alike; every other repetition in reverse order, so that no
configuration always follows the same one), and each figure is the median
over repetitions:

    b1           one stream, greedy, `--max-tokens` new tokens, no clamps
    b1_clamped   the same with 3 clamped features
    b8           8 concurrent streams (different prompts), no clamps
    b8_clamped   8 concurrent streams, 3 clamped features each, 8 distinct specs
    b1_monitors, b8_monitors   b1 and b8 with 3 monitors (flag) on every row
    b8_inspect   b8 with inspect top_k 8 on every row (the full SAE encode per token)
    b8_conditional  b8 with a `steer` monitor on every row that fires by its second
                 generated token and then applies b8_clamped's clamps (conditional steering)
    b1_busy      b1 while another process spins on one core (started 0.5 s before;
                 the engine gives up threads to it: steering.engine.core_share)
    generate     transformers' `model.generate`, batch 1, no hook, same dtype

Two throughputs per configuration: `e2e`, generated tokens / wall time from
submission to the last token (aggregate over the streams), and `decode`, the
tokens per second while every stream of the run is decoding (from the
latest first token to the earliest last token): the rate of the decoding
steps alone, with no prompt being prefilled. The steering and batching
ratios use `decode`: a clamp on prompt positions also changes the prompt's
K/V, so such a request cannot reuse a cached prompt prefix and its prefill
costs more, which is a prefill cost (seen in TTFT), not a per-step one.
Each ratio is the median over repetitions of the ratio within a repetition:

    steering_overhead_b1 = b1_clamped / b1     steering_overhead_b8 = b8_clamped / b8
    batching_gain_8      = b8_clamped / b1_clamped
    engine_vs_generate_b1 = b1 / generate      (e2e, prefill included, for both)
    monitor_overhead_b1 = b1_monitors / b1     monitor_overhead_b8 = b8_monitors / b8
    inspect_overhead_b8 = b8_inspect / b8
    conditional_overhead_b8 = b8_conditional / b8   conditional_vs_clamped_b8 = b8_conditional / b8_clamped
    busy_neighbour_b1 = b1_busy / b1

`decode_tps_b1` is b1's decode rate; `decode_ceiling_tps_b1` is the
memory-bound ceiling of a batch-1 step on this machine, measured read
bandwidth (`read_bandwidth_gbs`, same threads, once per repetition, the
median) / bytes of weights a step reads
(every Linear, LM head included), and `decode_fraction_of_ceiling_b1` the
share of it reached (CPU only). `ttft_ms_p50/p95` are the first-token
latencies of the b8_clamped streams (8 submissions at once). `--consistency N` (default 64) also runs N greedy requests with
different prompts, lengths and clamps, arriving at different times through
the engine, and counts those whose tokens differ from the same request run
alone. `conditional_triggered` counts the b8_conditional rows whose monitor
fired (last repetition) and the mean generated-token index where it did.
The last line of output is one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from steering.engine.compute import ComputeThread
from steering.engine.requests import SequenceRequest
from steering.engine.sampling import SamplingParams
from steering.engine.worker import Engine, EngineConfig
from steering.hooks import activations_at
from steering.interventions import FeatureClamp, SteeringSpec
from steering.monitors import Monitor
from steering.readings import InspectSpec

if TYPE_CHECKING:
    from steering.steered_model import SteeredModel

QUESTIONS = (
    "Tell me about the Golden Gate Bridge.",
    "Write a short poem about the sea.",
    "How do I bake chocolate chip cookies?",
    "What is the capital of France and why is it famous?",
    "Explain what a neural network is to a child.",
    "Give me three tips for learning Python.",
    "Why do dogs wag their tails?",
    "Describe a rainy day in London.",
)


def _stream_times(engine: Engine, requests: Sequence[SequenceRequest], delays: Sequence[float] | None = None) -> list[dict]:
    """Submit each request as its own group (after delays[i] s); -> per stream submit/first/last times, tokens."""
    results: list[dict] = [{} for _ in requests]

    def consume(i: int) -> None:
        if delays:
            time.sleep(delays[i])
        rec = results[i]
        rec["submit"] = time.perf_counter()
        rec["tokens"], rec["times"] = [], []
        for events in engine.submit([requests[i]]):
            now = time.perf_counter()
            for e in events:
                if e.monitor_events:
                    rec.setdefault("crossed", len(rec["tokens"]))
                if e.token_id is not None:
                    rec.setdefault("first", now)
                    rec["tokens"].append(e.token_id)
                    rec["times"].append(now)
            rec["last"] = now

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _e2e_tps(results: list[dict]) -> float:
    start = min(r["submit"] for r in results)
    end = max(r["last"] for r in results)
    return sum(len(r["tokens"]) for r in results) / (end - start)


def _decode_tps(results: list[dict]) -> float:
    """Tokens per second while every stream is decoding: from the last first token to the first last token."""
    start = max(r["first"] for r in results)
    end = min(r["times"][-1] for r in results)
    if end <= start:
        return float("nan")
    return sum(sum(1 for t in r["times"] if start < t <= end) for r in results) / (end - start)


def _specs(sae: Any, n: int) -> list[SteeringSpec]:
    """n distinct specs of 3 clamped features each (features with a known max activation)."""
    usable = torch.isfinite(sae.max_activation).nonzero().flatten().tolist()
    specs = []
    for i in range(n):
        picks = [usable[(37 * i + 101 * j) % len(usable)] for j in range(3)]
        specs.append(SteeringSpec(tuple(FeatureClamp(int(f), 2.0 + i, "clamp") for f in picks)))
    return specs


def _monitors(sae: Any) -> tuple[Monitor, ...]:
    """3 flag monitors on features with a known max activation, at a threshold they rarely reach."""
    usable = torch.isfinite(sae.max_activation).nonzero().flatten().tolist()
    return tuple(Monitor(int(usable[(53 * j) % len(usable)]), 0.9, "max", "flag", f"m{j}") for j in range(3))


@contextlib.contextmanager
def _busy_neighbour(settle_s: float = 0.5) -> Iterator[None]:
    """Another process spinning on one core while the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(settle_s)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _conditional(engine: Engine, sm: "SteeredModel", prompts: Sequence[Sequence[int]],
                 specs: Sequence[SteeringSpec]) -> list[tuple[Monitor, ...]]:
    """Per row, a `steer` monitor that fires by the row's second generated token, then applies that row's
    spec's clamps: the feature strongest at that token of the row's greedy answer, at half its value."""
    sae = sm.sae
    firsts = _stream_times(engine, [SequenceRequest(p, SamplingParams(max_tokens=2, temperature=0.0,
                                                                      ignore_eos=True)) for p in prompts])
    rows = [list(p) + r["tokens"] for p, r in zip(prompts, firsts)]

    def strongest() -> list[tuple[int, float]]:
        out = []
        for i, hidden in activations_at(sm.loaded.model, sae.cfg.hook_layer, sae.cfg.hook_site, rows):
            acts = sae.encode(hidden[-1:].to(sae.W_enc.dtype)).float()[0]  # [d_sae] at generated token 1
            out.append((int(acts.argmax()), float(acts.max())))
        return out

    return [(Monitor(f, 0.5 * v, "raw", "steer", "when", spec.features),)
            for (f, v), spec in zip(engine.call(strongest).result(), specs)]


def run_bench(sm: "SteeredModel", threads: int, reps: int, max_tokens: int, consistency: int,
              compute: ComputeThread | None = None) -> dict:
    """Every figure, measured with all torch work on one thread: `compute` (the one that loaded
    the model, as in the server) or the engine's own."""
    model, tok, sae = sm.loaded.model, sm.loaded.tokenizer, sm.sae
    prompts = [sm.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    specs = _specs(sae, 8) if sae is not None else [None] * 8
    engine = Engine(model, tok, sae, EngineConfig(max_batch=8, threads=threads), compute=compute)
    configs = ("b1", "b1_clamped", "b8", "b8_clamped", "b1_monitors", "b8_monitors", "b8_inspect", "b8_conditional",
               "b1_busy")
    watch = _monitors(sae) if sae is not None else ()
    inspect = InspectSpec(top_k=8) if sae is not None else None
    runs: dict[str, list[float]] = {f"{k}_{m}": [] for k in configs for m in ("e2e", "decode")}
    runs["generate_e2e"] = []
    ttfts: list[float] = []
    crossed: list[int] = []
    load_before = os.getloadavg()[0]
    try:
        _stream_times(engine, [SequenceRequest(prompts[0], SamplingParams(max_tokens=8, temperature=0.0))])  # warm-up
        when = _conditional(engine, sm, prompts, specs) if sae is not None else [()] * len(prompts)
        on_cpu = sm.loaded.device.type == "cpu"
        bandwidths: list[float] = []
        for rep in range(reps):
            batches = {
                "b1": [SequenceRequest(prompts[0], params)],
                "b1_clamped": [SequenceRequest(prompts[0], params, specs[0])],
                "b8": [SequenceRequest(p, params) for p in prompts],
                "b8_clamped": [SequenceRequest(p, params, s) for p, s in zip(prompts, specs)],
                "b1_monitors": [SequenceRequest(prompts[0], params, None, None, watch)],
                "b8_monitors": [SequenceRequest(p, params, None, None, watch) for p in prompts],
                "b8_inspect": [SequenceRequest(p, params, None, inspect) for p in prompts],
                "b8_conditional": [SequenceRequest(p, params, None, None, w) for p, w in zip(prompts, when)],
                "b1_busy": [SequenceRequest(prompts[0], params)],
            }
            # Every other repetition runs the configurations in reverse, so that what runs
            # before a configuration (and any drift within a repetition) is the same for all.
            order = [*batches, "generate"]
            for name in (reversed(order) if rep % 2 else order):
                if name == "generate":
                    runs["generate_e2e"].append(engine.call(_generate_tps, model, prompts[0], max_tokens, threads).result())
                    continue
                if name == "b1_busy":
                    with _busy_neighbour():
                        res = _stream_times(engine, batches[name])
                else:
                    res = _stream_times(engine, batches[name])
                runs[f"{name}_e2e"].append(_e2e_tps(res))
                runs[f"{name}_decode"].append(_decode_tps(res))
                if name == "b8_clamped":
                    ttfts += [(r["first"] - r["submit"]) * 1e3 for r in res]
                if name == "b8_conditional":
                    crossed = [r["crossed"] for r in res if "crossed" in r]
            if on_cpu:
                bandwidths.append(engine.call(read_bandwidth_gbs, threads).result())
        check = _consistency(engine, sm, specs, consistency) if consistency else None
        bandwidth = statistics.median(bandwidths) if bandwidths else None
    finally:
        engine.close()
    med = {k: statistics.median(v) for k, v in runs.items()}

    def ratio(a: str, b: str) -> float:  # median over repetitions of the side-by-side ratio
        return statistics.median(x / y for x, y in zip(runs[a], runs[b]))

    ttfts.sort()
    runner = getattr(engine.backend, "runner", None)
    step_bytes = decode_weight_bytes(model)
    ceiling = bandwidth * 1e9 / step_bytes if bandwidth else None
    result = {
        "steering_overhead_b1": round(ratio("b1_clamped_decode", "b1_decode"), 4),
        "steering_overhead_b8": round(ratio("b8_clamped_decode", "b8_decode"), 4),
        "batching_gain_8": round(ratio("b8_clamped_decode", "b1_clamped_decode"), 3),
        "engine_vs_generate_b1": round(ratio("b1_e2e", "generate_e2e"), 3),
        "monitor_overhead_b1": round(ratio("b1_monitors_decode", "b1_decode"), 4),
        "monitor_overhead_b8": round(ratio("b8_monitors_decode", "b8_decode"), 4),
        "inspect_overhead_b8": round(ratio("b8_inspect_decode", "b8_decode"), 4),
        "conditional_overhead_b8": round(ratio("b8_conditional_decode", "b8_decode"), 4),
        "conditional_vs_clamped_b8": round(ratio("b8_conditional_decode", "b8_clamped_decode"), 4),
        "busy_neighbour_b1": round(ratio("b1_busy_decode", "b1_decode"), 4),
        "conditional_triggered": {"rows": len(crossed), "of": len(prompts),
                                  "mean_token": round(statistics.mean(crossed), 2) if crossed else None},
        "decode_tps_b1": round(med["b1_decode"], 2),
        "decode_ceiling_tps_b1": round(ceiling, 1) if ceiling else None,
        "decode_fraction_of_ceiling_b1": round(med["b1_decode"] / ceiling, 3) if ceiling else None,
        "dtype": str(sm.loaded.dtype).replace("torch.", ""),
        "ttft_ms_p50": round(statistics.median(ttfts), 1),
        "ttft_ms_p95": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 1),
        "tps": {k: round(v, 2) for k, v in med.items()},
        "tps_per_rep": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "consistency": check,
        "conditions": {
            "threads": threads,
            "dtype": str(sm.loaded.dtype).replace("torch.", ""),
            "device": str(sm.loaded.device),
            "cpu": _cpu_name(),
            "torch": torch.__version__,
            "model": sm.model_id,
            "sae": sm.sae_id,
            "max_tokens": max_tokens,
            "reps": reps,
            "prompt_tokens": [len(p) for p in prompts],
            "forward": type(engine.backend).__name__,
            "kernels": getattr(runner, "linear", torch.nn.functional.linear) is not torch.nn.functional.linear,
            "activations": str(getattr(runner, "act_dtype", None) or runner.dtype).replace("torch.", ""),
            "engine": {"max_batch": engine.config.max_batch, "prefill_chunk": engine.config.prefill_chunk,
                       "prefill_budget": engine.config.prefill_budget},
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "memory_read_gbs": round(bandwidth, 2) if bandwidth else None,
            "decode_weight_bytes": step_bytes,
        },
    }
    return result


def _generate_tps(model: Any, prompt: Sequence[int], max_tokens: int, threads: int) -> float:
    torch.set_num_threads(threads)
    ids = torch.tensor([list(prompt)], device=next(model.parameters()).device)
    with torch.inference_mode():
        start = time.perf_counter()
        pad = getattr(model.generation_config, "pad_token_id", None)
        pad = pad if pad is not None else getattr(model.config, "eos_token_id", 0)
        out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def _consistency(engine: Engine, sm: "SteeredModel", specs: list, n: int) -> dict:
    """n mixed greedy requests arriving at different times vs each run alone: how many differ."""
    subjects = ("cats", "the ocean", "space travel", "cooking pasta", "music", "friendship", "mountains", "computers")
    requests = []
    for i in range(n):
        q = f"{QUESTIONS[i % len(QUESTIONS)]} Mention {subjects[(i * 3) % len(subjects)]}." if i % 2 else QUESTIONS[i % len(QUESTIONS)]
        spec = specs[i % len(specs)] if i % 3 else None
        params = SamplingParams(max_tokens=16 + (i * 7) % 33, temperature=0.0, ignore_eos=True)
        requests.append(SequenceRequest(sm.prompt_ids([{"role": "user", "content": q}]), params, spec))
    delays = [0.15 * (i // 4) for i in range(n)]  # 4 arrive together, then the next 4 a little later...
    start = time.perf_counter()
    mixed = _stream_times(engine, requests, delays)
    mixed_s = time.perf_counter() - start
    differ = []
    for i, req in enumerate(requests):
        alone = _stream_times(engine, [req])[0]["tokens"]
        if alone != mixed[i]["tokens"]:
            differ.append(i)
    return {"requests": n, "differing": len(differ), "fraction": round(len(differ) / n, 4), "differing_ids": differ,
            "mixed_seconds": round(mixed_s, 1)}


def read_bandwidth_gbs(threads: int, mbytes: int = 512, reps: int = 7) -> float:
    """Memory read bandwidth (GB/s) with `threads` threads: median time of torch.sum over a float32 buffer.

    The buffer is far larger than any cache, so this is what a batch-1 decoding
    step, which reads every weight once, can hope for at best.
    """
    torch.set_num_threads(threads)
    buf = torch.ones(mbytes * 2**20 // 4)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - start)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the Linear weights one decoding step reads (every projection and the LM head)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
