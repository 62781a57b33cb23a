"""Atomic writes (srt/io.py): whole files or the old file, never half of one, and one implementation for all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srt import io as srt_io

REPO = Path(__file__).resolve().parents[1]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    srt_io.atomic_write_text(path, "first")
    srt_io.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert leftovers(path.parent) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
@pytest.mark.parametrize(
    "writer",
    [
        lambda p: srt_io.atomic_write_bytes(p, b"new bytes"),
        lambda p: srt_io.atomic_write_text(p, "new text"),
        lambda p: srt_io.atomic_write_json(p, {"a": 2}),
        lambda p: srt_io.atomic_save_png(p, np.full((2, 2), 7, dtype=np.uint8)),
    ],
    ids=["bytes", "text", "json", "png"],
)
def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, writer, fail_at):
    path = tmp_path / "out.dat"
    path.write_bytes(b"old content")

    def crash(*args, **kwargs):
        raise OSError(f"disk full at {fail_at} (simulated)")

    if fail_at == "write":  # the data never reaches the temp file
        real_fdopen = os.fdopen

        class Failing:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                crash()

        monkeypatch.setattr(srt_io.os, "fdopen", lambda fd, mode: Failing(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(srt_io.os, fail_at, crash)
    with pytest.raises(OSError, match="simulated"):
        writer(path)
    assert path.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_json_writes_nan_as_null(tmp_path):
    path = srt_io.atomic_write_json(
        tmp_path / "m.json", {"x": float("nan"), "y": np.float32(1.5), "z": [float("inf")], "p": Path("/a")}
    )
    assert json.loads(path.read_text()) == {"x": None, "y": 1.5, "z": [None], "p": "/a"}


def test_atomic_save_png_plain_palette_and_16_bit(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    srt_io.atomic_save_png(tmp_path / "rgb.png", rgb)
    assert np.array_equal(np.array(Image.open(tmp_path / "rgb.png")), rgb)

    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0]
    srt_io.atomic_save_png(tmp_path / "lab.png", labels, palette=palette)
    im = Image.open(tmp_path / "lab.png")
    assert im.mode == "P" and np.array_equal(np.array(im), labels) and im.getpalette()[:9] == palette

    depth = np.array([[0, 65535], [256, 1000]], dtype=np.uint16)
    srt_io.atomic_save_png(tmp_path / "d.png", depth)
    assert np.array_equal(np.array(Image.open(tmp_path / "d.png")), depth)

    with pytest.raises(ValueError, match=r"bad\.png.*expected uint8"):
        srt_io.atomic_save_png(tmp_path / "bad.png", np.zeros((2, 2), dtype=np.float32))


def test_atomic_writes_have_one_implementation():
    """Every other module writes files through srt/io.py: no second temp-file-and-rename anywhere."""
    offenders = []
    files = [*REPO.glob("*.py"), *(p for d in ("srt", "tasks", "eval", "scripts") for p in (REPO / d).rglob("*.py"))]
    for path in sorted(files):
        if path == REPO / "srt" / "io.py":
            continue
        text = path.read_text()
        if "os.replace(" in text or "mkstemp(" in text or "NamedTemporaryFile(" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_eval_and_srt_io_load_without_torch():
    """The table and metric CLIs write through srt.io; importing it must not pull in torch or timm."""
    code = "import sys, eval.tables, eval.run_record, srt.io; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------
# Reading images and remembering content hashes
# ----------------------------------------------------------------------------------------------------------
def _jpeg(path: Path, size=(64, 48)) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    return path


def test_check_image_reads_headers_and_catches_truncation(tmp_path, monkeypatch):
    from srt.errors import MissingFileError, UserError

    good = _jpeg(tmp_path / "good.jpg")
    decodes = []
    real = srt_io.read_image
    monkeypatch.setattr(srt_io, "read_image", lambda *a, **k: decodes.append(a[0]) or real(*a, **k))
    assert srt_io.check_image(good) == (64, 48) and decodes == []  # header and end marker: no decode
    trailer = tmp_path / "trailer.jpg"  # bytes appended after the image (some cameras do): decoded to decide
    trailer.write_bytes(good.read_bytes() + b"\x01" * 8192)
    assert srt_io.check_image(trailer) == (64, 48) and decodes == [trailer]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=r"image .*cut\.jpg is truncated or corrupt: image file is truncated"):
        srt_io.check_image(cut)
    assert srt_io.check_image(cut, allow_truncated=True) == (64, 48)
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(UserError, match=r"mask .*text\.jpg is not a readable image"):
        srt_io.check_image(tmp_path / "text.jpg", "mask")
    with pytest.raises(MissingFileError, match=r"image .*nope\.png does not exist"):
        srt_io.check_image(tmp_path / "nope.png")
    png = tmp_path / "m.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(png)
    assert srt_io.check_image(png) == (64, 48)
    png.write_bytes(png.read_bytes()[:-30])
    with pytest.raises(UserError, match=r"m\.png is truncated or corrupt"):
        srt_io.check_image(png)


def test_read_image_names_the_file(tmp_path):
    from srt.errors import UserError

    good = _jpeg(tmp_path / "a.jpg")
    assert srt_io.read_image(good).size == (64, 48) and srt_io.read_image(good, "L").mode == "L"
    good.write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match=r"cannot decode frame .*a\.jpg: "):
        srt_io.read_image(good, what="frame")


def test_file_hashes_are_remembered_and_survive_an_unwritable_cache(tmp_path):
    import hashlib

    data = tmp_path / "data.bin"
    data.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    with srt_io.FileHashes(tmp_path / "cache") as hashes:
        assert hashes.sha256(data) == expected
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with srt_io.FileHashes(blocked / "sha256") as hashes:  # cannot be written: hashes are still right
        assert hashes.sha256(data) == expected
