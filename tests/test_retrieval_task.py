"""task=retrieval: DINO's preprocessing, hand-computed rankings on a colour dataset, query cropping, SRT inside the
network, bad input (missing images, unsafe or broken gnd, corrupt JPEGs) with the cache kept, resume, the real
ROxford fixture and the sample data end to end with a tiny random ViT, and Table 4's retrieval row."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import srt
from eval import retrieval as R
from tasks.base import RunContext
from tasks.item_cache import ItemCache
from tasks.retrieval import (
    RetrievalConfig,
    RetrievalTask,
    UnsafePickleError,
    cls_descriptor,
    image_tensor,
    read_gnd,
    srt_inside,
    thumbnail_size,
)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


class MeanColour:
    """A stand-in extractor whose CLS is the mean RGB of the (un-normalised: mean 0, std 1) image."""

    patch_size = stride = 16
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    name, passes = "mean-colour", 1

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(images.shape))
        return {"cls": images.mean(dim=(2, 3))}


class FailingExtractor(MeanColour):
    def __call__(self, images):
        raise AssertionError("features must not be computed")


def flat(rgb: tuple[float, float, float], h: int = 48, w: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(rgb) * 255, (h, w, 3)).round().astype(np.uint8).copy()


def colour_dataset(root: Path) -> Path:
    """revisitop layout under root/roxford5k. Queries: pure red; left half red / right half green (bbx: the red
    half). Database: 0 reddish (easy), 1 green (hard), 2 purple (not in the gnd), 3 yellow-green (junk)."""
    d = root / "roxford5k"
    (d / "jpg").mkdir(parents=True)
    mixed = flat((1, 0, 0))
    mixed[:, 32:] = flat((0, 1, 0), 48, 32)
    images = {
        "d0": flat((0.9, 0.1, 0)),
        "d1": flat((0, 1, 0)),
        "d2": flat((0.5, 0, 0.5)),
        "d3": flat((0.6, 0.8, 0)),
        "q_red": flat((1, 0, 0)),
        "q_mixed": mixed,
    }
    for name, pixels in images.items():
        Image.fromarray(pixels).save(d / "jpg" / f"{name}.jpg", quality=95, subsampling=0)
    query = {"easy": [0], "hard": [1], "junk": [3]}
    gnd = {
        "imlist": ["d0", "d1", "d2", "d3"],
        "qimlist": ["q_red", "q_mixed"],
        "gnd": [{"bbx": [0.0, 0.0, 64.0, 48.0], **query}, {"bbx": [0.0, 0.0, 32.0, 48.0], **query}],
    }
    (d / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd, protocol=3))
    return root


def run_task(cfg: RetrievalConfig, extractor, out_dir: Path) -> tuple[dict, ItemCache]:
    cache = ItemCache(out_dir / "cache")
    task = RetrievalTask.from_config(cfg.validate())
    return task.run(extractor, RunContext(out_dir=out_dir, cache=cache, progress=False)), cache


# ----------------------------------------------------------------------------------------------- hand-computed


def test_colour_rankings_score_as_computed_by_hand(tmp_path):
    root = colour_dataset(tmp_path / "data")
    metrics, cache = run_task(RetrievalConfig(root=str(root)), MeanColour(), tmp_path / "run")
    # q_red ranks d0 (cos .99), d2 (.71), d3 (.6), d1 (0).
    #   Easy  ok {d0}, junk {d3, d1}: rank 0 -> AP 1
    #   Medium ok {d0, d1}, junk {d3}: ranks 0, 3-1 = 2 -> AP = (1 + (1/2 + 2/3)/2) / 2 = 19/24
    #   Hard  ok {d1}, junk {d3, d0}: rank 3-2 = 1 -> AP = (0 + 1/2)/2 = 1/4
    # q_mixed, whole image (mean (.5, .5, 0)), ranks d3 (.99), d0 (.78), d1 (.71), d2 (.5): junk d3 first, so
    #   Easy, Medium and Hard are all perfect.
    assert metrics["mAP_E"] == pytest.approx(100.0)
    assert metrics["mAP_M"] == pytest.approx(100 * (19 / 24 + 1) / 2)
    assert metrics["mAP_H"] == pytest.approx(100 * (1 / 4 + 1) / 2)
    # mP@5 Medium: q_red 1-based ranks 1, 3 -> kq = 3, 2/3; q_mixed ranks 1, 2 -> kq = 2, 2/2
    assert metrics["mP@1_M"] == pytest.approx(100.0) and metrics["mP@5_M"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert metrics["n_database"] == 4.0 and metrics["n_queries"] == 2.0 and metrics["n_queries_H"] == 2.0
    assert cache.computed == 6

    out = tmp_path / "run"
    ranks = np.load(out / "ranks.npy")
    assert ranks.dtype == np.int32 and ranks.shape == (4, 2)
    assert list(ranks[:, 0]) == [0, 2, 3, 1] and list(ranks[:, 1]) == [3, 0, 1, 2]
    rows = (out / "per_query.csv").read_text().splitlines()
    assert rows[0].startswith("query,AP_E,AP_M,AP_H,P@1_E") and rows[1].startswith("q_red,100.000000,79.166667,25.0")
    rescored = R.score_features(
        R.read_features(out / "features.npz"), read_gnd(root / "roxford5k" / "gnd_roxford5k.pkl")
    )
    assert rescored.metrics == pytest.approx(
        {k: v for k, v in metrics.items() if k in rescored.metrics}, rel=1e-6, abs=1e-9
    )


def test_cropped_queries_use_their_bbx(tmp_path):
    root = colour_dataset(tmp_path / "data")
    extractor = MeanColour()
    metrics, _ = run_task(RetrievalConfig(root=str(root), crop_queries=True), extractor, tmp_path / "run")
    # q_mixed cropped to its red half ranks as q_red does: both score (1, 19/24, 1/4)
    assert metrics["mAP_M"] == pytest.approx(100 * 19 / 24) and metrics["mAP_H"] == pytest.approx(25.0)
    assert extractor.shapes[-1] == (1, 3, 48, 32)  # the crop, already a patch multiple


def test_results_resume_from_the_cache(tmp_path):
    root = colour_dataset(tmp_path / "data")
    first, _ = run_task(RetrievalConfig(root=str(root)), MeanColour(), tmp_path / "run")
    again, cache = run_task(RetrievalConfig(root=str(root)), FailingExtractor(), tmp_path / "run")
    assert cache.loaded == 6 and cache.computed == 0
    assert {k: v for k, v in again.items() if k != "descriptor_s_per_image"} == {
        k: v for k, v in first.items() if k != "descriptor_s_per_image"
    }


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_images_are_counted_and_named_before_any_feature(tmp_path):
    root = colour_dataset(tmp_path / "data")
    (root / "roxford5k" / "jpg" / "d1.jpg").unlink()
    (root / "roxford5k" / "jpg" / "q_mixed.jpg").unlink()
    task = RetrievalTask.from_config(RetrievalConfig(root=str(root)).validate())
    with pytest.raises(FileNotFoundError, match=r"2 of the 6 images listed in .*gnd_roxford5k.pkl are missing from "):
        task.check_data()
    with pytest.raises(FileNotFoundError, match=r"jpg, e.g. d1.jpg, q_mixed.jpg"):
        run_task(RetrievalConfig(root=str(root)), FailingExtractor(), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"rparis6k folder .*rparis6k does not exist; expected .*gnd_rparis6k"):
        RetrievalTask.from_config(RetrievalConfig(root=str(root), dataset="rparis6k")).check_data()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_or_malformed_gnd_is_refused_before_any_feature(tmp_path):
    root = colour_dataset(tmp_path / "data")
    gnd_path = root / "roxford5k" / "gnd_roxford5k.pkl"
    good = gnd_path.read_bytes()
    gnd_path.write_bytes(pickle.dumps({"imlist": ["d0"], "qimlist": [], "gnd": _Evil()}))
    with pytest.raises(UnsafePickleError, match="gnd_roxford5k.pkl: refused to load"):
        run_task(RetrievalConfig(root=str(root)), FailingExtractor(), tmp_path / "run")
    gnd = pickle.loads(good)
    gnd["gnd"][1]["hard"] = [9]
    gnd_path.write_bytes(pickle.dumps(gnd))
    with pytest.raises(ValueError, match=r"gnd\[1\] \(query q_mixed\) 'hard': index 9 is outside the database"):
        run_task(RetrievalConfig(root=str(root)), FailingExtractor(), tmp_path / "run")
    gnd = pickle.loads(good)
    del gnd["gnd"][0]["bbx"]
    gnd_path.write_bytes(pickle.dumps(gnd))
    with pytest.raises(ValueError, match="task.crop_queries=true but 1 queries of .* have no bbx, e.g. q_red"):
        run_task(RetrievalConfig(root=str(root), crop_queries=True), FailingExtractor(), tmp_path / "run")
    with pytest.raises(ValueError, match=r"task.database / task.queries: 1 of the 1 queries are not in the ground"):
        run_task(RetrievalConfig(root=str(root), queries=["q_blue"]), FailingExtractor(), tmp_path / "run")


def test_a_corrupt_jpeg_is_named_and_the_cache_is_kept(tmp_path):
    root = colour_dataset(tmp_path / "data")
    jpg = root / "roxford5k" / "jpg"
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    Image.fromarray(noise).save(jpg / "d2.jpg", quality=95)
    whole = (jpg / "d2.jpg").read_bytes()
    (jpg / "d2.jpg").write_bytes(whole[: int(len(whole) * 0.7)])  # truncated scan data
    cfg = RetrievalConfig(root=str(root))
    with pytest.raises(ValueError, match=r"cannot decode image .*d2.jpg: image file is truncated.*allow_truncated"):
        run_task(cfg, MeanColour(), tmp_path / "run")
    cache = ItemCache(tmp_path / "run" / "cache")
    assert "roxford5k/database/d0" in cache and "roxford5k/database/d1" in cache  # computed before d2: kept
    # DINO's behaviour on request: the truncated file decodes (its missing part grey)
    metrics, _ = run_task(RetrievalConfig(root=str(root), allow_truncated=True), MeanColour(), tmp_path / "lenient")
    assert metrics["n_database"] == 4.0
    (jpg / "d2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*d2.jpg: cannot identify image file"):
        run_task(RetrievalConfig(root=str(root), allow_truncated=True), MeanColour(), tmp_path / "lenient2")
    (jpg / "d2.jpg").write_bytes(whole)
    _, cache = run_task(cfg, MeanColour(), tmp_path / "run")
    assert cache.loaded == 2 and cache.computed == 4


def test_config_validation():
    with pytest.raises(ValueError, match="task.root is not set"):
        RetrievalConfig().validate()
    with pytest.raises(ValueError, match="task.dataset='oxford5k' is not valid; expected one of roxford5k, rparis6k"):
        RetrievalConfig(root="x", dataset="oxford5k").validate()
    with pytest.raises(ValueError, match="task.kappas"):
        RetrievalConfig(root="x", kappas=[0]).validate()
    with pytest.raises(ValueError, match=r"task.database=\[\] is not valid"):
        RetrievalConfig(root="x", database=[]).validate()


# ----------------------------------------------------------------------------------------------- preprocessing


def test_image_tensor_is_dinos_thumbnail_and_normalisation(fixtures_dir):
    from torchvision import transforms

    path = fixtures_dir / "roxford" / "roxford5k" / "jpg" / "all_souls_000013.jpg"  # 768 x 1024
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = image_tensor(rgb, 224, mean, std)
    assert rgb.size == (768, 1024)  # not thumbnailed in place
    # DINO: img.thumbnail((imsize, imsize), ANTIALIAS) then ToTensor + Normalize
    ref = rgb.copy()
    ref.thumbnail((224, 224), Image.LANCZOS)
    expected = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])(ref)
    assert x.shape == (3, 224, 168) and torch.allclose(x, expected, atol=1e-6)
    # revisitop's query crop: Pillow rounds the bbx [136.5, 34.1, 648.5, 955.7] to (136, 34, 648, 956): 512 x 922
    cropped = image_tensor(rgb, 224, mean, std, np.array([136.5, 34.1, 648.5, 955.7]))
    assert cropped.shape == (3, 224, 124)  # 512 x 922 -> 124 x 224


def test_descriptor_crops_to_patches_and_averages_scales():
    x = torch.rand(3, 224, 168)
    single = MeanColour()
    v = cls_descriptor(single, x, multiscale=False, name="x")
    assert single.shapes == [(1, 3, 224, 160)]  # DINO's strided patch embedding drops the last 8 columns
    assert torch.allclose(v, x[:, :, :160].mean(dim=(1, 2)))
    multi = MeanColour()
    v = cls_descriptor(multi, x, multiscale=True, name="x")
    # scales 1, 1/sqrt(2), 1/2 of the whole thumbnail: 224x168, 158x118, 112x84, each cropped to 16-multiples
    assert multi.shapes == [(1, 3, 224, 160), (1, 3, 144, 112), (1, 3, 112, 80)]
    parts = [x[None]] + [
        F.interpolate(x[None], scale_factor=s, mode="bilinear", align_corners=False) for s in (2**-0.5, 0.5)
    ]
    mean = torch.stack([p[0, :, : p.shape[2] // 16 * 16, : p.shape[3] // 16 * 16].mean(dim=(1, 2)) for p in parts])
    expected = mean.mean(dim=0)
    assert torch.allclose(v, expected / expected.norm()) and v.norm() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"image tiny.jpg is 20x12 at scale 0.500, smaller than one patch"):
        cls_descriptor(MeanColour(), torch.rand(3, 24, 40), multiscale=True, name="tiny.jpg")


# ----------------------------------------------------------------------------------------------- SRT inside


def test_srt_runs_inside_the_network_by_default(tiny_kwargs):
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("cls",), **tiny_kwargs)  # 2 blocks
    sr = srt.build_extractor(bb, srt.SRTConfig(level=1))
    inside = srt_inside(sr, RetrievalConfig().srt_block)
    assert inside.at_block == 0 and inside.passes == 9
    x = torch.randn(3, 48, 64)
    got = cls_descriptor(inside, x, False, "x")
    # independently, from public outputs: the SRT-pooled patch tokens after block 0 and the mean CLS after block 0,
    # then the last block and the final norm of the timm model
    probe = srt.load_backbone("dino_vits16", pretrained=False, outputs=("block0", "block0_cls"), **tiny_kwargs)
    out = srt.StochasticResonance(probe, level=1)(x[None])
    tokens = torch.cat([out["block0_cls"][:, None], out["block0"].flatten(2).transpose(1, 2)], dim=1)
    with torch.no_grad():
        expected = probe.model.norm(probe.model.blocks[1](tokens))[0, 0]
    assert torch.allclose(got, expected, atol=1e-5)
    # it is not the output ensemble (CLS averaged over the shifted passes) nor the plain pass
    assert not torch.allclose(got, cls_descriptor(sr, x, False, "x"), atol=1e-4)
    assert not torch.allclose(got, cls_descriptor(bb, x, False, "x"), atol=1e-4)


def test_srt_inside_leaves_other_extractors_alone(tiny_kwargs):
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("cls",), **tiny_kwargs)
    sr = srt.build_extractor(bb, srt.SRTConfig(level=1))
    explicit = srt.build_extractor(bb, srt.SRTConfig(level=1, at_block=1))
    for extractor in (
        bb,  # plain backbone
        srt.build_extractor(bb, srt.SRTConfig(level=0)),  # baseline
        srt.build_extractor(bb, srt.SRTConfig(method="jitter", level=1)),  # naive ensemble: on outputs
        explicit,  # srt.at_block wins
    ):
        assert srt_inside(extractor, -2) is extractor
    assert srt_inside(sr, None) is sr
    with pytest.raises(ValueError, match=r"task.srt_block=5 \(applied as srt.at_block\): at_block=5 is not valid"):
        srt_inside(sr, 5)


# ----------------------------------------------------------------------------------------------- real fixture


def test_real_roxford_fixture_with_a_tiny_vit_and_srt(fixtures_dir, tmp_path, tiny_kwargs):
    root = fixtures_dir / "roxford"
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("cls",), **tiny_kwargs)
    sr = srt.build_extractor(bb, srt.SRTConfig(level=1))
    cfg = RetrievalConfig(root=str(root), database=["all_souls_000055"], queries=["all_souls_000013"])
    metrics, cache = run_task(cfg, sr, tmp_path / "run")
    # the one database image is an easy positive of query 0; none of its hard positives is in the subset
    assert metrics["mAP_E"] == metrics["mAP_M"] == 100.0 and metrics["n_queries_M"] == 1.0
    assert math.isnan(metrics["mAP_H"]) and metrics["n_queries_H"] == 0.0
    assert cache.computed == 2
    features = R.read_features(tmp_path / "run" / "features.npz")
    assert features["database"].shape == (1, 64) and list(features["qimlist"]) == ["all_souls_000013"]
    expected = cls_descriptor(
        srt_inside(sr, -2),
        image_tensor(
            Image.open(root / "roxford5k" / "jpg" / "all_souls_000055.jpg").convert("RGB"), 224, bb.mean, bb.std
        ),
        False,
        "x",
    )
    np.testing.assert_allclose(features["database"][0], expected.numpy(), rtol=1e-5, atol=1e-6)
    rescored = R.score_features(features, read_gnd(root / "roxford5k" / "gnd_roxford5k.pkl"))
    assert rescored.metrics["mAP_M"] == 100.0
    # the full ground truth lists 5063 images; the fixture has two
    with pytest.raises(FileNotFoundError, match=r"5061 of the 5063 images listed in .*gnd_roxford5k.pkl are missing"):
        RetrievalTask.from_config(RetrievalConfig(root=str(root)).validate()).check_data()


# ----------------------------------------------------------------------------------------------- runner, tables


def sample_data_module():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_sample_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return make_sample_data


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from tasks import command_line, runner  # noqa: F401  (registers the dataclass configs with Hydra)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_table4_experiment_composes():
    from hydra import compose, initialize_config_dir

    import tasks
    from tasks import command_line

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=table4_retrieval"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"srt.level": "0,1,2,3,4,5,6"}
    assert cfg.backbone.name == "dino_vits16" and cfg.backbone.pretrained is True
    task = tasks.build_task(cfg.task)
    assert isinstance(task, RetrievalTask) and task.cfg == RetrievalConfig(root=task.cfg.root)
    assert task.cfg.dataset == "roxford5k" and task.cfg.imsize == 224 and not task.cfg.multiscale
    assert "retrieval" in command_line.demo_task_options()


def test_a_missing_dataset_is_named_before_any_model_is_built(tmp_path, monkeypatch):
    from tasks import runner

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the dataset was checked")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    cfg = compose_cfg(["task=retrieval", f"paths.data_root={tmp_path / 'nowhere'}", f"paths.results_root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"nowhere/revisitop/roxford5k does not exist.* \(datasets are read"):
        runner.execute(cfg)


@pytest.mark.slow
def test_sample_data_runs_resume_and_fill_table4(tmp_path):
    from eval import tables
    from tasks import runner

    sample_data_module().make_sample_data(tmp_path / "sample")
    results = tmp_path / "results"
    common = ["task=retrieval", f"paths.data_root={tmp_path / 'sample'}", f"paths.results_root={results}"]
    common += ["progress=false", "device=cpu", *TINY]
    records = {level: runner.execute(compose_cfg([*common, f"srt.level={level}"])) for level in (0, 1)}
    for level, record in records.items():
        out = Path(record.run_dir)
        m = record.metrics
        assert record.items == {"computed": 19, "loaded": 0} and record.passes == (1 if level == 0 else 9)
        assert 0 < m["mAP_M"] < 100 and m["n_database"] == 16 and m["n_queries"] == 3  # a real ranking, not trivial
        # the task's defaults add nothing to the run's variant: only the tiny model's kwargs
        assert set(record.variant) == {"backbone.depth", "backbone.embed_dim", "backbone.num_heads"}
        assert np.load(out / "ranks.npy").shape == (16, 3)
        gnd = read_gnd(tmp_path / "sample" / "revisitop" / "roxford5k" / "gnd_roxford5k.pkl")
        rescored = R.score_features(R.read_features(out / "features.npz"), gnd).metrics
        assert rescored == pytest.approx({k: v for k, v in m.items() if k in rescored}, abs=1e-9)
    assert records[0].metrics["mAP_M"] != records[1].metrics["mAP_M"]

    # a killed run (no metrics.json) resumes from the item cache
    level1 = Path(records[1].run_dir)
    (level1 / "metrics.json").unlink()
    resumed = runner.execute(compose_cfg([*common, "srt.level=1"]))
    assert resumed.items == {"computed": 0, "loaded": 19}
    assert {k: v for k, v in resumed.metrics.items() if k != "descriptor_s_per_image"} == {
        k: v for k, v in records[1].metrics.items() if k != "descriptor_s_per_image"
    }

    [t4] = tables.build_tables(results, only=4)[0]
    rows = t4.values.set_index(["row", "weights"])
    for level in (0, 1):
        assert rows.loc[("ROxford mAP Medium", "random"), f"L{level}"] == pytest.approx(records[level].metrics["mAP_M"])
        assert rows.loc[("ROxford mAP Hard", "random"), f"L{level}"] == pytest.approx(records[level].metrics["mAP_H"])
    # with pretrained weights and default settings (what `+experiment=table4_retrieval` writes) the paper's numbers
    # sit beside ours in the same row; another dataset's runs stay out of the ROxford row
    for path in results.rglob("metrics.json"):
        record = json.loads(path.read_text())
        record["backbone"]["weights"] = "pretrained timm/vit_small_patch16_224.dino"
        record["variant"] = {}
        path.write_text(json.dumps(record))
    paris = results / "paris" / "metrics.json"
    paris.parent.mkdir()
    record["config"]["task"]["dataset"] = "rparis6k"
    record["metrics"]["mAP_M"] = 99.0
    paris.write_text(json.dumps(record))
    [t4] = tables.build_tables(results, only=4)[0]
    cells = t4.cells.set_index(["row", "weights"])
    medium = cells.loc[("ROxford mAP Medium", "pretrained")]
    assert medium["L0"] == f"{records[0].metrics['mAP_M']:.1f} / 34.6"
    assert medium["L1"] == f"{records[1].metrics['mAP_M']:.1f} / 34.8"
    assert "99.0" not in tables.to_markdown(t4)
    other = [t for t in tables.build_tables(results)[0] if t.title.startswith("retrieval: results not in")][0]
    assert 99.0 in set(other.values["mAP_M"])


def test_sample_gnd_reads_safely_and_lists_existing_images(tmp_path):
    sample_data_module().make_roxford(tmp_path, np.random.default_rng(0))
    root = tmp_path / "revisitop"
    task = RetrievalTask.from_config(RetrievalConfig(root=str(root)).validate())
    task.check_data()
    gt = read_gnd(task.gnd_path)
    assert len(gt["imlist"]) == 16 and len(gt["qimlist"]) == 3
    shutil.rmtree(root / "roxford5k" / "jpg")
    with pytest.raises(FileNotFoundError, match="19 of the 19 images"):
        task.check_data()


# ----------------------------------------------------------------------------------------------- geometry (issue 20)


def test_thumbnail_size_is_pillows_without_decoding():
    rng = np.random.default_rng(0)
    for w, h, bound in rng.integers(1, 700, size=(2000, 3)):
        image = Image.new("1", (int(w), int(h)))
        image.thumbnail((int(bound), int(bound)))
        assert thumbnail_size((int(w), int(h)), int(bound)) == image.size, (w, h, bound)


def test_a_query_box_over_the_border_is_clipped_and_counted(tmp_path):
    root = colour_dataset(tmp_path / "data")
    gnd_path = root / "roxford5k" / "gnd_roxford5k.pkl"
    gnd = pickle.loads(gnd_path.read_bytes())
    gnd["gnd"][1]["bbx"] = [-20.0, -5.0, 32.0, 90.0]  # the red half, reaching over three borders
    gnd_path.write_bytes(pickle.dumps(gnd, protocol=3))
    task = RetrievalTask.from_config(RetrievalConfig(root=str(root), crop_queries=True).validate())
    task.check_data()  # clipped, not refused
    extractor = MeanColour()
    metrics, _ = run_task(RetrievalConfig(root=str(root), crop_queries=True), extractor, tmp_path / "run")
    assert metrics["n_clipped_query_boxes"] == 1.0
    assert extractor.shapes[-1] == (1, 3, 48, 32)  # cropped to the clipped box: the red half, no black border
    assert metrics["mAP_M"] == pytest.approx(100 * 19 / 24) and metrics["mAP_H"] == pytest.approx(25.0)
    gnd["gnd"][1]["bbx"] = [64.0, 0.0, 90.0, 48.0]  # right of the image: nothing to crop
    gnd_path.write_bytes(pickle.dumps(gnd, protocol=3))
    with pytest.raises(ValueError, match=r"query box \[64\.0, 0\.0, 90\.0, 48\.0\] of image .*q_mixed\.jpg \(64x48\)"):
        task.check_data()


def test_an_image_below_one_patch_at_its_smallest_scale_is_named_before_any_feature(tmp_path):
    root = colour_dataset(tmp_path / "data")
    Image.fromarray(flat((0, 1, 0), 20, 64)).save(root / "roxford5k" / "jpg" / "d1.jpg")  # 64x20
    task = RetrievalTask.from_config(RetrievalConfig(root=str(root)).validate())
    task.check_settings(srt.model_info("dino_vits16", depth=2, embed_dim=64, num_heads=2), srt.SRTConfig(level=0))
    task.check_data()  # 20 px >= one patch at scale 1
    multi = RetrievalTask.from_config(RetrievalConfig(root=str(root), multiscale=True).validate())
    multi.check_settings(srt.model_info("dino_vits16", depth=2, embed_dim=64, num_heads=2), srt.SRTConfig(level=0))
    with pytest.raises(ValueError, match=r"d1\.jpg is 64x20 and runs at 32x10 .*smaller than one patch \(16 px\)"):
        multi.check_data()
