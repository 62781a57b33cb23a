"""task=davis end to end on the real DAVIS fixtures with a tiny random ViT: predictions, metrics, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval import davis as ev
from tasks.base import RunContext
from tasks.davis import DavisConfig, DavisTask
from tasks.item_cache import ItemCache

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY_OVERRIDES = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]
ALL_METRICS = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
    "n_objects",
    "n_sequences",
    "n_sequences_scored",
    "features_s_per_frame",
    "propagation_s_per_frame",
)


def run_task(cfg: DavisConfig, extractor, out: Path) -> tuple[dict, ItemCache]:
    cache = ItemCache(out / "cache")
    ctx = RunContext(out_dir=out, cache=cache, progress=False)
    return DavisTask.from_config(cfg.validate()).run(extractor, ctx), cache


def tiny_backbone(tiny_kwargs):
    import srt

    return srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), **tiny_kwargs)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tasks import command_line, runner  # noqa: F401  (registers the dataclass configs with Hydra)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


# ---------------------------------------------------------------------------------------------- config
def test_task_config_defaults_are_the_dino_protocol_and_bad_values_are_named(tmp_path):
    import tasks

    cfg = compose(["task=davis", f"paths.data_root={tmp_path}"])
    task = tasks.build_task(cfg.task)
    assert isinstance(task, DavisTask)
    c = task.cfg
    assert (c.root, c.split, c.short_side, c.long_side_multiple) == (str(tmp_path / "DAVIS"), "val", 480, 64)
    assert (c.n_last_frames, c.size_mask_neighborhood, c.topk, c.temperature) == (7, 12, 5, 0.1)
    assert c.std == [0.228, 0.224, 0.225] and c.max_frames is None
    for override, name in (
        ("task.topk=0", "topk"),
        ("task.std=[1,2]", "task.std"),
        ("task.max_frames=1", "max_frames"),
        ("task.temperature=0", "temperature"),
        ("task.n_last_frames=-1", "n_last_frames"),
    ):
        with pytest.raises(ValueError, match=name):
            tasks.build_task(compose(["task=davis", override]).task)
    with pytest.raises(ValueError, match="task.root"):
        DavisConfig().validate()
    # the item cache ignores which sequences are run and where PNGs go, not what changes the soft maps
    key = task.cache_key_config()
    assert "sequences" not in key and "predictions_dir" not in key and key["topk"] == 5 and "std" in key


def test_table1_and_fig3_sweeps():
    from omegaconf import OmegaConf

    t1 = OmegaConf.load(CONF / "experiment" / "table1.yaml").hydra.sweeper.params
    assert t1.backbone.split(",") == ["dino_vits16", "dino_vitb16", "dino_vits8"]
    assert t1.srt.split(",") == ["baseline", "default", "jitter"]
    f3 = OmegaConf.load(CONF / "experiment" / "fig3.yaml").hydra.sweeper.params
    assert f3["srt.level"].split(",") == [str(i) for i in range(8)]
    assert f3.backbone.split(",") == ["dino_vits16", "dino_vitb16"]
    for overrides in (
        ["+experiment=table1", "backbone=dino_vits8", "srt=jitter"],
        ["+experiment=fig3", "backbone=dino_vitb16", "srt.level=7"],
    ):
        cfg = compose(overrides)
        assert cfg.task.name == "davis"


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_level0_on_fixtures_writes_palette_pngs_scores_and_resumes(fixtures_dir, tmp_path, tiny_kwargs, caplog):
    root = fixtures_dir / "davis"
    cfg = DavisConfig(root=str(root), sequences=["blackswan", "bike-packing"], max_frames=5)
    bb = tiny_backbone(tiny_kwargs)
    metrics, cache = run_task(cfg, bb, tmp_path)
    assert cache.computed == 2
    assert set(ALL_METRICS) <= set(metrics)
    for key in ("J&F-Mean", "J-Mean", "J-Recall", "F-Mean", "F-Recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert -1.0 <= metrics["J-Decay"] <= 1.0 and -1.0 <= metrics["F-Decay"] <= 1.0
    assert metrics["J&F-Mean"] == pytest.approx((metrics["J-Mean"] + metrics["F-Mean"]) / 2)
    assert (metrics["n_objects"], metrics["n_sequences"], metrics["n_sequences_scored"]) == (1, 2, 1)
    pred_dir = tmp_path / cfg.predictions_dir
    for seq, n_frames in (("blackswan", 5), ("bike-packing", 4)):
        pngs = sorted((pred_dir / seq).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(n_frames)]
        gt0 = ev.read_label_png(root / "Annotations" / "480p" / seq / "00000.png")
        for p in pngs:
            with Image.open(p) as im:
                assert im.mode == "P" and im.size == (854, 480)
            labels = ev.read_label_png(p)
            assert labels.max() <= gt0.max()
        np.testing.assert_array_equal(ev.read_label_png(pngs[0]), gt0)  # frame 0: the annotation itself
    # bike-packing (first-frame annotation only) is propagated, not scored, and the run says so; the CSVs
    # agree with the metrics
    assert "bike-packing not scored: first-frame annotation only" in caplog.text
    g = ev.evaluate_results(root, pred_dir, ["blackswan", "bike-packing"], max_frames=5, progress=False)
    assert "bike-packing" in g.skipped
    assert g.global_metrics()["J&F-Mean"] == pytest.approx(metrics["J&F-Mean"])
    assert (pred_dir / "global_results-val.csv").is_file() and (pred_dir / "per-sequence_results-val.csv").is_file()
    # a second run loads both sequences from the item cache and gives the same numbers
    again, cache = run_task(cfg, bb, tmp_path)
    assert (cache.computed, cache.loaded) == (0, 2)
    assert {k: again[k] for k in ALL_METRICS[:7]} == {k: metrics[k] for k in ALL_METRICS[:7]}


@pytest.mark.slow
def test_runner_level1_srt_writes_metrics_json(fixtures_dir, tmp_path):
    from tasks import runner

    cfg = compose(
        [
            "task=davis",
            f"task.root={fixtures_dir / 'davis'}",
            "task.sequences=[dog]",
            "task.max_frames=4",
            "srt.level=1",
            *TINY_OVERRIDES,
            f"paths.results_root={tmp_path}",
            "progress=false",
        ]
    )
    record = runner.execute(cfg, run_dir=tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(ALL_METRICS) <= set(written["metrics"])
    assert written["metrics"]["J&F-Mean"] == pytest.approx(record.metrics["J&F-Mean"])
    assert written["passes"] == 9
    pred = tmp_path / "run" / "davis_predictions" / "dog"
    assert len(list(pred.glob("*.png"))) == 4
    soft_l1 = np.load(next((tmp_path / "run" / "cache").rglob("dog.npz")))["soft"]
    assert soft_l1.shape == (3, 2, 30, 52)
    # level 0 on the same frames gives different soft maps: the SRT features are really used
    cfg0 = compose(
        [
            "task=davis",
            f"task.root={fixtures_dir / 'davis'}",
            "task.sequences=[dog]",
            "task.max_frames=4",
            "srt.level=0",
            *TINY_OVERRIDES,
            f"paths.results_root={tmp_path}",
            "progress=false",
        ]
    )
    runner.execute(cfg0, run_dir=tmp_path / "run0")
    soft_l0 = np.load(next((tmp_path / "run0" / "cache").rglob("dog.npz")))["soft"]
    assert not np.allclose(soft_l0, soft_l1)


@pytest.mark.slow
def test_dense_srt_grid_propagates_at_stride_8(fixtures_dir, tmp_path, tiny_kwargs):
    import srt

    bb = tiny_backbone(tiny_kwargs)
    extractor = srt.StochasticResonance(bb, level=1, output="dense", stride=8)
    assert extractor.stride == 8
    cfg = DavisConfig(root=str(fixtures_dir / "davis"), sequences=["cows"], max_frames=3)
    metrics, cache = run_task(cfg, extractor, tmp_path)
    soft = np.load(next((tmp_path / "cache").rglob("cows.npz")))["soft"]
    assert soft.shape == (2, 2, 60, 104)  # twice the token resolution of p=16
    labels = ev.read_label_png(tmp_path / cfg.predictions_dir / "cows" / "00002.png")
    assert labels.shape == (480, 854)
    assert 0.0 <= metrics["J&F-Mean"] <= 1.0


# ---------------------------------------------------------------------------------------------- errors
def copy_sequence(fixtures_dir: Path, root: Path, seq: str, frames: int = 3) -> Path:
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        dst = root / kind / "480p" / seq
        dst.mkdir(parents=True)
        for i in range(frames):
            shutil.copy(fixtures_dir / "davis" / kind / "480p" / seq / f"{i:05d}.{ext}", dst)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{seq}\n")
    return root


def test_bad_inputs_are_named(fixtures_dir, tmp_path, tiny_kwargs):
    bb = tiny_backbone(tiny_kwargs)
    root = copy_sequence(fixtures_dir, tmp_path / "a", "dog")
    first = root / "Annotations" / "480p" / "dog" / "00000.png"
    first.unlink()
    with pytest.raises(FileNotFoundError, match=r"first-frame annotation .*00000\.png"):
        run_task(DavisConfig(root=str(root)), bb, tmp_path / "out_a")

    root = copy_sequence(fixtures_dir, tmp_path / "b", "dog")
    (root / "JPEGImages" / "480p" / "dog" / "00001.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*00001\.jpg"):
        run_task(DavisConfig(root=str(root)), bb, tmp_path / "out_b")

    root = copy_sequence(fixtures_dir, tmp_path / "c", "dog")
    frame = root / "JPEGImages" / "480p" / "dog" / "00002.jpg"
    with Image.open(frame) as im:
        im.resize((640, 480)).save(frame)
    with pytest.raises(ValueError, match=r"00002\.jpg is 640x480 but the first annotation .*00000\.png is 854x480"):
        run_task(DavisConfig(root=str(root)), bb, tmp_path / "out_c")

    with pytest.raises(ValueError, match="not in the DAVIS split"):
        run_task(DavisConfig(root=str(root), sequences=["blackswan"]), bb, tmp_path / "out_d")

    # frames smaller than a patch: the error names the setting to change
    with pytest.raises(ValueError, match="task.short_side=10 is smaller than the patch size 16"):
        run_task(DavisConfig(root=str(root), short_side=10, long_side_multiple=10), bb, tmp_path / "out_e")
