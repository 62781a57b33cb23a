"""The per-item cache (tasks/item_cache.py): computed once, loaded on resume, keyed by what changes the items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tasks.item_cache import ItemCache, item_cache_for


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
    a = item_cache_for(tmp_path, bb, srt, {"short_side": 480})
    assert a.root.parent == tmp_path / "cache"
    assert item_cache_for(tmp_path, bb, {**srt, "batch_size": 4}, {"short_side": 480}).root == a.root
    assert item_cache_for(tmp_path, bb, {**srt, "fill": "reflect"}, {"short_side": 480}).root != a.root
    assert item_cache_for(tmp_path, {**bb, "pretrained": False}, srt, {"short_side": 480}).root != a.root
    assert item_cache_for(tmp_path, bb, srt, {"short_side": 240}).root != a.root


def test_cache_key_includes_the_dataset_identity_not_its_location(tmp_path):
    bb, srt = {"name": "dino_vits16", "pretrained": True}, {"level": 3}
    data = {"name": "ECSSD", "files": 2, "sha256": "a" * 64}
    a = item_cache_for(tmp_path, bb, srt, {"tau": 0.2}, data)
    assert item_cache_for(tmp_path, bb, srt, {"tau": 0.2}, dict(data)).root == a.root
    assert item_cache_for(tmp_path, bb, srt, {"tau": 0.2}, {**data, "sha256": "b" * 64}).root != a.root
    assert json.loads((a.root / "key.json").read_text())["data"] == data
