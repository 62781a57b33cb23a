"""NYU-v2 depth metrics under the two protocols of paper Table 2, the two dataset layouts, and a scoring CLI.

Sources: PROTOCOLS.md 2.2 and its appendix (srt:eval_nyu_v2.py; mde:depth/core/evaluation/metrics.py and
depth/datasets/nyu.py, which DINOv2 evaluates with).

Protocols (``protocol=``):

- ``toolbox`` (DINOv2 / Monocular-Depth-Estimation-Toolbox, metric depth): valid pixels are
  ``1e-3 < gt < 10`` (strict) inside the Eigen crop rows 45:471, cols 41:601; no scaling; the metrics of each
  image, then the mean over images (the toolbox's ``nanmean`` silently drops an image without a valid pixel; here
  such an image is an error, or excluded and counted: see below). Metrics:
  a1 a2 a3 AbsRel SqRel RMSE RMSE_log log_10 silog (silog = 100 sqrt(mean(e^2) - mean(e)^2), e = ln pred -
  ln gt, 0 where that is NaN, as the toolbox sets it).
- ``srt`` (the SRT repository's ``eval_nyu_v2``, what Table 2 was computed with): valid = ``gt > 0``, no crop,
  median scaling ``pred *= median(gt) / median(pred)`` over the valid pixels, then the metrics, then the plain
  mean over images. Metrics: a1 a2 a3 AbsRel SqRel RMSE RMSE_log.
  ``literal=True`` reproduces the published code exactly, bug included: its mask ``np.where(gt > 0, 1, 0)`` is
  an *integer* array, so ``gt[mask]`` indexes rows: every pixel selects image row 0 (invalid pixel) or row 1
  (valid pixel), and median scaling and every metric run on the [H, W, W] stack of those two rows. We compute
  the same numbers without building that stack (786 M values per 480x640 image): each row enters with the
  weight of the pixels that select it, for the means and for the median. As in the reference, a zero in row 0
  of an image with any invalid pixel makes AbsRel, SqRel and RMSE_log infinite, and an image without valid
  pixels gives NaN.

Bad ground truth (both protocols): an image whose depth map has no valid pixel under the protocol (e.g. all
zeros), or whose metrics come out NaN, would make the mean NaN (``np.mean``) or silently drop the image
(``nanmean``). :func:`evaluate` names it instead (the image, its valid pixel count, the protocol's valid range:
:func:`valid_range`) and stops, or with ``skip_invalid=True`` (``task.skip_invalid=true``, ``--skip-invalid``)
excludes it and returns the excluded ids beside ``n_images`` (scored) and ``n_excluded``.

Formulas (both): thresh = max(gt/pred, pred/gt), a_k = mean(thresh < 1.25^k) (strict); AbsRel =
mean(|gt - pred| / gt); SqRel = mean((gt - pred)^2 / gt); RMSE = sqrt(mean((gt - pred)^2)); RMSE_log =
sqrt(mean((ln gt - ln pred)^2)); log_10 = mean(|log10 gt - log10 pred|). Per-pixel terms are float32, as in
both references; sums and the mean over images are float64 (the references sum in float32: differences in the
7th digit).

Layouts (:func:`list_items`): ``srt``: ``<root>/testing/images/*.png`` and ``<root>/testing/depths/*.png``,
sorted and paired by name (the reference pairs them by order: the same pairs when the names correspond, an
error naming the first mismatch when they do not, :mod:`eval.pairing`), depth = uint16 / 256 m; ``toolbox``: ``<root>/<split>`` (``nyu_test.txt``: lines
``/scene/rgb_00045.jpg /scene/sync_depth_00045.png 518.8579`` relative to the root; entries with depth
``None`` skipped), sorted by image path, depth = uint16 / 1000 m.

Predictions are stored as 16-bit PNGs in millimetres (:func:`depth_to_png`, :func:`read_prediction_png`).

CLI: ``python -m eval.depth --pred-dir D --data-root R --protocol toolbox|srt [--literal] [--skip-invalid]
[--per-image CSV]``
scores ``D/<item id>.png`` against the ground truth of the layout at R.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from srt.errors import MissingFileError, UserError, report_user_errors

from .pairing import pair_by_name

PROTOCOLS = ("toolbox", "srt")
SRT_METRICS = ("RMSE", "RMSE_log", "AbsRel", "SqRel", "a1", "a2", "a3")
TOOLBOX_METRICS = (*SRT_METRICS, "log_10", "silog")
#: ground-truth PNG value -> metres
DEPTH_SCALE = {"toolbox": 1000.0, "srt": 256.0}
TOOLBOX_RANGE = (1e-3, 10.0)
EIGEN_CROP = (slice(45, 471), slice(41, 601))
DEFAULT_SPLIT = "nyu_test.txt"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol={protocol!r} is not valid; expected one of {', '.join(PROTOCOLS)}")
    return protocol


# ----------------------------------------------------------------------------------------------
# Metrics


def _terms(gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel float32 terms whose means (or root means) are the metrics."""
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    log_err = np.log(pred) - np.log(gt)
    return {
        "a1": thresh < 1.25,
        "a2": thresh < 1.25**2,
        "a3": thresh < 1.25**3,
        "AbsRel": np.abs(diff) / gt,
        "SqRel": diff**2 / gt,
        "RMSE": diff**2,
        "RMSE_log": log_err**2,
        "log_10": np.abs(np.log10(gt) - np.log10(pred)),
        "log_err": log_err,
    }


def _metrics(terms: dict[str, np.ndarray], weights: np.ndarray | None, names: Sequence[str]) -> dict[str, float]:
    """The metrics from per-pixel terms, each pixel counted ``weights`` times (all once by default)."""

    def mean(v: np.ndarray) -> float:
        v = v.astype(np.float64)
        return float(v.mean() if weights is None else (v * weights).sum() / weights.sum())

    out = {}
    for name in names:
        if name in ("RMSE", "RMSE_log"):
            out[name] = math.sqrt(mean(terms[name]))
        elif name == "silog":
            e = terms["log_err"]
            var = mean(e**2) - mean(e) ** 2
            out[name] = 0.0 if math.isnan(var) or var < 0 else 100 * math.sqrt(var)  # the toolbox's NaN -> 0
        else:
            out[name] = mean(terms[name])
    return out


def _nan_metrics(names: Sequence[str]) -> dict[str, float]:
    return dict.fromkeys(names, math.nan)


def valid_mask(gt: np.ndarray, protocol: str) -> np.ndarray:
    """The pixels ``protocol`` scores: toolbox ``1e-3 < gt < 10`` inside the Eigen crop; srt ``gt > 0`` (the
    literal variant scores rows 0 and 1 of every image, but it too has nothing to scale by without them)."""
    if check_protocol(protocol) == "srt":
        return gt > 0
    lo, hi = TOOLBOX_RANGE
    valid = (gt > lo) & (gt < hi)
    crop = np.zeros_like(valid)
    crop[EIGEN_CROP] = True
    return valid & crop


def valid_range(protocol: str) -> str:
    """The protocol's valid pixels in words (for messages)."""
    if check_protocol(protocol) == "srt":
        return "depth > 0 m (the srt protocol)"
    lo, hi = TOOLBOX_RANGE
    rows, cols = EIGEN_CROP
    return (
        f"{lo:g} m < depth < {hi:g} m inside the Eigen crop rows {rows.start}:{rows.stop}, cols "
        f"{cols.start}:{cols.stop} (the toolbox protocol)"
    )


class InvalidGroundTruthError(UserError):
    """A depth map with no valid pixel under the protocol, or whose metrics are NaN: no metric can use it."""


def ground_truth_problem(gt: np.ndarray, protocol: str, name: str) -> str | None:
    """Why the depth map ``gt`` (metres) cannot be scored under ``protocol`` (None: it can): it has no valid
    pixel. The message names ``name``, the valid pixel count and the protocol's valid range."""
    n_valid = int(valid_mask(gt, protocol).sum())
    if n_valid:
        return None
    finite = gt[np.isfinite(gt)]
    values = f"values {finite.min():g}..{finite.max():g} m" if finite.size else "no finite value"
    return (
        f"depth map {name} has 0 valid pixels of {gt.size} ({values}) under the {protocol} protocol; valid is "
        f"{valid_range(protocol)}"
    )


def toolbox_image(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """One image under the toolbox protocol (valid range and Eigen crop, no scaling)."""
    valid = valid_mask(gt, "toolbox")
    if not valid.any():
        return _nan_metrics(TOOLBOX_METRICS)
    return _metrics(_terms(gt[valid], pred[valid]), None, TOOLBOX_METRICS)


def srt_image(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """One image under the SRT protocol as intended: the valid pixels (gt > 0), median scaling."""
    valid = gt > 0
    if not valid.any():
        return _nan_metrics(SRT_METRICS)
    g, p = gt[valid], pred[valid]
    p = p * (np.median(g) / np.median(p))
    return _metrics(_terms(g, p), None, SRT_METRICS)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.float32:
    """np.median of the array holding each value ``weight`` times (float32 midpoint, NaN if any value is NaN)."""
    if np.isnan(values).any():
        return np.float32(np.nan)
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    n = int(cum[-1])

    def kth(k: int) -> np.float32:  # 0-based k-th smallest
        return v[int(np.searchsorted(cum, k, side="right"))]

    if n % 2:
        return kth(n // 2)
    return np.float32((kth(n // 2 - 1) + kth(n // 2)) / np.float32(2))


def srt_image_literal(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """One image exactly as the published ``eval_nyu_v2`` scores it (integer mask = rows 0 and 1; see the module
    docstring): row 0 counted once per invalid pixel, row 1 once per valid pixel."""
    if gt.shape[0] < 2:
        raise UserError(f"the literal SRT protocol indexes image rows 0 and 1; got an image of shape {gt.shape}")
    n_valid = int((gt > 0).sum())
    counts = (gt.size - n_valid, n_valid)  # pixels selecting row 0, row 1
    rows = [r for r in (0, 1) if counts[r] > 0]
    W = gt.shape[1]
    g = np.concatenate([gt[r] for r in rows])
    p = np.concatenate([pred[r] for r in rows])
    w = np.concatenate([np.full(W, counts[r], np.float64) for r in rows])
    scale = _weighted_median(g, w) / _weighted_median(p, w)
    return _metrics(_terms(g, p * scale), w, SRT_METRICS)


def _as_pair(gt, pred, index: int) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt, dtype=np.float32), np.asarray(pred, dtype=np.float32)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise UserError(
            f"image {index}: ground truth {gt.shape} and prediction {pred.shape} must be 2-D arrays of one shape"
        )
    return gt, pred


SKIP_HINT = "skip_invalid=True (task.skip_invalid=true, python -m eval.depth --skip-invalid) excludes and counts it"


def _scored_image(
    gt: np.ndarray, pred: np.ndarray, protocol: str, literal: bool, image_id: str
) -> tuple[dict, str | None]:
    """One image's metrics, and why it cannot be scored (no valid ground truth, a NaN metric) or None."""
    problem = ground_truth_problem(gt, protocol, image_id)
    if problem is not None:
        return {}, problem
    score = toolbox_image if protocol == "toolbox" else srt_image_literal if literal else srt_image
    metrics = score(gt, pred)
    # literal reproduces a published bug whose NaN / inf are its output (warned where it is chosen)
    nan = [n for n, v in metrics.items() if not literal and isinstance(v, float) and math.isnan(v)]
    if nan:
        verb = "is" if len(nan) == 1 else "are"
        return (
            metrics,
            f"{image_id}: {', '.join(nan)} {verb} NaN under the {protocol} protocol (a prediction of zeros?)",
        )
    return metrics, None


def evaluate(
    gts: Iterable[np.ndarray],
    preds: Iterable[np.ndarray],
    protocol: str = "toolbox",
    literal: bool = False,
    ids: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Depth metrics of predictions against ground truth, both [H, W] in metres, under ``protocol``.

    ``ids`` name the images in messages and results (default: ``#<index>``). An image whose ground truth
    has no valid pixel (:func:`ground_truth_problem`) or whose metrics come out NaN is an
    :class:`InvalidGroundTruthError` naming it, or, with ``skip_invalid``, excluded (``literal`` keeps the NaN of
    the bug it reproduces, e.g. rows 0-1 without depth, but not images without any valid pixel). Returns ``{"per_image":
    [metrics of each scored image], "ids": their ids, "mean": the plain mean over them, "n_images": how many,
    "n_excluded": how many were excluded, "excluded": {id: why}}`` (inf appears where the reference gives it).
    ``literal`` (srt only) reproduces the published row-indexing bug."""
    check_protocol(protocol)
    if literal and protocol != "srt":
        raise UserError("literal=True reproduces a bug of the SRT protocol; it is not valid with protocol='toolbox'")
    gts, preds = list(gts), list(preds)
    ids = [f"#{i}" for i in range(len(gts))] if ids is None else list(ids)
    if len(gts) != len(preds):
        raise UserError(f"{len(gts)} ground-truth maps but {len(preds)} predictions; expected one per image")
    if len(ids) != len(gts):
        raise UserError(f"{len(ids)} ids for {len(gts)} images; expected one per image")
    if not gts:
        raise UserError("no images to evaluate")
    names = TOOLBOX_METRICS if protocol == "toolbox" else SRT_METRICS
    per_image, scored, excluded = [], [], {}
    with np.errstate(divide="ignore", invalid="ignore"):  # inf are results here, as in the references
        for i, (gt, pred) in enumerate(zip(gts, preds)):
            gt, pred = _as_pair(gt, pred, i)
            metrics, problem = _scored_image(gt, pred, protocol, literal, ids[i])
            if problem is None:
                per_image.append(metrics)
                scored.append(ids[i])
            elif skip_invalid:
                excluded[ids[i]] = problem
            else:
                raise InvalidGroundTruthError(f"{problem}; no metric is computed over it ({SKIP_HINT})")
    if not per_image:
        raise InvalidGroundTruthError(f"all {len(gts)} images were excluded; first: {next(iter(excluded.values()))}")
    table = np.array([[m[n] for n in names] for m in per_image], dtype=np.float64)
    return {
        "per_image": per_image,
        "ids": scored,
        "mean": {n: float(v) for n, v in zip(names, table.mean(axis=0))},
        "n_images": len(scored),
        "n_excluded": len(excluded),
        "excluded": excluded,
    }


# ----------------------------------------------------------------------------------------------
# Files: layouts, ground truth, predictions


@dataclass(frozen=True)
class DepthItem:
    """One test image: ``id`` names its prediction (``<id>.png``) and its cache entry."""

    id: str
    image: Path
    depth: Path


def list_items(root: str | Path, protocol: str, split: str = DEFAULT_SPLIT) -> list[DepthItem]:
    """The test images of the layout ``protocol`` uses, in the reference's order; errors name what is missing."""
    check_protocol(protocol)
    root = Path(root)
    if protocol == "srt":
        image_dir, depth_dir = root / "testing" / "images", root / "testing" / "depths"
        for folder in (image_dir, depth_dir):
            if not folder.is_dir():
                raise MissingFileError(
                    f"NYU-v2 folder {folder} does not exist; the srt protocol reads {root}/testing/images/*.png and "
                    f"{root}/testing/depths/*.png"
                )
        images, depths = sorted(image_dir.glob("*.png")), sorted(depth_dir.glob("*.png"))
        if not images:
            raise MissingFileError(f"no *.png images in {image_dir}")
        pairs = pair_by_name(images, depths, "image", "depth map", depth_dir, ".png")  # sorted: the reference's order
        return [DepthItem(i.stem, i, d) for i, d in pairs]
    split_file = root / split
    if not split_file.is_file():
        raise MissingFileError(
            f"NYU-v2 split file {split_file} does not exist; the toolbox protocol reads {root}/{split} (lines "
            "'/scene/rgb_00045.jpg /scene/sync_depth_00045.png 518.8579', paths relative to the data root)"
        )
    items = []
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise UserError(f"{split_file}:{n}: expected '<image> <depth> [focal]', got {line!r}")
        image_rel, depth_rel = parts[0].lstrip("/\\"), parts[1].lstrip("/\\")
        if depth_rel == "None":  # the toolbox skips entries without ground truth
            continue
        image, depth = root / image_rel, root / depth_rel
        for path, what in ((image, "image"), (depth, "depth map")):
            if not path.is_file():
                raise MissingFileError(f"{split_file}:{n} names the {what} {path}, which does not exist")
        items.append(DepthItem(str(Path(image_rel).with_suffix("")), image, depth))
    if not items:
        raise UserError(f"split file {split_file} lists no image with a depth map")
    return sorted(items, key=lambda it: str(it.image))


def _read_uint16_png(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except FileNotFoundError:
        raise MissingFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e}") from e
    if mode not in ("I;16", "I;16B", "I;16L", "I") or arr.ndim != 2:
        raise UserError(f"{what} {path} is a {mode} image of shape {arr.shape}; expected a 16-bit single-channel PNG")
    return arr


def read_depth(path: str | Path, protocol: str) -> np.ndarray:
    """Ground-truth depth in metres (float32) from a 16-bit PNG: /1000 (toolbox) or /256 (srt, negatives -> 0)."""
    arr = _read_uint16_png(Path(path), "depth map").astype(np.float32)
    depth = arr / np.float32(DEPTH_SCALE[check_protocol(protocol)])
    if protocol == "srt":
        depth[depth <= 0] = 0.0
    return depth


def depth_to_png(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres -> uint16 millimetres (rounded, clipped to 0..65535 mm)."""
    depth_m = np.asarray(depth_m, dtype=np.float64)
    if not np.isfinite(depth_m).all():
        raise UserError("depth prediction contains NaN or inf; it cannot be stored as a 16-bit PNG")
    return np.clip(np.rint(depth_m * 1000.0), 0, 65535).astype(np.uint16)


def read_prediction_png(path: str | Path) -> np.ndarray:
    """A stored prediction (16-bit PNG, millimetres) in metres (float32)."""
    return _read_uint16_png(Path(path), "depth prediction").astype(np.float32) / np.float32(1000.0)


def evaluate_dirs(
    pred_dir: str | Path,
    data_root: str | Path,
    protocol: str,
    literal: bool = False,
    split: str = DEFAULT_SPLIT,
    skip_invalid: bool = False,
) -> dict:
    """Score ``<pred_dir>/<item id>.png`` against the dataset at ``data_root`` (every item needs a prediction);
    depth maps without a valid pixel are named by file (see :func:`evaluate`)."""
    items = list_items(data_root, protocol, split)
    pred_dir = Path(pred_dir)
    missing = [it for it in items if not (pred_dir / f"{it.id}.png").is_file()]
    if missing:
        raise MissingFileError(
            f"{len(missing)} of {len(items)} images have no prediction in {pred_dir} "
            f"(first: {pred_dir / (missing[0].id + '.png')})"
        )
    gts, preds = [], []
    for it in items:
        gt, pred = read_depth(it.depth, protocol), read_prediction_png(pred_dir / f"{it.id}.png")
        if gt.shape != pred.shape:
            raise UserError(
                f"prediction {pred_dir / (it.id + '.png')} is {pred.shape}; its ground truth {it.depth} is {gt.shape}"
            )
        gts.append(gt)
        preds.append(pred)
    result = evaluate(gts, preds, protocol, literal, [str(it.depth) for it in items], skip_invalid)
    by_path = {str(it.depth): it.id for it in items}
    result["ids"] = [by_path[p] for p in result["ids"]]
    result["excluded"] = {by_path[p]: why for p, why in result["excluded"].items()}
    return result


def per_image_csv(result: dict) -> str:
    names = list(result["mean"])
    rows = ["image," + ",".join(names)]
    for item_id, m in zip(result["ids"], result["per_image"]):
        rows.append(item_id + "," + ",".join(f"{m[n]:.6g}" for n in names))
    return "\n".join(rows) + "\n"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.depth", description=__doc__.split("\n")[0])
    parser.add_argument("--pred-dir", required=True, help="predictions: <item id>.png, 16-bit, millimetres")
    parser.add_argument("--data-root", required=True, help="NYU-v2 root in the protocol's layout")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="toolbox")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="toolbox split file under the data root")
    parser.add_argument("--literal", action="store_true", help="srt only: reproduce the published row-indexing bug")
    parser.add_argument("--per-image", type=Path, help="also write per-image metrics to this CSV")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="exclude (and count) depth maps without a valid pixel instead of stopping on the first",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = evaluate_dirs(args.pred_dir, args.data_root, args.protocol, args.literal, args.split, args.skip_invalid)
    for item_id, why in result["excluded"].items():
        print(f"warning: excluded {item_id}: {why}", file=sys.stderr)
    if args.per_image:
        from srt.io import atomic_write_text

        atomic_write_text(args.per_image, per_image_csv(result))
    print(
        json.dumps(
            {
                "protocol": args.protocol,
                "literal": args.literal,
                "n_images": result["n_images"],
                "n_excluded": result["n_excluded"],
                "excluded": sorted(result["excluded"]),
                **result["mean"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.depth"))
