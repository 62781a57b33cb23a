"""CorLoc (hand cases, torchvision IoU), VOC annotations, and task=discovery end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval import discovery as disc
from tasks.base import RunContext
from tasks.discovery import DiscoveryConfig, DiscoveryTask
from tasks.item_cache import ItemCache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- CorLoc


def test_iou_exactly_half_is_a_hit():
    # inter 10*10 = 100; union 100 + 200 - 100 = 200 -> 0.5, a hit (>=)
    assert disc.box_iou((0, 0, 10, 10), [(0, 0, 10, 20)])[0] == 0.5
    assert disc.is_hit((0, 0, 10, 10), [(0, 0, 10, 20)])
    # 100 / 210 < 0.5
    assert not disc.is_hit((0, 0, 10, 10), [(0, 0, 10, 21)])


def test_iou_hand_cases():
    assert disc.box_iou((0, 0, 10, 10), [(10, 0, 20, 10)])[0] == 0.0  # touching edges, no +1 pixel
    assert disc.box_iou((0, 0, 10, 10), [(5, 5, 15, 15)])[0] == pytest.approx(25 / 175)
    assert disc.box_iou((3, 3, 3, 9), [(3, 3, 3, 9)])[0] == 0.0  # empty union
    assert disc.box_iou((0, 0, 4, 4), np.zeros((0, 4))).shape == (0,)


def test_iou_matches_torchvision():
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    corners = rng.integers(0, 100, size=(50, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1) + 1], axis=1)
    expected = box_iou(torch.from_numpy(boxes[:1]).double(), torch.from_numpy(boxes).double())[0].numpy()
    np.testing.assert_allclose(disc.box_iou(boxes[0], boxes), expected, rtol=1e-12)


def test_corloc_counts_any_gt_box_and_images_without_boxes():
    preds = [(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10)]
    gts = [
        [(50, 50, 60, 60), (0, 0, 10, 12)],  # second GT box: IoU 100/120 -> hit
        [(50, 50, 60, 60)],  # miss
        [],  # no GT box: a miss that still counts
        [(0, 0, 10, 20)],  # IoU exactly 1/2 -> hit
    ]
    assert disc.corloc(preds, gts) == 50.0
    with pytest.raises(ValueError, match="one box per image"):
        disc.corloc(preds[:2], gts)


# ----------------------------------------------------------------------------------------------- VOC files


def test_voc_boxes_include_difficult_and_are_zero_based(fixtures_dir):
    xml = fixtures_dir / "voc07" / "VOCdevkit" / "VOC2007" / "Annotations" / "000005.xml"
    # 000005.xml: five chairs (two difficult/truncated); (xmin, ymin, xmax, ymax) 1-based in the file, e.g. 263 211 324 339
    expected = [
        (262, 210, 324, 339),
        (164, 263, 253, 372),
        (4, 243, 67, 374),
        (240, 193, 295, 299),
        (276, 185, 312, 220),
    ]
    np.testing.assert_array_equal(disc.read_voc_boxes(xml), expected)


def voc_copy(fixtures_dir: Path, dest: Path) -> Path:
    shutil.copytree(fixtures_dir / "voc07", dest)
    return dest


def test_missing_or_broken_annotation_is_named(fixtures_dir, tmp_path):
    root = voc_copy(fixtures_dir, tmp_path / "voc")
    ann = root / "VOCdevkit" / "VOC2007" / "Annotations"
    (ann / "000003.xml").unlink()
    with pytest.raises(FileNotFoundError, match="000003.xml"):
        disc.read_voc_boxes(ann / "000003.xml")
    (ann / "000004.xml").write_text("<annotation><object><bndbox><xmin>1</xmin></bndbox></object>")
    with pytest.raises(ValueError, match="cannot read VOC annotation .*000004.xml"):
        disc.read_voc_boxes(ann / "000004.xml")
    with pytest.raises(FileNotFoundError, match="VOCdevkit/VOC2007/JPEGImages"):
        disc.voc_dir(tmp_path)


def test_cli_rescores_a_boxes_file(fixtures_dir, tmp_path, capsys):
    root = fixtures_dir / "voc07"
    voc = root / "VOCdevkit" / "VOC2007"
    ids = disc.read_image_set(voc, "trainval")
    # hit 000001 and 000005 with one of their GT boxes, miss the others
    first = {i: disc.read_voc_boxes(voc / "Annotations" / f"{i}.xml")[0] for i in ids}
    rows = [(i, *(first[i] if i in ("000001", "000005") else (0, 0, 1, 1))) for i in ids]
    pd.DataFrame(rows, columns=["image_id", "x1", "y1", "x2", "y2"]).to_csv(tmp_path / "boxes.csv", index=False)
    assert disc.main(["--pred", str(tmp_path / "boxes.csv"), "--voc", str(root)]) == 0
    assert json.loads(capsys.readouterr().out) == {"CorLoc": 40.0, "n_images": 5.0, "n_images_without_objects": 0.0}
    pd.DataFrame(rows[:3], columns=["image_id", "x1", "y1", "x2", "y2"]).to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(ValueError, match="no box for 2 of the 5 images"):
        disc.evaluate_file(tmp_path / "few.csv", root)


# ----------------------------------------------------------------------------------------------- end to end


class PixelKeys:
    """A stand-in extractor whose 'keys' are the normalised pixels average-pooled per 16-px cell."""

    patch_size = stride = 16
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    name, passes = "pixel-keys", 1

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"keys": F.avg_pool2d(images, 16)}


class FailingExtractor(PixelKeys):
    def __call__(self, images):
        raise AssertionError("features must not be computed")


def synthetic_voc(
    root: Path, images: dict[str, tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int, int, int]]]
) -> Path:
    """VOC2007 layout; each image: (h, w), the bright object (x1, y1, x2, y2) painted, and the annotated box (0-based)."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, ((h, w), (x1, y1, x2, y2), gt) in images.items():
        pixels = np.full((h, w, 3), 30) + rng.integers(-8, 8, size=(h, w, 3))
        pixels[y1:y2, x1:x2] = 225
        Image.fromarray(pixels.astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        # VOC stores xmin/ymin 1-based: write gt + 1 so that the 0-based conversion must give gt back
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><object><name>thing</name><difficult>1</difficult>"
            f"<bndbox><xmin>{gt[0] + 1}</xmin><ymin>{gt[1] + 1}</ymin><xmax>{gt[2]}</xmax><ymax>{gt[3]}</ymax>"
            f"</bndbox></object></annotation>"
        )
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(images) + "\n")
    return root


def run_task(cfg: DiscoveryConfig, extractor, out_dir: Path) -> tuple[dict, ItemCache]:
    cache = ItemCache(out_dir / "cache")
    task = DiscoveryTask.from_config(cfg.validate())
    return task.run(extractor, RunContext(out_dir=out_dir, cache=cache, progress=False)), cache


def test_synthetic_voc_boxes_padding_and_clipping(tmp_path):
    root = synthetic_voc(
        tmp_path / "voc",
        {
            # 150 x 200 image (padded to 160 x 208); object on cells rows 2-5, cols 3-6 -> box (48, 32, 112, 96)
            "a": ((150, 200), (48, 32, 112, 96), (48, 32, 112, 96)),
            # object reaching the right and bottom edges, inside the last (partly padded) cells: box clipped to 200 x 150
            "b": ((150, 200), (160, 112, 200, 150), (160, 112, 200, 150)),
            # the annotation is elsewhere: a miss
            "c": ((150, 200), (48, 32, 112, 96), (0, 100, 40, 150)),
        },
    )
    metrics, _ = run_task(DiscoveryConfig(root=str(root)), PixelKeys(), tmp_path / "run")
    boxes = pd.read_csv(tmp_path / "run" / "boxes.csv", dtype={"image_id": str}).set_index("image_id")
    assert tuple(boxes.loc["a", ["x1", "y1", "x2", "y2"]]) == (48, 32, 112, 96)
    assert tuple(boxes.loc["b", ["x1", "y1", "x2", "y2"]]) == (160, 112, 200, 150)
    assert list(boxes["hit"]) == [1, 1, 0]
    assert metrics["CorLoc"] == pytest.approx(200 / 3) and metrics["n_images"] == 3.0
    assert disc.evaluate_file(tmp_path / "run" / "boxes.csv", root)["CorLoc"] == pytest.approx(metrics["CorLoc"])


def test_annotations_are_checked_before_any_feature(fixtures_dir, tmp_path):
    root = voc_copy(fixtures_dir, tmp_path / "voc")
    (root / "VOCdevkit" / "VOC2007" / "Annotations" / "000005.xml").unlink()
    with pytest.raises(FileNotFoundError, match="000005.xml"):
        run_task(DiscoveryConfig(root=str(root)), FailingExtractor(), tmp_path / "run")


def test_config_validation():
    with pytest.raises(ValueError, match="task.root is not set"):
        DiscoveryConfig().validate()
    with pytest.raises(ValueError, match="task.max_images"):
        DiscoveryConfig(root="x", max_images=0).validate()


@pytest.mark.slow
def test_fixture_run_with_tiny_vit_and_srt_dense_grid(fixtures_dir, tmp_path, tiny_kwargs):
    import srt

    root = fixtures_dir / "voc07"
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("keys",), **tiny_kwargs)
    sr = srt.build_extractor(bb, srt.SRTConfig(level=1))
    metrics, cache = run_task(DiscoveryConfig(root=str(root), grid="dense"), sr, tmp_path / "run")
    assert cache.computed == 5 and metrics["n_images"] == 5.0
    boxes = pd.read_csv(tmp_path / "run" / "boxes.csv", dtype={"image_id": str})
    assert list(boxes["image_id"]) == ["000001", "000002", "000003", "000004", "000005"]
    for row in boxes.itertuples():
        with Image.open(root / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{row.image_id}.jpg") as image:
            width, height = image.size
        assert 0 <= row.x1 < row.x2 <= width and 0 <= row.y1 < row.y2 <= height
        assert row.x1 % 8 == 0 and row.y1 % 8 == 0  # 8-px cells of the dense grid
        assert (row.x2 % 8 == 0 or row.x2 == width) and (row.y2 % 8 == 0 or row.y2 == height)
    assert metrics["CorLoc"] == pytest.approx(disc.evaluate_file(tmp_path / "run" / "boxes.csv", root)["CorLoc"])
    with pytest.raises(ValueError, match="task.grid=dense needs an SRT extractor"):
        run_task(DiscoveryConfig(root=str(root), grid="dense"), bb, tmp_path / "plain")


def test_table4_experiment_composes():
    from hydra import compose, initialize_config_dir

    import tasks
    from tasks import command_line, runner  # noqa: F401  (registers the dataclass configs with Hydra)

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=table4_discovery"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"srt.level": "0,1,2,3,4,5,6"}
    assert cfg.backbone.name == "dino_vits16"
    task = tasks.build_task(cfg.task)
    assert isinstance(task, DiscoveryTask) and task.cfg.image_set == "trainval" and task.cfg.year == "2007"
