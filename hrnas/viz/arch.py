"""The searched-architecture report: per block, surviving channels per kernel and tokens, as a table and
as a picture in the style of the supplement's Figure 1 (cubes = feature maps with channel counts,
arrows = searching blocks).

Input: an architecture spec as produced by `hrnas.models.spec_of(model)` (``blocks[]`` with ``name``,
``inp``, ``oup``, ``stride``, ``kernels``, ``hidden``, ``tokens``). A shrunk network lists only its
surviving kernel paths; a hand-edited spec may keep a path with width 0: both read as "path gone".

- `arch_table(spec, supernet=None)`: one row per block (c3/c5/c7 = hidden channels of each kernel path,
  0 when gone; ``kept_%`` = hidden total vs the supernet's block of the same name).
- `arch_summary(spec, supernet=None)`: blocks reduced to their shortcut, blocks keeping each kernel, totals.
- `draw_architecture(spec, path=None, title=None, supernet=None)`: left-to-right diagram, one row per
  branch (1/4 … 1/32), one column group per fusion/parallel module; arrow width ∝ hidden channels,
  colour = dominant kernel, dashed = reduced to the shortcut, ◆ = transformer tokens; with ``supernet`` the
  supernet's widths are drawn underneath in light grey.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Polygon

from hrnas.errors import UserError
from hrnas.models.factory import block_layout, validate_block
from hrnas.models.searching_block import KERNEL_SIZES
from hrnas.viz.plots import save_figure

KERNELS = KERNEL_SIZES  # the searching block's kernel paths
KERNEL_COLORS = {3: "#1f77b4", 5: "#ff7f0e", 7: "#2ca02c", "mixed": "#7b4fb0"}
SHORTCUT_COLOR = "#8c8c8c"
SUPERNET_COLOR = "#b8b8b8"
TABLE_COLUMNS = ("name", "module", "inp", "oup", "stride", "c3", "c5", "c7", "hidden", "tokens")



# --------------------------------------------------------------------------------------------
# reading a spec
def _blocks(spec, param: str = "spec") -> list[dict]:
    """The spec's blocks, checked and normalised: per-kernel widths in ``paths`` ({3: h3, 5: h5, 7: h7})."""
    if not isinstance(spec, dict) or not isinstance(spec.get("blocks"), list) or not spec["blocks"]:
        raise UserError(f"{param}: expected an architecture spec dict with a non-empty \"blocks\" list "
                        "(hrnas.models.spec_of(model))")
    out, seen = [], set()
    for b in spec["blocks"]:
        validate_block(b, param)
        name = b["name"]
        if name in seen:
            raise UserError(f"{param}: duplicate block '{name}'")
        seen.add(name)
        kernels, hidden, tokens = b["kernels"], b["hidden"], b.get("tokens", 0)
        paths = {k: 0 for k in KERNELS}
        for k, h in zip(kernels, hidden):
            paths[k] = h
        out.append({"name": name, "inp": b["inp"], "oup": b["oup"], "stride": b["stride"], "paths": paths,
                    "hidden": sum(paths.values()), "tokens": tokens})
    return out


def _supernet_lookup(spec_blocks: list[dict], supernet) -> dict[str, dict] | None:
    if supernet is None:
        return None
    ref = {b["name"]: b for b in _blocks(supernet, "supernet")}
    for b in spec_blocks:
        if b["name"] not in ref:
            raise UserError(f"supernet: has no block '{b['name']}' (is it the same task's super network?)")
    return ref


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else float("nan")


# --------------------------------------------------------------------------------------------
# table and summary
def arch_table(spec, supernet=None) -> pd.DataFrame:
    """One row per block: name, module, inp, oup, stride, c3, c5, c7, hidden, tokens (+ kept_% vs ``supernet``)."""
    blocks = _blocks(spec)
    ref = _supernet_lookup(blocks, supernet)
    module = {info.name: info.module for info in block_layout(spec)}
    rows = []
    for b in blocks:
        row = {"name": b["name"], "module": module[b["name"]], "inp": b["inp"], "oup": b["oup"],
               "stride": b["stride"], "c3": b["paths"][3], "c5": b["paths"][5], "c7": b["paths"][7],
               "hidden": b["hidden"], "tokens": b["tokens"]}
        if ref is not None:
            row["kept_%"] = _pct(b["hidden"], ref[b["name"]]["hidden"])
        rows.append(row)
    columns = list(TABLE_COLUMNS) + (["kept_%"] if ref is not None else [])
    df = pd.DataFrame(rows, columns=columns)
    for c in columns[2:10]:
        df[c] = df[c].astype("int64")
    return df


def arch_summary(spec, supernet=None) -> dict:
    """Counts and totals: blocks, blocks reduced to their shortcut, blocks keeping each kernel path, hidden, tokens.

    With ``supernet``: the same totals for the supernet and the kept percentages.
    """
    blocks = _blocks(spec)
    ref = _supernet_lookup(blocks, supernet)
    removed = [b["name"] for b in blocks if b["hidden"] == 0]
    out = {"task": spec.get("task"), "blocks": len(blocks), "blocks_removed": len(removed),
           "removed": removed}
    for k in KERNELS:
        out[f"paths_{k}"] = sum(1 for b in blocks if b["paths"][k] > 0)
    for k in KERNELS:
        out[f"hidden_{k}"] = sum(b["paths"][k] for b in blocks)
    out["hidden_total"] = sum(b["hidden"] for b in blocks)
    out["tokens_total"] = sum(b["tokens"] for b in blocks)
    out["blocks_with_tokens"] = sum(1 for b in blocks if b["tokens"] > 0)
    if ref is not None:
        sup = [ref[b["name"]] for b in blocks]
        for k in KERNELS:
            out[f"supernet_paths_{k}"] = sum(1 for b in sup if b["paths"][k] > 0)
        out["supernet_hidden_total"] = sum(b["hidden"] for b in sup)
        out["supernet_tokens_total"] = sum(b["tokens"] for b in sup)
        out["hidden_kept_%"] = _pct(out["hidden_total"], out["supernet_hidden_total"])
        out["tokens_kept_%"] = _pct(out["tokens_total"], out["supernet_tokens_total"])
    return out


# --------------------------------------------------------------------------------------------
# layout of the diagram
@dataclass
class _Node:
    x: float
    row: int
    channels: int


@dataclass
class _Layout:
    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (block name, src node, dst node)
    links: list[tuple[str, str]] = field(default_factory=list)  # non-block connections (upsample + concat)
    modules: list[tuple[str, float, float, str]] = field(default_factory=list)  # (kind, x0, x1, label)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (node, text) after the last node

    def node(self, key: str, x: float, row: int, channels: int) -> str:
        if key not in self.nodes:
            self.nodes[key] = _Node(x, row, channels)
        return key


def _layout(blocks: list[dict], spec: dict) -> _Layout:
    """Nodes and edges of the diagram, from where the network builder puts each block (``BlockInfo``)."""
    by = {b["name"]: b for b in blocks}
    modules: dict[str, list] = {}
    for info in block_layout(spec):
        modules.setdefault(info.module, []).append(info)
    head = modules.pop("head", [])
    lay = _Layout()
    first = modules[next(iter(modules))][0]
    current = {first.in_branch: lay.node("stem", 0.0, first.in_branch, by[first.name]["inp"])}
    lay.modules.append(("stem", -0.35, 0.35, "stem"))
    x, fusions, parallels = 0.0, 0, 0
    for module, infos in modules.items():
        m_in = len(current)
        if infos[0].role in ("fuse", "new"):
            xf, outs = x + 1.0, {}
            for info in infos:  # new branches start from this fusion's output of the branch above
                src = current[info.in_branch] if info.role == "fuse" else outs[info.in_branch]
                outs[info.to_branch] = lay.node(f"{module}.{info.to_branch}", xf, info.to_branch,
                                                by[info.name]["oup"])
                lay.edges.append((info.name, src, outs[info.to_branch]))
            current = outs
            lay.modules.append(("fuse", xf - 0.35, xf + 0.35, f"Fusion {fusions}\nm_in={m_in}, m_out={len(current)}"))
            fusions, x = fusions + 1, xf
        else:
            chains: dict[int, list] = {}
            for info in infos:
                chains.setdefault(info.in_branch, []).append(info.name)
            span = max(len(c) for c in chains.values())
            for branch, names in chains.items():
                step = span / len(names)
                for m_idx, name in enumerate(names):
                    dst = lay.node(f"{module}.{branch}.{m_idx}", x + (m_idx + 1) * step, branch, by[name]["oup"])
                    lay.edges.append((name, current[branch], dst))
                    current[branch] = dst
            nc = [len(chains.get(b, [])) for b in sorted(current)]
            nw = [lay.nodes[current[b]].channels for b in sorted(current)]
            lay.modules.append(("parallel", x + 0.3, x + span + 0.3, f"Parallel {parallels}\nnc={nc}\nnw={nw}"))
            parallels, x = parallels + 1, x + span
    transform = next((info.name for info in head if info.role == "transform"), None)
    model = spec.get("model", {})
    if transform is not None:
        b = by[transform]
        cat = lay.node("concat", x + 1.0, 0, b["inp"])
        for branch in sorted(current):
            lay.links.append((current[branch], cat))
        out = lay.node("head.out", x + 2.0, 0, b["oup"])
        lay.edges.append((transform, cat, out))
        lay.modules.append(("head", x + 0.65, x + 2.35, "Head\nupsample + concat,\ntransform"))
        classes = model.get("num_classes") if isinstance(model, dict) else None
        lay.notes.append((out, f"1×1 conv → {classes}" if classes else "BEV features → anchor head"))
    elif head:
        nodes = {}
        for info in head:  # incre i: branch i → head node i; down i: head node i → i + 1 (the running sum)
            src = current[info.in_branch] if info.role == "incre" else nodes[info.in_branch]
            nodes[info.to_branch] = lay.node(f"H.{info.to_branch}", x + 1.0 + info.to_branch, info.to_branch,
                                             by[info.name]["oup"])
            lay.edges.append((info.name, src, nodes[info.to_branch]))
        last = nodes[max(nodes)]
        lay.modules.append(("head", x + 0.65, lay.nodes[last].x + 0.35, "Head\nincre + down"))
        classes = model.get("num_classes") if isinstance(model, dict) else None
        lay.notes.append((last, f"1×1 conv, pool, FC → {classes}" if classes else "1×1 conv, pool, FC"))
    return lay


# --------------------------------------------------------------------------------------------
# drawing
def _dominant(paths: dict[int, int]):
    best = max(paths.values())
    if best == 0:
        return None
    winners = [k for k, h in paths.items() if h == best]
    return winners[0] if len(winners) == 1 else "mixed"


def _cube(ax, x: float, y: float, w: float, h: float, d: float, color: str, z: float = 5) -> None:
    """A cube (front face w×h centred at x, y) with its top and right faces as parallelograms."""
    dx, dy = d, 0.7 * d
    x0, x1, y0, y1 = x - w / 2, x + w / 2, y - h / 2, y + h / 2
    faces = [
        ([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], 0.0),
        ([(x0, y1), (x1, y1), (x1 + dx, y1 + dy), (x0 + dx, y1 + dy)], 0.25),
        ([(x1, y0), (x1 + dx, y0 + dy), (x1 + dx, y1 + dy), (x1, y1)], -0.2),
    ]
    base = np.array(to_rgb(color))
    for pts, shade in faces:
        c = np.clip(base + shade * (1 - base) if shade > 0 else base * (1 + shade), 0, 1)
        ax.add_patch(Polygon(pts, closed=True, facecolor=c, edgecolor="0.25", lw=0.6, zorder=z))


def _cube_geometry(node: _Node, max_channels: int, row_height: list[float]) -> tuple[float, float, float]:
    w = 0.06 + 0.16 * math.sqrt(node.channels / max_channels)
    return w, row_height[node.row], 0.07


def draw_architecture(spec, path=None, title: str | None = None, supernet=None, hidden_labels: bool = False):
    """The multi-branch network, left to right: rows = branches (1/4 … 1/32), cubes = feature maps
    (labelled with channels), arrows = searching blocks. Returns the figure (PNG at ``path``)."""
    blocks = _blocks(spec)
    ref = _supernet_lookup(blocks, supernet)
    by = {b["name"]: b for b in blocks}
    lay = _layout(blocks, spec)
    nrows = max(n.row for n in lay.nodes.values()) + 1
    xmax = max(n.x for n in lay.nodes.values())
    max_ch = max(n.channels for n in lay.nodes.values())
    row_height = [0.46 * 0.8 ** r for r in range(nrows)]
    row_gap = 1.05
    scale_ref = max(b["hidden"] for b in (ref.values() if ref is not None else blocks)) or 1

    def width(hidden: int) -> float:
        return 0.6 + 4.0 * math.sqrt(hidden / scale_ref)

    def ypos(row: int) -> float:
        return -row * row_gap

    x_lo, x_hi = -0.9, xmax + (2.6 if lay.notes else 0.9)
    y_lo, y_hi = ypos(nrows - 1) - 0.85, 1.1
    unit = 0.78  # inches per data unit
    legend_h, title_h = 0.75, 0.5
    fig_w = (x_hi - x_lo) * unit
    ax_h = (y_hi - y_lo) * unit
    fig_h = ax_h + legend_h + title_h
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.0, legend_h / fig_h, 1.0, ax_h / fig_h))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_aspect("equal")
    ax.axis("off")

    # module bands and headers
    for kind, x0, x1, label in lay.modules:
        if kind != "stem":
            ax.axvspan(x0, x1, ymin=0.0, ymax=1.0, color="#eef3fa" if kind == "parallel" else
                       "#f6f1e8" if kind == "fuse" else "#eef6ee", zorder=0)
        if kind == "fuse":  # fusion bands are narrow: their headers go below the branches
            ax.text((x0 + x1) / 2, y_lo + 0.05, label, ha="center", va="bottom", fontsize=7.5, zorder=6)
        else:
            ax.text((x0 + x1) / 2, y_hi - 0.05, label, ha="center", va="top", fontsize=7.5, zorder=6)
    for r in range(nrows):
        ax.text(x_lo + 0.1, ypos(r), f"1/{2 ** (r + 2)}", ha="left", va="center", fontsize=9, fontweight="bold")

    def anchor(key: str, side: str, toward_row: int) -> tuple[float, float]:
        n = lay.nodes[key]
        w, h, d = _cube_geometry(n, max_ch, row_height)
        y = ypos(n.row)
        if side == "out":
            return n.x + w / 2 + d, y + 0.3 * h * float(np.clip(n.row - toward_row, -1, 1)) * 0.5
        if side == "in":
            return n.x - w / 2 - 0.02, y + 0.3 * h * float(np.clip(n.row - toward_row, -1, 1))
        if side == "bottom":
            return n.x + d / 2, y - h / 2 - 0.02
        return n.x + d / 2, y + h / 2 + 0.7 * d + 0.02  # top

    def arrow(src: str, dst: str, **kw):
        a, b = lay.nodes[src], lay.nodes[dst]
        if abs(a.x - b.x) < 1e-6:  # new branch: straight down
            p, q = anchor(src, "bottom", b.row), anchor(dst, "top", a.row)
        else:
            p, q = anchor(src, "out", b.row), anchor(dst, "in", a.row)
        ax.add_patch(FancyArrowPatch(p, q, shrinkA=0, shrinkB=0, mutation_scale=7, **kw))
        return p, q

    for src, dst in lay.links:
        arrow(src, dst, arrowstyle="-|>", color="0.6", lw=0.7, linestyle=":", zorder=1)
    for name, src, dst in lay.edges:
        b = by[name]
        if ref is not None:
            arrow(src, dst, arrowstyle="-", color=SUPERNET_COLOR, lw=width(ref[name]["hidden"]) + 1.0, zorder=2)
        dom = _dominant(b["paths"])
        if dom is None:
            p, q = arrow(src, dst, arrowstyle="-|>", color=SHORTCUT_COLOR, lw=0.9, linestyle=(0, (3, 2)), zorder=3)
        else:
            p, q = arrow(src, dst, arrowstyle="-|>", color=KERNEL_COLORS[dom], lw=width(b["hidden"]), zorder=3)
        mid = ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)
        if b["tokens"] > 0:
            ax.plot(*mid, marker="D", ms=2.5 + 1.2 * math.sqrt(b["tokens"]), color="black", mec="white",
                    mew=0.5, zorder=4)
        if hidden_labels:
            ax.text(mid[0], mid[1] + 0.09, str(b["hidden"]), ha="center", va="bottom", fontsize=5, zorder=6)
    vertical_from = {src for _, src, dst in lay.edges if abs(lay.nodes[src].x - lay.nodes[dst].x) < 1e-6}
    for key, n in lay.nodes.items():
        w, h, d = _cube_geometry(n, max_ch, row_height)
        _cube(ax, n.x, ypos(n.row), w, h, d, "#9ecae1" if key != "concat" else "#c7e9c0")
        if key in vertical_from:  # keep the label clear of the arrow leaving the cube's bottom
            ax.text(n.x - w / 2 - 0.03, ypos(n.row) - h / 2, str(n.channels), ha="right", va="top", fontsize=7,
                    zorder=6)
        else:
            ax.text(n.x + d / 2, ypos(n.row) - h / 2 - 0.05, str(n.channels), ha="center", va="top", fontsize=7,
                    zorder=6)
    for key, text in lay.notes:
        n = lay.nodes[key]
        ax.text(n.x + 0.25, ypos(n.row), f"→ {text}", fontsize=7.5, va="center", color="0.25", zorder=6)

    summary = arch_summary(spec, supernet)
    if title is None:
        title = f"HR-NAS {spec.get('task') or ''} network: {summary['blocks']} searching blocks".replace("  ", " ")
    stats = (f"hidden channels {summary['hidden_total']:,}"
             + (f" ({summary['hidden_kept_%']:.1f}% of the supernet)" if ref is not None else "")
             + f", blocks reduced to shortcut {summary['blocks_removed']}, paths 3/5/7: "
             f"{summary['paths_3']}/{summary['paths_5']}/{summary['paths_7']}, tokens {summary['tokens_total']}")
    fig.text(0.5, 1 - 0.2 / fig_h, title, ha="center", va="center", fontsize=12, fontweight="bold")
    fig.text(0.5, 1 - 0.42 / fig_h, stats, ha="center", va="center", fontsize=8.5, color="0.25")
    handles = [Line2D([], [], color=KERNEL_COLORS[k], lw=3, label=f"{k}×{k} dominant") for k in KERNELS]
    dominants = {_dominant(b["paths"]) for b in blocks}
    if "mixed" in dominants:
        handles.append(Line2D([], [], color=KERNEL_COLORS["mixed"], lw=3, label="kernels tied"))
    if None in dominants:
        handles.append(Line2D([], [], color=SHORTCUT_COLOR, lw=1, linestyle=(0, (3, 2)), label="shortcut only"))
    if lay.links:
        handles.append(Line2D([], [], color="0.6", lw=0.8, linestyle=":", label="upsample / concat"))
    if ref is not None:
        handles.append(Line2D([], [], color=SUPERNET_COLOR, lw=5, label="supernet width"))
    if any(b["tokens"] for b in blocks):
        handles.append(Line2D([], [], color="black", marker="D", lw=0, ms=5, label="transformer tokens"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               title="arrow width ∝ hidden channels", title_fontsize=8, bbox_to_anchor=(0.5, 0.0))
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["KERNELS", "KERNEL_COLORS", "TABLE_COLUMNS", "arch_table", "arch_summary", "draw_architecture"]
