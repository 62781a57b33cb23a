"""Saliency metrics (hand cases, pysodmetrics where they coincide), dataset layouts, and task=saliency end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval import saliency as sal
from tasks.base import RunContext
from tasks.item_cache import ItemCache
from tasks.saliency import LAYOUTS, SaliencyConfig, SaliencyTask, list_pairs, resize_to_patches, upsample_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def halves(side: str) -> np.ndarray:
    """A 4x4 map with one half set: 'left' or 'top'."""
    m = np.zeros((4, 4))
    if side == "left":
        m[:, :2] = 1
    else:
        m[:2, :] = 1
    return m


# ----------------------------------------------------------------------------------------------- metric hand cases


def test_perfect_prediction():
    gt = (halves("left") * 255).astype(np.uint8)
    assert sal.evaluate([halves("left")], [gt]) == {"maxF": 100.0, "IoU": 100.0, "Acc": 100.0}


def test_empty_prediction():
    # P = 1 (empty prediction), R = 0 -> F = 1.3*1*0 / (0.3*1 + 0) = 0; IoU = 0/8; Acc = 8 background px / 16
    gt = (halves("left") * 255).astype(np.uint8)
    assert sal.evaluate([np.zeros((4, 4))], [gt]) == {"maxF": 0.0, "IoU": 0.0, "Acc": 50.0}


def test_empty_ground_truth():
    # R = 1 (empty GT), P = 0/8 = 0 -> F = 0 / (0 + 1) = 0; IoU = 0/8; Acc = 8 / 16
    assert sal.evaluate([halves("top")], [np.zeros((4, 4), np.uint8)]) == {"maxF": 0.0, "IoU": 0.0, "Acc": 50.0}


def test_both_empty():
    # P = R = 1 -> F = 1.3 / 1.3 = 1; IoU: 0/0, defined as 1 here (TokenCut: NaN, pysodmetrics: 0); Acc = 1
    assert sal.evaluate([np.zeros((4, 4))], [np.zeros((4, 4), np.uint8)]) == {"maxF": 100.0, "IoU": 100.0, "Acc": 100.0}


def test_half_overlap():
    # GT = left half (8 px), prediction = top half (8 px): TP = 4, P = R = 1/2
    # F = 1.3 * 1/4 / (0.3/2 + 1/2) = 0.325 / 0.65 = 1/2; IoU = 4 / 12; Acc = (4 TP + 4 TN) / 16
    gt = (halves("left") * 255).astype(np.uint8)
    out = sal.evaluate([halves("top")], [gt])
    assert out["maxF"] == pytest.approx(50.0)
    assert out["IoU"] == pytest.approx(100 / 3)
    assert out["Acc"] == pytest.approx(50.0)


def test_maxf_is_mean_over_images_then_max_over_thresholds():
    # Image A: GT [1,1,0,0], pred [.9,.6,.3,0]. F by threshold k/255:
    #   k <= 76: {.9,.6,.3}: P=2/3, R=1 -> 1.3*(2/3)/(0.2+1) = 0.72222; 77..152: {.9,.6} -> 1
    #   153..229: {.9}: P=1, R=1/2 -> 0.65/0.8 = 0.8125; 230..254: empty -> 0
    # Image B: GT [1,0,0,0], pred [.95,.7,.7,.7]:
    #   k <= 178: all: P=1/4, R=1 -> 0.325/1.075 = 0.302326; 179..242: {.95} -> 1; 243..254: 0
    # Mean curve maximum: k in 179..229: (0.8125 + 1)/2 = 0.90625 (the max of each image's own best would be 1).
    # IoU / Acc at 0.5: A: {.9,.6} = GT -> 1, 1; B: 4 predicted, 1 right -> IoU 1/4, Acc 1/4.
    preds = [np.array([[0.9, 0.6, 0.3, 0.0]]), np.array([[0.95, 0.7, 0.7, 0.7]])]
    gts = [np.array([[255, 255, 0, 0]], np.uint8), np.array([[255, 0, 0, 0]], np.uint8)]
    out = sal.evaluate(preds, gts)
    assert out["maxF"] == pytest.approx(90.625)
    assert out["IoU"] == pytest.approx(62.5)
    assert out["Acc"] == pytest.approx(62.5)
    curve = np.mean([sal.image_scores(p, g).f_curve for p, g in zip(preds, gts)], axis=0)
    assert curve[76] == pytest.approx((0.72222222 + 0.30232558) / 2)
    assert curve[153] == pytest.approx((0.8125 + 0.30232558) / 2)


def test_any_nonzero_ground_truth_is_foreground():
    # TokenCut binarises the 8-bit GT with > 0.5, so grey value 1 is foreground
    out = sal.evaluate([np.array([[1.0, 0.0]])], [np.array([[1, 0]], np.uint8)])
    assert out == {"maxF": 100.0, "IoU": 100.0, "Acc": 100.0}


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="same shape"):
        sal.evaluate([np.zeros((4, 4))], [np.zeros((4, 5), np.uint8)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sal.evaluate([np.full((2, 2), 255.0)], [np.zeros((2, 2), np.uint8)])
    with pytest.raises(ValueError, match="as many"):
        sal.evaluate([np.zeros((2, 2))], [])


# ----------------------------------------------------------------------------------------------- pysodmetrics


def soft_predictions(gts: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """uint8 soft maps spanning 0..255: the GT shifted, blurred and noised (so pysodmetrics' min-max is a no-op)."""
    rng = np.random.default_rng(seed)
    out = []
    for gt in gts:
        shifted = np.roll(gt.astype(np.float32) / 255, shift=(7, -5), axis=(0, 1))
        blurred = F.avg_pool2d(torch.from_numpy(shifted)[None, None], 9, stride=1, padding=4)[0, 0].numpy()
        noisy = np.clip(blurred + 0.1 * rng.standard_normal(gt.shape), 0, 1)
        pred = np.round(noisy * 255).astype(np.uint8)
        pred.flat[0], pred.flat[1] = 0, 255
        out.append(pred)
    return out


def test_matches_pysodmetrics_where_definitions_coincide(fixtures_dir):
    import py_sod_metrics as psm

    gt_dir = fixtures_dir / "saliency" / "ECSSD" / "ground_truth_mask"
    gts = [sal.read_mask(p) for p in sorted(gt_dir.glob("*.png"))[:6]]
    assert all(set(np.unique(g)) <= {0, 255} for g in gts)  # binary GT: both binarisations agree
    preds = soft_predictions(gts)
    ours = [sal.image_scores(p / 255.0, g) for p, g in zip(preds, gts)]

    ref = psm.FmeasureV2(
        metric_handlers={
            "f": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3),
            "iou": psm.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
            "acc": psm.OverallAccuracyHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        }
    )
    for p, g in zip(preds, gts):
        ref.step(pred=p, gt=g)
    res = ref.get_results()
    # pysodmetrics' curve runs over t = 255..0 of `uint8(255 pred) >= t`; ours over k = 0..254 of `pred > k/255`,
    # which is its t = k + 1.
    ref_curve_by_t = res["f"]["dynamic"][::-1]
    np.testing.assert_allclose(np.mean([s.f_curve for s in ours], axis=0), ref_curve_by_t[1:], rtol=0, atol=1e-12)
    agg = sal.aggregate(ours)
    assert agg["maxF"] == pytest.approx(100 * ref_curve_by_t.max())  # t = 0 (all foreground) is not the best here
    assert agg["IoU"] == pytest.approx(100 * res["iou"]["binary"])
    assert agg["Acc"] == pytest.approx(100 * res["acc"]["binary"])


def test_soft_ground_truth_is_where_tokencut_and_pysodmetrics_differ(fixtures_dir):
    import py_sod_metrics as psm

    gt = sal.read_mask(fixtures_dir / "saliency" / "DUTS-TR" / "DUTS-TR-Mask" / "n03710721_20450.png")
    faint = np.count_nonzero((gt > 0) & (gt <= 128))
    assert faint > 0  # a soft mask with a faint rim
    pred = (gt > 128).astype(np.float64)  # what pysodmetrics calls the GT
    ref = psm.FmeasureV2(metric_handlers={"iou": psm.IOUHandler(False, False, with_binary=True)})
    ref.step(pred=(pred * 255).astype(np.uint8), gt=gt)
    assert ref.get_results()["iou"]["binary"] == 1.0
    ours = sal.image_scores(pred, gt).iou  # TokenCut counts every nonzero GT pixel
    assert ours == pytest.approx(np.count_nonzero(gt > 128) / np.count_nonzero(gt > 0))
    assert ours < 1.0


# ----------------------------------------------------------------------------------------------- CLI and files


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_cli_scores_png_folders(tmp_path, capsys):
    gts = [(halves("left") * 255).astype(np.uint8), (halves("top") * 255).astype(np.uint8)]
    preds = [halves("top"), halves("top")]
    for i, (p, g) in enumerate(zip(preds, gts)):
        write_png(tmp_path / "pred" / f"im{i}.png", (p * 255).astype(np.uint8))
        write_png(tmp_path / "gt" / f"im{i}.png", g)
    write_png(tmp_path / "gt" / "extra.png", gts[0])  # a GT without prediction: reported, not scored
    assert sal.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == sal.evaluate(preds, gts) | {"n_images": 2.0}
    assert "1 ground-truth masks have no prediction" in captured.err


def test_cli_missing_or_unreadable_gt_is_named(tmp_path):
    write_png(tmp_path / "pred" / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "gt").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gt" / "a.png")):
        sal.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    (tmp_path / "gt" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read ground-truth mask .*a.png"):
        sal.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])


# ----------------------------------------------------------------------------------------------- datasets


def duts_te_copy(fixtures_dir: Path, dest: Path, n: int = 3) -> Path:
    """The DUTS-TR fixture pairs under DUTS-TE names (PROVENANCE.md: no DUTS-TE sample exists)."""
    src = fixtures_dir / "saliency" / "DUTS-TR"
    for image in sorted((src / "DUTS-TR-Image").glob("*.jpg"))[:n]:
        for sub, suffix in (("Image", ".jpg"), ("Mask", ".png")):
            (dest / f"DUTS-TE-{sub}").mkdir(parents=True, exist_ok=True)
            shutil.copy(
                src / f"DUTS-TR-{sub}" / f"{image.stem}{suffix}", dest / f"DUTS-TE-{sub}" / f"{image.stem}{suffix}"
            )
    return dest


def synthetic_dataset(root: Path, dataset: str, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """Dark noisy images with one bright 16-px-aligned rectangle; GT = the rectangle (0/255), official layout."""
    rng = np.random.default_rng(seed)
    image_sub, gt_sub = LAYOUTS[dataset]
    for i, (h, w) in enumerate(sizes):
        gt = np.zeros((h, w), np.uint8)
        top, left = 16 * (1 + i % 2), 16 * (1 + i % 3)
        gt[top : top + 32, left : left + 48] = 255
        image = np.where(gt[..., None] > 0, 230, 25) + rng.integers(-10, 10, size=(h, w, 3))
        write_png(root / gt_sub / f"im{i:03d}.png", gt)
        (root / image_sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(root / image_sub / f"im{i:03d}.jpg", quality=95)
    return root


def test_layouts_of_the_three_datasets(fixtures_dir, tmp_path):
    ecssd = list_pairs(fixtures_dir / "saliency" / "ECSSD", "ECSSD")
    assert len(ecssd) == 20 and ecssd[0][0].name == "0001.jpg" and ecssd[0][1].name == "0001.png"
    duts = list_pairs(duts_te_copy(fixtures_dir, tmp_path / "DUTS-TE"), "DUTS-TE")
    assert [p[0].stem for p in duts] == [p[1].stem for p in duts] and len(duts) == 3
    omron = list_pairs(synthetic_dataset(tmp_path / "DUT-OMRON", "DUT-OMRON", [(64, 96)] * 2), "DUT-OMRON")
    assert omron[1][1] == tmp_path / "DUT-OMRON" / "pixelwiseGT-new-PNG" / "im001.png"
    (tmp_path / "DUT-OMRON" / "pixelwiseGT-new-PNG" / "im001.png").unlink()
    with pytest.raises(FileNotFoundError, match="im001.png"):
        list_pairs(tmp_path / "DUT-OMRON", "DUT-OMRON")
    with pytest.raises(FileNotFoundError, match="DUTS-TE-Image"):
        list_pairs(tmp_path / "DUT-OMRON", "DUTS-TE")


def test_config_validation():
    with pytest.raises(ValueError, match="task.dataset='DUTS'"):
        SaliencyConfig(dataset="DUTS", root="x").validate()
    with pytest.raises(ValueError, match="task.root is not set"):
        SaliencyConfig().validate()
    with pytest.raises(ValueError, match="task.tau"):
        SaliencyConfig(root="x", tau=-0.1).validate()


def test_resize_rounds_like_the_reference():
    # TokenCut: int(round(w / 16)) * 16 with Python's round (halves to even): 360 -> 22.5 -> 22 -> 352; 376 -> 384
    image = Image.new("RGB", (360, 376))
    assert resize_to_patches(image, 16, Path("x.jpg")).size == (352, 384)
    assert resize_to_patches(Image.new("RGB", (400, 267)), 16, Path("x.jpg")).size == (400, 272)
    with pytest.raises(ValueError, match="x.jpg"):
        resize_to_patches(Image.new("RGB", (7, 40)), 16, Path("x.jpg"))


def test_upsample_mask_is_nearest_with_floor_indexing():
    cells = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    out = upsample_mask(cells, (5, 7))
    rows = np.floor(np.arange(5) * 2 / 5).astype(int)  # legacy 'nearest': src = floor(dst * in / out)
    cols = np.floor(np.arange(7) * 3 / 7).astype(int)
    np.testing.assert_array_equal(out, cells[rows][:, cols])


# ----------------------------------------------------------------------------------------------- end to end


class PixelKeys:
    """A stand-in extractor whose 'keys' are the normalised pixels average-pooled per 16-px cell.

    Bright and dark cells get opposite key directions, so TokenCut must segment the bright rectangle."""

    patch_size = stride = 16
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    name, passes = "pixel-keys", 1

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"keys": F.avg_pool2d(images, 16)}


def run_task(cfg: SaliencyConfig, extractor, out_dir: Path) -> tuple[dict, ItemCache]:
    cache = ItemCache(out_dir / "cache")
    metrics = SaliencyTask.from_config(cfg.validate()).run(
        extractor, RunContext(out_dir=out_dir, cache=cache, progress=False)
    )
    return metrics, cache


def test_synthetic_dut_omron_is_segmented_exactly(tmp_path):
    root = synthetic_dataset(tmp_path / "DUT-OMRON", "DUT-OMRON", [(96, 128), (112, 144), (80, 128)])
    metrics, _ = run_task(SaliencyConfig(dataset="DUT-OMRON", root=str(root)), PixelKeys(), tmp_path / "run")
    assert metrics["maxF"] == 100.0 and metrics["IoU"] == 100.0 and metrics["Acc"] == 100.0
    assert metrics["n_images"] == 3.0
    for gt_path in sorted((root / "pixelwiseGT-new-PNG").glob("*.png")):
        np.testing.assert_array_equal(sal.read_mask(tmp_path / "run" / "masks" / gt_path.name), sal.read_mask(gt_path))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["ECSSD", "DUTS-TE"])
def test_fixture_run_with_tiny_vit_writes_masks_and_resumes(dataset, fixtures_dir, tmp_path, tiny_kwargs):
    import srt

    root = (
        fixtures_dir / "saliency" / "ECSSD"
        if dataset == "ECSSD"
        else duts_te_copy(fixtures_dir, tmp_path / "DUTS-TE", 2)
    )
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("keys",), **tiny_kwargs)
    cfg = SaliencyConfig(dataset=dataset, root=str(root), max_images=2)
    metrics, cache = run_task(cfg, bb, tmp_path / "run")
    assert cache.computed == 2
    pairs = list_pairs(root, dataset)[:2]
    for image_path, gt_path in pairs:
        mask = sal.read_mask(tmp_path / "run" / "masks" / f"{image_path.stem}.png")
        assert mask.shape == sal.read_mask(gt_path).shape and set(np.unique(mask)) <= {0, 255}
    for key in ("maxF", "IoU", "Acc"):
        assert 0.0 <= metrics[key] <= 100.0
    rescored, _ = sal.evaluate_dirs(tmp_path / "run" / "masks", pairs[0][1].parent)
    for key in ("maxF", "IoU", "Acc"):
        assert rescored[key] == pytest.approx(metrics[key], abs=1e-9)
    again, cache = run_task(cfg, bb, tmp_path / "run")  # resumed from the item cache
    assert cache.computed == 0 and cache.loaded == 2
    assert {k: again[k] for k in ("maxF", "IoU", "Acc")} == {k: metrics[k] for k in ("maxF", "IoU", "Acc")}


@pytest.mark.slow
def test_runner_with_srt_dense_grid_writes_metrics_json(fixtures_dir, tmp_path):
    import os

    from hydra import compose, initialize_config_dir

    from tasks import runner

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=saliency",
                f"task.root={fixtures_dir / 'saliency' / 'ECSSD'}",
                "task.max_images=1",
                "task.grid=dense",
                "backbone.pretrained=false",
                "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}",
                "srt.level=1",
                f"paths.results_root={tmp_path}",
                "progress=false",
            ],
        )
    record = runner.execute(cfg, run_dir=tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["metrics"]["maxF"] == pytest.approx(record.metrics["maxF"])
    mask = sal.read_mask(tmp_path / "run" / "masks" / "0001.png")
    assert mask.shape == sal.read_mask(fixtures_dir / "saliency" / "ECSSD" / "ground_truth_mask" / "0001.png").shape
    assert os.path.isfile(tmp_path / "run" / "per_image.csv")


def test_table3_experiment_composes():
    from hydra import compose, initialize_config_dir

    import tasks
    from tasks import command_line, runner  # noqa: F401  (registers the dataclass configs with Hydra)

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=table3"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"task.dataset": "ECSSD,DUTS-TE,DUT-OMRON", "srt": "baseline,default"}
    assert cfg.backbone.name == "dino_vits16" and cfg.srt.level == 3
    task = tasks.build_task(cfg.task)
    assert isinstance(task, SaliencyTask) and task.cfg.dataset == "ECSSD" and task.cfg.root.endswith("ECSSD")
