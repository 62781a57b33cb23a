"""NYU depth metrics (hand cases, the published SRT code transcribed, its row-indexing bug), layouts and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from eval import depth as ed
from srt.errors import report_user_errors

# ----------------------------------------------------------------------------------------------- references


def srt_reference(ground_truth: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """srt:eval_nyu_v2.py's per-image scoring as published (integer mask), transcribed."""
    mask = np.where(ground_truth > 0, 1, 0)
    ground_truth = ground_truth[mask]
    depth = output[mask]
    scale = np.median(ground_truth) / np.median(depth)
    depth = depth * scale
    thresh = np.maximum((ground_truth / depth), (depth / ground_truth))
    return {
        "a1": (thresh < 1.25).mean(),
        "a2": (thresh < 1.25**2).mean(),
        "a3": (thresh < 1.25**3).mean(),
        "RMSE": np.sqrt(((ground_truth - depth) ** 2).mean()),
        "RMSE_log": np.sqrt(((np.log(ground_truth) - np.log(depth)) ** 2).mean()),
        "AbsRel": np.mean(np.abs(ground_truth - depth) / ground_truth),
        "SqRel": np.mean(((ground_truth - depth) ** 2) / ground_truth),
    }


def close(a: float, b: float, rel: float = 2e-5) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def image(h: int = 6, w: int = 8, seed: int = 0, zeros: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 6.0, (h, w)).astype(np.float32)
    gt.flat[rng.choice(h * w, zeros, replace=False)] = 0
    pred = (gt * rng.uniform(0.7, 1.4, (h, w)) + 0.3).astype(np.float32)
    return gt, pred


# ----------------------------------------------------------------------------------------------- hand cases


def test_toolbox_hand_case_constant_ratio():
    # 50x50 image: the Eigen crop keeps rows 45..49, cols 41..49 (45 px). gt = 2 m there, pred = 1.2 gt:
    # thresh = 1.2 < 1.25 -> a1 = a2 = a3 = 1; AbsRel = 0.2; SqRel = 0.4^2/2 = 0.08; RMSE = 0.4;
    # RMSE_log = ln 1.2; log_10 = log10 1.2; silog = 0 (constant log error)
    gt = np.full((50, 50), 2.0, np.float32)
    pred = gt * np.float32(1.2)
    pred[:45] = 9.0  # outside the crop: ignored
    gt[47, 45], pred[47, 45] = 10.0, 1.0  # gt >= 10: invalid
    gt[48, 45], pred[48, 45] = 0.001, 5.0  # gt <= 1e-3: invalid
    m = ed.evaluate([gt], [pred], "toolbox")["mean"]
    expected = dict(a1=1, a2=1, a3=1, AbsRel=0.2, SqRel=0.08, RMSE=0.4, RMSE_log=math.log(1.2), log_10=math.log10(1.2))
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-5), k
    assert m["silog"] == pytest.approx(0.0, abs=1e-3)


def test_toolbox_thresholds_are_strict():
    gt = np.full((50, 50), 1.0, np.float32)
    pred = np.full((50, 50), 1.25, np.float32)  # thresh == 1.25 exactly: not < 1.25
    pred[45, 41:50] = 1.0
    m = ed.evaluate([gt], [pred], "toolbox")["mean"]
    assert m["a1"] == pytest.approx(9 / 45) and m["a2"] == 1.0


@pytest.mark.parametrize("protocol", ed.PROTOCOLS)
def test_an_image_without_valid_pixels_is_named_or_excluded_never_averaged(protocol):
    gt_ok = np.full((480, 640), 2.0, np.float32)
    pred_ok = gt_ok * np.float32(1.1)
    gt_empty = np.zeros((480, 640), np.float32)
    with pytest.raises(ed.InvalidGroundTruthError, match=r"depth map b\.png has 0 valid pixels of 307200") as info:
        ed.evaluate([gt_ok, gt_empty], [pred_ok, pred_ok], protocol, ids=["a.png", "b.png"])
    assert ed.valid_range(protocol) in str(info.value) and "skip_invalid" in str(info.value)
    out = ed.evaluate([gt_ok, gt_empty], [pred_ok, pred_ok], protocol, ids=["a.png", "b.png"], skip_invalid=True)
    assert out["n_images"] == 1 and out["n_excluded"] == 1 and list(out["excluded"]) == ["b.png"]
    assert out["ids"] == ["a.png"] and len(out["per_image"]) == 1
    alone = ed.evaluate([gt_ok], [pred_ok], protocol)["mean"]
    assert out["mean"] == alone  # the mean over the scored image only, no NaN anywhere
    with pytest.raises(ed.InvalidGroundTruthError, match="all 1 images were excluded"):
        ed.evaluate([gt_empty], [pred_ok], protocol, skip_invalid=True)


def test_toolbox_valid_pixels_only_outside_the_eigen_crop_count_as_none():
    gt = np.zeros((480, 640), np.float32)
    gt[:40] = 3.0  # valid depth, but above the crop's first row (45)
    with pytest.raises(ed.InvalidGroundTruthError, match="0 valid pixels"):
        ed.evaluate([gt], [gt], "toolbox")
    assert ed.evaluate([gt], [gt], "srt")["n_images"] == 1


def test_a_nan_metric_is_named_not_averaged():
    gt = np.full((6, 8), 2.0, np.float32)
    pred = np.zeros((6, 8), np.float32)  # median 0: median scaling gives 0 * inf = NaN
    with pytest.raises(ed.InvalidGroundTruthError, match=r"x: RMSE, .* are NaN under the srt protocol"):
        ed.evaluate([gt], [pred], "srt", ids=["x"])


def test_srt_median_scaling_removes_scale():
    gt, _ = image(zeros=4)
    pred = gt * 3.0
    pred[gt == 0] = 7.0  # invalid pixels never count
    m = ed.evaluate([gt], [pred], "srt")["mean"]
    assert m["a1"] == 1.0 and m["AbsRel"] == pytest.approx(0, abs=1e-6) and m["RMSE"] == pytest.approx(0, abs=1e-5)
    assert set(m) == set(ed.SRT_METRICS)


def test_srt_mean_is_plain_mean_over_images():
    a, b = image(seed=1), image(seed=2)
    out = ed.evaluate([a[0], b[0]], [a[1], b[1]], "srt")
    for k in ed.SRT_METRICS:
        assert out["mean"][k] == pytest.approx((out["per_image"][0][k] + out["per_image"][1][k]) / 2)


def test_srt_fixed_protocol_equals_boolean_mask_reference():
    gt, pred = image(seed=3)
    valid = gt > 0
    g, p = gt[valid], pred[valid]
    p = p * (np.median(g) / np.median(p))
    rmse = np.sqrt(((g - p) ** 2).mean())
    assert ed.evaluate([gt], [pred], "srt")["mean"]["RMSE"] == pytest.approx(float(rmse), rel=1e-6)


# ----------------------------------------------------------------------------------------------- the literal bug


@pytest.mark.parametrize("seed", range(6))
def test_literal_equals_published_code(seed):
    gt, pred = image(h=5 + seed, w=4 + 2 * seed, seed=seed, zeros=seed * 2)
    gt[0, :] = np.where(gt[0] == 0, 1.5, gt[0])  # row 0 without zeros: finite numbers
    ours = ed.evaluate([gt], [pred], "srt", literal=True)["per_image"][0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = srt_reference(gt, pred)
    for k in ed.SRT_METRICS:
        assert close(ours[k], float(ref[k])), (k, ours[k], ref[k])


def test_literal_scores_only_rows_0_and_1():
    gt, pred = image(h=8, w=6, seed=9, zeros=0)
    ref = ed.evaluate([gt], [pred], "srt", literal=True)["mean"]
    pred2 = pred.copy()
    pred2[2:] *= 3.0  # rows 2.. changed: the literal protocol does not see it, the fixed one does
    assert ed.evaluate([gt], [pred2], "srt", literal=True)["mean"] == ref
    assert ed.evaluate([gt], [pred2], "srt")["mean"] != ed.evaluate([gt], [pred], "srt")["mean"]


def test_literal_inf_when_row0_has_a_zero_and_a_pixel_is_invalid():
    gt, pred = image(h=6, w=8, seed=4, zeros=0)
    gt[0, 3] = 0  # invalid pixel in row 0: row 0 (with its zero) is selected
    ours = ed.evaluate([gt], [pred], "srt", literal=True)["mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = srt_reference(gt, pred)
    assert math.isinf(ours["AbsRel"]) and math.isinf(ours["SqRel"]) and math.isinf(ours["RMSE_log"])
    for k in ed.SRT_METRICS:
        assert close(ours[k], float(ref[k])), (k, ours[k], ref[k])


def test_literal_nan_without_valid_pixels():
    gt = np.zeros((4, 5), np.float32)
    pred = np.full((4, 5), 2.0, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ours = ed.srt_image_literal(gt, pred)  # the per-image reference: NaN ...
        ref = srt_reference(gt, pred)
    for k in ed.SRT_METRICS:
        assert close(ours[k], float(ref[k])), (k, ours[k], ref[k])
    assert math.isnan(ours["AbsRel"]) and ours["a1"] == 0.0
    with pytest.raises(ed.InvalidGroundTruthError, match="0 valid pixels"):  # ... which no mean is built on
        ed.evaluate([gt], [pred], "srt", literal=True)


def test_literal_only_for_srt_and_bad_shapes():
    gt, pred = image()
    with pytest.raises(ValueError, match="literal"):
        ed.evaluate([gt], [pred], "toolbox", literal=True)
    with pytest.raises(ValueError, match="protocol='eigen'"):
        ed.evaluate([gt], [pred], "eigen")
    with pytest.raises(ValueError, match=r"image 0: ground truth \(6, 8\) and prediction \(6, 7\)"):
        ed.evaluate([gt], [pred[:, :7]], "srt")
    with pytest.raises(ValueError, match="2 ground-truth maps but 1"):
        ed.evaluate([gt, gt], [pred], "srt")


# ----------------------------------------------------------------------------------------------- files and the CLI


def write_png16(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


def test_read_depth_scales_and_rejects_8bit(tmp_path):
    write_png16(tmp_path / "d.png", [[0, 256], [512, 1000]])
    np.testing.assert_allclose(ed.read_depth(tmp_path / "d.png", "srt"), [[0, 1], [2, 1000 / 256]])
    np.testing.assert_allclose(ed.read_depth(tmp_path / "d.png", "toolbox"), [[0, 0.256], [0.512, 1.0]])
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"e\.png is a L image.*expected a 16-bit"):
        ed.read_depth(tmp_path / "e.png", "srt")


def test_prediction_png_round_trip(tmp_path):
    d = np.array([[0.001, 2.3456], [9.9994, 10.0]], np.float32)
    write_png16(tmp_path / "p.png", ed.depth_to_png(d))
    np.testing.assert_allclose(ed.read_prediction_png(tmp_path / "p.png"), [[0.001, 2.346], [9.999, 10.0]], atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        ed.depth_to_png(np.array([[np.nan]]))


def make_srt_layout(root, n=3, mismatch=False):
    for i in range(n):
        Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(_mk(root / "testing" / "images" / f"{i:04d}.png"))
        if not (mismatch and i == n - 1):
            write_png16(root / "testing" / "depths" / f"{i:04d}.png", np.full((6, 8), 256 * (i + 1)))


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_srt_layout(tmp_path):
    make_srt_layout(tmp_path)
    items = ed.list_items(tmp_path, "srt")
    assert [it.id for it in items] == ["0000", "0001", "0002"]
    make_srt_layout(tmp_path / "bad", mismatch=True)
    with pytest.raises(FileNotFoundError, match=r"depth map .*depths/0002\.png does not exist: image .*0002\.png"):
        ed.list_items(tmp_path / "bad", "srt")
    # as many depth maps as images, but one renamed: paired by name, not shifted by order
    (tmp_path / "testing/depths/0001.png").rename(tmp_path / "testing/depths/0001b.png")
    with pytest.raises(FileNotFoundError, match=r"depths/0001\.png does not exist.*paired by name, not by order"):
        ed.list_items(tmp_path, "srt")
    (tmp_path / "testing/depths/0001b.png").rename(tmp_path / "testing/depths/0001.png")
    write_png16(tmp_path / "testing/depths/0003.png", np.ones((6, 8)))  # a depth map without an image
    with pytest.raises(ValueError, match=r"depth map .*depths/0003\.png has no image named 0003"):
        ed.list_items(tmp_path, "srt")
    with pytest.raises(FileNotFoundError, match="testing/images"):
        ed.list_items(tmp_path / "nothing", "srt")


def test_toolbox_layout(tmp_path):
    for scene, k in (("kitchen", 7), ("bathroom", 3)):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(_mk(tmp_path / scene / f"rgb_{k:05d}.jpg"))
        write_png16(tmp_path / scene / f"sync_depth_{k:05d}.png", np.ones((6, 8)))
    (tmp_path / "nyu_test.txt").write_text(
        "/kitchen/rgb_00007.jpg /kitchen/sync_depth_00007.png 518.8579\n"
        "bathroom/rgb_00003.jpg bathroom/sync_depth_00003.png 518.8579\n"
        "/kitchen/rgb_00009.jpg None 518.8579\n\n"
    )
    items = ed.list_items(tmp_path, "toolbox")
    assert [it.id for it in items] == ["bathroom/rgb_00003", "kitchen/rgb_00007"]  # sorted, None skipped
    (tmp_path / "bad.txt").write_text("/kitchen/rgb_00008.jpg /kitchen/sync_depth_00008.png 518.8579\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.txt:1 names the image .*rgb_00008\.jpg"):
        ed.list_items(tmp_path, "toolbox", split="bad.txt")
    with pytest.raises(FileNotFoundError, match="split file"):
        ed.list_items(tmp_path, "toolbox", split="missing.txt")


def test_cli_scores_saved_predictions(tmp_path, capsys):
    make_srt_layout(tmp_path / "nyu")
    for i in range(3):  # predictions: half the truth -> perfect after median scaling
        write_png16(tmp_path / "pred" / f"{i:04d}.png", np.full((6, 8), 500 * (i + 1)))
    assert ed.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path / "nyu"), "--protocol", "srt",
                    "--per-image", str(tmp_path / "per.csv")]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 3 and out["a1"] == 1.0 and out["RMSE"] == pytest.approx(0, abs=1e-6)
    assert (tmp_path / "per.csv").read_text().splitlines()[0].startswith("image,RMSE")
    (tmp_path / "pred" / "0002.png").unlink()
    args = ["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path / "nyu"), "--protocol", "srt"]
    assert report_user_errors(ed.main, args, prog="python -m eval.depth") == 2
    assert "1 of 3 images have no prediction" in capsys.readouterr().err


def test_cli_names_a_depth_map_without_valid_pixels_or_skips_it(tmp_path, capsys):
    make_srt_layout(tmp_path / "nyu")
    write_png16(tmp_path / "nyu/testing/depths/0001.png", np.zeros((6, 8)))
    for i in range(3):
        write_png16(tmp_path / "pred" / f"{i:04d}.png", np.full((6, 8), 500 * (i + 1)))
    args = ["--pred-dir", str(tmp_path / "pred"), "--data-root", str(tmp_path / "nyu"), "--protocol", "srt"]
    assert report_user_errors(ed.main, args, prog="python -m eval.depth") == 2
    err = capsys.readouterr().err
    assert "depths/0001.png has 0 valid pixels of 48" in err and "depth > 0 m" in err
    assert ed.main([*args, "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["n_images"] == 2 and out["n_excluded"] == 1 and out["excluded"] == ["0001"]
    assert out["a1"] == 1.0 and "warning: excluded 0001" in captured.err
