"""Accuracy against cost of the fine-feature methods (``upsampler=...`` runs): points, Pareto fronts, figure, table.

Every run record (``metrics.json``, :mod:`eval.run_record`) with a ``cost`` entry (written by run.py for
``upsampler.method`` other than ``srt``) is one point: its task metric against three costs, each from the run itself:

- ``compute``: ViT compute per image in plain-pass equivalents (``cost.pass_equivalents``: forward passes,
  weighted by their token count and the quadratic attention; = forward passes for methods on the plain grid);
- ``time``: measured seconds per image of the feature calls (``cost.seconds_per_image``);
- ``memory``: measured peak memory of a feature call above what was resident before it (``cost.peak_mib``).

A point is on the Pareto front of a cost axis when no other point of the same group (task, dataset, backbone,
weights, metric) is at least as good on the metric and at least as cheap, and strictly better on one of them.
``python -m eval.figures RESULTS --pareto`` draws the figure; ``python -m eval.tables`` adds the table.
This module reads records only; it imports nothing from tasks/.
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from srt.errors import UserError
from srt.io import atomic_write_bytes

from .run_record import UPSAMPLER_LABELS, read_records
from .table_format import DASH, RANDOM_NOTE, Table

AXES = {
    "compute": ("pass_equivalents", "ViT compute per image (plain-pass equivalents)"),
    "time": ("seconds_per_image", "feature time per image (s)"),
    "memory": ("peak_mib", "peak memory of a feature call (MiB)"),
}
#: metric shown per task (higher is better unless listed in LOWER_IS_BETTER)
PRIMARY = {"davis": "J&F-Mean", "saliency": "maxF", "discovery": "CorLoc", "fidelity": "cosine", "toy": "flip_cosine"}
TABLE_METRICS = {
    "davis": ("J&F-Mean", "J-Mean", "F-Mean"),
    "saliency": ("maxF", "IoU", "Acc"),
    "discovery": ("CorLoc",),
    "fidelity": ("cosine", "edge_corr", "edge_ratio"),
}
LOWER_IS_BETTER = {"RMSE", "RMSE_log", "AbsRel", "SqRel"}
GROUP = ["task", "dataset", "backbone", "weights"]


def point_label(upsampler: dict, srt: dict, cost: dict) -> str:
    """A readable name for a method and its setting, e.g. ``SRT L3, 9 stratified shifts`` or ``stride s=7``."""
    method = upsampler.get("method", "?")
    name = UPSAMPLER_LABELS.get(method, method)
    passes = cost.get("passes")
    shifts = ""
    if method in ("srt_dense", "stride_srt", "shift_jitter"):
        level = srt.get("level", 0)
        shifts = f"L{level}"
        if srt.get("step", 1) != 1:
            shifts += f" step {srt['step']}"
        if srt.get("samples"):
            shifts += f", {srt['samples']} {srt.get('sampling', 'random')} shifts"
        else:
            shifts += f", {passes} shifts"
    if method == "srt_dense":
        return f"SRT {shifts}"
    if method == "stride":
        return f"stride s={upsampler.get('stride') or cost.get('stride')}"
    if method == "stride_srt":
        return f"SRT {shifts} on stride s={upsampler.get('stride') or cost.get('stride')}"
    if method == "shift_jitter":
        return f"shifts+jitter {shifts}"
    if method == "jitter":
        return f"colour jitter x{passes} + {upsampler.get('interpolation', 'nearest')}"
    return name


def load_points(root: str | os.PathLike) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per (run with a cost record, metric): group keys, label, the cost columns, metric, value."""
    rows, skipped = [], []
    for path, record in read_records(root, skipped):
        cost = record.cost
        if not isinstance(cost, dict):
            continue
        upsampler = record.upsampler or record.config.get("upsampler") or {}
        base = {
            "task": str(record.task["name"]),
            "dataset": record.task.get("dataset") or "",
            "backbone": str(record.config["backbone"]["name"]),
            "weights": record.weights_kind,
            "label": point_label(upsampler, record.config.get("srt", {}), cost),
            "method": str(upsampler.get("method", "?")),
            "stride": cost.get("stride"),
            "passes": cost.get("passes"),
            "tokens_per_pass": cost.get("tokens_per_pass"),
            "pass_equivalents": cost.get("pass_equivalents"),
            "seconds_per_image": cost.get("seconds_per_image"),
            "peak_mib": cost.get("peak_mib"),
            # width x height, as image sizes are written elsewhere (DAVIS frames 840x476); the record holds [H, W]
            "image_size": "x".join(map(str, reversed(cost.get("image_size") or []))),
            "finished": record.finished,
            "path": str(path),
        }
        rows += [{**base, "metric": name, "value": value} for name, value in record.metrics.items()]
    columns = [*GROUP, "label", "method", "stride", "passes", "tokens_per_pass", "pass_equivalents"]
    columns += ["seconds_per_image", "peak_mib", "image_size", "finished", "path", "metric", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    if not frame.empty:  # the same point run twice: the most recent counts
        frame = frame.sort_values(["finished", "path"], kind="stable")
        frame = frame.drop_duplicates([*GROUP, "label", "stride", "metric"], keep="last").reset_index(drop=True)
    return frame, skipped


def pareto_front(cost: list[float], value: list[float], lower_is_better: bool = False) -> list[bool]:
    """Which points no other point dominates (cost lower is better; value higher unless ``lower_is_better``).
    Points with a missing cost or value are never on the front."""
    sign = -1.0 if lower_is_better else 1.0
    ok = [not (c is None or v is None or math.isnan(c) or math.isnan(v)) for c, v in zip(cost, value)]
    front = []
    for i, (c, v) in enumerate(zip(cost, value)):
        if not ok[i]:
            front.append(False)
            continue
        dominated = any(
            ok[j] and cost[j] <= c and sign * value[j] >= sign * v and (cost[j] < c or sign * value[j] > sign * v)
            for j in range(len(cost))
            if j != i
        )
        front.append(not dominated)
    return front


def points_for(frame: pd.DataFrame, task: str, metric: str) -> dict[tuple, pd.DataFrame]:
    """The points of one task and metric, per group, with a ``front_<axis>`` column per cost axis."""
    sel = frame[(frame["task"] == task) & (frame["metric"] == metric)]
    out = {}
    for key, group in sel.groupby(GROUP, sort=True):
        group = group.sort_values(["pass_equivalents", "label"]).reset_index(drop=True)
        for axis, (column, _) in AXES.items():
            costs = [float(v) if v is not None and not pd.isna(v) else math.nan for v in group[column]]
            group[f"front_{axis}"] = pareto_front(costs, list(group["value"].astype(float)), metric in LOWER_IS_BETTER)
        out[key] = group
    return out


#: colour of each method in the figure (methods not listed: grey)
METHOD_COLOURS = {
    "srt_dense": "C0",
    "stride": "C1",
    "stride_srt": "C2",
    "jitter": "C4",
    "shift_jitter": "C6",
    "nearest": "0.65",
    "bilinear": "0.15",
}


def short_label(label: str, method: str) -> str:
    """The point's label in the figure, short (the legend names the method by colour)."""
    text = label.replace(" stratified shifts", " strat.").replace(" shifts", "")
    for prefix in ("SRT ", "colour jitter "):
        if text.startswith(prefix) and method != "stride_srt":
            text = text[len(prefix) :]
    return text.replace(" on stride s=", " / s=").replace("shifts+jitter ", "jit. ")


def group_title(key: tuple, group: pd.DataFrame) -> str:
    """The title of a group's row of panels: task, dataset, backbone, the weights (random said loudly), sizes."""
    task, dataset, backbone, weights = key
    sizes = ", ".join(sorted(set(group["image_size"]) - {""}))
    title = f"{task}{' ' + dataset if dataset else ''}: {backbone}, weights {weights}"
    title += f", images {sizes}" if sizes else ""
    if weights == "random":
        title += "  (RANDOM WEIGHTS: pipeline check only)"
    return title


#: alternate label placement (offset points) to reduce collisions
LABEL_OFFSETS = ((4, 3), (4, -8), (-4, 5), (-4, -9))


def draw_cost_panel(ax, group: pd.DataFrame, axis: str, metric: str, methods_seen: dict[str, str]) -> None:
    """One panel: the group's points, metric against the cost ``axis``, coloured by method and labelled with
    their setting; the Pareto front ringed in red and joined by a step line. ``methods_seen`` gathers the legend."""
    from matplotlib.ticker import NullFormatter

    column, xlabel = AXES[axis]
    data = group[[column, "value", "label", "method", f"front_{axis}"]].dropna(subset=[column, "value"])
    data = data.sort_values([column, "value"]).reset_index(drop=True)
    front = data[data[f"front_{axis}"]]
    for method, part in data.groupby("method"):
        colour = METHOD_COLOURS.get(method, "0.6")
        methods_seen[UPSAMPLER_LABELS.get(method, method)] = colour
        ax.scatter(part[column], part["value"], color=colour, s=30, zorder=3)
    ax.scatter(front[column], front["value"], facecolors="none", edgecolors="C3", s=110, linewidths=1.4, zorder=4)
    if len(front) > 1:
        ax.step(front[column], front["value"], where="post", color="C3", linewidth=1, zorder=2)
    for i, r in data.iterrows():
        dx, dy = LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
        ax.annotate(
            short_label(r["label"], r["method"]),
            (r[column], r["value"]),
            fontsize=6,
            xytext=(dx, dy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right",
        )
    if len(data) and (data[column] > 0).all() and data[column].max() / max(data[column].min(), 1e-12) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.08)


def pareto_figure(groups: dict[tuple, pd.DataFrame], task: str, metric: str):
    """The matplotlib Figure: one row of three panels (compute, time, memory) per group, each row titled with
    its backbone and weights (:func:`group_title`), a legend of the methods and the front."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = max(len(groups), 1)
    fig = Figure(figsize=(15, 4.8 * n + 0.6), dpi=100)
    axes = fig.subplots(n, 3, squeeze=False)
    methods_seen: dict[str, str] = {}
    for row, (key, group) in enumerate(groups.items()):
        for col, axis in enumerate(AXES):
            draw_cost_panel(axes[row][col], group, axis, metric, methods_seen)
        axes[row][0].set_title(group_title(key, group), fontsize=8, loc="left")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in methods_seen.items()]
    handles.append(Line2D([], [], marker="o", linestyle="-", color="C3", markerfacecolor="none", label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    fig.suptitle(f"{task}: {metric} against cost, one point per method and setting", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 / n, 1, 1))
    return fig


def plot_pareto(groups: dict[tuple, pd.DataFrame], task: str, metric: str) -> bytes:
    """:func:`pareto_figure` as PNG bytes."""
    buf = io.BytesIO()
    pareto_figure(groups, task, metric).savefig(buf, format="png")
    return buf.getvalue()


def make_pareto_figure(
    root: str | os.PathLike, out: str | os.PathLike, task: str = "davis", metric: Optional[str] = None
) -> Optional[Path]:
    """Write the Pareto PNG for ``task``; UserError when no ``upsampler=...`` run (with a cost record) has
    ``task`` or ``metric`` (the message lists those that exist)."""
    frame, skipped = load_points(root)
    for _, reason in skipped:
        print(f"warning: skipped {reason}", file=sys.stderr)
    metric = metric or PRIMARY.get(task, "")
    tasks = sorted(set(frame["task"]))
    if task not in tasks:
        found = f"tasks with such runs: {', '.join(tasks)}" if tasks else "there is none"
        raise UserError(
            f"--task {task}: no {task} run of an upsampler=... method (a metrics.json with a cost record) under "
            f"{root}; {found}"
        )
    metrics = sorted(set(frame.loc[frame["task"] == task, "metric"]))
    if metric not in metrics:
        raise UserError(f"--metric {metric}: no {task} run under {root} has it; {task} metrics: {', '.join(metrics)}")
    groups = points_for(frame, task, metric)
    if not groups:
        return None
    atomic_write_bytes(out, plot_pareto(groups, task, metric))
    return Path(out)


def pareto_tables(root: str | os.PathLike) -> list[Table]:
    """One :class:`eval.table_format.Table` per (task, dataset, backbone, weights) group of points: methods by compute,
    the task's metrics, the costs and which fronts each point is on."""
    frame, _ = load_points(root)
    tables = []
    if frame.empty:
        return tables
    for task in sorted(set(frame["task"])):
        primary = PRIMARY.get(task) or sorted(set(frame[frame["task"] == task]["metric"]))[0]
        metrics = [m for m in TABLE_METRICS.get(task, (primary,)) if m in set(frame["metric"])]
        for key, group in points_for(frame, task, primary).items():
            _, dataset, backbone, weights = key
            rows, cells = [], []
            for r in group.itertuples(index=False):
                others = frame[
                    (frame["task"] == task)
                    & (frame["dataset"] == dataset)
                    & (frame["backbone"] == backbone)
                    & (frame["weights"] == weights)
                    & (frame["label"] == r.label)
                    & (frame["stride"] == r.stride)
                ].set_index("metric")["value"]
                fronts = "".join(a[0].upper() for a in AXES if getattr(r, f"front_{a}"))
                row = {"method": r.label, "stride": r.stride}
                row.update({m: float(others.get(m, math.nan)) for m in metrics})
                row.update(
                    {
                        "passes": r.passes,
                        "tokens/pass": r.tokens_per_pass,
                        "compute (pass eq.)": r.pass_equivalents,
                        "s/image": r.seconds_per_image,
                        "peak MiB": r.peak_mib,
                        "front": fronts,
                    }
                )
                rows.append(row)
                cell = {k: v for k, v in row.items()}
                for m in metrics:
                    cell[m] = DASH if math.isnan(row[m]) else f"{row[m]:.3f}"
                cell["compute (pass eq.)"] = f"{r.pass_equivalents:.2f}" if r.pass_equivalents is not None else DASH
                cell["s/image"] = DASH if pd.isna(r.seconds_per_image) else f"{r.seconds_per_image:.2f}"
                cell["peak MiB"] = DASH if pd.isna(r.peak_mib) else f"{r.peak_mib:.0f}"
                cell["front"] = fronts or DASH
                cells.append(cell)
            sizes = ", ".join(sorted(set(group["image_size"]) - {""}))
            title = (
                f"{task}{' ' + dataset if dataset else ''}: fine features, accuracy against cost "
                f"({backbone}, weights {weights}{', images ' + sizes if sizes else ''})"
            )
            notes = [
                f"Sorted by compute. front: on the Pareto front of {primary} against C = compute (ViT plain-pass "
                "equivalents), T = measured time, M = measured peak memory of a feature call.",
            ]
            if weights == "random":
                notes.append(RANDOM_NOTE)
            tables.append(Table(None, title, pd.DataFrame(rows), pd.DataFrame(cells), notes))
    return tables
