"""Benchmark DAVIS label propagation (tasks.davis) against one ViT-S/16 forward pass on this machine.

Propagation time per frame is measured at the token grids of 480x832 frames: 30x52 (p=16, DINO ViT-S/16 and
B/16) and 60x104 (p=8, DINO ViT-S/8, or SRT dense output at stride 8 of a p=16 model), with 384-d features
(ViT-S width), 3 label channels (background + 2 objects) and a full context (first frame + 7 recent
frames), i.e. the steady state of a sequence. Features are random (timing only; feature extraction is
not part of this number). In the same run it times one forward pass of a randomly initialised ViT-S/16
(``srt.load_backbone("dino_vits16", pretrained=False)``, the real architecture) on a 480x832 image, and
reports the ratio. Issue 4's target: propagation at p=16 below one ViT-S/16 forward (ratio < 1).

    python scripts/bench_davis.py                  # both grids, median of 5 timed frames each
    python scripts/bench_davis.py --threads 1      # single-threaded torch
    python scripts/bench_davis.py --with-vits8     # also time a ViT-S/8 forward (the p=8 grid's own model)

Also printed: the context queue (features + soft labels of the context frames) and one band of affinity
candidates, float32: the working memory of propagation (besides a padded copy of the queue during a step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from srt.errors import report_user_errors  # noqa: E402
from tasks.davis import _BAND_ROWS, LabelPropagator  # noqa: E402

FRAME = (480, 832)  # DINO's resize of 854x480 DAVIS frames
PATCHES = (16, 8)


def time_propagation(
    grid: tuple[int, int], channels: int, labels: int, n_last: int, radius: int, topk: int, repeats: int
) -> float:
    """Median seconds of one LabelPropagator.step with a full context queue."""
    g = torch.Generator().manual_seed(0)
    h, w = grid
    first = F.one_hot(torch.randint(0, labels, (h, w), generator=g), labels).permute(2, 0, 1).float()
    prop = LabelPropagator(torch.randn(channels, h, w, generator=g), first, n_last, radius, topk, 0.1)
    for _ in range(n_last):  # fill the queue: every timed step sees n_last + 1 frames
        prop.step(torch.randn(channels, h, w, generator=g))
    times = []
    for _ in range(repeats):
        feat = torch.randn(channels, h, w, generator=g)
        start = time.perf_counter()
        prop.step(feat)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_vit_forward(repeats: int, name: str = "dino_vits16") -> float:
    bb = srt.load_backbone(name, pretrained=False)
    x = torch.randn(1, 3, *FRAME)
    with torch.no_grad():
        bb(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            bb(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def band_buffer_mb(grid: tuple[int, int], n_ctx: int, radius: int) -> float:
    """Affinity candidates of one band, float32: n * (b*w) * ((b+2r)*w) floats, w the shorter grid side."""
    w = min(grid)
    return n_ctx * (_BAND_ROWS * w) * ((_BAND_ROWS + 2 * radius) * w) * 4 / 2**20


def queue_mb(grid: tuple[int, int], n_ctx: int, channels: int, labels: int) -> float:
    return n_ctx * (channels + labels) * grid[0] * grid[1] * 4 / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed frames / forward passes (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels", type=int, default=384, help="feature channels (384: ViT-S)")
    parser.add_argument("--labels", type=int, default=3, help="label channels (background + objects)")
    parser.add_argument("--n-last-frames", type=int, default=7)
    parser.add_argument("--radius", type=int, default=12, help="size_mask_neighborhood")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument(
        "--with-vits8",
        action="store_true",
        help="also time one ViT-S/8 forward at 480x832 (slow) and compare the p=8 grid with it",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_ctx = args.n_last_frames + 1
    print(f"# DAVIS label propagation vs one ViT-S/16 forward at {FRAME[0]}x{FRAME[1]}")
    print(
        f"# cpus={os.cpu_count()} torch threads={torch.get_num_threads()} torch={torch.__version__} "
        f"repeats={args.repeats} C={args.channels} K={args.labels} context={n_ctx} frames "
        f"r={args.radius} topk={args.topk}"
    )
    vit = time_vit_forward(args.repeats)
    print()
    print("| grid | tokens | propagation s/frame | ViT-S/16 forward s | ratio | queue MB | band buffer MB |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    vit8 = time_vit_forward(args.repeats, "dino_vits8") if args.with_vits8 else None
    for p in PATCHES:
        grid = (FRAME[0] // p, FRAME[1] // p)
        t = time_propagation(grid, args.channels, args.labels, args.n_last_frames, args.radius, args.topk, args.repeats)
        ratios[p] = t / vit
        print(
            f"| {grid[0]}x{grid[1]} (p={p}) | {grid[0] * grid[1]} | {t:.3f} | {vit:.3f} | {ratios[p]:.2f} | "
            f"{queue_mb(grid, n_ctx, args.channels, args.labels):.0f} | {band_buffer_mb(grid, n_ctx, args.radius):.0f} |",
            flush=True,
        )
    if vit8 is not None:
        t8 = ratios[8] * vit
        print(
            f"\nViT-S/8 forward at {FRAME[0]}x{FRAME[1]}: {vit8:.3f} s; propagation at p=8 / ViT-S/8 forward: "
            f"{t8 / vit8:.2f}"
        )
    print()
    if ratios[16] >= 1:
        print(f"target NOT met: propagation at p=16 takes {ratios[16]:.2f}x one ViT-S/16 forward (expected < 1)")
        return 1
    print(f"target met: propagation at p=16 takes {ratios[16]:.2f}x one ViT-S/16 forward (< 1)")
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/bench_davis.py"))
