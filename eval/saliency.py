"""Unsupervised saliency metrics as TokenCut computes them: maxF (beta^2 = 0.3), IoU and accuracy, x100.

Definitions (tc:unsupervised_saliency_detection/metric.py; PROTOCOLS.md 2.3 and the appendix):

- GT: foreground = ``gt > 0.5`` on the raw 8-bit values, i.e. any nonzero pixel.
- IoU and Acc: prediction binarised with ``pred > 0.5``; ``|P & G| / |P | G|`` and pixel accuracy per image,
  then the mean over images.
- maxF: for each of the 255 thresholds ``theta = k / 255`` (k = 0..254), ``P = pred > theta``;
  precision ``TP / |P|`` (1 if P is empty), recall ``TP / |G|`` (1 if G is empty),
  ``F = 1.3 P R / (0.3 P + R)`` (0 when P = R = 0). F is averaged over images for each theta, then the
  maximum over theta is taken. For binary predictions every theta gives the same mask, so maxF is the mean F.

Where they coincide with pysodmetrics (checked in tests/test_saliency.py) and where they differ:

- F curve: pysodmetrics' ``Fmeasure`` / ``FmeasureV2`` thresholds ``uint8(255 pred) >= t`` for t = 0..255;
  our ``pred > k/255`` is its ``t = k + 1``, so the curves coincide on t = 1..255 and the maxF values
  coincide unless pysodmetrics' extra t = 0 (every pixel foreground) is the best threshold.
- GT binarisation: pysodmetrics uses ``gt > 128``, TokenCut ``gt > 0`` (any nonzero). Identical for {0, 255}
  masks (ECSSD, DUT-OMRON); different for soft masks (DUTS has some), where TokenCut counts the faint rim.
- Prediction: pysodmetrics min-max normalises each prediction; TokenCut (and we) use it as is.
- Empty maps: pysodmetrics sets precision to 0 for an empty prediction, TokenCut to 1; F is 0 either way when
  the GT is not empty. When both are empty, TokenCut's F is 1 and pysodmetrics' 0.
- IoU when both maps are empty: TokenCut divides 0 by 0 (NaN, which makes the dataset mean NaN),
  pysodmetrics' IOUHandler returns 0; we return 1 (the prediction is exactly right). No image of the
  three benchmarks has an empty GT, so the published numbers are unaffected.
- Acc equals pysodmetrics' OverallAccuracyHandler on binary maps.

CLI: ``python -m eval.saliency --pred DIR --gt DIR`` scores PNG masks matched by file stem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from srt.errors import MissingFileError, UserError, report_user_errors

BETA2 = 0.3
#: thresholds theta = k / 255, k = 0..254, as np.arange(0, 1, 1/255) in the reference
THRESHOLDS = np.arange(255) / 255.0


@dataclass
class ImageScores:
    """Per-image scores; :func:`aggregate` averages a list of them into the dataset metrics."""

    f_curve: np.ndarray  # [255] F_beta at each threshold
    iou: float
    acc: float


def _check_pair(pred: np.ndarray, gt: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise UserError(
            f"{name}: prediction {pred.shape} and ground truth {gt.shape} must be 2-D maps of the same shape"
        )
    if pred.dtype == bool:
        pred = pred.astype(np.float64)
    if pred.size and (pred.min() < 0 or pred.max() > 1):
        raise UserError(f"{name}: prediction values must lie in [0, 1]; got [{pred.min()}, {pred.max()}]")
    return pred, gt


def f_curve(pred: np.ndarray, gt_fg: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """F_beta of ``pred > theta`` against the boolean GT for every theta in :data:`THRESHOLDS`."""
    fg_scores = np.sort(pred[gt_fg].ravel())
    all_scores = np.sort(pred.ravel())
    # number of pixels with pred > theta, via binary search on the sorted scores
    tp = len(fg_scores) - np.searchsorted(fg_scores, THRESHOLDS, side="right")
    predicted = len(all_scores) - np.searchsorted(all_scores, THRESHOLDS, side="right")
    precision = np.where(predicted == 0, 1.0, tp / np.maximum(predicted, 1))
    recall = np.ones_like(precision) if len(fg_scores) == 0 else tp / len(fg_scores)
    numerator, denominator = (1 + beta2) * precision * recall, beta2 * precision + recall
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)  # 0/0 -> 0


def image_scores(pred: np.ndarray, gt: np.ndarray, name: str = "image") -> ImageScores:
    """Scores of one prediction (float map in [0, 1]) against one 8-bit GT map."""
    pred, gt = _check_pair(pred, gt, name)
    gt_fg = gt > 0.5
    pred_fg = pred > 0.5
    union = np.count_nonzero(pred_fg | gt_fg)
    iou = 1.0 if union == 0 else np.count_nonzero(pred_fg & gt_fg) / union
    acc = float(np.mean(pred_fg == gt_fg))
    return ImageScores(f_curve(pred, gt_fg), float(iou), acc)


def aggregate(scores: Sequence[ImageScores]) -> dict[str, float]:
    """Dataset metrics x100: maxF (mean F curve over images, then max), mean IoU, mean Acc."""
    if not scores:
        raise UserError("no images to score")
    mean_curve = np.mean([s.f_curve for s in scores], axis=0)
    return {
        "maxF": 100.0 * float(mean_curve.max()),
        "IoU": 100.0 * float(np.mean([s.iou for s in scores])),
        "Acc": 100.0 * float(np.mean([s.acc for s in scores])),
    }


def evaluate(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    """``{"maxF", "IoU", "Acc"}`` x100 of float prediction maps in [0, 1] against uint8 GT maps."""
    if len(preds) != len(gts):
        raise UserError(f"got {len(preds)} predictions and {len(gts)} ground-truth maps; expected as many")
    return aggregate([image_scores(p, g, name=f"image {i}") for i, (p, g) in enumerate(zip(preds, gts))])


# ----------------------------------------------------------------------------------------------- files


def read_mask(path: str | Path, what: str = "mask") -> np.ndarray:
    """An 8-bit single-channel map (PIL mode 'L', as the reference reads GT). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("L"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {what} {path}: {err}") from err


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path) -> tuple[dict[str, float], list[str]]:
    """Score every ``pred_dir/*.png`` against ``gt_dir/<same stem>.png``; also returns GT stems left unscored."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise MissingFileError(f"{what} directory {folder} does not exist")
    pred_paths = sorted(pred_dir.glob("*.png"))
    if not pred_paths:
        raise MissingFileError(f"no *.png prediction masks in {pred_dir}")
    scores = []
    for path in pred_paths:
        gt = read_mask(gt_dir / path.name, "ground-truth mask")
        pred = read_mask(path, "predicted mask").astype(np.float64) / 255.0
        scores.append(image_scores(pred, gt, name=str(path)))
    unscored = sorted({p.stem for p in gt_dir.glob("*.png")} - {p.stem for p in pred_paths})
    return aggregate(scores) | {"n_images": float(len(scores))}, unscored


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.saliency", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, help="directory of predicted masks (PNG, 0-255 = [0, 1])")
    parser.add_argument("--gt", required=True, help="directory of ground-truth masks (PNG), matched by file stem")
    args = parser.parse_args(list(argv) if argv is not None else None)
    metrics, unscored = evaluate_dirs(args.pred, args.gt)
    if unscored:
        print(
            f"warning: {len(unscored)} ground-truth masks have no prediction and were not scored "
            f"(first: {unscored[0]})",
            file=sys.stderr,
        )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.saliency"))
