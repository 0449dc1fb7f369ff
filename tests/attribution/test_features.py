"""Feature attribution on a tiny random model: the split leaves the forward alone, scores are the exact
first-order effect of each node, and bad input names its parameter."""

from __future__ import annotations

import pytest
import torch

from steering.attribution import attribute, metric_without
from steering.errors import SteeringError
from tests.support import tiny_sm

IDS = [5, 17, 23, 42, 8, 61, 30, 12]


@pytest.fixture
def sm(tiny_llama, tiny_tokenizer):
    return tiny_sm(tiny_llama, tiny_tokenizer)


def test_the_split_leaves_the_forward_unchanged(sm):
    result = attribute(sm, IDS)
    with torch.no_grad():
        logits = sm.loaded.model(input_ids=torch.tensor([IDS])).logits[0, -1]
    assert result.target.token_id == int(logits.argmax())
    assert result.target.logit == pytest.approx(float(logits.max()), abs=1e-4)
    assert result.metric == pytest.approx(metric_without(sm, IDS, [], result.target.token_id), abs=1e-4)


@pytest.mark.parametrize("contrast", [None, 7])
def test_scores_are_the_first_order_effect_of_removing_each_node(sm, tiny_tokenizer, contrast):
    """Scaling a node by (1 - eps) changes the metric by eps x its score, to first order."""
    other = tiny_tokenizer.decode([contrast]) if contrast is not None else None
    result = attribute(sm, IDS, contrast=other, top_k=8)
    assert result.nodes and abs(sum(n.share for n in result.nodes)) <= 1.0 + 1e-6
    eps = 1e-3
    target, contrast_id = result.target.token_id, result.contrast.token_id if result.contrast else None
    assert {n.kind for n in result.nodes} <= {"feature", "error", "sink"}
    for node in result.nodes:
        which = "sink" if node.kind == "sink" else node.feature
        moved = metric_without(sm, IDS, [(node.position, which)], target, contrast_id, keep=1 - eps)
        assert (result.metric - moved) / eps == pytest.approx(node.score, rel=0.05, abs=1e-3)


def test_shares_add_up_and_errors_are_their_own_nodes(sm):
    result = attribute(sm, IDS, top_k=100)
    assert result.error_share + result.feature_share + result.sink_share == pytest.approx(1.0)
    assert any(n.kind == "error" for n in result.nodes)  # a random SAE leaves a large error
    assert [n.kind for n in result.nodes].count("sink") <= 1 and result.sink_share > 0
    assert all(n.position > 0 for n in result.nodes if n.kind != "sink")  # position 0 is the sink alone
    scores = [abs(n.score) for n in result.nodes]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"ids": []}, "messages"),
    ({"ids": [1] * 600}, "messages"),
    ({"target": ""}, "target"),
    ({"contrast": ""}, "contrast"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": True}, "top_k"),
])
def test_bad_input_names_the_parameter(sm, kwargs, param):
    ids = kwargs.pop("ids", IDS)
    with pytest.raises(SteeringError) as err:
        attribute(sm, ids, **kwargs)
    assert err.value.param == param


def test_removal_nodes_parse_from_the_command_line():
    import argparse

    from steering.cli.attribute import _node

    assert _node("27:1957") == (27, 1957) and _node("3:error") == (3, None) and _node("0:sink") == (0, "sink")
    with pytest.raises(argparse.ArgumentTypeError):
        _node("x:1")


def test_logits_without_nothing_removed_are_the_model_s(sm):
    from steering.attribution import logits_without

    with torch.no_grad():
        plain = sm.loaded.model(input_ids=torch.tensor([IDS])).logits[0, -1]
    assert torch.allclose(logits_without(sm, IDS, []), plain, atol=1e-4)
    assert not torch.allclose(logits_without(sm, IDS, [(0, "sink")]), plain, atol=1e-4)


def test_suggested_clamps_lower_the_metric_by_their_estimate(sm):
    """A suggestion's estimate is the first-order effect of scaling the feature down at every prompt position."""
    result = attribute(sm, IDS)
    assert result.suggestions
    eps, target = 1e-3, result.target.token_id
    for s in result.suggestions:
        nodes = [(t, s.feature) for t in range(len(IDS))]
        moved = metric_without(sm, IDS, nodes, target, keep=1 - eps)
        assert (result.metric - moved) / eps == pytest.approx(s.estimated_drop, rel=0.05, abs=1e-3)
        assert s.positions and all(t < len(IDS) for t in s.positions)
    removed = metric_without(sm, IDS, [(t, s.feature) for s in result.suggestions for t in range(len(IDS))], target)
    assert removed < result.metric  # removing them all for real lowers the target
