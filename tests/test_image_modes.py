"""The project's one image reader (srt.io.read_image): every Pillow mode it promises, scaled right; the others
refused by name, from the header already (check_image); and no other module decodes input images itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srt.io import check_image, read_image

REPO = Path(__file__).resolve().parents[1]


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(read_image(path, "RGB"))


def test_16_bit_greyscale_is_scaled_not_white(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode in ("I;16", "I")
    out = _rgb(tmp_path / "g16.png")
    expected = np.rint(values / 65535 * 255).astype(np.uint8)  # 0, 1, 128, 255, 4, 233
    assert out.shape == (2, 3, 3) and (out == expected[..., None]).all()
    assert (np.asarray(read_image(tmp_path / "g16.png", "L")) == expected).all()
    # a 32-bit 'I' image holding 16-bit values (TIFF) reads the same; one beyond 16 bits is refused by name
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")
    assert (_rgb(tmp_path / "i32.tif") == expected[..., None]).all()
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif has Pillow mode 'I' with values 0\.\.70000"):
        read_image(tmp_path / "big.tif")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "1", "LA"])
def test_8_bit_modes_read_as_pillow_converts_them(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'tiff' if mode == 'LA' else 'png'}"
    image.save(path)
    with Image.open(path) as im:
        assert im.mode == mode
        expected = np.asarray(im.convert("RGB"))
    assert check_image(path) == (5, 6)
    assert (_rgb(path) == expected).all()


def test_a_mode_it_cannot_read_is_named_from_the_header(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    for fn in (check_image, read_image):
        with pytest.raises(ValueError, match=r"f\.tif has Pillow mode 'F', which this project cannot read"):
            fn(tmp_path / "f.tif")


def test_no_other_module_decodes_input_images():
    """Input images go through srt.io.read_image; the only other decoders read labels and ground truth
    (16-bit depth, palette annotations, masks), whose raw values are the point."""
    allowed = {"srt/io.py", "eval/depth.py", "eval/davis.py", "eval/saliency.py"}
    offenders = []
    for folder in ("srt", "tasks", "eval"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel not in allowed and re.search(
                r"Image\.open\(|cv2\.imread\(|imageio|skimage\.io\.imread", path.read_text()
            ):
                offenders.append(rel)
    assert not offenders, f"decode images with srt.io.read_image: {offenders}"


def test_the_reader_decodes_as_opencv_does_where_a_protocol_used_opencv(fixtures_dir):
    """DINO (DAVIS) and the depth toolbox decode with cv2.imread; the one reader gives the same pixels (on all
    894 fixture JPEGs and PNGs when this was written; here a sample of each kind, so a library update that
    changes decoding fails here)."""
    import cv2

    files = [
        *sorted((fixtures_dir / "davis").rglob("*.jpg"))[:5],
        *sorted((fixtures_dir / "roxford").rglob("*.jpg"))[:5],
        *sorted((fixtures_dir / "davis").rglob("*.png"))[:5],
    ]
    assert len(files) >= 12
    for path in files:
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.array_equal(_rgb(path), expected), path
