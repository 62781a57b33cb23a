"""Benchmark task=depth: SRT on the head's features and the output ensemble (+OE), per image, against one plain
forward pass of backbone + head, on this machine.

For each head (linear, dpt) and SRT level L, one 480x640 image (NYU's size; centre-padded to 490x644, 35x46
tokens) goes through the depther of ``tasks.depth`` three ways, with a randomly initialised DINOv2 ViT-S/14 (the
real architecture, 12 blocks, 384 channels) and a random head (timing only):

- plain: backbone + head once (the baseline, ``srt.level=0``);
- +SRT: (2L+1)^2 backbone passes (chunks of ``--batch-size``), SRT aggregation of the head's blocks, head once;
- +OE: (2L+1)^2 passes of backbone + head (chunks of ``--oe-batch-size``), depth maps un-shifted and averaged.

Columns: seconds per image and the ratio to plain ("x plain"), and that ratio divided by the number of passes
("per pass"): about 1 when the cost is the passes themselves. SRT's per-pass ratio is below 1 by the head's share
of a forward pass (the head runs once); OE's is about 1. All times are best of ``--repeats`` within this run.

    python scripts/bench_depth.py                      # levels 1 and 3, both heads
    python scripts/bench_depth.py --levels 1 --heads linear --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from srt.errors import report_user_errors  # noqa: E402
from tasks.depth import DepthConfig, Depther, DepthTask, block_outputs  # noqa: E402
from tasks.depth_heads import build_head, head_blocks  # noqa: E402

IMAGE = (480, 640)


def best_time(fn, x: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,3", help="SRT levels, comma-separated (passes (2L+1)^2)")
    parser.add_argument("--heads", default="linear,dpt", help="heads, comma-separated: linear, linear4, dpt")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per cell (best reported)")
    parser.add_argument("--batch-size", type=int, default=16, help="srt.batch_size: (image, shift) pairs per chunk")
    parser.add_argument("--oe-batch-size", type=int, default=4, help="task.oe_batch_size for +OE")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(v) for v in args.levels.split(",")]
    heads = args.heads.split(",")
    print(f"# task=depth cost per {IMAGE[0]}x{IMAGE[1]} image vs one plain backbone+head pass")
    print(
        f"# dinov2_vits14 (random weights), random heads, cpus={os.cpu_count()} torch threads="
        f"{torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} batch_size={args.batch_size} "
        f"oe_batch_size={args.oe_batch_size}"
    )
    print()
    print(
        "| head | L | passes | plain s | +SRT s | +SRT x plain | +SRT per pass | +OE s | +OE x plain | +OE per pass |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    x = torch.randn(1, 3, *IMAGE, generator=torch.Generator().manual_seed(0))
    bb = srt.load_backbone("dinov2_vits14", pretrained=False)
    for head in heads:
        blocks = head_blocks(head, bb.depth)
        bb.set_outputs(block_outputs(blocks))
        depther = Depther(bb, build_head(head, bb.embed_dim).eval(), blocks).eval()
        best_time(depther, x, 1)  # warm-up
        plain = best_time(depther, x, max(args.repeats, 2))
        for level in levels:
            cfg = srt.SRTConfig(level=level, batch_size=args.batch_size)
            passes = (2 * level + 1) ** 2
            row = [head, str(level), str(passes), f"{plain:.2f}"]
            for oe in (False, True):
                task = DepthTask(
                    DepthConfig(toolbox_root="-", head=head, output_ensemble=oe, oe_batch_size=args.oe_batch_size)
                )
                t = best_time(task.predictor(depther, cfg), x, args.repeats)
                row += [f"{t:.2f}", f"{t / plain:.1f}", f"{t / plain / passes:.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/bench_depth.py"))
