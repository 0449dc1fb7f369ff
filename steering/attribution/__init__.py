"""Attribution: which (position, feature) pairs at the SAE's layer drove a target logit.

    result = attribute(sm, ids, target=" Paris")     # one forward, one backward
    result.nodes[0].feature, result.nodes[0].score   # the strongest node first

See `steering.attribution.features` for the method.
"""

from steering.attribution.features import MAX_ATTRIBUTION_TOKENS, Attribution, Node, TargetLogit, attribute, logits_without, metric_without

__all__ = ["MAX_ATTRIBUTION_TOKENS", "Attribution", "Node", "TargetLogit", "attribute", "logits_without", "metric_without"]
