"""Image lists of tasks that read plain image files (``task.images``): files, folders, packaged photographs.

``list_images(["a.jpg", "photos/", "skimage:astronaut"], "task.images")`` expands folders (recursively, sorted)
and keeps files and ``skimage:<name>`` entries (photographs shipped inside scikit-image, read by
:func:`srt.viz.read_image`) in the given order. Missing paths and folders without images are errors that
name the setting and the path.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from srt.errors import MissingFileError, UserError
from srt.viz import SKIMAGE_PREFIX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def as_entries(value: Any, setting: str) -> list[str]:
    """A setting that is one path or a list of them, as a list of strings (ValueError otherwise)."""
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [str(v) for v in value]
    raise UserError(f"{setting}={value!r} is not valid; expected a path (file or folder) or a non-empty list of paths")


def images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by their path relative to it."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def list_images(entries: Iterable[Union[str, os.PathLike]], setting: str) -> list[Union[Path, str]]:
    """Files and ``skimage:`` names in order; folders expanded. FileNotFoundError / ValueError name the entry."""
    out: list[Union[Path, str]] = []
    for entry in entries:
        if isinstance(entry, str) and entry.startswith(SKIMAGE_PREFIX):
            out.append(entry)
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            found = images_in(path)
            if not found:
                raise UserError(
                    f"{setting}: folder {path} holds no images (searched recursively for {', '.join(IMAGE_SUFFIXES)})"
                )
            out += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{setting}: {path} is not an image file; expected one of {', '.join(IMAGE_SUFFIXES)}")
            out.append(path)
        else:
            raise MissingFileError(f"{setting}: {path} does not exist (expected an image file or a folder of images)")
    if not out:
        raise UserError(f"{setting} lists no images")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def item_id(path: Union[Path, str], root: Union[Path, None] = None) -> str:
    """A cache item id for an image: its path relative to ``root`` (or its name), unsafe characters replaced
    and, when anything was replaced, a short hash of the original appended (so ids stay distinct)."""
    if isinstance(path, str) and path.startswith(SKIMAGE_PREFIX):
        rel = path.replace(":", "/")
    else:
        p = Path(path)
        rel = p.relative_to(root).as_posix() if root is not None else p.name
    parts = [_UNSAFE.sub("_", part) for part in rel.split("/")]
    parts = [("_" + part) if part in (".", "..") else part for part in parts]
    safe = "/".join(parts)
    if safe != rel:
        safe += "-" + _short_hash(rel)
    return safe


def item_ids(paths: Iterable[Union[Path, str]], root: Union[Path, None] = None) -> list[str]:
    """:func:`item_id` of every path; ids that would repeat (same name in different folders) get a short hash of
    the full path appended, so every image keeps its own cache entry and panel files."""
    paths = list(paths)
    ids = [item_id(p, root) for p in paths]
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    return [i if seen[i] == 1 else f"{i}-{_short_hash(str(p))}" for i, p in zip(ids, paths)]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def check_run_size(
    path: Union[Path, str], size: tuple[int, int], run_size: tuple[int, int], patch: int, how: str
) -> None:
    """Degenerate geometry, found from the image header before any model is built: the image ``path`` of
    ``size`` (w, h) runs at ``run_size`` (w, h) (``how``: the settings and steps that give it); a side below one
    patch holds no token, or less detail than one token. UserError naming the file and the sizes."""
    w, h = run_size
    if w < patch or h < patch:
        at = "" if tuple(run_size) == tuple(size) else f" and runs at {w}x{h} ({how})"
        raise UserError(
            f"image {path} is {size[0]}x{size[1]}{at}, smaller than one patch ({patch} px) of the model; "
            f"expected at least {patch} px on each side{'' if at else f' ({how})'}"
        )
