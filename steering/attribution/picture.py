"""Draw an attribution graph as a PNG: layers as rows, positions as columns, edges by weight.

Rows, bottom to top: the prompt's tokens, each SAE layer, the output. The
`max_nodes` nodes of highest influence are drawn (the pruned graph of a long
prompt holds more than a picture can show), with the edges between them.
Only positions that hold a drawn node get a column (a chat template's tokens would
otherwise crowd the picture). A cell shows its `MAX_PER_CELL` nodes of highest
influence, side by side, and "+n" for the rest. Edges: width by the influence
they carry (|share| x the target's influence), blue where the source raises
its target, red where it lowers it. Feature nodes are labelled with their
index and the first part of their catalogue label.
"""

from __future__ import annotations

from pathlib import Path

from steering.attribution.graph import AttributionGraph, GraphNode

MAX_PER_CELL = 4
KIND_STYLE = {  # marker, face colour
    "feature": ("o", "#f2a541"),
    "error": ("s", "#9e9e9e"),
    "sink": ("D", "#333333"),
    "token": ("s", "#cfe3f5"),
    "logit": ("*", "#3a9d5d"),
}


def _row(graph: AttributionGraph, node: GraphNode) -> int:
    if node.kind == "token":
        return 0
    if node.kind == "logit":
        return len(graph.layers) + 1
    return graph.layers.index(node.layer) + 1


def _short(label: str | None, n: int = 16) -> str:
    if not label:
        return ""
    head = label.split(" / ")[0].split(" -> ")[0].strip()
    return head if len(head) <= n else head[: n - 1] + "…"


def draw_graph(graph: AttributionGraph, path: str | Path, title: str | None = None, max_nodes: int = 36) -> Path:
    """Write the graph's picture to `path` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = sorted(graph.nodes, key=lambda n: (n.kind != "logit", -n.influence))[: max_nodes + 1]
    names = {n.id for n in drawn}
    edges = [e for e in graph.edges if e.source in names and e.target in names]
    positions = sorted({n.position for n in drawn})
    column = {p: i for i, p in enumerate(positions)}
    cells: dict[tuple[int, int], list[GraphNode]] = {}
    for node in drawn:
        cells.setdefault((_row(graph, node), node.position), []).append(node)
    xy: dict[str, tuple[float, float]] = {}
    hidden: dict[tuple[int, int], int] = {}
    for (row, pos), nodes in cells.items():
        nodes.sort(key=lambda n: -n.influence)
        shown = nodes[:MAX_PER_CELL]
        hidden[(row, pos)] = len(nodes) - len(shown)
        for j, node in enumerate(shown):
            offset = (j - (len(shown) - 1) / 2) * 0.24
            xy[node.id] = (column[pos] + offset, float(row))
    width = max(7.0, 1.25 * len(positions) + 2)
    height = 1.9 * (len(graph.layers) + 2) + 1
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    influence = {n.id: n.influence for n in drawn}
    strengths = [abs(e.share) * influence.get(e.target, 0.0) for e in edges]
    top = max(strengths, default=1.0) or 1.0
    for edge, strength in sorted(zip(edges, strengths), key=lambda p: p[1]):
        if edge.source not in xy or edge.target not in xy:
            continue
        (x0, y0), (x1, y1) = xy[edge.source], xy[edge.target]
        ax.plot([x0, x1], [y0, y1], color="#2b6cb0" if edge.weight > 0 else "#c53030",
                linewidth=0.3 + 4.5 * strength / top, alpha=0.35 + 0.5 * strength / top, zorder=1)
    for node in drawn:
        if node.id not in xy:
            continue
        x, y = xy[node.id]
        marker, colour = KIND_STYLE[node.kind]
        size = 60 + 500 * min(1.0, node.influence / 0.25) if node.kind != "logit" else 500
        ax.scatter([x], [y], s=size, marker=marker, c=colour, edgecolors="black", linewidths=0.6, zorder=2)
        if node.kind == "feature":
            text = f"{node.feature}\n{_short(node.label)}"
        elif node.kind == "logit":
            text = f"{node.token!r}\np={graph.target.probability:.2f}"
        elif node.kind in ("error", "sink"):
            text = node.kind
        else:
            text = ""
        if text:
            ax.annotate(text, (x, y), xytext=(0, -13 if node.kind != "logit" else 14), textcoords="offset points",
                        ha="center", va="top" if node.kind != "logit" else "bottom", fontsize=6.5, zorder=3)
    for (row, pos), n in hidden.items():
        if n:
            ax.annotate(f"+{n}", (column[pos] + 0.42, row + 0.18), fontsize=6, color="#555555")
    ax.set_xticks(range(len(positions)), [f"{graph.tokens[p]!r}\n{p}" for p in positions], fontsize=7)
    ax.set_yticks(range(len(graph.layers) + 2), ["tokens", *[f"layer {layer}" for layer in graph.layers], "output"])
    ax.set_xlim(-0.7, len(positions) - 0.3)
    ax.set_ylim(-0.6, len(graph.layers) + 1.7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"next token {graph.target.token!r} (logit {graph.metric:.2f}); "
                 f"the {len(drawn) - 1} nodes of highest influence; blue raises, red lowers", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
