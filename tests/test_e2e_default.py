"""End-to-end on the embedded default model (SmolLM2-135M-Instruct, offline)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from steering.engine import SequenceRequest, generate_batch
from steering.engine.sampling import SamplingParams
from steering.interventions import FeatureClamp, SteeringSpec
from steering.steered_model import SteeredModel

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Tell me about your favourite place."}]


@pytest.fixture(scope="module")
def default_model() -> SteeredModel:
    return SteeredModel.load()


def test_greedy_without_clamps_equals_plain_generate(default_model):
    sm = default_model
    ids = sm.prompt_ids(MESSAGES)
    texts_ids = []
    for events in generate_batch(sm.loaded.model, sm.loaded.tokenizer, sm.sae, [SequenceRequest(ids, SamplingParams(max_tokens=24, temperature=0))]):
        texts_ids += [e.token_id for e in events if e.token_id is not None]
    with torch.no_grad():
        ref = sm.loaded.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    ref_ids = [t for t in ref[0, len(ids):].tolist() if t != sm.loaded.tokenizer.eos_token_id]
    assert texts_ids == ref_ids


def test_a_large_clamp_changes_the_answer(default_model):
    sm = default_model
    by_strength = sm.sae.max_activation.argsort(descending=True)[:3].tolist()
    spec = SteeringSpec(tuple(FeatureClamp(i, 10.0) for i in by_strength))
    steered, plain = sm.chat(MESSAGES, spec, max_tokens=24, temperature=0, compare=True)
    assert plain.strip() and steered != plain


def test_cli_generate_compare_is_labelled_and_reproducible():
    cmd = [sys.executable, "-m", "steering", "generate", "Describe yourself in one sentence.",
           "--clamp", "123=10", "--clamp", "456=-3:add", "--compare", "--max-tokens", "16", "--seed", "0"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "=== steered (123=10:clamp:max, 456=-3:add:max" in first.stdout
    assert "=== unsteered (same seed 0) ===" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.stdout == first.stdout
