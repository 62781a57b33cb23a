"""From prepared data and weights to the paper's tables: plan, run, report (``make paper``).

    python -m scripts.paper --dry-run                        the plan only: every run, its passes, a time estimate
    python -m scripts.paper                                  plan, then run every preset, then results/paper/REPORT.md
    python -m scripts.paper shard=1/4 device=cuda:0          any run.py override passes through to every run
    python -m scripts.paper --presets table3 paths.data_root=/data

The plan lists each run of the paper's presets (:data:`scripts.presets.PAPER_PRESETS`, expanded as ``run.py -m``
expands them) on its own line: its status (to run, finished, or missing its dataset or weights), the forward
passes per image the run will record (``passes`` in its metrics.json: the extractor's, built from the run's own
settings on a random-weight copy of its backbone), the images it reads and an estimated time. The estimate's
basis is printed with it: a timing probe of each backbone's forward pass (random weights, batch 1, the task's
usual image size, on the device the runs will use) times passes x images (x2 where the protocol averages a
horizontal flip); heads, NCut, label propagation and I/O are not counted, so it is a lower bound.

Then each run goes through ``python run.py +experiment=<preset> <its sweep values> <overrides>`` (a single run
of the preset's multirun: the same config, the same run directory), so finished runs are skipped and interrupted
ones resume; runs whose data or weights are missing are not started. Finally ``REPORT.md`` under the results
folder: the missing datasets and weights as named rows, Tables 1-4 (eval.tables: ours beside the paper's), Fig. 3
and the upsampler Pareto figures (eval.figures / eval.pareto).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import presets  # noqa: E402
from srt.errors import MissingFileError, UserError, paragraph, report_user_errors  # noqa: E402

#: the image size each task's frames are usually resized to (for the timing probe; rounded to the patch size)
PROBE_HW = {
    "davis": (480, 832),
    "distill": (480, 832),
    "fidelity": (480, 832),
    "depth": (480, 640),
    "saliency": (320, 400),
    "discovery": (368, 496),
    "retrieval": (224, 224),
    "visualize": (224, 224),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class PlannedRun:
    preset: str
    job: list[str]
    status: str = "to run"  # to run | finished | missing | invalid
    reason: str = ""  # what is missing / why invalid
    missing: Optional[tuple[str, str]] = None  # ("dataset" | "weights", name)
    task: str = ""
    backbone: str = ""
    run_dir: Optional[Path] = None
    passes: Optional[int] = None
    items: Optional[int] = None
    flip: bool = False
    seconds: Optional[float] = None
    full_size: bool = False  # images is the full dataset's size (the dataset is not on disk)
    also_in: list[str] = field(default_factory=list)

    def line(self, results: Path) -> str:
        where = (
            self.run_dir.relative_to(results) if self.run_dir and self.run_dir.is_relative_to(results) else self.run_dir
        )
        est = f"~{_duration(self.seconds)}" if self.seconds is not None else "-"
        passes = "-" if self.passes is None else str(self.passes)
        items = "-" if self.items is None else f"~{self.items}" if self.full_size else str(self.items)
        flip = " x2 (flip)" if self.flip else ""
        extra = f" ({self.reason})" if self.reason else ""
        also = f" [also {', '.join(self.also_in)}]" if self.also_in else ""
        return (
            f"{self.status:8s} {self.preset:17s} {' '.join(self.job) or '(no sweep)':45s} passes={passes}{flip} "
            f"images={items} est={est} -> {where}{also}{extra}"
        )


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# ----------------------------------------------------------------------------------------------
# The plan


class Probe:
    """Random-weight backbones (one per architecture) for pass counts and forward timings on one device."""

    def __init__(self, device: str, reps: int):
        from tasks import runner

        self.device = runner.resolve_device(device)
        self.reps = reps
        self.models: dict[tuple, Any] = {}
        self.times: dict[tuple, float] = {}

    def backbone(self, p) -> Any:
        import srt

        key = (p.backbone.name, tuple(sorted(p.backbone.model_kwargs.items())))
        if key not in self.models:
            self.models[key] = srt.load_backbone(
                p.backbone.name, pretrained=False, outputs=("tokens",), **p.backbone.model_kwargs
            ).to(self.device)
        return self.models[key], key

    def seconds_per_pass(self, p) -> float:
        import torch

        bb, key = self.backbone(p)
        h, w = PROBE_HW.get(p.task.name, (224, 224))
        h, w = max(bb.patch_size, h - h % bb.patch_size), max(bb.patch_size, w - w % bb.patch_size)
        if (key, h, w) not in self.times:
            x = torch.randn(1, 3, h, w, device=self.device)
            with torch.no_grad():
                bb(x)  # warm-up
                self._sync()
                t0 = time.perf_counter()
                for _ in range(self.reps):
                    bb(x)
                self._sync()
            self.times[(key, h, w)] = (time.perf_counter() - t0) / self.reps
        return self.times[(key, h, w)]

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def basis(self) -> str:
        rows = [f"{k[0]} {h}x{w}: {t * 1000:.1f} ms/pass" for (k, h, w), t in sorted(self.times.items())]
        return (
            f"estimate = images x passes x (one backbone forward pass, batch 1, random weights, timed over {self.reps} "
            f"passes after a warm-up on {self.device}); heads, NCut, propagation and I/O not counted (a lower bound). "
            f"Probe: {'; '.join(rows) or 'nothing to time'}"
        )


def count_items(task) -> int:
    """Images a run reads (what its passes are multiplied by)."""
    if callable(getattr(task, "items", None)):
        return len(task.items())
    files = task.data_files()
    if files is None:
        return 0
    names = [Path(path).name.lower() for path in files.files.values()]  # keys may be item ids (visualize)
    jpgs = sum(1 for n in names if n.endswith(IMAGE_SUFFIXES))
    return jpgs or sum(1 for n in names if n.endswith(".png"))


def missing_weights(p) -> Optional[str]:
    import srt

    try:
        srt.backbones.check_weights(p.backbone.name, p.backbone.pretrained)
        if p.task.name == "depth" and p.task.cfg.head_weights != "random":
            from tasks.depth_heads import resolve_head_checkpoint

            resolve_head_checkpoint(p.backbone.name, p.task.cfg.head, p.task.cfg.head_weights, download=False)
    except MissingFileError as e:
        return paragraph(e)
    return None


#: images of each full dataset (the estimate of a run whose dataset is not on disk yet)
FULL_ITEMS = {
    ("davis", "val"): 1999,
    ("saliency", "ECSSD"): 1000,
    ("saliency", "DUTS-TE"): 5019,
    ("saliency", "DUT-OMRON"): 5168,
    ("discovery", "trainval"): 5011,
    ("retrieval", "roxford5k"): 5063,
    ("retrieval", "rparis6k"): 6392,
    ("depth", ""): 654,
}


def full_items(task) -> Optional[int]:
    cfg = task.cfg
    part = getattr(cfg, "dataset", None) or getattr(cfg, "split", None) or getattr(cfg, "image_set", None) or ""
    return FULL_ITEMS.get((task.name, "" if task.name == "depth" else str(part)))


def plan_run(r: PlannedRun, overrides: list[str], probe: Probe) -> None:
    """Fill in one run's status, run directory, passes, images and estimate (never raises a UserError). A run
    missing its dataset is estimated on the full dataset's size (``images=~N``)."""
    from tasks import runner
    from tasks.run_identity import config_hash, finished_record, run_key

    cfg = presets.compose_job(r.preset, r.job, overrides)
    r.task = cfg.task.name
    try:
        p = runner.plan(cfg)
    except UserError as e:
        r.status, r.reason = "invalid", paragraph(e)
        return
    r.run_dir, r.backbone = p.run_dir, p.backbone.name
    r.flip = bool(getattr(p.task.cfg, "use_flip", False))
    bb, _ = probe.backbone(p)
    r.passes = int(runner.build_feature_extractor(bb, p).passes)
    data = None
    try:
        data = p.task.data_identity()
        r.items = count_items(p.task)
    except UserError as e:
        dataset = getattr(p.task.cfg, "dataset", None) or p.task.name
        r.status, r.reason, r.missing = "missing", paragraph(e), ("dataset", str(dataset))
        r.items, r.full_size = full_items(p.task), True
    if r.items is not None:
        r.seconds = r.items * r.passes * (2 if r.flip else 1) * probe.seconds_per_pass(p)
    if data is None:
        return
    weights = missing_weights(p)
    if weights:
        r.status, r.reason, r.missing = "missing", weights, ("weights", p.backbone.name)
        return
    key_hash = config_hash(run_key(p.task, cfg.backbone, cfg.srt, data, cfg.get("upsampler")))
    if finished_record(p.run_dir, key_hash) is not None:
        r.status = "finished"


def build_plan(
    names: list[str], overrides: list[str], probe: Probe, results: Optional[Path] = None
) -> list[PlannedRun]:
    """Every run of the presets, planned one by one (with ``results``, each line printed as soon as it is known)."""
    runs: list[PlannedRun] = []
    by_dir: dict[Path, PlannedRun] = {}
    with presets.hydra_conf():
        for preset in names:
            for job in presets.sweep(preset, overrides):
                r = PlannedRun(preset, job)
                plan_run(r, overrides, probe)
                first = by_dir.get(r.run_dir) if r.run_dir is not None and r.status != "invalid" else None
                if first is not None:  # e.g. Fig. 3 reuses Table 1's runs: one run, listed once
                    first.also_in.append(f"{preset} {' '.join(job)}")
                    if results is not None:
                        print(f"  {'same':8s} {preset:17s} {' '.join(job):45s} = {first.preset} {' '.join(first.job)}")
                    continue
                if r.run_dir is not None:
                    by_dir[r.run_dir] = r
                runs.append(r)
                if results is not None:
                    print("  " + r.line(results), flush=True)
    return runs


def print_plan(runs: list[PlannedRun], results: Path, probe: Probe) -> None:
    print(f"Plan: {len(runs)} runs of {', '.join(dict.fromkeys(r.preset for r in runs))} (results under {results})")
    todo = [r for r in runs if r.status == "to run"]
    total = sum(r.seconds or 0 for r in todo)
    all_s = sum(r.seconds or 0 for r in runs if r.status != "finished")
    counts = {s: sum(1 for r in runs if r.status == s) for s in ("to run", "finished", "missing", "invalid")}
    print(
        f"To run: {counts['to run']} ({sum((r.passes or 0) * (r.items or 0) * (2 if r.flip else 1) for r in todo)} "
        f"forward passes, ~{_duration(total)}); finished: {counts['finished']}; missing data or weights: "
        f"{counts['missing']}; invalid: {counts['invalid']}; everything not finished, missing data on its full "
        f"size: ~{_duration(all_s)}"
    )
    print(f"Basis of the estimate: {probe.basis()}")


# ----------------------------------------------------------------------------------------------
# Running and reporting


def execute(runs: list[PlannedRun], overrides: list[str]) -> list[tuple[PlannedRun, int]]:
    from tqdm import tqdm

    done = []
    for r in tqdm([r for r in runs if r.status == "to run"], desc="paper runs", unit="run"):
        cmd = [sys.executable, "run.py", *presets.job_command(r.preset, r.job, overrides)]
        print(f"\n$ {' '.join(cmd[1:])}", flush=True)
        done.append((r, subprocess.run(cmd, cwd=presets.REPO).returncode))
    return done


def missing_rows(runs: list[PlannedRun]) -> list[str]:
    rows: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in runs:
        if r.missing:
            rows.setdefault(r.missing, []).append(r)
    if not rows:
        return ["Nothing was missing: every planned run had its dataset and weights."]
    out = ["| missing | name | runs not done | first reason |", "|---|---|---|---|"]
    for (kind, name), rs in sorted(rows.items()):
        presets_ = ", ".join(dict.fromkeys(r.preset for r in rs))
        fix = "python -m scripts.get_data" if kind == "dataset" else "python -m scripts.get_weights"
        out.append(f"| {kind} | {name} | {len(rs)} ({presets_}) | {rs[0].reason[:300]} (fetch: `{fix}`) |")
    return out


def figures(results: Path) -> list[str]:
    from eval.figures import make_sweep_figure
    from eval.pareto import PRIMARY, make_pareto_figure

    lines = []
    jobs = [
        (
            "Fig. 3: DAVIS J&F gain against the perturbation level",
            "fig3_davis.png",
            lambda out: make_sweep_figure(results, out, "davis", "J&F-Mean"),
        )
    ]
    for task in ("davis", "saliency"):
        jobs.append(
            (
                f"Upsampler Pareto front ({task})",
                f"pareto_{task}.png",
                lambda out, task=task: make_pareto_figure(results, out, task, PRIMARY.get(task, "")),
            )
        )
    for title, name, make in jobs:
        try:
            written = make(results / name)
        except UserError as e:
            written, why = None, paragraph(e)
        else:
            why = "no runs to plot"
        lines.append(f"### {title}\n\n" + (f"![{title}]({name})" if written else f"Not drawn: {why}"))
    return lines


def write_report(results: Path, runs: list[PlannedRun], outcomes: list[tuple[PlannedRun, int]], basis: str) -> Path:
    from eval.tables import build_tables, render
    from srt.io import atomic_write_text

    failed = [f"- `{r.preset} {' '.join(r.job)}` exited with {code}" for r, code in outcomes if code]
    tables, _ = build_tables(results)
    text = "\n\n".join(
        [
            "# The paper's tables, regenerated (python -m scripts.paper)",
            f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}; command: `{' '.join(sys.argv)}`. Each run's metrics.json "
            "under this folder records its weights, data and settings; rows with random weights say so.",
            "## Missing datasets and weights",
            "\n".join(missing_rows(runs)),
            "## Runs",
            f"{sum(r.status == 'finished' for r in runs)} finished before, {len(outcomes)} started now, "
            f"{sum(r.status == 'missing' for r in runs)} not started (missing), "
            f"{sum(r.status == 'invalid' for r in runs)} invalid. Estimate basis: {basis}",
            "\n".join(failed) or "No started run failed.",
            "## Tables (ours / paper)",
            render(tables, "md"),
            "## Figures",
            *figures(results),
        ]
    )
    return atomic_write_text(results / "REPORT.md", text + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.paper", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="run.py overrides for every run (e.g. shard=1/4 device=cuda)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--presets", nargs="+", default=list(presets.PAPER_PRESETS))
    parser.add_argument("--results", type=Path, default=Path("results/paper"), help="paths.results_root of every run")
    parser.add_argument("--probe-reps", type=int, default=3, help="timed forward passes per backbone and size")
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if not (presets.CONF_DIR / "experiment" / f"{p}.yaml").is_file()]
    if unknown:
        raise UserError(f"unknown preset {unknown[0]!r}; the paper's: {', '.join(presets.PAPER_PRESETS)}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UserError(f"{bad[0]!r} is not a run.py override; expected key=value (e.g. device=cuda shard=1/4)")
    args.results = args.results.resolve()  # the runs start in the repository root
    overrides = [f"paths.results_root={args.results}", *args.overrides]
    device = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("device=")), "auto")
    probe = Probe(device, args.probe_reps)
    print(f"Planning the runs of {', '.join(args.presets)} (results under {args.results}):", flush=True)
    runs = build_plan(args.presets, overrides, probe, args.results)
    print_plan(runs, args.results, probe)
    if args.dry_run:
        return 0
    outcomes = execute(runs, overrides)
    report = write_report(args.results, runs, outcomes, probe.basis())
    print(f"wrote {report}")
    return 1 if any(code for _, code in outcomes) else 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m scripts.paper"))
