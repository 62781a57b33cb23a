#!/usr/bin/env python
"""Benchmark of the fine-feature methods (srt/upsamplers/): measured cost per image against the cost model.

DINOv2 ViT-S/14 with random weights (timing only: weights do not change the cost), one image per call, each
configuration in its own subprocess. Columns, measured within that one process:

- ``passes``, ``tokens/pass``, ``model (pass eq.)``: the cost model (:class:`srt.upsamplers.Cost`): ViT
  multiply-adds per image in units of one plain pass (linear layers + the quadratic attention);
- ``time / plain pass``: the method's wall time per image / one plain forward pass of the same image, interleaved,
  best of ``--repeats`` (this machine is shared and noisy: read the ratios);
- ``extra peak MB``: peak resident memory of the call above what was resident before it (kernel high-water mark,
  reset before the call; glibc returns freed blocks at once).

Stride reduction's quadratic attention shows in the rows ``stride s=7`` and ``stride s=2``: (p/s)^2 as many tokens,
(p/s)^4 as many attention pairs. The defaults take 20-40 minutes on a shared 2-core CPU (the 9-pass rows at
476x840 dominate); s=2 at 476x840 (99960 tokens, ~1150 plain passes of compute) is left out unless asked for
(``--configs "476x840:stride:2"``).

    python scripts/bench_upsamplers.py [--configs SIZE:METHOD:STRIDE[:LEVEL],...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's srt, whatever is installed
    sys.path.insert(0, str(REPO))

DEFAULT_CONFIGS = ",".join(
    [
        "224x224:nearest:7",
        "224x224:stride:7",
        "224x224:stride:2",
        "224x224:stride_srt:7:1",
        "476x840:nearest:7",
        "476x840:bilinear:7",
        "476x840:stride:7",
        "476x840:srt_dense:7:1",
        "476x840:jitter:7:1",
        "476x840:shift_jitter:7:1",
    ]
)
#: glibc: serve blocks above 128 KiB by mmap and return them when freed, so resident memory tracks live tensors
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status_kb(key: str) -> int:
    import re

    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_mb(fn) -> float:
    open("/proc/self/clear_refs", "w").write("5")
    base = _status_kb("VmRSS")
    result = fn()
    del result
    return (_status_kb("VmHWM") - base) / 1024


def worker(config: str, repeats: int) -> dict:
    import torch

    import srt

    size, method, stride, *level = config.split(":")
    H, W = map(int, size.split("x"))
    torch.manual_seed(0)
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, outputs=("tokens",))
    srt_cfg = {"level": int(level[0]) if level else 1, "jitter_passes": None}
    up = srt.build_upsampler(bb, {"method": method, "stride": int(stride), "measure": False}, srt_cfg)
    images = torch.randn(1, 3, H, W)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    with torch.no_grad():
        bb(images)  # warm-up
        plain, ours = [], []
        for _ in range(repeats):
            plain.append(timed(lambda: bb(images)))
            ours.append(timed(lambda: up(images)))
        extra = peak_mb(lambda: up(images)) - peak_mb(lambda: bb(images))
    cost = up.cost((H, W))
    return dict(
        config=config,
        passes=cost.passes,
        tokens=cost.tokens_per_pass,
        model=cost.pass_equivalents,
        ratio=min(ours) / min(plain),
        plain_s=min(plain),
        extra_mb=extra,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="SIZE:METHOD:STRIDE[:SRT LEVEL], comma separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    print("| size | method | stride | passes | tokens/pass | model (pass eq.) | time / plain pass | extra peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    plain = {}
    for config in args.configs.split(","):
        size, method, stride, *level = config.split(":")
        name = method + (f" L{level[0]}" if level else "")
        cmd = [sys.executable, __file__, "--worker", config, "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
        if out.returncode:
            print(f"| {size} | {name} | {stride} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        plain.setdefault(size, r["plain_s"])
        print(
            f"| {size} | {name} | {stride} | {r['passes']} | {r['tokens']} | {r['model']:.2f} | {r['ratio']:.2f} | "
            f"{r['extra_mb']:.0f} |",
            flush=True,
        )
    for size, seconds in plain.items():
        print(f"one plain pass at {size}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
