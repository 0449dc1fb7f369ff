"""Attribution: which features drove a target logit, at the SAE's layer or as a graph across layers.

    result = attribute(sm, ids, target=" Paris")     # one forward, one backward, at the SAE's layer
    result.nodes[0].feature, result.nodes[0].score   # the strongest node first
    graph = attribution_graph(model, tokenizer, graph_layers(sm), ids)   # across every shipped SAE's layer

`features` holds the single-layer method and true removals, `tracing` the
graph's build (`linearise` holds the model's nonlinearities for it),
`graph` its data and pruning, `picture` a PNG of it, `export` circuit-tracer's
file, `evaluate` the check against removals.
"""

from steering.attribution.features import MAX_ATTRIBUTION_TOKENS, Attribution, Node, TargetLogit, attribute, logits_without, metric_without
from steering.attribution.graph import MAX_FEATURE_NODES, AttributionGraph, GraphEdge, GraphLayer, GraphNode, graph_layers
from steering.attribution.tracing import GraphBuild, attribution_graph

__all__ = ["MAX_ATTRIBUTION_TOKENS", "MAX_FEATURE_NODES", "Attribution", "AttributionGraph", "GraphBuild", "GraphEdge",
           "GraphLayer", "GraphNode", "Node", "TargetLogit", "attribute", "attribution_graph", "graph_layers", "logits_without",
           "metric_without"]
