"""Single-object discovery: CorLoc on PASCAL VOC (LOST / TokenCut protocol), and VOC box I/O.

CorLoc (PROTOCOLS.md 2.5 and the appendix "CorLoc (LOST / TokenCut)"; tc:main_tokencut.py, tc:datasets.py):
an image is a hit when its one predicted box has IoU >= 0.5 with *any* of its GT boxes; CorLoc is
100 * hits / images. GT boxes are all objects of the annotation, difficult and truncated ones included,
made 0-based by subtracting 1 from xmin and ymin (xmax and ymax kept). IoU has no +1 pixel convention.

The reference computes IoU yolov5-style in float32 with eps = 1e-7 added to the heights and the union; for
integer boxes the eps vanishes in float32, so a box pair with IoU exactly 1/2 is a hit. We compute the IoU
exactly (float64, no eps), which matches that behaviour; a degenerate pair with an empty union scores 0.
An image without GT boxes cannot be a hit but still counts (the reference's default, ``--no_hard`` off).

CLI: ``python -m eval.discovery --pred FILE --voc ROOT`` re-scores a ``boxes.csv`` written by the discovery task
(columns ``image_id,x1,y1,x2,y2``; other columns are ignored) against ``ROOT/VOCdevkit/VOC2007``.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from srt.errors import MissingFileError, UserError, report_user_errors

IOU_THRESHOLD = 0.5
BOX_COLUMNS = ("x1", "y1", "x2", "y2")


def box_iou(box: Sequence[float], gt_boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2)`` box with each of ``[n, 4]`` boxes (pixel-edge coordinates, no +1)."""
    box = np.asarray(box, dtype=np.float64)
    gts = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    inter_w = np.clip(np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]), 0, None)
    inter = inter_w * inter_h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def is_hit(
    box: Sequence[float], gt_boxes: np.ndarray | Sequence[Sequence[float]], threshold: float = IOU_THRESHOLD
) -> bool:
    return bool(np.any(box_iou(box, gt_boxes) >= threshold))


def corloc(
    pred_boxes: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[Sequence[float]]],
    threshold: float = IOU_THRESHOLD,
) -> float:
    """Percentage of images whose predicted box has IoU >= threshold with any of that image's GT boxes."""
    if len(pred_boxes) != len(gt_boxes):
        raise UserError(
            f"got {len(pred_boxes)} predicted boxes and GT boxes for {len(gt_boxes)} images; expected one box per image"
        )
    if not pred_boxes:
        raise UserError("no images to score")
    hits = sum(is_hit(box, gts, threshold) for box, gts in zip(pred_boxes, gt_boxes))
    return 100.0 * hits / len(pred_boxes)


# ----------------------------------------------------------------------------------------------- VOC files


def voc_dir(root: str | Path, year: str = "2007") -> Path:
    """``ROOT/VOCdevkit/VOC<year>``, checked to hold JPEGImages, Annotations and ImageSets/Main."""
    base = Path(root) / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        if not (base / sub).is_dir():
            raise MissingFileError(
                f"VOC{year} layout not found: {base / sub} is missing; expected ROOT/VOCdevkit/VOC{year}/"
                f"{{JPEGImages,Annotations,ImageSets/Main}} with ROOT={root}"
            )
    return base


def read_image_set(voc: Path, image_set: str) -> list[str]:
    path = voc / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        raise MissingFileError(f"image set file {path} does not exist")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"image set file {path} lists no images")
    return ids


def read_voc_annotation(xml_path: str | Path) -> tuple[np.ndarray, Optional[tuple[int, int]]]:
    """(boxes, (width, height) from ``<size>`` or None) of a VOC annotation; see :func:`read_voc_boxes`."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise MissingFileError(f"VOC annotation {xml_path} does not exist")
    try:
        root = ET.parse(xml_path).getroot()
        boxes = []
        for obj in root.iter("object"):
            bnd = obj.find("bndbox")
            # VOC stores 1-based inclusive pixel indices; (xmin-1, ymin-1, xmax, ymax) are pixel edges.
            xmin, ymin, xmax, ymax = (int(float(bnd.find(tag).text)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        size = root.find("size")
        wh = None if size is None else (int(size.find("width").text), int(size.find("height").text))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise UserError(f"cannot read VOC annotation {xml_path}: {err}") from err
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4), wh


def read_voc_boxes(xml_path: str | Path) -> np.ndarray:
    """All object boxes of a VOC annotation as ``[n, 4]`` int64 ``(x1, y1, x2, y2)``, xmin and ymin made 0-based.

    Difficult and truncated objects are included (TokenCut's default). Errors name the file."""
    return read_voc_annotation(xml_path)[0]


def without_objects(ids: Sequence[str], gt_boxes: Sequence[np.ndarray]) -> list[str]:
    """The image ids whose annotation has no object: they cannot be hits but count (the reference's default)."""
    return [i for i, boxes in zip(ids, gt_boxes) if len(boxes) == 0]


def no_object_warning(empty: Sequence[str], n_images: int, where: str) -> str:
    shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
    return (
        f"{len(empty)} of the {n_images} images of {where} have no object in their annotation ({shown}): each "
        "counts as a miss in CorLoc, as in TokenCut and LOST"
    )


def read_pred_boxes(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """``image_id -> (x1, y1, x2, y2)`` from a CSV with columns ``image_id,x1,y1,x2,y2`` (more are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"predicted boxes file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read predicted boxes {path}: {err}") from err
    missing = [c for c in ("image_id", *BOX_COLUMNS) if c not in table.columns]
    if missing:
        raise UserError(f"predicted boxes {path} lacks columns {missing}; expected image_id,x1,y1,x2,y2")
    if table["image_id"].duplicated().any():
        raise UserError(
            f"predicted boxes {path} has several boxes for image {table['image_id'][table['image_id'].duplicated()].iloc[0]}; expected one per image"
        )
    return {row.image_id: tuple(float(getattr(row, c)) for c in BOX_COLUMNS) for row in table.itertuples(index=False)}


def evaluate_file(pred_path: str | Path, root: str | Path, image_set: str = "trainval") -> dict[str, float]:
    """CorLoc of a predicted-boxes CSV over every image of the VOC2007 image set (each must have a box)."""
    voc = voc_dir(root)
    ids = read_image_set(voc, image_set)
    preds = read_pred_boxes(pred_path)
    missing = [i for i in ids if i not in preds]
    if missing:
        raise UserError(
            f"{pred_path} has no box for {len(missing)} of the {len(ids)} images of {image_set} (first: {missing[0]})"
        )
    gts = [read_voc_boxes(voc / "Annotations" / f"{i}.xml") for i in ids]
    empty = without_objects(ids, gts)
    if empty:
        print(f"warning: {no_object_warning(empty, len(ids), f'{voc} {image_set}')}", file=sys.stderr)
    return {
        "CorLoc": corloc([preds[i] for i in ids], gts),
        "n_images": float(len(ids)),
        "n_images_without_objects": float(len(empty)),
    }


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.discovery", description=__doc__.split("\n")[0])
    parser.add_argument("--pred", required=True, help="boxes CSV (image_id,x1,y1,x2,y2) written by task=discovery")
    parser.add_argument("--voc", required=True, help="dataset root holding VOCdevkit/VOC2007")
    parser.add_argument("--set", default="trainval", help="image set under ImageSets/Main (default: trainval)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    print(json.dumps(evaluate_file(args.pred, args.voc, args.set), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.discovery"))
