"""DAVIS-2017 semi-supervised scoring: region similarity J, boundary F-measure and their statistics.

Re-implements the semi-supervised mode of the official davis2017-evaluation package from its definitions
(PROTOCOLS.md section 2.1 and the appendix "DAVIS-2017 J and F"; source key ``davis``):

- object ids come from the first annotated frame (``max`` label, void 255 counted as background);
- every object is scored on its own, on all annotated frames except the first and the last;
- J = |P and G| / |P or G|, 1 when the union is empty;
- F = boundary F-measure: boundaries by the ``seg2bmap`` rule, matched within a disk of radius
  ceil(0.008 * image diagonal) (cv2 dilation with a skimage disk), with the tool's empty-boundary conventions;
- per object: mean, recall (fraction of frames > 0.5) and decay (first minus last of 4 overlapping bins);
- global numbers are means over objects (not sequences); J&F-Mean = (J-Mean + F-Mean) / 2.

Deliberate differences from the official tool, all on inputs it mishandles:
- the object ids of a first annotation must be exactly 1..N (:func:`object_count`). The official tool takes
  N = the largest id and scores every id up to it, so an id absent from the first frame (ids {1, 3}, or a
  stray 200) becomes an object that is empty in the ground truth and, predicted empty, scores J = F = 1:
  a first frame with ids {2, 200} gives 200 objects of which 198 are perfect, and J&F jumps towards 1.
  Such a file is an error naming it, the ids found and the ids expected; a first annotation with no object
  at all (e.g. a DAVIS-2016 mask, whose object is 255, DAVIS-2017's void) too;
- ids in later annotations that the first frame does not have are ignored by the scoring, as the official
  tool does, but named in a warning; annotations of another size than the first are an error;
- sequences annotated only in their first frame (test-dev style) are skipped and reported, not a crash;
- result CSVs are always recomputed (the official script silently reuses existing ones);
- label errors raise a UserError (a ValueError) naming the file instead of ``sys.exit``;
- decay bin edges use int64 (the official uint8 cast wraps for sequences longer than 256 frames).

Also a small CLI writing the official CSVs::

    python -m eval.davis --davis ROOT --results DIR [--sequences a,b] [--set val]

The layout readers here (``read_sequence_names``, ``annotation_paths``, ``read_label_png``) are the single
place that knows the DAVIS annotation layout; ``tasks/davis.py`` uses them too.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.morphology import disk

from srt.errors import MissingFileError, UserError, report_user_errors
from srt.io import atomic_write_text, check_image

log = logging.getLogger(__name__)

VOID_LABEL = 255
#: column order of the official ``global_results-<set>.csv``
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
#: column order of the official ``per-sequence_results-<set>.csv`` (one row per object, "<seq>_<id>")
PER_OBJECT_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
#: the official evaluation_method.py writes its CSVs with this float format
CSV_FLOAT_FORMAT = "%.3f"


# ----------------------------------------------------------------------------------------------------------
# Per-frame metrics (pure)
# ----------------------------------------------------------------------------------------------------------
def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J (Jaccard) of binary masks ``[..., H, W]``; 1 where the union is empty (davis:metrics.py)."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise UserError(f"region_similarity: gt shape {gt.shape} and prediction shape {pred.shape} differ")
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return j.astype(np.float64)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a binary mask, by the ``seg2bmap`` rule of the DAVIS tool.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour, where only
    neighbours inside the image count: the last row compares with east only, the last column with south
    only, and the bottom-right pixel is never a boundary. Replicating the last row and column gives
    exactly that rule, so a mask covering the whole image has no boundary.
    """
    seg = np.asarray(mask, dtype=bool)
    if seg.ndim != 2:
        raise UserError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    padded = np.pad(seg, ((0, 1), (0, 1)), mode="edge")
    east, south, south_east = padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    return (seg ^ east) | (seg ^ south) | (seg ^ south_east)


def boundary_radius(shape: Sequence[int], bound_th: float = 0.008) -> int:
    """Matching tolerance in pixels: ``bound_th`` itself if >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * float(np.linalg.norm(shape[-2:]))))


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of two binary ``[H, W]`` masks (davis:metrics.py ``f_measure``, no void mask)."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise UserError(f"boundary_f_measure: expected two [H, W] masks of one shape, got {gt.shape} and {pred.shape}")
    kernel = disk(boundary_radius(gt.shape, bound_th)).astype(np.uint8)
    gt_b, pred_b = seg2bmap(gt), seg2bmap(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    # Empty-boundary conventions of the official tool.
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
        pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
        precision = np.count_nonzero(pred_b & gt_dil) / n_pred
        recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def db_statistics(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values (davis:utils.py ``db_statistics``).

    mean = nanmean; recall = fraction of frames with value > 0.5 (NaN counts as a miss); decay = nanmean of
    the first of 4 bins minus nanmean of the last, with edges round(linspace(1, N, 5)) - 1 and each bin
    including its right edge (neighbouring bins share a frame).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise UserError(f"db_statistics expects a non-empty 1-D array of per-frame values, got shape {v.shape}")
    mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    recall = float(np.mean(v > 0.5))
    edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[edges[i] : edges[i + 1] + 1] for i in range(4)]
    with np.errstate(invalid="ignore"):
        first = np.nanmean(bins[0]) if np.isfinite(bins[0]).any() else np.nan
        last = np.nanmean(bins[3]) if np.isfinite(bins[3]).any() else np.nan
    return mean, recall, float(first - last)


# ----------------------------------------------------------------------------------------------------------
# Sequence and dataset scores (pure)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ObjectScores:
    """Per-frame J and F of one object over the scored frames of its sequence."""

    name: str  # "<sequence>_<object id>", as in the official per-sequence CSV
    J: np.ndarray
    F: np.ndarray

    @property
    def j_stats(self) -> tuple[float, float, float]:
        return db_statistics(self.J)

    @property
    def f_stats(self) -> tuple[float, float, float]:
        return db_statistics(self.F)


def object_count(first_annotation: np.ndarray, source: str = "the first annotation") -> int:
    """Number of objects N of a sequence, from its first annotation, whose ids (background 0 and void 255
    aside) must be exactly 1..N: the official tool's N (the largest id) on data where it means what it says.

    UserError naming ``source`` otherwise: ids with gaps (the official tool would score each missing id as a
    perfectly predicted empty object, see the module docstring), or no object at all."""
    ids = sorted(int(v) for v in np.unique(np.asarray(first_annotation)) if v not in (0, VOID_LABEL))
    if not ids:
        values = sorted(int(v) for v in np.unique(np.asarray(first_annotation)))
        raise UserError(
            f"{source} has no object (values {values}); expected object ids 1..N with 0 as background. "
            f"A DAVIS-2016 binary mask marks its object with 255, which DAVIS-2017 reads as void: set the "
            f"object's pixels to 1"
        )
    if ids != list(range(1, len(ids) + 1)):
        raise UserError(
            f"{source} holds object ids {ids}; expected 1..{len(ids)} (one id per object, numbered from 1). "
            f"The official evaluator would count {ids[-1]} objects and score each id missing from the first "
            f"frame as an empty object predicted empty, J = F = 1, inflating J&F: renumber the objects 1..N in "
            f"every annotation of the sequence"
        )
    return len(ids)


def score_frames(
    sequence: str, gt_labels: np.ndarray, pred_labels: np.ndarray, n_objects: int, bound_th: float = 0.008
) -> list[ObjectScores]:
    """J and F of objects 1..n_objects on already-selected frames ``[N, H, W]`` of GT and prediction labels.

    GT void (255) is background. Prediction ids above ``n_objects`` are an error (the official tool exits);
    objects missing from the prediction score as empty masks.
    """
    gt = np.where(np.asarray(gt_labels) == VOID_LABEL, 0, gt_labels)
    pred = np.asarray(pred_labels)
    if gt.shape != pred.shape:
        raise UserError(f"{sequence}: GT frames {gt.shape} and predicted frames {pred.shape} differ in shape")
    if pred.size and int(pred.max()) > n_objects:
        raise UserError(
            f"{sequence}: the prediction contains label {int(pred.max())} but the first annotation has only "
            f"{n_objects} object(s); expected labels 0..{n_objects}"
        )
    scores = []
    for obj in range(1, n_objects + 1):
        gt_obj, pred_obj = gt == obj, pred == obj
        j = region_similarity(gt_obj, pred_obj)
        f = np.array([boundary_f_measure(g, p, bound_th) for g, p in zip(gt_obj, pred_obj)], dtype=np.float64)
        scores.append(ObjectScores(f"{sequence}_{obj}", j, f))
    return scores


def score_sequence(
    sequence: str, gt_labels: np.ndarray, pred_labels: np.ndarray, bound_th: float = 0.008
) -> list[ObjectScores]:
    """Semi-supervised scoring of one fully annotated sequence ``[T, H, W]``: frames 1..T-2 are scored."""
    gt_labels, pred_labels = np.asarray(gt_labels), np.asarray(pred_labels)
    if gt_labels.ndim != 3 or gt_labels.shape[0] < 3:
        raise UserError(
            f"{sequence}: expected GT labels [T, H, W] with T >= 3 (first and last are not scored), "
            f"got shape {gt_labels.shape}"
        )
    n_objects = object_count(gt_labels[0])
    return score_frames(sequence, gt_labels[1:-1], pred_labels[1:-1], n_objects, bound_th)


@dataclass
class DavisScores:
    """Scores of a results folder: per-object frame scores plus the sequences left out and why."""

    objects: list[ObjectScores] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # sequence -> reason

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    def global_metrics(self) -> dict[str, float]:
        """The official global numbers (means over objects). Raises ValueError when no object was scored."""
        if not self.objects:
            raise UserError("no DAVIS object was scored" + self._skipped_note())
        j = np.array([o.j_stats for o in self.objects])
        f = np.array([o.f_stats for o in self.objects])
        j_mean, j_recall, j_decay = j.mean(axis=0)
        f_mean, f_recall, f_decay = f.mean(axis=0)
        values = ((j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
        return {name: float(v) for name, v in zip(GLOBAL_COLUMNS, values)}

    def per_object_rows(self) -> list[tuple[str, float, float]]:
        return [(o.name, o.j_stats[0], o.f_stats[0]) for o in self.objects]

    def _skipped_note(self) -> str:
        if not self.skipped:
            return ""
        return "; skipped: " + ", ".join(f"{s} ({r})" for s, r in self.skipped.items())


# ----------------------------------------------------------------------------------------------------------
# DAVIS layout (the one place that knows it)
# ----------------------------------------------------------------------------------------------------------
def read_sequence_names(davis_root: Path, split: str) -> list[str]:
    """Sequence names listed in ``ImageSets/2017/<split>.txt``."""
    path = Path(davis_root) / "ImageSets" / "2017" / f"{split}.txt"
    if not path.is_file():
        raise MissingFileError(
            f"DAVIS split file not found: {path} (expected ImageSets/2017/<split>.txt under the DAVIS root)"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"DAVIS split file {path} lists no sequence")
    return names


def select_sequences(davis_root: Path, split: str, sequences: Iterable[str] | None) -> list[str]:
    """The split's sequences, or the given subset of them in the given order (unknown names are an error)."""
    names = read_sequence_names(davis_root, split)
    if not sequences:
        return names
    subset = list(sequences)
    unknown = [s for s in subset if s not in names]
    if unknown:
        raise UserError(
            f"sequences {unknown} are not in the DAVIS split '{split}' "
            f"({Path(davis_root) / 'ImageSets' / '2017' / f'{split}.txt'}: {', '.join(names)})"
        )
    return subset


def annotation_paths(davis_root: Path, sequence: str, resolution: str = "480p") -> list[Path]:
    """Sorted annotation PNGs of a sequence (``Annotations/<resolution>/<seq>/*.png``)."""
    folder = Path(davis_root) / "Annotations" / resolution / sequence
    if not folder.is_dir():
        raise MissingFileError(f"DAVIS annotation folder not found: {folder}")
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise MissingFileError(f"no annotation PNG in {folder}")
    return paths


def image_paths(davis_root: Path, sequence: str, resolution: str = "480p") -> list[Path]:
    """Sorted frames of a sequence (``JPEGImages/<resolution>/<seq>/*.jpg``)."""
    folder = Path(davis_root) / "JPEGImages" / resolution / sequence
    if not folder.is_dir():
        raise MissingFileError(f"DAVIS frame folder not found: {folder}")
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise MissingFileError(f"no JPEG frame in {folder}")
    return paths


def files_read(
    davis_root: Path | str,
    split: str = "val",
    sequences: Iterable[str] | None = None,
    resolution: str = "480p",
    max_frames: int | None = None,
) -> list[Path]:
    """Every file a propagation and scoring run reads: the split file and, per selected sequence, its frames
    and annotations (the first ``max_frames`` of each when set). Lists folders, opens nothing."""
    root = Path(davis_root)
    paths = [root / "ImageSets" / "2017" / f"{split}.txt"]
    for seq in select_sequences(root, split, sequences):
        paths += image_paths(root, seq, resolution)[:max_frames]
        paths += annotation_paths(root, seq, resolution)[:max_frames]
    return paths


def read_label_png(path: Path) -> np.ndarray:
    """Object ids of an indexed (palette or 8-bit grey) PNG as uint8 ``[H, W]``; palette indices, not colours."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"label PNG not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(
                    f"{path}: expected an indexed (palette 'P' or grey 'L') PNG of object ids, got mode {im.mode!r}"
                )
            return np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError) as err:
        raise UserError(f"cannot read label PNG {path}: {err}") from err


@dataclass
class SequenceData:
    """One sequence's files, checked by :func:`check_sequence`."""

    name: str
    frames: list[Path]
    annotations: list[Path]
    n_objects: int
    size: tuple[int, int]  # (height, width) of the annotations (and, when checked, of the frames)


def check_sequence(
    davis_root: Path | str,
    sequence: str,
    resolution: str = "480p",
    max_frames: int | None = None,
    check_frames: bool = True,
) -> SequenceData:
    """Check everything a propagation run and its scoring read from one sequence (its first ``max_frames``
    frames), before any of it is used; UserError / MissingFileError naming the file otherwise:

    - the frames (JPEG) and annotations (PNG) exist; every frame is annotated, or only the first (test-dev);
      every annotation is named like a frame, the first like frame 0;
    - every annotation is decoded in full (a palette or grey PNG): the first's ids must be 1..N
      (:func:`object_count`), every other must have the first's size; ids the first frame lacks are named in
      a warning (the scoring ignores them, as the official tool does);
    - ``check_frames``: every frame passes :func:`srt.io.check_image` (a whole image, not truncated) and has
      the annotations' size.

    Cost: a full decode of each annotation (~3 ms for 854x480) and a header check of each frame (~0.05 ms).
    """
    root = Path(davis_root)
    frames = image_paths(root, sequence, resolution)[:max_frames]
    annotations = annotation_paths(root, sequence, resolution)[:max_frames]
    check_pairing(frames, annotations)
    n_objects, shape = check_annotations(annotations)
    if check_frames:
        check_frame_files(frames, shape, annotations[0].parent)
    return SequenceData(sequence, frames, annotations, n_objects, shape)


def check_pairing(frames: list[Path], annotations: list[Path]) -> None:
    """Annotations pair with frames by name: the first like frame 0, every frame annotated or only the first."""
    folder = annotations[0].parent
    if annotations[0].stem != frames[0].stem:
        raise MissingFileError(
            f"missing first-frame annotation {folder / (frames[0].stem + '.png')} for frame {frames[0]} "
            f"(the first annotation of {folder} is {annotations[0].name})"
        )
    if 1 < len(annotations) < len(frames):
        raise UserError(
            f"{folder}: {len(annotations)} annotations for {len(frames)} frames; expected every frame annotated, "
            "or only the first (test-dev)"
        )
    frame_stems = {f.stem for f in frames}
    orphans = [a.name for a in annotations if a.stem not in frame_stems]
    if orphans:
        raise UserError(
            f"{folder}: annotations {orphans[:5]} have no frame of the same name in {frames[0].parent}; "
            "expected one annotation per frame, named like it"
        )


def check_annotations(annotations: list[Path]) -> tuple[int, tuple[int, int]]:
    """(object count, (H, W)) of a sequence's annotations, each decoded in full: the first's ids must be 1..N,
    every other at the first's size; ids the first frame lacks are named in a warning."""
    first = read_label_png(annotations[0])
    n_objects = object_count(first, f"first-frame annotation {annotations[0]}")
    extra: dict[str, list[int]] = {}
    for path in annotations[1:]:
        labels = read_label_png(path)
        if labels.shape != first.shape:
            raise UserError(
                f"annotation {path} is {labels.shape[1]}x{labels.shape[0]} but the first annotation "
                f"{annotations[0]} is {first.shape[1]}x{first.shape[0]}; expected every annotation of a "
                "sequence at one size"
            )
        unknown = [int(v) for v in np.unique(labels) if n_objects < v < VOID_LABEL]
        if unknown:
            extra[path.name] = unknown
    if extra:
        log.warning(
            "davis: %s: annotations %s hold object ids the first frame does not have (it has 1..%d); the "
            "scoring ignores them, as the official evaluator does",
            annotations[0].parent,
            ", ".join(f"{name} {ids}" for name, ids in list(extra.items())[:5]) + (" ..." if len(extra) > 5 else ""),
            n_objects,
        )
    return n_objects, first.shape


def check_frame_files(frames: list[Path], shape: tuple[int, int], folder: Path) -> None:
    """Every frame a whole image (:func:`srt.io.check_image`) at the annotations' size ``shape`` (H, W)."""
    for path in frames:
        width, height = check_image(path, "DAVIS frame")
        if (height, width) != shape:
            raise UserError(
                f"frame {path} is {width}x{height} but the annotations of {folder} are "
                f"{shape[1]}x{shape[0]}; expected equal sizes"
            )


def scoring_status(n_annotations: int, n_frames: int) -> str | None:
    """None if a sequence with these counts of annotations and frames can be scored, else why it is skipped."""
    if n_annotations == 1 and n_frames > 1:
        return "first-frame annotation only (test-dev style): propagated, not scored"
    if n_annotations < 3:
        return f"{n_annotations} annotated frame(s): nothing left after dropping the first and last"
    return None


# ----------------------------------------------------------------------------------------------------------
# Results folder evaluation (I/O) and the official CSVs
# ----------------------------------------------------------------------------------------------------------
def evaluate_results(
    davis_root: Path | str,
    results_dir: Path | str,
    sequences: Iterable[str] | None = None,
    split: str = "val",
    max_frames: int | None = None,
    progress: bool = True,
    resolution: str = "480p",
) -> DavisScores:
    """Score ``<results_dir>/<seq>/<frame>.png`` against ``<davis_root>/Annotations/<resolution>/<seq>/<frame>.png``.

    ``max_frames`` (debug runs that propagated only the first N frames) scores frames 1..N-2 of each sequence;
    leave it None for real evaluations.
    """
    from tqdm import tqdm

    davis_root, results_dir = Path(davis_root), Path(results_dir)
    if not results_dir.is_dir():
        raise MissingFileError(f"results folder not found: {results_dir}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"max_frames={max_frames} is not valid; expected None or an integer >= 1")
    scores = DavisScores()
    selected = select_sequences(davis_root, split, sequences)
    # every annotation decoded and checked before any prediction is read (frames are not read by the scoring)
    data = {seq: check_sequence(davis_root, seq, resolution, max_frames, check_frames=False) for seq in selected}
    for seq in tqdm(selected, desc="DAVIS J&F", disable=not progress):
        gt_paths, n_frames, n_objects = data[seq].annotations, len(data[seq].frames), data[seq].n_objects
        reason = scoring_status(len(gt_paths), n_frames)
        if reason is not None:
            scores.skipped[seq] = reason
            continue
        scored = gt_paths[1:-1]
        gt = np.stack([read_label_png(p) for p in scored])
        pred = []
        for p in scored:
            res_path = results_dir / seq / p.name
            if not res_path.is_file():
                raise MissingFileError(
                    f"prediction not found: {res_path} (every annotated frame needs one; for a "
                    f"run limited to its first N frames pass max_frames / --max-frames N)"
                )
            labels = read_label_png(res_path)
            if labels.shape != gt.shape[1:]:
                raise UserError(
                    f"{res_path}: prediction size {labels.shape[::-1]} (W, H) differs from the "
                    f"annotation size {gt.shape[1:][::-1]} of {p}"
                )
            if int(labels.max()) > n_objects:
                raise UserError(
                    f"{res_path}: label {int(labels.max())} exceeds the {n_objects} object(s) of the "
                    f"first annotation {gt_paths[0]}"
                )
            pred.append(labels)
        scores.objects.extend(score_frames(seq, gt, np.stack(pred), n_objects))
    return scores


def write_official_csvs(scores: DavisScores, out_dir: Path | str, split: str = "val") -> tuple[Path, Path]:
    """Write ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv`` (official columns and
    float format), replacing any existing ones atomically. Returns both paths."""
    import pandas as pd

    out_dir = Path(out_dir)
    glob_path = out_dir / f"global_results-{split}.csv"
    seq_path = out_dir / f"per-sequence_results-{split}.csv"
    table_g = pd.DataFrame([scores.global_metrics()], columns=list(GLOBAL_COLUMNS))
    table_s = pd.DataFrame(scores.per_object_rows(), columns=list(PER_OBJECT_COLUMNS))
    atomic_write_text(glob_path, table_g.to_csv(index=False, float_format=CSV_FLOAT_FORMAT))
    atomic_write_text(seq_path, table_s.to_csv(index=False, float_format=CSV_FLOAT_FORMAT))
    return glob_path, seq_path


def evaluate_and_write(
    davis_root: Path | str,
    results_dir: Path | str,
    sequences: Iterable[str] | None = None,
    split: str = "val",
    max_frames: int | None = None,
    progress: bool = True,
    resolution: str = "480p",
    allow_empty: bool = False,
) -> tuple[DavisScores, dict[str, float]]:
    """Score a results folder, write the official CSVs into it, return the scores and the global metrics.

    Existing CSVs are never reused (the official script reads them instead of scoring): they are deleted
    first, so a failed evaluation leaves no old numbers beside the predictions. When nothing could be scored
    the metrics are empty if ``allow_empty``, else ValueError."""
    results_dir = Path(results_dir)
    csvs = (results_dir / f"global_results-{split}.csv", results_dir / f"per-sequence_results-{split}.csv")
    stale = [p for p in csvs if p.exists()]
    if stale:
        print(f"eval.davis: recomputing; removed the existing {', '.join(p.name for p in stale)}", file=sys.stderr)
        for p in stale:
            p.unlink()
    scores = evaluate_results(davis_root, results_dir, sequences, split, max_frames, progress, resolution)
    if scores.n_objects == 0 and allow_empty:
        return scores, {}
    metrics = scores.global_metrics()  # raises ValueError naming the skipped sequences when nothing was scored
    write_official_csvs(scores, results_dir, split)
    return scores, metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.davis",
        description="DAVIS-2017 semi-supervised J&F of a results folder <results>/<seq>/<frame>.png "
        "(writes global_results-<set>.csv and per-sequence_results-<set>.csv into it).",
    )
    parser.add_argument(
        "--davis", required=True, type=Path, help="DAVIS root (holds JPEGImages/, Annotations/, ImageSets/)"
    )
    parser.add_argument("--results", required=True, type=Path, help="folder with one sub-folder of PNGs per sequence")
    parser.add_argument("--sequences", default=None, help="comma-separated subset of the split (default: all)")
    parser.add_argument("--set", default="val", dest="split", help="split file ImageSets/2017/<set>.txt (default val)")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="debug only: score just the first N frames of each sequence (for truncated runs)",
    )
    args = parser.parse_args(argv)
    sequences = [s for s in args.sequences.split(",") if s] if args.sequences else None
    scores, metrics = evaluate_and_write(args.davis, args.results, sequences, args.split, args.max_frames)
    for seq, reason in scores.skipped.items():
        print(f"skipped {seq}: {reason}")
    print(f"{scores.n_objects} object(s) scored")
    print("  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(
        f"wrote {args.results / f'global_results-{args.split}.csv'} and "
        f"{args.results / f'per-sequence_results-{args.split}.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.davis"))
