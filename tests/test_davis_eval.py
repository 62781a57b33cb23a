"""DAVIS-2017 J and F (eval/davis.py) against hand-computed cases, brute-force definitions and the real fixtures."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from eval import davis as ev
from srt.errors import report_user_errors


# ---------------------------------------------------------------------------------------------- helpers
def square(shape, top, left, size) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def seg2bmap_by_definition(mask: np.ndarray) -> np.ndarray:
    """Pixel loop over the written rule: differs from E, S or SE neighbour, neighbours outside the image do
    not count, except that the last row compares with E only, the last column with S only, and the
    bottom-right pixel is never a boundary."""
    H, W = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for y in range(H):
        for x in range(W):
            if y == H - 1 and x == W - 1:
                continue
            if y == H - 1:
                out[y, x] = mask[y, x] != mask[y, x + 1]
            elif x == W - 1:
                out[y, x] = mask[y, x] != mask[y + 1, x]
            else:
                out[y, x] = (
                    (mask[y, x] != mask[y, x + 1])
                    or (mask[y, x] != mask[y + 1, x])
                    or (mask[y, x] != mask[y + 1, x + 1])
                )
    return out


def f_by_distance(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """F with matching by Euclidean distance transform (an independent route to disk dilation)."""
    bg, bp = seg2bmap_by_definition(gt), seg2bmap_by_definition(pred)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dist_to_gt = ndimage.distance_transform_edt(~bg)
    dist_to_pred = ndimage.distance_transform_edt(~bp)
    precision = np.mean(dist_to_gt[bp] <= radius)
    recall = np.mean(dist_to_pred[bg] <= radius)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------- per-frame metrics
def test_square_shifted_by_five_pixels_hand_computed():
    # 100x100 image: tolerance ceil(0.008 * 141.42) = 2 px. GT: 40x40 square at (20, 20); prediction shifted
    # 5 px right. J = 40*35 / (40*45) = 7/9. Boundaries (seg2bmap) are the 41x41 outlines rows/cols 19..59
    # (GT) and rows 19..59, cols 24..64 (prediction), 160 px each. Matched prediction pixels within 2 px:
    # top and bottom rows 38 each (cols 24..61), left column 4 (rows 20, 21, 57, 58), right column 0 -> 80,
    # so P = 0.5; R = 0.5 by symmetry; F = 0.5.
    gt, pred = square((100, 100), 20, 20, 40), square((100, 100), 20, 25, 40)
    assert ev.boundary_radius(gt.shape) == 2
    assert ev.seg2bmap(gt).sum() == 160
    assert ev.region_similarity(gt, pred) == pytest.approx(7 / 9)
    assert ev.boundary_f_measure(gt, pred) == pytest.approx(0.5)


def test_square_shifted_within_tolerance_has_perfect_boundary():
    gt, pred = square((100, 100), 20, 20, 40), square((100, 100), 21, 20, 40)  # 1 px down, tolerance 2 px
    assert ev.region_similarity(gt, pred) == pytest.approx(39 / 41)
    assert ev.boundary_f_measure(gt, pred) == 1.0


def test_empty_and_absent_conventions():
    obj, empty = square((64, 64), 10, 10, 20), np.zeros((64, 64), dtype=bool)
    # empty prediction of a present object: J = 0; no predicted boundary -> P = 1, R = 0 -> F = 0
    assert ev.region_similarity(obj, empty) == 0.0
    assert ev.boundary_f_measure(obj, empty) == 0.0
    # object absent in GT but predicted: J = 0; P = 0, R = 1 -> F = 0
    assert ev.region_similarity(empty, obj) == 0.0
    assert ev.boundary_f_measure(empty, obj) == 0.0
    # absent in both: J = 1 (empty union), F = 1 (both boundaries empty)
    assert ev.region_similarity(empty, empty) == 1.0
    assert ev.boundary_f_measure(empty, empty) == 1.0
    # a mask covering the whole image has no boundary
    full = np.ones((64, 64), dtype=bool)
    assert not ev.seg2bmap(full).any()
    assert ev.boundary_f_measure(full, full) == 1.0
    assert ev.boundary_f_measure(full, obj) == 0.0  # GT has no boundary, prediction has one


def test_tolerance_radius_matches_the_documented_values():
    assert ev.boundary_radius((480, 854)) == 8
    assert ev.boundary_radius((480, 910)) == 9
    assert ev.boundary_radius((240, 427)) == 4
    assert ev.boundary_radius((64, 64)) == 1
    assert ev.boundary_radius((480, 854), bound_th=3) == 3


def test_seg2bmap_and_f_against_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(12):
        H, W = rng.integers(12, 40, size=2)
        # blobby masks: thresholded smoothed noise, so boundaries are long and irregular
        gt = ndimage.gaussian_filter(rng.standard_normal((H, W)), 2) > 0
        pred = ndimage.gaussian_filter(rng.standard_normal((H, W)), 2) > 0.1 if trial % 3 else np.roll(gt, 2, axis=1)
        np.testing.assert_array_equal(ev.seg2bmap(gt), seg2bmap_by_definition(gt))
        r = ev.boundary_radius((H, W), 0.05)
        assert ev.boundary_f_measure(gt, pred, 0.05) == pytest.approx(f_by_distance(gt, pred, r))
        inter, union = np.sum(gt & pred), np.sum(gt | pred)
        assert ev.region_similarity(gt, pred) == pytest.approx(inter / union)


def test_db_statistics_hand_computed():
    v = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    # bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin v[0:3], last bin v[5:8]
    mean, recall, decay = ev.db_statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(4 / 8)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx(0.8 - 0.3)
    assert ev.db_statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))
    # neighbouring bins share their edge frame: N = 5 -> edges [0, 1, 2, 3, 4], bins of 2 frames
    assert ev.db_statistics([1, 0, 0, 0, 0])[2] == pytest.approx(0.5 - 0.0)


def test_score_sequence_drops_first_and_last_frame_and_names_objects():
    gt = np.zeros((4, 32, 32), dtype=np.uint8)
    gt[:, 4:12, 4:12] = 1
    gt[:, 20:28, 20:28] = 2
    gt[:, 0, :] = 255  # void counts as background
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[[0, 3]] = 0  # first and last frames are not scored
    pred[2][pred[2] == 2] = 0  # object 2 missed in frame 2
    objs = ev.score_sequence("seq", gt, pred)
    assert [o.name for o in objs] == ["seq_1", "seq_2"]
    np.testing.assert_allclose(objs[0].J, [1, 1])
    np.testing.assert_allclose(objs[1].J, [1, 0])
    np.testing.assert_allclose(objs[1].F, [1, 0])
    with pytest.raises(ValueError, match="label 3"):
        ev.score_sequence("seq", gt, np.where(pred == 2, 3, pred))


def test_global_numbers_average_objects_not_sequences():
    scores = ev.DavisScores(
        objects=[
            ev.ObjectScores("a_1", np.array([1.0, 1.0]), np.array([1.0, 1.0])),
            ev.ObjectScores("b_1", np.array([0.0, 0.0]), np.array([0.2, 0.2])),
            ev.ObjectScores("b_2", np.array([0.0, 0.0]), np.array([0.2, 0.2])),
        ]
    )
    g = scores.global_metrics()
    assert g["J-Mean"] == pytest.approx(1 / 3)  # per sequence it would be 0.5
    assert g["F-Mean"] == pytest.approx((1 + 0.2 + 0.2) / 3)
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    assert set(g) == set(ev.GLOBAL_COLUMNS)
    with pytest.raises(ValueError, match="no DAVIS object"):
        ev.DavisScores(skipped={"x": "why"}).global_metrics()


# ---------------------------------------------------------------------------------------------- real fixtures
def copy_annotations_as_results(davis_root: Path, out: Path) -> None:
    for seq_dir in (davis_root / "Annotations" / "480p").iterdir():
        shutil.copytree(seq_dir, out / seq_dir.name)


def test_ground_truth_as_prediction_scores_one_and_writes_official_csvs(fixtures_dir, tmp_path, capsys):
    root = fixtures_dir / "davis"
    results = tmp_path / "results"
    copy_annotations_as_results(root, results)
    (results / "global_results-val.csv").write_text("stale,from,an,old,run\n")  # must not be reused
    assert ev.main(["--davis", str(root), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "skipped bike-packing: first-frame annotation only" in out
    g = pd.read_csv(results / "global_results-val.csv")
    assert list(g.columns) == list(ev.GLOBAL_COLUMNS)
    assert g.iloc[0].to_dict() == {
        "J&F-Mean": 1.0,
        "J-Mean": 1.0,
        "J-Recall": 1.0,
        "J-Decay": 0.0,
        "F-Mean": 1.0,
        "F-Recall": 1.0,
        "F-Decay": 0.0,
    }
    s = pd.read_csv(results / "per-sequence_results-val.csv")
    assert list(s.columns) == list(ev.PER_OBJECT_COLUMNS)
    assert sorted(s["Sequence"]) == ["blackswan_1", "car-shadow_1", "cows_1", "dog_1"]
    scores = ev.evaluate_results(root, results, progress=False)
    assert all(len(o.J) == 23 for o in scores.objects)  # 25 frames minus the first and the last


def test_degraded_prediction_on_fixtures_matches_per_frame_functions(fixtures_dir, tmp_path):
    """Erode the GT of one real sequence by 6 px: the folder score equals the per-frame functions' mean."""
    root = fixtures_dir / "davis"
    results = tmp_path / "results" / "dog"
    results.mkdir(parents=True)
    gts = [ev.read_label_png(p) for p in ev.annotation_paths(root, "dog")]
    preds = [ndimage.binary_erosion(g == 1, iterations=6).astype(np.uint8) for g in gts]
    for path, pred in zip(ev.annotation_paths(root, "dog"), preds):
        Image.fromarray(pred, mode="L").save(results / path.name)
    scores = ev.evaluate_results(root, tmp_path / "results", sequences=["dog"], progress=False)
    j = [ev.region_similarity(g == 1, p == 1) for g, p in zip(gts[1:-1], preds[1:-1])]
    f = [ev.boundary_f_measure(g == 1, p == 1) for g, p in zip(gts[1:-1], preds[1:-1])]
    (obj,) = scores.objects
    np.testing.assert_allclose(obj.J, j)
    np.testing.assert_allclose(obj.F, f)
    assert 0.5 < np.mean(j) < 0.99 and np.mean(f) < 0.99  # the erosion really costs something


def test_two_object_sequence_with_one_object_dropped(fixtures_dir, tmp_path):
    """davis-extra: OSVOS masks of bike-packing as pseudo-GT (2 objects); predicting object 1 only."""
    src = fixtures_dir / "davis-extra" / "results" / "semi-supervised" / "osvos" / "bike-packing"
    root = tmp_path / "DAVIS"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bike-packing\n")
    shutil.copytree(src, root / "Annotations" / "480p" / "bike-packing")
    frames = root / "JPEGImages" / "480p" / "bike-packing"
    frames.mkdir(parents=True)
    for p in sorted(src.glob("*.png")):
        (frames / f"{p.stem}.jpg").write_bytes(b"")  # only counted by the evaluator, never read
    results = tmp_path / "res" / "bike-packing"
    results.mkdir(parents=True)
    gts = [ev.read_label_png(p) for p in sorted(src.glob("*.png"))]
    assert ev.object_count(gts[0]) == 2
    for p, g in zip(sorted(src.glob("*.png")), gts):
        Image.fromarray(np.where(g == 2, 0, g).astype(np.uint8), mode="L").save(results / p.name)
    scores = ev.evaluate_results(root, tmp_path / "res", progress=False)
    one, two = scores.objects
    assert (one.name, two.name) == ("bike-packing_1", "bike-packing_2")
    np.testing.assert_allclose(one.J, 1.0)
    expected_two = [1.0 if not (g == 2).any() else 0.0 for g in gts[1:-1]]
    np.testing.assert_allclose(two.J, expected_two)
    g = scores.global_metrics()
    assert g["J-Mean"] == pytest.approx((1.0 + np.mean(expected_two)) / 2)


def test_errors_name_the_file(fixtures_dir, tmp_path):
    root = fixtures_dir / "davis"
    results = tmp_path / "results"
    copy_annotations_as_results(root, results)
    bad = results / "dog" / "00005.png"
    Image.fromarray(np.full((480, 854), 2, np.uint8), mode="L").save(bad)
    with pytest.raises(ValueError, match=r"00005\.png.*label 2"):
        ev.evaluate_results(root, results, sequences=["dog"], progress=False)
    Image.fromarray(np.zeros((240, 427), np.uint8), mode="L").save(bad)
    with pytest.raises(ValueError, match=r"00005\.png.*size"):
        ev.evaluate_results(root, results, sequences=["dog"], progress=False)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=r"00005\.png"):
        ev.evaluate_results(root, results, sequences=["dog"], progress=False)
    Image.new("RGB", (854, 480)).save(bad)
    with pytest.raises(ValueError, match=r"00005\.png.*mode 'RGB'"):
        ev.evaluate_results(root, results, sequences=["dog"], progress=False)
    with pytest.raises(ValueError, match="not in the DAVIS split"):
        ev.evaluate_results(root, results, sequences=["nope"], progress=False)
    with pytest.raises(FileNotFoundError, match="train.txt"):
        ev.evaluate_results(root, results, split="train", progress=False)


def test_only_unscorable_sequences_is_an_error_and_removes_stale_csvs(fixtures_dir, tmp_path, capsys):
    root = fixtures_dir / "davis"
    results = tmp_path / "results"
    copy_annotations_as_results(root, results)
    stale = results / "global_results-val.csv"
    stale.write_text("J&F-Mean\n0.9\n")
    argv = ["--davis", str(root), "--results", str(results), "--sequences", "bike-packing"]
    assert report_user_errors(ev.main, argv, prog="python -m eval.davis") == 2
    assert "python -m eval.davis: error: no DAVIS object was scored" in capsys.readouterr().err
    assert not stale.exists()


def test_max_frames_scores_a_truncated_run(fixtures_dir, tmp_path):
    root = fixtures_dir / "davis"
    results = tmp_path / "results"
    copy_annotations_as_results(root, results)
    scores = ev.evaluate_results(root, results, sequences=["blackswan", "bike-packing"], max_frames=5, progress=False)
    (obj,) = scores.objects
    assert len(obj.J) == 3 and "bike-packing" in scores.skipped
    assert math.isclose(scores.global_metrics()["J&F-Mean"], 1.0)
