"""End-to-end on the embedded default: the graph across the three shipped SAEs, the CLI's files, and a
suggested clamp that turns the answer as the attribution predicts (the README's examples)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from steering.attribution import attribute, graph_layers, metric_without
from steering.interventions import FeatureClamp, SteeringSpec
from steering.steered_model import SteeredModel

pytestmark = pytest.mark.e2e

CAPITALS = ("The capital of France is Paris, and the capital of Germany is Berlin. The capital of Italy is Rome, "
            "and the capital of Spain is")
QUESTION = [{"role": "user", "content": "Complete the sentence: The capital of France is Paris, and the capital of "
             "Spain is"}]
ANSWER_SO_FAR = "The capital of France is Paris and the capital of Spain is"


@pytest.fixture(scope="module")
def sm() -> SteeredModel:
    return SteeredModel.load()


def test_the_default_model_has_three_graph_layers(sm):
    layers = graph_layers(sm)
    assert [g.layer for g in layers] == [6, 15, 24]
    assert all(g.catalogue is not None for g in layers) and layers[1].sae is sm.sae


def test_attribute_graph_writes_its_picture_and_files(tmp_path):
    png, saved, ct = tmp_path / "g.png", tmp_path / "g.json", tmp_path / "ct.json"
    run = subprocess.run([sys.executable, "-m", "steering", "attribute", "--raw", "--graph", "--target", " Madrid",
                          "--png", str(png), "--save", str(saved), "--circuit-tracer", str(ct), CAPITALS],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "target ' Madrid'" in run.stdout and "layers 6, 15, 24" in run.stdout
    graph = json.loads(saved.read_text())
    assert graph["layers"] == [6, 15, 24] and graph["exact"] and graph["target"]["probability"] > 0.4
    features = {(n["layer"], n["feature"]) for n in graph["nodes"] if n["kind"] == "feature"}
    assert {(15, 1957), (15, 8901)} & features  # the Spain features of the single-layer example
    assert {n["layer"] for n in graph["nodes"] if n["kind"] == "feature"} == {6, 15, 24}
    with Image.open(png) as image:
        assert image.format == "PNG"
    viewer = json.loads(ct.read_text())
    assert viewer["metadata"]["transcoder_list"] == graph["sae_names"] and viewer["links"]


def test_a_suggested_clamp_turns_madrid_into_barcelona_as_predicted(sm):
    tok = sm.loaded.tokenizer
    ids = list(sm.prompt_ids(QUESTION)) + tok(ANSWER_SO_FAR, add_special_tokens=False)["input_ids"]
    result = attribute(sm, ids, target=" Madrid", contrast=" Barcelona")
    assert 0 < result.metric < 2  # Madrid leads, by less than the suggestions are worth
    estimated = sum(s.estimated_drop for s in result.suggestions)
    removed = metric_without(sm, ids, [(t, s.feature) for s in result.suggestions for t in range(len(ids))],
                             result.target.token_id, result.contrast.token_id)
    assert estimated > result.metric and result.metric - removed == pytest.approx(estimated, rel=0.3)
    spec = SteeringSpec(tuple(FeatureClamp(s.feature, 0.0, "clamp", "raw") for s in result.suggestions))
    steered, plain = sm.chat(QUESTION, spec, max_tokens=24, temperature=0, compare=True)
    assert "Madrid" in plain and "Barcelona" not in plain
    assert "Barcelona" in steered and "Madrid" not in steered
