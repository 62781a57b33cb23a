"""Atomic file writes: the one implementation every layer uses (srt, eval, tasks, run.py).

A write goes to a temporary file in the target's directory, is flushed and fsynced, then renamed over the
target (``os.replace``, atomic on POSIX). A run killed at any point therefore leaves either the old file or
the new one, never half a file, and no temporary file survives a failed write. Files get the permissions a
plain ``open()`` would give them (``mkstemp`` alone would make them 0600).

This module imports only the standard library and numpy (PIL when a PNG is written), so the metric and
table CLIs of ``eval/`` can use it without loading torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["atomic_save_png", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "to_json"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: mkstemp creates 0600 files; results get the permissions a plain open() would give them
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Indented JSON text; NaN and inf are written as null (strict JSON readers reject NaN)."""
    return json.dumps(_finite_or_none(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (see :func:`to_json`) to ``path`` atomically."""
    return atomic_write_text(path, to_json(obj))


def atomic_save_png(
    path: str | os.PathLike, array: np.ndarray, palette: Optional[np.ndarray | list[int]] = None
) -> Path:
    """Save a uint8 (H,W) / (H,W,3) array, or a uint16 (H,W) array, as a PNG atomically.

    With ``palette`` (a flat list of up to 768 ints or an (N,3) array) a 2-D uint8 array is written as an
    indexed (mode "P") PNG, the format of DAVIS annotations and predictions.
    """
    from PIL import Image

    array = np.asarray(array)
    if not ((array.dtype == np.uint16 and array.ndim == 2) or (array.dtype == np.uint8 and array.ndim in (2, 3))):
        raise ValueError(
            f"atomic_save_png({path}): expected uint8 [H,W] or [H,W,3], or uint16 [H,W]; "
            f"got {array.dtype} {array.shape}"
        )
    image = Image.fromarray(array)
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError(f"atomic_save_png({path}): a palette needs a uint8 [H,W] index array")
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` for read-modify-write of a file shared by parallel jobs (a CSV log
    that launcher jobs append to, a figure combined from several runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
