"""scripts/make_sample_data.py: deterministic synthetic datasets in the official layouts.

The layouts are compared with the real fixtures (../shared/fixtures, via the ``fixtures_dir`` fixture):
same folder structure and file naming, same file formats (palette PNGs with the DAVIS palette, 8-bit
masks, the gnd pickle's keys and types, the VOC XML's tag structure). Then every registered task that
has a config runs on the sample data with a tiny random backbone (the demo's path, at level 0).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_sample_data as msd  # noqa: E402

sys.path.remove(str(REPO / "scripts"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    assert msd.make_sample_data(root) is True
    return root


def test_deterministic_and_skips_a_complete_set(sample, tmp_path):
    assert msd.make_sample_data(tmp_path / "again") is True
    assert tree_digest(tmp_path / "again") == tree_digest(sample)
    assert msd.make_sample_data(tmp_path / "again") is False  # complete: left alone
    (tmp_path / "again" / "ECSSD" / "images" / "0001.jpg").unlink()
    (tmp_path / "again" / msd.STAMP).unlink()  # an incomplete set is rewritten whole
    assert msd.make_sample_data(tmp_path / "again") is True
    assert tree_digest(tmp_path / "again") == tree_digest(sample)


def test_command_line(tmp_path, capsys):
    assert msd.main(["--out", str(tmp_path / "s")]) == 0
    assert "sample data written" in capsys.readouterr().out
    assert msd.main(["--out", str(tmp_path / "s")]) == 0
    assert "already complete" in capsys.readouterr().out


def _shape(root: Path, pattern: str) -> set[str]:
    """Relative paths with digits and sequence names generalised, to compare layouts."""
    out = set()
    for p in root.rglob("*"):
        if p.is_file():
            rel = str(p.relative_to(root))
            out.add(re.sub(r"\d{5}\.(jpg|png)$", r"NNNNN.\1", rel))
    return {re.sub(pattern, "<seq>", r) for r in out}


def test_davis_layout_and_format_match_the_fixture(sample, fixtures_dir):
    real, ours = fixtures_dir / "davis", sample / "DAVIS"
    generic = r"(?<=480p/)[^/]+"
    real_shape = {s for s in _shape(real, generic) if not s.startswith("ImageSets")}
    our_shape = {s for s in _shape(ours, generic) if not s.startswith("ImageSets")}
    assert our_shape == real_shape == {"JPEGImages/480p/<seq>/NNNNN.jpg", "Annotations/480p/<seq>/NNNNN.png"}
    val = (ours / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert val and all((ours / "JPEGImages" / "480p" / s).is_dir() for s in val)
    real_ann = Image.open(real / "Annotations" / "480p" / "blackswan" / "00000.png")
    # the palette of the official DAVIS-2017 evaluation package's own PNGs (its OSVOS example results);
    # the Cutie-sourced bike-packing fixture uses a variant (191 for 192), harmless as labels are indices
    official = Image.open(
        fixtures_dir / "davis-extra" / "results" / "semi-supervised" / "osvos" / "bike-packing" / "00000.png"
    ).getpalette()
    labels_per_seq = {}
    for seq in val:
        frames = sorted((ours / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        masks = sorted((ours / "Annotations" / "480p" / seq).glob("*.png"))
        assert [f.stem for f in frames] == [m.stem for m in masks] == [f"{i:05d}" for i in range(len(frames))]
        for f, m in zip(frames, masks):
            ann = Image.open(m)
            assert ann.mode == real_ann.mode == "P" and ann.getpalette() == official
            assert Image.open(f).size == ann.size and Image.open(f).mode == "RGB"
        labels_per_seq[seq] = set(np.unique(np.array(Image.open(masks[0]))).tolist())
        # every object is present in the first frame and stays in the sequence
        for m in masks:
            assert set(np.unique(np.array(Image.open(m)))) == labels_per_seq[seq]
    assert {0, 1, 2} in labels_per_seq.values(), "a 2-object sequence is required"


def test_saliency_layouts(sample, fixtures_dir):
    real = fixtures_dir / "saliency" / "ECSSD"
    real_mask = Image.open(sorted((real / "ground_truth_mask").glob("*.png"))[0])
    for dataset, (image_dir, mask_dir, names, soft) in msd.SALIENCY.items():
        images = sorted((sample / dataset / image_dir).glob("*.jpg"))
        masks = sorted((sample / dataset / mask_dir).glob("*.png"))
        assert [p.stem for p in images] == [p.stem for p in masks] == sorted(names)
        for image, mask in zip(images, masks):
            m = Image.open(mask)
            assert m.mode == real_mask.mode == "L" and m.size == Image.open(image).size
            values = set(np.unique(np.array(m)).tolist())
            assert {0, 255} <= values and (values == {0, 255}) != soft
    # ECSSD's folder names are those of the fixture; DUTS-TE follows the DUTS-TR fixture's naming
    assert sorted(p.name for p in real.iterdir()) == sorted(p.name for p in (sample / "ECSSD").iterdir())
    duts = sorted(p.name for p in (fixtures_dir / "saliency" / "DUTS-TR").iterdir())
    assert [n.replace("-TR-", "-TE-") for n in duts] == sorted(p.name for p in (sample / "DUTS-TE").iterdir())


def test_roxford_gnd_has_the_fixture_structure(sample, fixtures_dir):
    with open(fixtures_dir / "roxford" / "roxford5k" / "gnd_roxford5k.pkl", "rb") as f:
        real = pickle.load(f)
    root = sample / "revisitop" / "roxford5k"
    with open(root / "gnd_roxford5k.pkl", "rb") as f:
        ours = pickle.load(f)
    assert set(ours) == set(real) == {"gnd", "imlist", "qimlist"}
    assert type(ours["imlist"]) is type(real["imlist"]) is list and isinstance(ours["imlist"][0], str)
    assert len(ours["gnd"]) == len(ours["qimlist"])
    for g in ours["gnd"]:
        assert set(g) == set(real["gnd"][0]) and all(type(g[k]) is type(real["gnd"][0][k]) for k in g)
        x1, y1, x2, y2 = g["bbx"]
        assert 0 <= x1 < x2 and 0 <= y1 < y2 and len(g["easy"]) >= 1 and len(g["hard"]) >= 1
        assert set(g["easy"]).isdisjoint(g["hard"]) and set(g["easy"]).isdisjoint(g["junk"])
        assert all(0 <= i < len(ours["imlist"]) for k in ("easy", "hard", "junk") for i in g[k])
    jpgs = {p.stem for p in (root / "jpg").glob("*.jpg")}
    assert jpgs == set(ours["imlist"]) | set(ours["qimlist"])


def _tag_paths(element: ET.Element, prefix: str = "") -> set[str]:
    here = f"{prefix}/{element.tag}"
    return {here}.union(*(_tag_paths(child, here) for child in element))


def test_voc_layout_and_xml_match_the_fixture(sample, fixtures_dir):
    real = fixtures_dir / "voc07" / "VOCdevkit" / "VOC2007"
    ours = sample / "VOC2007" / "VOCdevkit" / "VOC2007"
    assert {p.name for p in real.iterdir()} == {p.name for p in ours.iterdir()}
    real_tags = _tag_paths(ET.parse(real / "Annotations" / "000005.xml").getroot())
    ids = (ours / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert ids == sorted(p.stem for p in (ours / "JPEGImages").glob("*.jpg"))
    for i in ids:
        root = ET.parse(ours / "Annotations" / f"{i}.xml").getroot()
        assert _tag_paths(root) - {"/annotation/source/image", "/annotation/owner/name"} <= real_tags
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert Image.open(ours / "JPEGImages" / f"{i}.jpg").size == (w, h)
        for obj in root.iter("object"):
            box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] < box[2] <= w and 1 <= box[1] < box[3] <= h  # 1-based, inside the image
    assert any(
        obj.findtext("difficult") == "1"
        for i in ids
        for obj in ET.parse(ours / "Annotations" / f"{i}.xml").getroot().iter("object")
    )


def test_nyu_layouts(sample):
    """Both NYU layouts (eval.depth reads them), holding the same scenes: depth /256 (srt) and /1000 (toolbox)."""
    from eval.depth import list_items, read_depth

    root = sample / "nyu_v2" / "testing"
    images, depths = sorted((root / "images").glob("*.png")), sorted((root / "depths").glob("*.png"))
    assert len(images) == len(depths) == msd.NYU_IMAGES and [p.name for p in images] == [p.name for p in depths]
    for image, depth in zip(images, depths):
        d = np.array(Image.open(depth))
        assert d.dtype == np.uint16 and Image.open(image).mode == "RGB" and Image.open(image).size == d.shape[::-1]
        metres = d[d > 0] / 256.0
        assert (d == 0).any() and 0.5 < metres.min() and metres.max() <= 10.0
    srt_items = list_items(sample / "nyu_v2", "srt")
    toolbox_items = list_items(sample / "NYU", "toolbox")
    assert [it.id for it in toolbox_items] == [f"{s}/rgb_{k:05d}" for s, k in msd.NYU_TOOLBOX_NAMES]
    for a, b in zip(srt_items, toolbox_items):
        assert Image.open(b.image).format == "JPEG" and Image.open(b.image).size == Image.open(a.image).size
        np.testing.assert_allclose(read_depth(a.depth, "srt"), read_depth(b.depth, "toolbox"), atol=2.5e-3)


def test_davis_palette_is_the_pascal_colour_map():
    p = msd.davis_palette()
    assert len(p) == 768 and p[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] and p[3 * 255 :] == [224, 224, 192]


@pytest.mark.slow
def test_every_available_task_runs_on_the_sample_data(sample, tmp_path):
    """The demo's path: each registered, importable task with a config, tiny random backbone, level 0."""
    from hydra import compose, initialize_config_dir

    import tasks
    from tasks import command_line, runner

    names = command_line.demo_task_options()
    assert "toy" in names
    for name in names:
        overrides = [
            f"task={name}",
            "srt.level=0",
            "backbone.pretrained=false",
            "progress=false",
            "device=cpu",
            "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}",
            f"paths.data_root={sample}",
            f"paths.results_root={tmp_path}",
        ]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        record = runner.execute(cfg)
        assert record.metrics and all(np.isfinite(v) for v in record.metrics.values()), (name, record.metrics)
        assert record.items["computed"] >= 1, name
        assert cfg.task.name in tasks.TASKS
