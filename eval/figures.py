"""The perturbation-sweep plot (the paper's Fig. 3) and the fine-feature Pareto figure from a results tree.

    python -m eval.figures RESULTS_DIR [--task davis] [--metric J&F-Mean] [--out fig3.png]
    python -m eval.figures RESULTS_DIR --pareto [--task davis] [--metric J&F-Mean] [--out pareto.png]

``--pareto``: the ``upsampler=...`` runs of a task, its metric against compute, wall time and peak memory, one
point per method and setting, the Pareto front marked (:mod:`eval.pareto`).

For every (backbone, weights, settings[, dataset, head]) that has a level-0 run (the baseline) and SRT runs at
other levels (``srt.method=shift``), it plots the relative improvement of the metric over level 0, in percent,
against the perturbation level: one line per backbone. The paper's Fig. 3 shows this for DAVIS J&F with
ViT-S/16 and ViT-B/16 (levels 1-5 or so; its values are only drawn, not printed, so they are not overlaid).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pandas as pd

from srt.errors import UserError, report_user_errors
from srt.io import atomic_write_bytes

from .tables import load_results, rel_gain

LOWER_IS_BETTER = {"RMSE", "RMSE_log", "AbsRel", "SqRel"}


def sweep_curves(results: pd.DataFrame, task: str, metric: str) -> dict[str, pd.Series]:
    """label -> relative improvement (%) indexed by level, for groups with a baseline and >= 1 other level."""
    runs = results[
        (results["task"] == task) & (results["metric"] == metric) & results["method"].isin(("baseline", "+SRT"))
    ]
    curves = {}
    group_keys = ["backbone", "weights", "settings", "dataset", "head"]
    for key, group in runs.groupby(group_keys, sort=True):
        by_level = group.set_index("level")["value"].sort_index()
        if 0 not in by_level.index or len(by_level) < 2:
            continue
        base = by_level.loc[0]
        gains = pd.Series({lv: rel_gain(v, base, metric in LOWER_IS_BETTER) for lv, v in by_level.items()})
        backbone, weights, settings, dataset, head = key
        label = " ".join(p for p in (backbone, f"({weights})" if weights != "pretrained" else "", dataset, head) if p)
        curves[label + (f" [{settings}]" if settings else "")] = gains
    return curves


def plot_sweep(curves: dict[str, pd.Series], title: str, references: Optional[dict[str, float]] = None) -> bytes:
    """A PNG of the curves (matplotlib's object API: no display backend needed); ``references`` are
    level-free results (e.g. the naive ensemble), drawn as dashed horizontal lines at their value."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=150)
    ax = fig.add_subplot()
    for label, gains in curves.items():
        ax.plot(gains.index, gains.values, marker="o", label=textwrap.fill(label, 48))
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=f"C{len(curves) + i}", linestyle="--", linewidth=1.2, label=textwrap.fill(label, 48))
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlabel("perturbation level (px)")
    ax.set_ylabel("relative improvement over level 0 (%)")
    ax.set_title(title, fontsize=9)
    levels = sorted({lv for g in curves.values() for lv in g.index})
    ax.set_xticks(levels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def check_task_and_metric(results: pd.DataFrame, root: str | os.PathLike, task: str, metric: str) -> None:
    """UserError naming what exists when no run under ``root`` has ``task`` or ``metric``."""
    tasks = sorted(set(results["task"]))
    if task not in tasks:
        found = f"tasks with runs: {', '.join(tasks)}" if tasks else "no metrics.json at all"
        raise UserError(f"--task {task}: no {task} run under {root}; {found}")
    metrics = sorted(set(results.loc[results["task"] == task, "metric"]))
    if metric not in metrics:
        raise UserError(f"--metric {metric}: no {task} run under {root} has it; {task} metrics: {', '.join(metrics)}")


def make_sweep_figure(
    root: str | os.PathLike, out: str | os.PathLike, task: str = "davis", metric: str = "J&F-Mean"
) -> Optional[Path]:
    """Write the sweep PNG; None (nothing written) when no backbone has a baseline and another level.
    UserError when no run has ``task`` or ``metric`` (the message lists those that exist)."""
    results, _ = load_results(root)
    check_task_and_metric(results, root, task, metric)
    curves = sweep_curves(results, task, metric)
    if not curves:
        return None
    atomic_write_bytes(out, plot_sweep(curves, f"{task}: {metric} vs perturbation level (cf. paper Fig. 3)"))
    return Path(out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Relative improvement over level 0 vs perturbation level (paper Fig. 3), or with --pareto the "
        "fine-feature methods' metric against cost."
    )
    parser.add_argument("results", type=Path)
    parser.add_argument("--task", default="davis")
    parser.add_argument("--metric", default=None, help="default: J&F-Mean; with --pareto the task's main metric")
    parser.add_argument("--pareto", action="store_true", help="accuracy against cost of the upsampler=... runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG path (default: RESULTS/fig3_<task>.png or RESULTS/pareto_<task>.png)",
    )
    args = parser.parse_args(argv)
    if args.pareto:
        from .pareto import PRIMARY, make_pareto_figure

        out = args.out or args.results / f"pareto_{args.task}.png"
        metric = args.metric or PRIMARY.get(args.task, "")
        written = make_pareto_figure(args.results, out, args.task, metric)
        nothing = f"no upsampler=... runs of {args.task} with {metric} (and a cost record)"
    else:
        out = args.out or args.results / f"fig3_{args.task}.png"
        metric = args.metric or "J&F-Mean"
        written = make_sweep_figure(args.results, out, args.task, metric)
        nothing = f"no backbone has {args.task} runs with {metric} at level 0 and at another level"
    if written is None:
        print(
            f"python -m eval.figures: nothing to plot: {nothing} under {args.results}; nothing written", file=sys.stderr
        )
        return 1
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.figures"))
