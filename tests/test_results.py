"""The results store: atomic writes, the per-item cache, run keys, metrics.json and the loggers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks import results
from tasks.results import ItemCache


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    results.atomic_write_text(path, "first")
    results.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert leftovers(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    results.atomic_write_json(path, {"a": 1})

    def crash(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(results.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        results.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


def test_json_writes_nan_as_null(tmp_path):
    path = results.atomic_write_json(
        tmp_path / "m.json", {"x": float("nan"), "y": np.float32(1.5), "z": [float("inf")]}
    )
    assert json.loads(path.read_text()) == {"x": None, "y": 1.5, "z": [None]}


def test_atomic_save_png_plain_palette_and_16_bit(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    results.atomic_save_png(tmp_path / "rgb.png", rgb)
    assert np.array_equal(np.array(Image.open(tmp_path / "rgb.png")), rgb)

    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0]
    results.atomic_save_png(tmp_path / "lab.png", labels, palette=palette)
    im = Image.open(tmp_path / "lab.png")
    assert im.mode == "P" and np.array_equal(np.array(im), labels) and im.getpalette()[:9] == palette

    depth = np.array([[0, 65535], [256, 1000]], dtype=np.uint16)
    results.atomic_save_png(tmp_path / "d.png", depth)
    assert np.array_equal(np.array(Image.open(tmp_path / "d.png")), depth)

    with pytest.raises(ValueError, match=r"bad\.png.*expected uint8"):
        results.atomic_save_png(tmp_path / "bad.png", np.zeros((2, 2), dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# Item cache


def test_item_cache_computes_once_and_returns_the_same_arrays(tmp_path):
    cache = ItemCache(tmp_path / "c", key={"k": 1})
    calls = []

    def fn():
        calls.append(1)
        return {"feat": torch.arange(6, dtype=torch.float32).reshape(2, 3), "score": 0.25, "ids": np.array([3, 4])}

    first = cache.get_or_compute("seq/00001", fn)
    again = cache.get_or_compute("seq/00001", fn)
    assert len(calls) == 1 and cache.computed == 1 and cache.loaded == 1
    for out in (first, again):
        assert isinstance(out["feat"], np.ndarray) and out["feat"].dtype == np.float32
        assert np.array_equal(out["feat"], np.arange(6, dtype=np.float32).reshape(2, 3))
        assert float(out["score"]) == 0.25 and list(out["ids"]) == [3, 4]
    assert (tmp_path / "c" / "seq" / "00001.npz").is_file()
    assert json.loads((tmp_path / "c" / "key.json").read_text()) == {"k": 1}
    # a new cache object over the same directory (a resumed run) finds the item
    resumed = ItemCache(tmp_path / "c", key={"k": 1})
    assert "seq/00001" in resumed and len(resumed) == 1
    resumed.get_or_compute("seq/00001", fn)
    assert len(calls) == 1 and resumed.loaded == 1 and resumed.computed == 0


def test_item_cache_rejects_bad_ids_and_values(tmp_path):
    cache = ItemCache(tmp_path)
    for bad in ("../escape", "a//b", "", "with space", "/abs"):
        with pytest.raises(ValueError, match="item id .* is not valid"):
            cache.get_or_compute(bad, lambda: {"x": 1})
    with pytest.raises(TypeError, match="expected a dict of arrays"):
        cache.get_or_compute("x", lambda: [1, 2])
    with pytest.raises(TypeError, match="object array"):
        cache.get_or_compute("y", lambda: {"x": {"nested": 1}})


def test_an_unreadable_cache_entry_is_recomputed_with_a_warning(tmp_path, caplog):
    cache = ItemCache(tmp_path)
    cache.get_or_compute("a", lambda: {"x": np.ones(3)})
    (tmp_path / "a.npz").write_bytes(b"not an npz")
    out = cache.get_or_compute("a", lambda: {"x": np.zeros(3)})
    assert np.array_equal(out["x"], np.zeros(3)) and cache.computed == 2
    assert "a.npz is unreadable" in caplog.text


def test_item_cache_clear(tmp_path):
    cache = ItemCache(tmp_path / "c", key={"k": 2})
    cache.get_or_compute("a", lambda: {"x": np.ones(1)})
    cache.clear()
    assert len(cache) == 0 and (tmp_path / "c" / "key.json").is_file()


def test_cache_key_covers_backbone_srt_and_task_but_not_speed_settings(tmp_path):
    bb = {"name": "dino_vits16", "pretrained": True}
    srt = {"level": 3, "fill": "zero", "batch_size": 32, "median_budget_gb": 4.0}
    a = results.item_cache_for(tmp_path, bb, srt, {"short_side": 480})
    assert a.root.parent == tmp_path / "cache"
    assert results.item_cache_for(tmp_path, bb, {**srt, "batch_size": 4}, {"short_side": 480}).root == a.root
    assert results.item_cache_for(tmp_path, bb, {**srt, "fill": "reflect"}, {"short_side": 480}).root != a.root
    assert results.item_cache_for(tmp_path, {**bb, "pretrained": False}, srt, {"short_side": 480}).root != a.root
    assert results.item_cache_for(tmp_path, bb, srt, {"short_side": 240}).root != a.root


def test_config_hash_ignores_key_order_and_sees_values():
    assert results.config_hash({"a": 1, "b": [1, 2]}) == results.config_hash({"b": [1, 2], "a": 1})
    assert results.config_hash({"a": 1}) != results.config_hash({"a": 2})
    assert len(results.config_hash({"a": 1})) == 16


def test_run_subdir_layout():
    task = {"name": "saliency", "dataset": "DUTS-TE", "root": "/data/DUTS-TE"}
    srt = {"method": "shift", "level": 3, "batch_size": 32}
    d = results.run_subdir(task, {"name": "dino_vits16", "pretrained": True}, srt)
    head, tag = d.rsplit("/", 1)
    assert head == "saliency/DUTS-TE/dino_vits16" and tag.startswith("srt-L3-") and len(tag) == len("srt-L3-") + 8
    assert results.run_subdir(
        {"name": "toy"}, {"name": "x", "pretrained": False}, {"method": "jitter", "level": 2}
    ).startswith("toy/x-random/jitter-L2-")
    assert results.run_subdir(
        {"name": "toy"}, {"name": "x", "pretrained": "/w.pth"}, {"method": "shift", "level": 0}
    ).startswith("toy/x-file/baseline-")


# ----------------------------------------------------------------------------------------------
# metrics.json


def test_write_and_read_metrics(tmp_path):
    record = {"metrics": {"J&F-Mean": 0.5}, "config": {"task": {"name": "davis"}}, "run_key_hash": "abc"}
    path = results.write_metrics(tmp_path, record)
    data = results.read_metrics(path)
    assert data["schema"] == results.SCHEMA_VERSION and data["metrics"] == {"J&F-Mean": 0.5}
    assert results.finished_run(tmp_path, "abc")["metrics"] == {"J&F-Mean": 0.5}
    assert results.finished_run(tmp_path, "other") is None  # written by another config: recompute
    assert results.finished_run(tmp_path / "nowhere", "abc") is None


@pytest.mark.parametrize(
    "content,reason",
    [
        ("{not json", "not a readable metrics.json"),
        ("[1, 2]", "expected a JSON object"),
        ('{"metrics": {}}', "missing or invalid 'config'"),
    ],
)
def test_read_metrics_names_the_file(tmp_path, content, reason):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        results.read_metrics(path)
    assert str(path) in str(err.value) and reason in str(err.value)
    assert results.finished_run(tmp_path, "x") is None  # a corrupt record means: not finished


def test_run_metadata_helpers():
    versions = results.library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["python"].count(".") == 2
    mem = results.peak_memory()
    assert mem["process_peak_rss_mib"] > 10
    git = results.git_revision()
    assert set(git) == {"commit", "dirty"}
    assert git["commit"] is None or len(git["commit"]) == 40


def test_config_variant_lists_non_defaults():
    got = results.config_variant(
        {"a": 1, "b": 2, "c": 3, "level": 5}, {"a": 1, "b": 0, "level": 3}, "srt", skip=("level",)
    )
    assert got == {"srt.b": 2, "srt.c": 3}


# ----------------------------------------------------------------------------------------------
# Loggers


def _record(metric: str, value: float, run_dir: str) -> dict:
    return {
        "metrics": {metric: value},
        "method": "+SRT",
        "passes": 49,
        "wall_time_s": 1.0,
        "run_dir": run_dir,
        "finished": "2026-01-01T00:00:00+00:00",
        "backbone": {"weights": "random (init_seed=0)"},
        "config": {"task": {"name": "toy"}, "backbone": {"name": "dino_vits16"}, "srt": {"level": 3}},
    }


def test_csv_logger_appends_rows_and_widens_columns(tmp_path):
    cfg = results.LoggerConfig(name="csv", path=str(tmp_path / "runs.csv")).validate()
    logger = results.make_logger(cfg)
    logger.log_run(_record("flip_cosine", 0.5, "r1"), tmp_path)
    logger.log_run(_record("CorLoc", 61.0, "r2"), tmp_path)
    with open(tmp_path / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run_dir"] for r in rows] == ["r1", "r2"]
    assert rows[0]["flip_cosine"] == "0.5" and rows[0]["CorLoc"] == ""
    assert rows[1]["CorLoc"] == "61.0" and rows[1]["passes"] == "49" and rows[1]["task"] == "toy"


def test_logger_config_validation():
    with pytest.raises(ValueError, match="logger.name='tb' is not valid; expected one of none, csv, wandb"):
        results.LoggerConfig(name="tb").validate()
    with pytest.raises(ValueError, match="logger.path is required for logger=csv"):
        results.LoggerConfig(name="csv").validate()


@pytest.mark.slow
def test_wandb_logger_works_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # records the original value, so the logger's setdefault is undone
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "per_image.csv").write_text("image,flip_cosine\n0,0.5\n")
    cfg = results.LoggerConfig(name="wandb").validate()
    results.make_logger(cfg).log_run(_record("flip_cosine", 0.5, str(tmp_path)), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "wandb did not write an offline run (it must never need the network)"
    assert os.environ["WANDB_MODE"] == "offline"
    saved = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert "per_image.csv" in saved and any(n.endswith(".wandb") for n in saved)
