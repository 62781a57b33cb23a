#!/usr/bin/env python
"""Benchmark of the SRT core: cost of the aggregation on top of the forward passes, and peak memory.

For ViT-S/16 (random weights; timing only) at 224x224 and 480x832 and L in {1, 3}, each configuration
runs in its own subprocess and reports, measured in that one process:

- ``time / forward passes alone``: SRT wall time / that of the same forward passes alone (the same chunks
  of ``--batch-size`` (image, shift) pairs, without shifting or aggregation). 1.00 means the rest is free.
- ``time / naive route``: SRT wall time / the naive route's (upsample every pass to full resolution, unshift,
  accumulate, pool: the official EnsembledExtractor, ``srt.reference.naive_srt``).
- ``extra peak MB``: peak memory of the SRT call minus that of the same forward passes alone (the accumulators,
  the shifted copies and anything else SRT adds; each peak is the kernel's high-water mark, reset before
  the call, with glibc returning freed memory at once).

Times are the minimum of ``--repeats`` runs, forward and SRT interleaved (this machine is shared and
noisy: read the ratios).
Targets (224x224): pooled <= 1.05, dense stride p/2 <= 1.15, dense stride 1 <= 1.5.

    python scripts/bench_srt.py [--sizes 224x224,480x832] [--levels 1,3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {"pooled": 1.05, "dense s=p/2": 1.15, "dense s=1": 1.5}
# beyond the targets: the per-pass taps + Welford path (Fig. 1's dispersion column; also the normalized border)
VARIANTS = (*TARGETS, "dense s=1 +dispersion")


def worker(size: str, level: int, variant: str, repeats: int, batch_size: int) -> dict:
    import torch

    import srt
    from srt.reference import naive_srt

    torch.manual_seed(0)
    H, W = map(int, size.split("x"))
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",))
    p = bb.patch_size
    stride = {"pooled": p, "dense s=p/2": p // 2}.get(variant, 1)
    images = torch.randn(1, 3, H, W)
    sr = srt.StochasticResonance(bb, level=level, batch_size=batch_size, dispersion=variant.endswith("+dispersion"))
    # the reference: the very chunks SRT runs (same batch sizes), forward passes only
    chunk_sizes = [min(batch_size, sr.passes - i) for i in range(0, sr.passes, batch_size)]
    chunks = [torch.randn(n, 3, H, W) for n in chunk_sizes]
    run = (lambda: sr(images)) if stride == p else (lambda: sr.dense(images, stride=stride))

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def forward_passes():
        return [bb(c) for c in chunks]

    with torch.no_grad():
        forward_times, srt_times = [], []
        for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit both alike
            forward_times.append(timed(forward_passes))
            srt_times.append(timed(run))
        forward, ours = min(forward_times), min(srt_times)
        extra_mb = peak_mb(run) - peak_mb(forward_passes)
        naive = min(
            timed(lambda: naive_srt(bb, images, sr.shift_set, stride, batch_size=batch_size)) for _ in range(repeats)
        )
    return dict(
        size=size,
        level=level,
        variant=variant,
        passes=sr.passes,
        forward_s=forward / sr.passes,
        srt_s=ours,
        naive_s=naive,
        ratio=ours / forward,
        vs_naive=ours / naive,
        extra_mb=extra_mb,
    )


def _status_kb(key: str) -> int:
    import re

    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_mb(fn) -> float:
    """Peak resident memory of ``fn()`` above what was resident before it (the kernel's high-water mark is
    reset first; the worker runs with glibc returning freed blocks at once, see MALLOC_ENV)."""
    open("/proc/self/clear_refs", "w").write("5")
    base = _status_kb("VmRSS")
    result = fn()
    del result
    return (_status_kb("VmHWM") - base) / 1024


#: glibc: serve blocks above 128 KiB by mmap and return them when freed, so resident memory tracks live tensors
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224x224,480x832")
    ap.add_argument("--levels", default="1,3")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--worker", nargs=3, metavar=("SIZE", "LEVEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        size, level, variant = args.worker
        print(json.dumps(worker(size, int(level), variant, args.repeats, args.batch_size)))
        return

    rows = []
    print("| size | L | passes | output | time / forward passes alone | target | time / naive route | extra peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for level in map(int, args.levels.split(",")):
            for variant in args.variants.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    size,
                    str(level),
                    variant,
                    "--repeats",
                    str(args.repeats),
                    "--batch-size",
                    str(args.batch_size),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
                if out.returncode:
                    print(f"| {size} | {level} | - | {variant} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                target = f"<= {TARGETS[variant]}" if size == "224x224" and variant in TARGETS else ""
                print(
                    f"| {size} | {level} | {r['passes']} | {variant} | {r['ratio']:.3f} | {target} | "
                    f"{r['vs_naive']:.3f} | {r['extra_mb']:.0f} |",
                    flush=True,
                )
    misses = [r for r in rows if r["size"] == "224x224" and r["ratio"] > TARGETS.get(r["variant"], float("inf"))]
    for size in args.sizes.split(","):
        per_image = [r["forward_s"] for r in rows if r["size"] == size]
        if per_image:
            print(f"forward pass at {size} ({args.batch_size} images/chunk): {min(per_image):.3f} s per image")
    print("targets met" if not misses else f"targets missed: {[(r['size'], r['level'], r['variant']) for r in misses]}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from srt.errors import report_user_errors

    sys.exit(report_user_errors(main, prog="scripts/bench_srt.py"))
