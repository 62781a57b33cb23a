"""File I/O every layer shares (srt, eval, tasks, run.py): atomic writes, image reads that name the file,
and content hashes of files remembered across runs.

**Atomic writes.** A write goes to a temporary file in the target's directory, is flushed and fsynced, then renamed over the
target (``os.replace``, atomic on POSIX). A run killed at any point therefore leaves either the old file or
the new one, never half a file, and no temporary file survives a failed write. Files get the permissions a
plain ``open()`` would give them (``mkstemp`` alone would make them 0600).

**Reading images.** :func:`read_image` is the project's one image reader: it decodes an image or raises a
:class:`srt.errors.UserError` naming the file (a decoder's own OSError does not); 8-bit modes (L, RGB, RGBA, P,
CMYK, ...) are converted by Pillow, 16-bit greyscale (``I;16``, ``I``) is scaled from [0, 65535] to [0, 1] first
(Pillow's own conversion clips it, a white picture), other modes are refused by name (:data:`IMAGE_MODES`). :func:`check_image` is the cheap check that tasks run on every input
image before the first forward pass (see its docstring for what it catches and what it costs).

**Content hashes.** :func:`file_sha256` / :class:`FileHashes`: the sha256 of a file, remembered per file by its
size and modification time (in ``<cache dir>/sha256/``, see :func:`cache_dir`), so a file is read once until it
changes. Run identities use them for weights files and dataset files.

This module imports only the standard library and numpy (PIL when an image is read or written), so the metric
and table CLIs of ``eval/`` can use it without loading torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import MissingFileError, UserError

__all__ = [
    "FileHashes",
    "atomic_save_png",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "check_image",
    "file_lock",
    "file_sha256",
    "read_image",
    "to_json",
]

log = logging.getLogger(__name__)


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:  # disk full: name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return path


def move_into_place(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rename a file written elsewhere in full (a verified download's partial file) to ``dst`` atomically: readers
    see the old file or the new one, never a part (same file system; the partial file lies beside its target)."""
    os.replace(src, dst)
    return Path(dst)


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
        raise UserError(
            f"atomic_save_png({path}): expected uint8 [H,W] or [H,W,3], or uint16 [H,W]; "
            f"got {array.dtype} {array.shape}"
        )
    image = Image.fromarray(array)
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise UserError(f"atomic_save_png({path}): a palette needs a uint8 [H,W] index array")
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


@contextlib.contextmanager
def exclusive_run_lock(path: str | os.PathLike, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold ``path`` (a lock file) for the whole of a run, so that two identical runs started at once do not both
    compute everything and rewrite each other's files: the second calls ``on_wait`` with what the lock file says
    of its holder (pid and host) and waits for it; then it finds the finished run. The kernel releases the lock
    when the holder exits, also when it is killed, so a stale lock file never blocks a later run."""
    import socket

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # the holder's note is for the message only (a full disk may refuse it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------------------
#: bytes at the end of a file searched for the format's end marker (JPEG EOI, PNG IEND)
_TAIL_BYTES = 4096
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}


@contextlib.contextmanager
def _truncated_images(allow: bool) -> Iterator[None]:
    """Pillow's process-wide LOAD_TRUNCATED_IMAGES, set only while one image is decoded."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # UnidentifiedImageError and "image file is truncated" are OSErrors; bad headers can raise SyntaxError or
    # ValueError; a decompression bomb is its own class
    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _missing(path: Path, what: str) -> MissingFileError:
    return MissingFileError(f"{what} {path} does not exist")


#: Pillow modes read as images: 8 bits per channel, converted by Pillow (CMYK naively, alpha dropped) ...
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
#: ... and 16-bit greyscale (PNG, TIFF; ``I`` is how Pillow may open a 16-bit PNG), scaled by 1/65535
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
IMAGE_MODES = EIGHT_BIT_MODES + SIXTEEN_BIT_MODES


def _unreadable_mode(mode: str, path: Path, what: str) -> UserError:
    return UserError(
        f"{what} {path} has Pillow mode {mode!r}, which this project cannot read as an image; expected 8-bit "
        f"L, RGB, RGBA, P or CMYK (or {', '.join(m for m in EIGHT_BIT_MODES if m not in ('L', 'RGB', 'RGBA', 'P', 'CMYK'))}) "
        "or 16-bit greyscale (I;16, I); convert it, e.g. to 8-bit RGB PNG"
    )


def _eight_bit(image, path: Path, what: str):
    """``image`` with 8 bits per channel: 16-bit greyscale scaled [0, 65535] -> [0, 255] (rounded), others as
    they are; a mode outside :data:`IMAGE_MODES` (or an ``I`` image with values outside 16 bits) refused."""
    from PIL import Image

    if image.mode not in IMAGE_MODES:
        raise _unreadable_mode(image.mode, path, what)
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UserError(
            f"{what} {path} has Pillow mode {image.mode!r} with values {values.min()}..{values.max()}; expected "
            "16-bit greyscale (0..65535)"
        )
    return Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8), mode="L")


def read_image(
    path: str | os.PathLike, mode: Optional[str] = "RGB", what: str = "image", allow_truncated: bool = False
):
    """The fully decoded PIL image at ``path`` (converted to ``mode``; None keeps the file's own mode).

    Every mode of :data:`IMAGE_MODES` converts correctly: a 16-bit greyscale image is scaled from 0..65535 to
    8 bits (never clipped to white); any other mode is a :class:`srt.errors.UserError` naming it and the file.
    Raises :class:`srt.errors.MissingFileError` if there is no file, :class:`srt.errors.UserError` naming the
    file if it does not decode (``allow_truncated``: decode truncated JPEGs as Pillow's LOAD_TRUNCATED_IMAGES
    does, the missing part grey)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        with _truncated_images(allow_truncated), Image.open(path) as image:
            image.load()
            if mode is None:
                return image.copy()
            image = _eight_bit(image, path, what)
            return image.convert(mode) if image.mode != mode else image.copy()
    except _decode_errors() as e:
        if isinstance(e, UserError):  # a mode refused above (UserError is a ValueError)
            raise
        raise UserError(f"cannot decode {what} {path}: {e}") from e


def check_image(path: str | os.PathLike, what: str = "image", allow_truncated: bool = False) -> tuple[int, int]:
    """Check that ``path`` is a whole image without decoding its pixels; return its (width, height).

    The header is parsed (format, size, mode: a file that is not an image, or one of a mode :func:`read_image`
    refuses, fails here) and, for JPEG and PNG,
    the last 4 KiB must hold the format's end marker (JPEG EOI ``FF D9``, which entropy-coded data cannot
    contain; PNG ``IEND``): a truncated download or copy fails here. When that cannot vouch for the file (no
    marker, e.g. bytes appended after the image, or another format), the image is decoded fully instead,
    which decides. Errors are :class:`srt.errors.UserError` naming the file.

    Cost, measured on the fixtures (``scripts/bench_data_checks.py``): 0.1-0.16 ms per image against 2-18 ms
    for a full decode (DAVIS 854x480 frames: 0.16 vs 4.2 ms; ROxford 1024x768: 0.12 vs 18 ms), 1-6% of it. A
    full decode of every input would cost as much as reading the images again for the run, which for a plain
    (level 0) pass on a GPU is a large share of the run; this check is not. Corruption inside a JPEG's
    entropy-coded data that leaves its end intact is found when the image is decoded for its features, by
    :func:`read_image`, which names the file.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    try:
        with Image.open(path) as image:
            size, fmt, mode = image.size, image.format, image.mode
    except _decode_errors() as e:
        raise UserError(f"{what} {path} is not a readable image: {e}") from e
    if mode not in IMAGE_MODES:  # found from the header, before any model is built
        raise _unreadable_mode(mode, path, what)
    if allow_truncated:  # the decoder will grey out whatever is missing
        return size
    marker = _END_MARKERS.get(fmt or "")
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            if marker in f.read():
                return size
    try:
        read_image(path, None, what)
    except UserError as e:
        raise UserError(f"{what} {path} is truncated or corrupt: {e.__cause__ or e}") from e
    return size


# ----------------------------------------------------------------------------------------------------------
# Content hashes remembered across runs
# ----------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where srt keeps small caches: ``$SRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/srt``, else ``~/.cache/srt``."""
    if os.environ.get("SRT_CACHE_DIR"):
        return Path(os.environ["SRT_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srt"


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FileHashes:
    """sha256 of files, remembered by (size, modification time in ns) so that each file is read once until it
    changes. Use as a context manager (the tables are written on exit) or call :meth:`save`.

    One small JSON table per folder of hashed files, ``<cache_dir()>/sha256/<hash of the folder path>.json``
    (``{name: [size, mtime_ns, sha256]}``); a table that cannot be read is ignored and one that cannot be
    written is skipped (hashes are then recomputed next time: slower, never wrong). A file rewritten with the
    same size within the file system's timestamp resolution would keep its old hash; ext4, xfs and btrfs store
    nanoseconds. Cost: one ``stat`` per remembered file, a read at ~0.3-1 GB/s per new or changed one.
    """

    def __init__(self, root: Optional[str | os.PathLike] = None):
        self.root = Path(root) if root is not None else cache_dir() / "sha256"
        self._tables: dict[Path, dict[str, list]] = {}
        self._dirty: set[Path] = set()

    def _table_path(self, folder: Path) -> Path:
        return self.root / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:32]}.json"

    def _table(self, folder: Path) -> dict[str, list]:
        if folder not in self._tables:
            table: dict[str, list] = {}
            try:
                data = json.loads(self._table_path(folder).read_text())
                if data.get("folder") == str(folder) and isinstance(data.get("files"), dict):
                    table = data["files"]
            except (OSError, ValueError, AttributeError):
                pass
            self._tables[folder] = table
        return self._tables[folder]

    def sha256(self, path: str | os.PathLike) -> str:
        """The sha256 (hex) of the file's content; MissingFileError if it does not exist."""
        path = Path(os.path.abspath(path))
        try:
            st = path.stat()
        except FileNotFoundError as e:
            raise MissingFileError(f"{path} does not exist") from e
        table = self._table(path.parent)
        entry = table.get(path.name)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return str(entry[2])
        digest = _sha256_of_file(path)
        table[path.name] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty.add(path.parent)
        return digest

    def save(self) -> None:
        for folder in sorted(self._dirty):
            try:
                atomic_write_json(self._table_path(folder), {"folder": str(folder), "files": self._tables[folder]})
            except OSError as e:  # a read-only home: hashes are recomputed next time
                log.debug("cannot write the hash cache for %s: %s", folder, e)
        self._dirty.clear()

    def __enter__(self) -> FileHashes:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.save()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of one file's content, remembered across runs (:class:`FileHashes`)."""
    with FileHashes() as hashes:
        return hashes.sha256(path)
