"""NYU-Depth-v2: the official labelled file (``nyu_depth_v2_labeled.mat``, MATLAB v7.3 = HDF5, read with h5py) and
the official split (``splits.mat``: 1-based ``trainNdxs`` / ``testNdxs``) -> the two layouts of paper Table 2.

The labelled file, as h5py sees it (MATLAB stores column-major, so every array is transposed): ``images``
[N,3,640,480] uint8, ``depths`` and ``rawDepths`` [N,640,480] float32 metres, ``sceneTypes`` / ``scenes`` [1,N]
references to uint16 character arrays. ``splits.mat`` is a MATLAB v5 file (scipy reads it; a v7.3 copy is read
with h5py).

Layouts written under ``root`` (the 654 test images, in the split's order):

- ``NYU/``: the toolbox layout DINOv2's evaluation reads (Monocular-Depth-Estimation-Toolbox, which took it from
  BTS's ``extract_official_train_test_set_from_mat.py``): ``<sceneType>/rgb_NNNNN.jpg`` and
  ``<sceneType>/sync_depth_NNNNN.png`` (uint16 millimetres of ``rawDepths``, 0 = no measurement), NNNNN the
  0-based index in the labelled file, the RGB outside rows 7..473 / columns 7..631 set to black as BTS does, and
  ``nyu_test.txt`` lines ``/<scene>/rgb_NNNNN.jpg /<scene>/sync_depth_NNNNN.png 518.8579``.
- ``nyu_v2/testing/{images,depths}/NNNNN.png``: the SRT repository's layout (its conversion is not published):
  the RGB untouched as PNG, depth = ``rawDepths`` x 256 as uint16 PNG. OUR choices, documented in docs/paper.md:
  PNG (lossless) images, the raw depth (as the toolbox), no border blackening, names by the labelled index.

The toolbox's JPEG quality is OpenCV's default (95, 4:2:0 chroma subsampling); PIL writes the same settings here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from srt.errors import MissingFileError, UserError
from srt.io import atomic_save_png, atomic_write_bytes, atomic_write_text

FOCAL = 518.8579  # third column of the toolbox's split file (unused by the metrics)
JPEG_QUALITY = 95  # OpenCV's imwrite default, what BTS's extraction used
BORDER = (slice(7, 474), slice(7, 632))  # BTS keeps this region of the RGB and blackens the rest
H, W = 480, 640


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # 1-based indices into the labelled file
    test: np.ndarray


def read_split(path: Path) -> Split:
    """``trainNdxs`` / ``testNdxs`` (1-based) of splits.mat (MATLAB v5 via scipy, v7.3 via h5py)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"NYU split file {path} does not exist (the official splits.mat)")
    try:
        import scipy.io

        data = scipy.io.loadmat(str(path))
        arrays = {k: np.asarray(data[k]) for k in ("trainNdxs", "testNdxs") if k in data}
    except NotImplementedError:  # MATLAB v7.3: HDF5
        import h5py

        with h5py.File(path, "r") as f:
            arrays = {k: np.asarray(f[k]) for k in ("trainNdxs", "testNdxs") if k in f}
    except ValueError as e:
        raise UserError(f"cannot read {path} as a MATLAB file: {e}") from e
    if set(arrays) != {"trainNdxs", "testNdxs"}:
        raise UserError(f"{path} holds {sorted(arrays)}; expected trainNdxs and testNdxs (the official splits.mat)")
    train, test = (arrays[k].astype(np.int64).ravel() for k in ("trainNdxs", "testNdxs"))
    if test.size == 0 or test.min() < 1:
        raise UserError(f"{path}: testNdxs must be 1-based indices (>= 1); got min {test.min() if test.size else None}")
    return Split(train, test)


def _strings(f, name: str) -> list[str]:
    refs = f[name]
    return ["".join(chr(c) for c in np.asarray(f[ref]).ravel()) for ref in np.asarray(refs).ravel()]


def open_labeled(path: Path):
    """The labelled file opened with h5py; errors name the file and what is missing."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"NYU labelled file {path} does not exist (the official nyu_depth_v2_labeled.mat)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"cannot open {path} as a MATLAB v7.3 (HDF5) file: {e}") from e
    missing = [k for k in ("images", "rawDepths", "sceneTypes") if k not in f]
    if missing:
        f.close()
        raise UserError(f"{path} lacks the datasets {missing}; expected the official nyu_depth_v2_labeled.mat")
    if f["images"].shape[1:] != (3, W, H) or f["rawDepths"].shape[1:] != (W, H):
        shapes = (f["images"].shape, f["rawDepths"].shape)
        f.close()
        raise UserError(f"{path}: images / rawDepths have shapes {shapes}; expected [N,3,{W},{H}] and [N,{W},{H}]")
    return f


def toolbox_rgb(rgb: np.ndarray) -> np.ndarray:
    """BTS's extraction: black outside rows 7..473 and columns 7..631."""
    out = np.zeros_like(rgb)
    out[BORDER] = rgb[BORDER]
    return out


def encode_jpeg(rgb: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def convert(labeled: Path, splits: Path, root: Path, progress: bool = True) -> dict[str, Path]:
    """Write both layouts of the official test images under ``root``; returns {layout: folder}."""
    split = read_split(splits)
    root = Path(root)
    toolbox, srt_dir = root / "NYU", root / "nyu_v2" / "testing"
    with open_labeled(labeled) as f:
        n = f["images"].shape[0]
        if split.test.max() > n:
            raise UserError(f"{splits}: testNdxs reaches {split.test.max()} but {labeled} holds {n} images")
        scenes = _strings(f, "sceneTypes")
        lines = []
        for index1 in tqdm(split.test, desc="NYU test images", disable=not progress):
            i = int(index1) - 1  # 1-based (MATLAB) -> 0-based: the NNNNN of the file names
            rgb = np.ascontiguousarray(np.asarray(f["images"][i]).T)  # [3,640,480] -> [480,640,3]
            depth = np.asarray(f["rawDepths"][i], dtype=np.float64).T  # [640,480] -> [480,640] metres
            scene = scenes[i]
            atomic_write_bytes(toolbox / scene / f"rgb_{i:05d}.jpg", encode_jpeg(toolbox_rgb(rgb)))
            atomic_save_png(toolbox / scene / f"sync_depth_{i:05d}.png", _uint16(depth * 1000.0))
            atomic_save_png(srt_dir / "images" / f"{i:05d}.png", rgb)
            atomic_save_png(srt_dir / "depths" / f"{i:05d}.png", _uint16(depth * 256.0))
            lines.append(f"/{scene}/rgb_{i:05d}.jpg /{scene}/sync_depth_{i:05d}.png {FOCAL}")
    atomic_write_text(toolbox / "nyu_test.txt", "\n".join(lines) + "\n")
    return {"toolbox": toolbox, "srt": root / "nyu_v2"}


def _uint16(values: np.ndarray) -> np.ndarray:
    """As BTS: ``astype(uint16)`` after scaling (truncation), clipped to the range instead of wrapping."""
    return np.clip(values, 0, 65535).astype(np.uint16)


def write_labeled(path: Path, images: np.ndarray, depths: np.ndarray, scene_types: Sequence[str]) -> None:
    """A file in the official labelled file's format (for tests and the encoding measurement): ``images``
    [N,480,640,3] uint8 and ``depths`` [N,480,640] metres, stored transposed as MATLAB v7.3 does, with the
    512-byte MATLAB header block, ``depths`` = ``rawDepths``, scene names as references to uint16 arrays."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=np.ascontiguousarray(images.transpose(0, 3, 2, 1)))
        for name in ("depths", "rawDepths"):
            f.create_dataset(name, data=np.ascontiguousarray(depths.transpose(0, 2, 1)).astype(np.float32))
        refs_group = f.create_group("#refs#")
        for field in ("sceneTypes", "scenes"):
            refs = []
            for k, s in enumerate(scene_types):
                value = s if field == "sceneTypes" else f"{s}_{k + 1:04d}"
                ds = refs_group.create_dataset(f"{field}_{k}", data=np.array([[ord(c)] for c in value], np.uint16))
                refs.append(ds.ref)
            f.create_dataset(field, data=np.array([refs], dtype=h5py.ref_dtype))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2001 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def write_splits(path: Path, train: Sequence[int], test: Sequence[int]) -> None:
    """A splits.mat as the official one: MATLAB v5, 1-based column vectors of doubles."""
    import scipy.io

    col = lambda v: np.asarray(v, dtype=np.float64).reshape(-1, 1)  # noqa: E731
    scipy.io.savemat(str(path), {"trainNdxs": col(train), "testNdxs": col(test)})
