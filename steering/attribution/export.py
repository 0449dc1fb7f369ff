"""An attribution graph in circuit-tracer's graph-file layout, for its viewer (and Neuronpedia's).

The viewer reads one JSON object: `metadata` (slug, scan, the dictionaries'
names as `transcoder_list`, the prompt's tokens, node_threshold,
schema_version), `qParams` (the view's pinned nodes and supernodes, empty
here), `nodes` and `links` (source, target, weight). Node ids follow its
scheme: `{layer}_{feature}_{position}` for a feature, `{layer}_-1_{position}`
for an error, `E_{token_id}_{position}` for a token embedding and
`{n_layers + 1}_{token_id}_{position}` for the output logit; `feature` is
the Cantor pairing of (layer, feature index), which the viewer uses as a
unique feature key. Our residual SAEs are not transcoders: the node types
are the viewer's names for the same roles (feature, reconstruction error,
embedding, logit). The sink (position 0 as one node) is written as that
layer's error node at position 0.
"""

from __future__ import annotations

from typing import Any

from steering.attribution.graph import AttributionGraph, GraphNode


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _viewer_node(graph: AttributionGraph, node: GraphNode, n_layers: int) -> dict[str, Any]:
    common = {"ctx_idx": node.position, "run_idx": 0, "reverse_ctx_idx": 0, "influence": node.influence,
              "activation": node.activation, "token_prob": 0.0, "is_target_logit": False, "clerp": node.label or ""}
    if node.kind == "feature":
        nid = f"{node.layer}_{node.feature}_{node.position}"
        return {**common, "node_id": nid, "jsNodeId": f"{node.layer}_{node.feature}-0", "layer": str(node.layer),
                "feature": _cantor(node.layer, node.feature), "feature_type": "cross layer transcoder"}
    if node.kind in ("error", "sink"):
        nid = f"{node.layer}_-1_{node.position}"
        return {**common, "node_id": nid, "jsNodeId": f"{node.layer}_-1-{node.position}", "layer": str(node.layer),
                "feature": -1, "feature_type": "mlp reconstruction error", "clerp": node.kind}
    if node.kind == "token":
        token_id = graph.token_ids[node.position]
        return {**common, "node_id": f"E_{token_id}_{node.position}", "jsNodeId": f"E_{token_id}-{node.position}",
                "layer": "E", "feature": node.position, "feature_type": "embedding", "clerp": ""}
    t = graph.target
    return {**common, "node_id": f"{n_layers + 1}_{t.token_id}_{node.position}", "jsNodeId": f"L_{t.token_id}-{node.position}",
            "layer": str(n_layers + 1), "feature": t.token_id, "feature_type": "logit", "token_prob": t.probability,
            "is_target_logit": True, "clerp": f'Output "{t.token}" (p={t.probability:.3f})', "activation": None}


def circuit_tracer_graph(graph: AttributionGraph, n_layers: int, slug: str, scan: str, prompt: str) -> dict[str, Any]:
    """The graph as circuit-tracer's viewer reads it (module docstring); `n_layers`: the model's layer count."""
    ids = {}
    nodes = []
    for node in graph.nodes:
        out = _viewer_node(graph, node, n_layers)
        ids[node.id] = out["node_id"]
        nodes.append(out)
    links = [{"source": ids[e.source], "target": ids[e.target], "weight": e.weight} for e in graph.edges
             if e.source in ids and e.target in ids]
    return {
        "metadata": {"slug": slug, "scan": scan, "transcoder_list": list(graph.sae_names), "prompt_tokens": list(graph.tokens),
                     "prompt": prompt, "node_threshold": graph.node_threshold, "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
