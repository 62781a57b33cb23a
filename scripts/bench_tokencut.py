"""Benchmark TokenCut's normalised cut: dense (scipy.linalg.eigh, the reference) vs sparse (Lanczos on the same graph).

For grids of 14x14, 30x40 and 60x80 cells (60x80 = SRT dense keys at stride 8 of a 480x640 image) and three
kinds of features, it times :func:`tasks.tokencut.ncut` with each solver in the same process and reports the
speed ratio and how many tokens the two bipartitions agree on:

- ``planted``: 384-d features with a planted foreground block (20% of the cells) plus Gaussian noise
  (within-group cosine ~0.27, close to tau, so some within-group edges are missing);
- ``pixels``: the fixture image ECSSD/0001 resized to 8 px per cell, each cell's 8x8 RGB pixels (192-d,
  centred): features derived from real image content;
- ``vit``: keys of a randomly initialised ViT-S/16-width ViT (384-d keys, depth 2; no pretrained weights
  exist here) on that image, SRT level 3 dense at stride 8.

    python scripts/bench_tokencut.py                 # all sizes and features
    OPENBLAS_NUM_THREADS=1 python scripts/bench_tokencut.py   # single-threaded BLAS

Times are the median of ``--repeats`` runs (the dense solver at the largest size runs once unless asked).
The criteria of issue 5 are checked at the largest size: speed-up >= 10x and agreement >= 99%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srt.errors import MissingFileError, UserError, report_user_errors  # noqa: E402
from tasks.tokencut import TAU, ncut, sparse_graph, unit_tokens  # noqa: E402

SIZES = ((14, 14), (30, 40), (60, 80))
FEATURES = ("planted", "pixels", "vit")
CELL = 8  # pixels per cell of the fixture-derived features (SRT dense stride 8 of a ViT-S/16)


def planted_features(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = np.zeros((rows, cols), dtype=bool)
    h, w = max(1, round(rows * 0.45)), max(1, round(cols * 0.45))  # ~20% of the cells
    fg[rows // 5 : rows // 5 + h, cols // 3 : cols // 3 + w] = True
    base = np.zeros((rows, cols, 384))
    base[..., 0] = np.where(fg, 3.0, 0.0)
    base[..., 1] = np.where(fg, 0.0, 3.0)
    return (base + 0.25 * rng.standard_normal(base.shape)).transpose(2, 0, 1)


def fixture_image(fixtures: Path, rows: int, cols: int) -> Image.Image:
    path = fixtures / "saliency" / "ECSSD" / "images" / "0001.jpg"
    if not path.is_file():
        raise MissingFileError(f"fixture image {path} not found; pass --fixtures DIR (the shared fixtures folder)")
    with Image.open(path) as image:
        return image.convert("RGB").resize((cols * CELL, rows * CELL), resample=Image.LANCZOS)


def pixel_features(fixtures: Path, rows: int, cols: int) -> np.ndarray:
    pixels = np.asarray(fixture_image(fixtures, rows, cols), dtype=np.float64) / 255.0
    cells = pixels.reshape(rows, CELL, cols, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(rows, cols, -1)
    return (cells - cells.mean(axis=(0, 1))).transpose(2, 0, 1)


def vit_features(fixtures: Path, rows: int, cols: int) -> np.ndarray:
    import srt

    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("keys",), depth=2, embed_dim=384, num_heads=6)
    sr = srt.StochasticResonance(bb, level=3)
    image = np.asarray(fixture_image(fixtures, rows, cols), dtype=np.float32) / 255.0
    x = (torch.from_numpy(image).permute(2, 0, 1) - torch.tensor(bb.mean).view(3, 1, 1)) / torch.tensor(bb.std).view(
        3, 1, 1
    )
    # the image is rows*8 x cols*8; pad to a multiple of the patch size (16) and crop the grid back
    pad_h, pad_w = -x.shape[1] % 16, -x.shape[2] % 16
    x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
    with torch.no_grad():
        keys = sr.dense(x[None], stride=CELL)["keys"][0]
    return keys[:, :rows, :cols].double().numpy()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fixtures",
        default=os.environ.get("SRT_FIXTURES", str(REPO.parent / "shared" / "fixtures")),
        help="the shared fixtures folder (default: ../shared/fixtures or $SRT_FIXTURES)",
    )
    parser.add_argument("--sizes", default=",".join(f"{r}x{c}" for r, c in SIZES), help="grids as ROWSxCOLS,...")
    parser.add_argument("--features", default=",".join(FEATURES), help=f"subset of {','.join(FEATURES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver (median reported)")
    parser.add_argument("--dense-repeats-largest", type=int, default=1, help="timed dense runs at the largest size")
    args = parser.parse_args(argv)
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.features = args.features.split(",")
    unknown = set(args.features) - set(FEATURES)
    if unknown:
        raise UserError(f"--features: unknown {sorted(unknown)}; expected a subset of {', '.join(FEATURES)}")
    return args


def print_header(repeats: int) -> None:
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    print("# TokenCut ncut: dense (scipy.linalg.eigh) vs sparse (eigsh on the same graph); tau=0.2 eps=1e-5 binary")
    print(
        f"# cpus={os.cpu_count()} BLAS threads={blas} torch threads={torch.get_num_threads()} "
        f"numpy={np.__version__} repeats={repeats}"
    )
    print()
    header = (
        "| features | grid | tokens | edge density | stored entries | dense s | sparse s | speed-up | "
        "bipartition agree | component agree | max abs eigvec diff |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")


def measure(kind: str, rows: int, cols: int, fixtures: Path, dense_repeats: int, repeats: int) -> tuple[float, float]:
    """Time both solvers on one feature kind and grid, print the table row; return (speed-up, agreement)."""
    feats = {
        "planted": lambda: planted_features(rows, cols),
        "pixels": lambda: pixel_features(fixtures, rows, cols),
        "vit": lambda: vit_features(fixtures, rows, cols),
    }[kind]()
    tokens = unit_tokens(feats)
    n = rows * cols
    density = float(np.mean(tokens @ tokens.T > TAU))
    stored = sparse_graph(tokens).correction.nnz / n**2
    t_dense, dense = timed(lambda: ncut(feats, solver="dense"), dense_repeats)
    t_sparse, sparse = timed(lambda: ncut(feats, solver="sparse"), repeats)
    agree = float(np.mean(dense.bipartition == sparse.bipartition))
    comp_agree = float(np.mean(dense.component == sparse.component))
    diff = float(np.abs(dense.eigvec - sparse.eigvec).max())
    ratio = t_dense / t_sparse
    print(
        f"| {kind} | {rows}x{cols} | {n} | {density:.3f} | {stored:.3f} | {t_dense:.3f} | {t_sparse:.3f} | "
        f"{ratio:.1f}x | {100 * agree:.2f}% | {100 * comp_agree:.2f}% | {diff:.1e} |",
        flush=True,
    )
    return ratio, agree


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fixtures = Path(args.fixtures)
    largest = max(args.sizes, key=lambda s: s[0] * s[1])
    print_header(args.repeats)
    failures = []
    for kind in args.features:
        for rows, cols in args.sizes:
            dense_repeats = args.dense_repeats_largest if (rows, cols) == largest else args.repeats
            ratio, agree = measure(kind, rows, cols, fixtures, dense_repeats, args.repeats)
            if (rows, cols) == largest:
                if ratio < 10:
                    failures.append(f"{kind} {rows}x{cols}: speed-up {ratio:.1f}x < 10x")
                if agree < 0.99:
                    failures.append(f"{kind} {rows}x{cols}: agreement {100 * agree:.2f}% < 99%")
    print()
    if failures:
        print("criteria NOT met at the largest grid: " + "; ".join(failures))
        return 1
    print(
        f"criteria met at {largest[0]}x{largest[1]}: sparse >= 10x faster than dense, bipartitions agree on >= 99% of tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/bench_tokencut.py"))
