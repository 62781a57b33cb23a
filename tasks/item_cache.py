"""The per-item cache: how a task makes its loop resumable.

:class:`ItemCache` keeps per-item outputs (dicts of arrays) under the run directory, keyed by a hash of
everything that changes them (:func:`cache_key`); ``get_or_compute`` is what a task calls per item. Each
item is one ``.npz`` written atomically, so a run killed at any point loses at most the item it was
computing, and a re-run loads the others instead of recomputing them.

Sharding (``shard=i/n``, for runs split over machines) is driven from here: :class:`Shard` (tasks/shard.py) assigns
each item to one of n shards by a hash of its id, and a cache built with a shard tells the task's loop to
skip the other shards' items (:meth:`ItemCache.skips`) and stops the run where the loops end
(:meth:`ItemCache.items_done` raises :class:`ShardFinished`), before anything that needs every item (metrics,
ranking, training). The runner (tasks/runner.py) records what the shard did and, when every item is cached by then,
runs the task once more without the shard to compute the metrics. All shards write into one item cache:
each item is one file written atomically, so concurrent shards never see a half-written item.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from srt.io import atomic_write_bytes, atomic_write_json

from .run_identity import backbone_key_part, config_hash, plain, srt_key_part, upsampler_key_part
from .shard import Shard, ShardFinished

log = logging.getLogger(__name__)

_ITEM_ID = re.compile(r"^[A-Za-z0-9._+=-]+(/[A-Za-z0-9._+=-]+)*$")


class ItemCache:
    """Per-item outputs under ``root``, so that an interrupted run resumes where it stopped.

    ``get_or_compute(item_id, fn)`` returns the stored dict for ``item_id`` if there is one, else calls
    ``fn()`` (a dict of numpy arrays, tensors or numbers), stores it atomically as ``<item_id>.npz`` and
    returns it. Either way the caller gets numpy arrays, so a resumed run sees exactly what a fresh
    one does. ``item_id`` may contain ``/`` (e.g. ``"blackswan/00003"``), stored as subdirectories.

    ``computed`` and ``loaded`` count the items of this process (recorded in ``metrics.json``).

    With a ``shard`` (a shard run), a task's item loop asks :meth:`skips` first and goes on to the next item
    for another shard's, and calls :meth:`items_done` where its item loops end::

        for seq in sequences:
            if ctx.cache.skips(seq):  # another shard's item (never true in a plain run)
                continue
            item = ctx.cache.get_or_compute(seq, compute)
            ...
        ctx.cache.items_done()  # a shard run stops here; a plain run goes on to the metrics
    """

    def __init__(self, root: str | os.PathLike, key: Optional[Mapping[str, Any]] = None, shard: Optional[Shard] = None):
        self.root = Path(root)
        self.key = dict(key) if key is not None else None
        self.shard = shard
        self.computed = 0
        self.loaded = 0
        self.skipped: dict[str, None] = {}  # the other shards' items this run skipped (ordered, each once)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            key_file = self.root / "key.json"
            if not key_file.exists():
                atomic_write_json(key_file, self.key)

    def path(self, item_id: str) -> Path:
        item_id = str(item_id)
        if not _ITEM_ID.match(item_id) or any(p in (".", "..") for p in item_id.split("/")):
            raise ValueError(
                f"item id {item_id!r} is not valid; expected letters, digits and ._+=- in /-separated parts"
            )
        return self.root / f"{item_id}.npz"

    def __contains__(self, item_id: str) -> bool:
        return self.path(item_id).is_file()

    def skips(self, item_id: str) -> bool:
        """True when this is a shard run and ``item_id`` belongs to another shard: the task skips it (no reading,
        no computing, no writing). Always False in a plain run."""
        if self.shard is None or self.shard.owns(str(item_id)):
            return False
        self.path(item_id)  # a bad id fails in every shard alike
        self.skipped[str(item_id)] = None
        return True

    def items_done(self) -> None:
        """Where a task's item loops end, before anything that needs every item. A plain run goes on; a shard
        run stops here with :class:`ShardFinished` (counting the skipped items not cached yet)."""
        if self.shard is None:
            return
        missing = sum(1 for item_id in self.skipped if item_id not in self)
        raise ShardFinished(self.shard, self.computed, self.loaded, len(self.skipped), missing)

    def unshard(self) -> None:
        """Make this a plain run's cache (the runner's last pass of a shard that found every item cached)."""
        self.shard, self.computed, self.loaded, self.skipped = None, 0, 0, {}

    def get_or_compute(self, item_id: str, fn: Callable[[], Mapping[str, Any]]) -> dict[str, np.ndarray]:
        path = self.path(item_id)
        if self.shard is not None and not self.shard.owns(str(item_id)):
            raise RuntimeError(  # a bug of the task: it would compute another shard's item, or use a missing one
                f"item cache: shard {self.shard} was asked for item {item_id!r} of another shard; the task's loop "
                "must skip it (if ctx.cache.skips(item_id): continue) and call ctx.cache.items_done() after its loops"
            )
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    out = {k: data[k] for k in data.files}
                self.loaded += 1
                return out
            except Exception as e:  # noqa: BLE001 - an unreadable entry is recomputed, loudly
                log.warning("item cache: %s is unreadable (%s); recomputing it", path, e)
        value = fn()
        if not isinstance(value, Mapping):
            raise TypeError(
                f"item cache: the function for item {item_id!r} returned {type(value).__name__}; "
                "expected a dict of arrays"
            )
        out = {str(k): _to_numpy(v) for k, v in value.items()}
        buf = io.BytesIO()
        np.savez(buf, **out)
        atomic_write_bytes(path, buf.getvalue())
        self.computed += 1
        return out

    def clear(self) -> None:
        """Forget every stored item (``force=true``)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.key is not None:
            atomic_write_json(self.root / "key.json", self.key)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.rglob("*.npz"))


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"item cache: cannot store a value of type {type(value).__name__} (object array)")
    return arr


def cache_key(
    backbone_cfg: Any,
    srt_cfg: Any,
    task_key: Mapping[str, Any],
    data: Optional[Mapping[str, Any]] = None,
    upsampler_cfg: Any = None,
) -> dict:
    """The item cache key: backbone config (a checkpoint file by its content hash), feature-changing SRT
    settings, the task settings that change items (``tasks.run_identity.task_key_part(task,
    task.cache_key_config())``: no data paths), the dataset's identity (content hashes) and a fine-feature
    method's settings (none for the default, ``upsampler.method=srt``)."""
    key = {"backbone": backbone_key_part(backbone_cfg), "srt": srt_key_part(srt_cfg), "task": plain(dict(task_key))}
    if data is not None:
        key["data"] = dict(data)
    upsampler = upsampler_key_part(upsampler_cfg)
    if upsampler is not None:
        key["upsampler"] = upsampler
    return key


def item_cache_for(
    run_dir: str | os.PathLike,
    backbone_cfg: Any,
    srt_cfg: Any,
    task_key: Mapping[str, Any],
    data: Optional[Mapping[str, Any]] = None,
    upsampler_cfg: Any = None,
    shard: Optional[Shard] = None,
) -> ItemCache:
    """The item cache of a run directory for this key (``<run_dir>/cache/<hash of the key>``); the shard is
    not part of the key: every shard of a run and its plain run share one cache."""
    key = cache_key(backbone_cfg, srt_cfg, task_key, data, upsampler_cfg)
    return ItemCache(Path(run_dir) / "cache" / config_hash(key, 16), key=key, shard=shard)
