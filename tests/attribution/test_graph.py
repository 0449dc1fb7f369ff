"""Attribution graphs on tiny random models: edges are exact direct effects where the model is linear,
linearisation makes a real block linear, pruning keeps what it says, and bad input names its parameter."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from steering.attribution.graph import LOGIT, GraphLayer, node_id, prune
from steering.attribution.tracing import GraphBuild, attribution_graph
from steering.attribution.linearise import frozen_nonlinearities
from steering.errors import SteeringError
from steering.hooks import decoder_layers, edit_site
from steering.sae.autoencoder import SAEConfig, SparseAutoencoder

IDS = [5, 17, 23, 42, 8, 61, 30, 12, 99, 7]
LAYERS = (0, 1, 3)


def sae_at(model: nn.Module, layer: int, seed: int, d_sae: int = 48) -> SparseAutoencoder:
    cfg = SAEConfig(d_in=model.config.hidden_size, d_sae=d_sae, architecture="relu", hook_layer=layer,
                    hook_site="resid_post", model_name="tiny-llama")
    sae = SparseAutoencoder.random(cfg, seed=seed)
    with torch.no_grad():  # nonzero biases, so that the constants of the identity are not trivially zero
        sae.b_dec.copy_(0.1 * torch.randn(cfg.d_in, generator=torch.Generator().manual_seed(seed + 100)))
        sae.b_enc.fill_(0.05)
    return sae.eval().requires_grad_(False).double()


def linear_llama(model: nn.Module) -> nn.Module:
    """The tiny Llama made exactly linear: norms dropped, q/k zero (uniform causal attention), MLPs off."""
    model = copy.deepcopy(model).double()
    model.model.norm = nn.Identity()
    with torch.no_grad():
        for block in decoder_layers(model):
            block.input_layernorm = nn.Identity()
            block.post_attention_layernorm = nn.Identity()
            block.self_attn.q_proj.weight.zero_()
            block.self_attn.k_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model


def pre_activation_with(model: nn.Module, below: SparseAutoencoder | None, at: SparseAutoencoder | None,
                        remove: tuple | None) -> torch.Tensor:
    """A plain forward with one source removed (a feature, error, the sink at `below`, or a token's embedding;
    "all": every source); returns the pre-activations [T, d_sae] at `at`, or the last position's logits."""
    out: dict[str, torch.Tensor] = {}

    def split(hidden: torch.Tensor) -> torch.Tensor:
        h = hidden[0]
        x_n, info = below.normalize(h)
        f = below.activate(below.pre_activations(x_n))
        e = h - below.decode(f, info)
        if remove == "all":
            f, e = torch.zeros_like(f), torch.zeros_like(e)
        elif remove[0] == "feature":
            f = f.clone()
            f[remove[2], remove[3]] = 0
        elif remove[0] == "error":
            e = e.clone()
            e[remove[2]] = 0
        elif remove[0] == "sink":
            f, e = f.clone(), e.clone()
            f[0], e[0] = 0, 0
        return (below.decode(f, info) + e)[None]

    def zero_token(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        if remove == "all":
            output.zero_()
        else:
            output[0, remove[1]] = 0
        return output

    def read(hidden: torch.Tensor) -> None:
        out["pre"] = at.pre_activations(at.normalize(hidden[0])[0])

    with torch.no_grad(), contextlib.ExitStack() as stack:
        if below is not None:
            stack.enter_context(edit_site(model, below.cfg.hook_layer, "resid_post", split))
        else:
            handle = model.get_input_embeddings().register_forward_hook(zero_token)
            stack.callback(handle.remove)
        if at is not None:
            stack.enter_context(edit_site(model, at.cfg.hook_layer, "resid_post", read))
        logits = model(input_ids=torch.tensor([IDS])).logits[0, -1]
    return out["pre"] if at is not None else logits


def parse(node: str) -> tuple:
    """A node id back to its key."""
    if node == "logit":
        return LOGIT
    if node.startswith("token@"):
        return ("token", int(node[6:]))
    layer, rest = node.split("/")
    if rest == "sink":
        return ("sink", int(layer))
    what, pos = rest.split("@")
    return ("error", int(layer), int(pos)) if what == "error" else ("feature", int(layer), int(pos), int(what))


def test_edges_are_exact_removal_effects_and_complete_on_a_linear_model(tiny_llama, tiny_tokenizer):
    """Where the model is linear, w(u -> d) is exactly what removing u does to d, and d's inputs plus what
    is left with every source removed add up to d (completeness)."""
    model = linear_llama(tiny_llama)
    saes = {layer: sae_at(model, layer, seed=layer) for layer in LAYERS}
    target = tiny_tokenizer.decode([IDS[3]])
    graph = attribution_graph(model, tiny_tokenizer, [GraphLayer(s) for s in saes.values()], IDS, target=target,
                              max_feature_nodes=4, node_threshold=1.0, edge_threshold=1.0)
    assert graph.exact and graph.layers == LAYERS
    below_of = {LAYERS[0]: None, LAYERS[1]: saes[LAYERS[0]], LAYERS[2]: saes[LAYERS[1]]}
    by_target: dict[str, list] = {}
    for edge in graph.edges:
        by_target.setdefault(edge.target, []).append(edge)
    checked = 0
    for target_id, incoming in by_target.items():
        key = parse(target_id)
        at = None if key == LOGIT else saes[key[1]]
        below = saes[LAYERS[-1]] if key == LOGIT else below_of[key[1]]

        def value(remove):
            out = pre_activation_with(model, below, at, remove)
            return float(out[graph.target.token_id]) if key == LOGIT else float(out[key[2], key[3]])

        full = _full(model, at, key, graph)
        for edge in incoming[:6]:
            assert full - value(parse(edge.source)) == pytest.approx(edge.weight, rel=1e-6, abs=1e-9)
            checked += 1
        total = sum(e.weight for e in incoming)  # thresholds 1.0: every nonzero input is kept
        assert full == pytest.approx(total + value("all"), rel=1e-6, abs=1e-9)
    assert checked >= 10 and any(parse(t)[0] == "feature" for t in by_target)


def _full(model, at, key, graph) -> float:
    with torch.no_grad():
        if key == LOGIT:
            return graph.metric
        out = {}

        def read(hidden: torch.Tensor) -> None:
            out["pre"] = at.pre_activations(at.normalize(hidden[0])[0])

        with edit_site(model, at.cfg.hook_layer, "resid_post", read):
            model(input_ids=torch.tensor([IDS]))
        return float(out["pre"][key[2], key[3]])


def test_held_nonlinearities_make_a_real_block_linear(tiny_llama):
    """Euler's identity y = sum_i x_i dy/dx_i holds for a homogeneous linear map: with attention patterns,
    norm scales and MLP gates held, a Llama decoder stack is one, and without holding them it is not."""
    model = copy.deepcopy(tiny_llama).double()
    x = torch.randn(1, 6, model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def euler_gap(freeze: bool) -> float:
        leaf = x.clone().requires_grad_(True)
        with torch.enable_grad(), contextlib.ExitStack() as stack:
            if freeze:
                held = stack.enter_context(frozen_nonlinearities(model))
                assert held.exact
            handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: leaf)
            stack.callback(handle.remove)
            y = model(input_ids=torch.zeros(1, 6, dtype=torch.long)).logits[0, -1, :5]
            gaps = [float((y[j] - (leaf * torch.autograd.grad(y[j], leaf, retain_graph=True)[0]).sum()).detach())
                    for j in range(5)]
        return max(abs(g) for g in gaps) / float(y.abs().max())

    assert euler_gap(True) < 1e-9
    assert euler_gap(False) > 1e-3
    with torch.no_grad():  # the hooks leave the values alone and come off afterwards
        plain = model(input_ids=torch.tensor([IDS])).logits
        with frozen_nonlinearities(model):
            held = model(input_ids=torch.tensor([IDS])).logits
        assert torch.equal(plain, held)
        assert not any(m._forward_hooks for m in model.modules())


def test_graph_structure_on_a_real_tiny_model(tiny_llama, tiny_tokenizer):
    model = copy.deepcopy(tiny_llama).double()
    layers = [GraphLayer(sae_at(model, layer, seed=layer), None, f"sae{layer}") for layer in (3, 0)]  # any order
    graph = attribution_graph(model, tiny_tokenizer, layers, IDS, max_feature_nodes=6)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([IDS])).logits[0, -1]
    assert graph.target.token_id == int(logits.argmax()) and graph.metric == pytest.approx(float(logits.max()))
    assert graph.layers == (0, 3) and graph.sae_names == ("sae0", "sae3")
    ids = {n.id for n in graph.nodes}
    assert graph.nodes[0].id == "logit" and all(e.source in ids and e.target in ids for e in graph.edges)
    assert all(any(n.id in (e.source, e.target) for e in graph.edges) for n in graph.nodes)
    level = {None: -1, **{layer: i for i, layer in enumerate(graph.layers)}}
    kinds = {n.id: n for n in graph.nodes}
    for e in graph.edges:  # adjacent levels only, never from a later position
        s, t = kinds[e.source], kinds[e.target]
        t_level = len(graph.layers) if t.kind == "logit" else level[t.layer]
        assert t_level == level[s.layer] + 1 and s.position <= t.position and 0 < e.share <= 1
    assert 0 < graph.computed_nodes <= 1 + 6 * 2 and all(0 <= c <= 1 for c in graph.coverage.values())
    assert 0 <= graph.error_influence <= 1 and all(0 <= n.influence <= 1 for n in graph.nodes)
    fewer = attribution_graph(model, tiny_tokenizer, layers, IDS, max_feature_nodes=6, node_threshold=0.3)
    assert len(fewer.nodes) < len(graph.nodes)


def test_pruning_keeps_the_nodes_and_edges_that_hold_the_threshold():
    a, b, c, d = ("feature", 1, 1, 0), ("feature", 1, 2, 1), ("error", 1, 2), ("token", 0)
    influence = {LOGIT: 1.0, a: 0.5, b: 0.3, c: 0.15, d: 0.05}
    edges = {LOGIT: {a: 5.0, b: -3.0, c: 1.5}, a: {d: 2.0}}
    kept, kept_edges = prune(influence, edges, node_threshold=0.8, edge_threshold=1.0)
    assert kept == {LOGIT, a, b}  # 0.5 + 0.3 = 0.8 of 1.0; c and d are below the line
    assert {(s, t) for s, t, *_ in kept_edges} == {(a, LOGIT), (b, LOGIT)}
    assert [w for *_, w, _ in kept_edges] == [5.0, -3.0]
    kept, kept_edges = prune(influence, edges, node_threshold=1.0, edge_threshold=0.3)
    assert [(s, t) for s, t, *_ in kept_edges] == [(a, LOGIT)]  # 0.53 of 1.5 (the edge scores: 0.53, 0.5, 0.32, 0.16) holds 0.3
    assert kept == {LOGIT, a}  # nodes left without an edge go
    assert node_id(a) == "1/0@1" and node_id(c) == "1/error@2" and node_id(d) == "token@0"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"ids": []}, "messages"),
    ({"ids": [1] * 600}, "messages"),
    ({"target": ""}, "target"),
    ({"max_feature_nodes": 0}, "max_feature_nodes"),
    ({"max_feature_nodes": 65}, "max_feature_nodes"),
    ({"node_threshold": 0.0}, "node_threshold"),
    ({"edge_threshold": 1.5}, "edge_threshold"),
    ({"layers": []}, "sae"),
    ({"layers": "twice"}, "sae"),
])
def test_bad_input_names_its_parameter(tiny_llama, tiny_tokenizer, kwargs, param):
    sae = sae_at(tiny_llama, 1, seed=0).float()
    args = {"layers": [GraphLayer(sae)], "ids": IDS, **kwargs}
    if args["layers"] == "twice":
        args["layers"] = [GraphLayer(sae), GraphLayer(sae)]
    with pytest.raises(SteeringError) as info:
        attribution_graph(tiny_llama, tiny_tokenizer, **args)
    assert info.value.param == param


def test_steps_leave_no_hook_or_grad_mode_behind_and_equal_one_go(tiny_llama, tiny_tokenizer):
    """A server runs the steps between decoding steps, in inference mode, with other forwards in between."""
    model = copy.deepcopy(tiny_llama).double()
    layers = [GraphLayer(sae_at(model, layer, seed=layer)) for layer in (1, 3)]
    build = GraphBuild(model, tiny_tokenizer, layers, IDS, max_feature_nodes=5, chunk=2)
    with torch.inference_mode():
        while not build.done:
            build.step()
            assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
            assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
            model(input_ids=torch.tensor([IDS[::-1]]))  # someone else's forward between two steps
    assert build.steps == 1 + 1 + 3 + 3  # the forward, the logit's inputs, then 5 features per layer in chunks of 2
    stepped, once = build.result(), attribution_graph(model, tiny_tokenizer, layers, IDS, max_feature_nodes=5)
    assert [(n.id, n.influence) for n in stepped.nodes] == [(n.id, n.influence) for n in once.nodes]
    assert [(e.source, e.target, e.weight) for e in stepped.edges] == [(e.source, e.target, e.weight) for e in once.edges]


def test_the_picture_and_circuit_tracer_file(tiny_llama, tiny_tokenizer, tmp_path):
    from PIL import Image

    from steering.attribution.export import circuit_tracer_graph
    from steering.attribution.picture import draw_graph

    model = copy.deepcopy(tiny_llama).double()
    layers = [GraphLayer(sae_at(model, layer, seed=layer), None, f"sae{layer}") for layer in (1, 3)]
    graph = attribution_graph(model, tiny_tokenizer, layers, IDS, max_feature_nodes=4)
    for limit in (36, 3):
        with Image.open(draw_graph(graph, tmp_path / f"g{limit}.png", max_nodes=limit)) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 300
    ct = circuit_tracer_graph(graph, n_layers=4, slug="t", scan="tiny", prompt="p")
    assert ct["metadata"]["transcoder_list"] == ["sae1", "sae3"] and len(ct["nodes"]) == len(graph.nodes)
    by_id = {n["node_id"]: n for n in ct["nodes"]}
    assert len(by_id) == len(ct["nodes"]) and len(ct["links"]) == len(graph.edges)
    for link, edge in zip(ct["links"], graph.edges):
        assert link["weight"] == edge.weight and link["source"] in by_id and link["target"] in by_id
    feature = next(n for n in graph.nodes if n.kind == "feature")
    assert f"{feature.layer}_{feature.feature}_{feature.position}" in by_id
    assert by_id["5_%d_%d" % (graph.target.token_id, len(IDS) - 1)]["is_target_logit"]
