#!/usr/bin/env python
"""Write small synthetic datasets in each task's official on-disk layout, so the suite runs with nothing downloaded.

    python scripts/make_sample_data.py --out data/sample        # skips if already complete; --force rewrites

Layout under OUT (the same layouts as the real datasets; point ``paths.data_root`` / ``SRT_DATA`` at OUT):

    DAVIS/JPEGImages/480p/<seq>/00000.jpg ...   DAVIS/Annotations/480p/<seq>/00000.png (palette PNG: 0 bg, 1..K)
    DAVIS/ImageSets/2017/{val,train}.txt        (val has a 2-object sequence)
    nyu_v2/testing/images/*.png                 nyu_v2/testing/depths/*.png (uint16, metres * 256, 0 = invalid;
                                                the SRT repository's layout)
    NYU/nyu_test.txt                            NYU/<scene>/rgb_NNNNN.jpg, NYU/<scene>/sync_depth_NNNNN.png (uint16,
                                                millimetres; the DINOv2 / depth-toolbox layout; the same 3 scenes)
    ECSSD/images/*.jpg                          ECSSD/ground_truth_mask/*.png ({0,255})
    DUTS-TE/DUTS-TE-Image/*.jpg                 DUTS-TE/DUTS-TE-Mask/*.png (soft edges, 0..255)
    DUT-OMRON/DUT-OMRON-image/*.jpg             DUT-OMRON/pixelwiseGT-new-PNG/*.png ({0,255})
    revisitop/roxford5k/jpg/*.jpg               revisitop/roxford5k/gnd_roxford5k.pkl (imlist, qimlist, gnd[bbx,easy,hard,junk])
    VOC2007/VOCdevkit/VOC2007/JPEGImages/*.jpg  .../Annotations/*.xml, .../ImageSets/Main/trainval.txt
                                                (TokenCut's datasets/VOC2007/VOCdevkit/VOC2007, as conf/task/discovery.yaml reads it)

Images are small (DAVIS frames 96x176, not the official 480p: tasks resize them as they resize real frames)
and the content is simple on purpose: textured objects on textured backgrounds, moving (DAVIS), salient
(saliency), boxed (VOC), seen from several viewpoints (ROxford), with depth-consistent shading (NYU). The
output is deterministic (seeded) and takes about a second. The numbers a model gets on it mean nothing.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from srt.errors import report_user_errors  # noqa: E402

VERSION = 3
STAMP = ".complete"
SEED = 20240721


# ----------------------------------------------------------------------------------------------
# Helpers


def davis_palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map (index i -> RGB from the bits of i), 256 entries, flat."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 6, channels: int = 3) -> np.ndarray:
    """Smooth random field in [0, 1], [h, w, channels] (bilinear upsampling of a coarse grid)."""
    coarse = rng.random((cells, cells, channels), dtype=np.float64)
    ys = np.linspace(0, cells - 1, h)
    xs = np.linspace(0, cells - 1, w)
    y0 = np.clip(np.floor(ys).astype(int), 0, cells - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, cells - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def stripes(h: int, w: int, period: float, angle: float, phase: float = 0.0) -> np.ndarray:
    """A sinusoidal stripe texture in [0, 1], [h, w]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return 0.5 + 0.5 * np.sin(2 * np.pi * t / period + phase)


def textured(
    rng: np.random.Generator, h: int, w: int, color: np.ndarray, period: float, angle: float, phase: float = 0.0
) -> np.ndarray:
    """A colour modulated by stripes and a little noise, [h, w, 3] in [0, 1]."""
    tex = stripes(h, w, period, angle, phase)[..., None]
    return np.clip(color[None, None] * (0.65 + 0.35 * tex) + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = 0.25 + 0.5 * smooth_noise(rng, h, w, cells=5)
    return np.clip(base * (0.85 + 0.15 * stripes(h, w, 11.0, rng.uniform(0, np.pi))[..., None]), 0, 1)


def ellipse_mask(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def rect_mask(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return m


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_jpg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path, format="JPEG", quality=92)


def save_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(palette)
    image.save(path, format="PNG")


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


# ----------------------------------------------------------------------------------------------
# DAVIS 2017


DAVIS_H, DAVIS_W, DAVIS_FRAMES = 96, 176, 6
#: sequence -> (split, objects); each object: (shape, start (cy, cx), velocity (vy, vx) per frame, size, colour)
DAVIS_SEQUENCES = {
    "sample-disc": ("val", [("ellipse", (48, 40), (1.0, 9.0), (22, 26), (0.9, 0.3, 0.2))]),
    "sample-pair": (
        "val",
        [
            ("ellipse", (35, 30), (2.0, 10.0), (18, 20), (0.2, 0.4, 0.9)),
            ("rect", (60, 140), (-1.5, -8.0), (20, 30), (0.95, 0.85, 0.2)),
        ],
    ),
    "sample-box": ("val", [("rect", (30, 120), (3.0, -5.0), (26, 34), (0.3, 0.85, 0.3))]),
    "sample-train": ("train", [("ellipse", (50, 60), (-1.0, 6.0), (20, 24), (0.8, 0.2, 0.8))]),
}


def make_davis(out: Path, rng: np.random.Generator) -> None:
    root = out / "DAVIS"
    palette = davis_palette()
    splits: dict[str, list[str]] = {"val": [], "train": []}
    for seq, (split, objects) in DAVIS_SEQUENCES.items():
        splits[split].append(seq)
        bg = background(rng, DAVIS_H, DAVIS_W + 8 * DAVIS_FRAMES)  # the camera pans slowly over a wider scene
        textures = [
            textured(rng, DAVIS_H, DAVIS_W, np.array(color), rng.uniform(5, 9), rng.uniform(0, np.pi))
            for *_, color in objects
        ]
        for t in range(DAVIS_FRAMES):
            frame = bg[:, 2 * t : 2 * t + DAVIS_W].copy()
            label = np.zeros((DAVIS_H, DAVIS_W), dtype=np.uint8)
            for k, ((shape, (cy, cx), (vy, vx), (sy, sx), _), tex) in enumerate(zip(objects, textures), start=1):
                y, x = cy + vy * t, cx + vx * t
                if shape == "ellipse":
                    m = ellipse_mask(DAVIS_H, DAVIS_W, y, x, sy / 2, sx / 2)
                else:
                    m = rect_mask(DAVIS_H, DAVIS_W, int(y - sy / 2), int(x - sx / 2), int(y + sy / 2), int(x + sx / 2))
                frame[m] = tex[m]  # later objects occlude earlier ones, as in the labels
                label[m] = k
            save_jpg(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", frame)
            save_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", label, palette)
    for split, seqs in splits.items():
        write_lines(root / "ImageSets" / "2017" / f"{split}.txt", seqs)


# ----------------------------------------------------------------------------------------------
# NYU-Depth-v2 in both layouts of paper Table 2's protocols (eval/depth.py): the SRT repository's
# nyu_v2/testing/{images,depths} (PNG images, depth PNG = metres * 256, paired by sorted name) and the
# DINOv2 / Monocular-Depth-Estimation-Toolbox one (split file nyu_test.txt, JPEG images, depth PNG = millimetres)


NYU_H, NYU_W, NYU_IMAGES = 480, 640, 3
#: toolbox names of the sample scenes (scene folder, frame number), as in NYU's official test split
NYU_TOOLBOX_NAMES = (("bathroom", 45), ("bedroom", 1062), ("kitchen", 7))
NYU_FOCAL = 518.8579  # the third column of the toolbox split file (unused by the evaluation)


def make_nyu(out: Path, rng: np.random.Generator) -> None:
    root = out / "nyu_v2" / "testing"
    toolbox = out / "NYU"
    split = []
    yy, xx = np.mgrid[0:NYU_H, 0:NYU_W].astype(np.float64)
    for i in range(NYU_IMAGES):
        # a room: a back wall at 6-9 m, a floor approaching the camera at the bottom, two boxes in front
        wall = rng.uniform(6.0, 9.0)
        horizon = rng.uniform(0.45, 0.6) * NYU_H
        depth = np.full((NYU_H, NYU_W), wall)
        floor = yy > horizon
        depth[floor] = np.minimum(wall, 1.5 * NYU_H / np.maximum(yy[floor] - horizon, 1.0) + 0.8)
        albedo = background(rng, NYU_H, NYU_W)
        for _ in range(2):
            y0, x0 = int(rng.uniform(0.3, 0.6) * NYU_H), int(rng.uniform(0.05, 0.7) * NYU_W)
            bh, bw = int(rng.uniform(0.2, 0.35) * NYU_H), int(rng.uniform(0.15, 0.25) * NYU_W)
            m = rect_mask(NYU_H, NYU_W, y0, x0, y0 + bh, x0 + bw)
            depth[m] = rng.uniform(1.5, 4.0)
            albedo[m] = textured(rng, NYU_H, NYU_W, rng.uniform(0.3, 0.9, 3), 9.0, rng.uniform(0, np.pi))[m]
        shading = np.clip(1.15 - depth / 12.0, 0.3, 1.0)[..., None]  # nearer is brighter
        rgb = to_uint8(albedo * shading)
        save_png(root / "images" / f"{i:05d}.png", rgb)
        invalid = np.zeros((NYU_H, NYU_W), dtype=bool)
        invalid[:6, :] = True  # pixels without depth, as in real scans
        invalid[ellipse_mask(NYU_H, NYU_W, rng.uniform(100, 380), rng.uniform(100, 540), 12, 20)] = True
        save_png(root / "depths" / f"{i:05d}.png", np.where(invalid, 0, np.round(depth * 256)).astype(np.uint16))
        scene, k = NYU_TOOLBOX_NAMES[i]
        save_jpg(toolbox / scene / f"rgb_{k:05d}.jpg", rgb / 255.0)
        save_png(
            toolbox / scene / f"sync_depth_{k:05d}.png", np.where(invalid, 0, np.round(depth * 1000)).astype(np.uint16)
        )
        split.append(f"/{scene}/rgb_{k:05d}.jpg /{scene}/sync_depth_{k:05d}.png {NYU_FOCAL}")
    write_lines(toolbox / "nyu_test.txt", split)


# ----------------------------------------------------------------------------------------------
# Saliency: ECSSD, DUTS-TE, DUT-OMRON


SALIENCY = {
    # dataset -> (image dir, mask dir, names, soft mask edges)
    "ECSSD": ("images", "ground_truth_mask", [f"{i:04d}" for i in range(1, 6)], False),
    "DUTS-TE": ("DUTS-TE-Image", "DUTS-TE-Mask", [f"ILSVRC2012_test_{i:08d}" for i in (3, 23, 42, 57, 88)], True),
    "DUT-OMRON": ("DUT-OMRON-image", "pixelwiseGT-new-PNG", [f"im{i:03d}" for i in (5, 10, 17, 31, 46)], False),
}


def make_saliency(out: Path, rng: np.random.Generator) -> None:
    for dataset, (image_dir, mask_dir, names, soft) in SALIENCY.items():
        for name in names:
            h, w = int(rng.integers(100, 150)), int(rng.integers(130, 200))  # deliberately not multiples of 16
            img = 0.35 + 0.3 * smooth_noise(rng, h, w, cells=8)  # low-contrast clutter
            cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
            ry, rx = rng.uniform(0.2, 0.32) * h, rng.uniform(0.15, 0.3) * w
            m = ellipse_mask(h, w, cy, cx, ry, rx)
            color = np.array([0.95, 0.25, 0.1]) if rng.random() < 0.5 else np.array([0.1, 0.3, 0.95])
            img[m] = textured(rng, h, w, color, 7.0, rng.uniform(0, np.pi))[m]
            mask = m.astype(np.float64)
            if soft:  # DUTS masks have anti-aliased, non-binary edges
                ring = ellipse_mask(h, w, cy, cx, ry + 1.5, rx + 1.5) & ~m
                mask[ring] = 0.4
            save_jpg(out / dataset / image_dir / f"{name}.jpg", img)
            save_png(out / dataset / mask_dir / f"{name}.png", to_uint8(mask))


# ----------------------------------------------------------------------------------------------
# Revisited Oxford (revisitop layout)


RETRIEVAL_LANDMARKS = ("tower", "bridge", "gate")


def landmark(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A distinctive synthetic 'building': a few textured, coloured shapes on a plain sky."""
    img = np.empty((h, w, 3))
    img[:] = np.array([0.6, 0.75, 0.9])
    pil = Image.fromarray(to_uint8(img))
    draw = ImageDraw.Draw(pil)
    for _ in range(5):
        x0, y0 = rng.uniform(0, 0.7) * w, rng.uniform(0.1, 0.7) * h
        x1, y1 = x0 + rng.uniform(0.15, 0.35) * w, y0 + rng.uniform(0.15, 0.4) * h
        fill = tuple(int(v) for v in rng.integers(20, 235, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=fill)
    out = np.asarray(pil).astype(np.float64) / 255
    return np.clip(out * (0.85 + 0.15 * stripes(h, w, rng.uniform(4, 8), rng.uniform(0, np.pi)))[..., None], 0, 1)


def view(
    scene: np.ndarray,
    rng: np.random.Generator,
    crop: float,
    shift: float,
    tint: float,
    occlude: float,
    size: tuple[int, int],
) -> np.ndarray:
    """A viewpoint of ``scene``: a crop (fraction ``crop`` of the scene) shifted by up to ``shift``, tinted,
    partially occluded, resized to ``size`` (h, w)."""
    H, W = scene.shape[:2]
    ch, cw = int(H * crop), int(W * crop)
    y0 = int(np.clip((H - ch) / 2 + rng.uniform(-shift, shift) * H, 0, H - ch))
    x0 = int(np.clip((W - cw) / 2 + rng.uniform(-shift, shift) * W, 0, W - cw))
    img = Image.fromarray(to_uint8(scene[y0 : y0 + ch, x0 : x0 + cw])).resize((size[1], size[0]), Image.BILINEAR)
    out = np.asarray(img).astype(np.float64) / 255
    out = np.clip(out * (1 + tint * (rng.random(3) - 0.5)), 0, 1)
    if occlude > 0:
        h, w = size
        oh, ow = int(h * occlude), int(w * occlude)
        oy, ox = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
        out[oy : oy + oh, ox : ox + ow] = 0.3 + 0.4 * smooth_noise(rng, oh, ow, cells=3)
    return out


def make_roxford(out: Path, rng: np.random.Generator) -> None:
    root = out / "revisitop" / "roxford5k"
    size = (96, 128)
    imlist: list[str] = []
    qimlist: list[str] = []
    gnd = []
    scenes = {name: landmark(rng, 192, 256) for name in RETRIEVAL_LANDMARKS}
    positives: dict[str, dict[str, list[int]]] = {}
    for name, scene in scenes.items():
        positives[name] = {"easy": [], "hard": [], "junk": []}
        # (kind, crop, shift, tint, occlusion): easy views are close to the query, hard ones far, junk barely visible
        for j, (kind, crop, shift, tint, occ) in enumerate(
            [
                ("easy", 0.8, 0.05, 0.1, 0.0),
                ("easy", 0.75, 0.08, 0.15, 0.1),
                ("hard", 0.5, 0.2, 0.4, 0.3),
                ("junk", 0.3, 0.3, 0.5, 0.6),
            ]
        ):
            file = f"{name}_{j + 1:06d}"
            save_jpg(root / "jpg" / f"{file}.jpg", view(scene, rng, crop, shift, tint, occ, size))
            positives[name][kind].append(len(imlist))
            imlist.append(file)
    for k in range(4):  # distractors: other scenes
        file = f"distractor_{k + 1:06d}"
        save_jpg(root / "jpg" / f"{file}.jpg", view(landmark(rng, 192, 256), rng, 0.8, 0.05, 0.1, 0.0, size))
        imlist.append(file)
    for name, scene in scenes.items():
        file = f"{name}_query"
        save_jpg(root / "jpg" / f"{file}.jpg", view(scene, rng, 0.85, 0.0, 0.0, 0.0, size))
        qimlist.append(file)
        bbx = [float(size[1]) * 0.1, float(size[0]) * 0.1, float(size[1]) * 0.9, float(size[0]) * 0.9]  # x1 y1 x2 y2
        gnd.append({"bbx": [round(v, 1) for v in bbx], **positives[name]})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"gnd": gnd, "imlist": imlist, "qimlist": qimlist}, f, protocol=4)


# ----------------------------------------------------------------------------------------------
# PASCAL VOC 2007


VOC_IMAGES = [
    # (id, (h, w), [(class, shape, (y0, x0, y1, x1) as fractions, truncated, difficult)])
    ("000001", (150, 200), [("car", "rect", (0.3, 0.2, 0.8, 0.7), 0, 0)]),
    ("000002", (160, 120), [("dog", "ellipse", (0.2, 0.15, 0.75, 0.85), 0, 0)]),
    (
        "000003",
        (140, 210),
        [("person", "rect", (0.1, 0.55, 0.95, 0.8), 0, 0), ("chair", "rect", (0.55, 0.05, 0.95, 0.3), 0, 1)],
    ),
    ("000004", (150, 200), [("bird", "ellipse", (0.35, 0.3, 0.65, 0.6), 0, 0)]),
    (
        "000005",
        (130, 190),
        [("boat", "rect", (0.45, 0.0, 0.85, 0.45), 1, 0), ("boat", "ellipse", (0.2, 0.55, 0.6, 0.9), 0, 0)],
    ),
    ("000006", (170, 170), [("cat", "ellipse", (0.25, 0.25, 0.8, 0.75), 0, 0)]),
]


def voc_xml(image_id: str, h: int, w: int, objects: list[tuple[str, tuple[int, int, int, int], int, int]]) -> str:
    """An annotation file with the fields and nesting of the VOC2007 XMLs (1-based pixel boxes)."""
    lines = [
        "<annotation>",
        "\t<folder>VOC2007</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>The VOC2007 Database</database>",
        "\t\t<annotation>PASCAL VOC2007</annotation>",
        "\t\t<image>synthetic</image>",
        "\t</source>",
        "\t<owner>",
        "\t\t<name>srt-bench sample data</name>",
        "\t</owner>",
        "\t<size>",
        f"\t\t<width>{w}</width>",
        f"\t\t<height>{h}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, (xmin, ymin, xmax, ymax), truncated, difficult in objects:
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(name)}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{truncated}</truncated>",
            f"\t\t<difficult>{difficult}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    return "\n".join(lines + ["</annotation>"]) + "\n"


def make_voc(out: Path, rng: np.random.Generator) -> None:
    root = out / "VOC2007" / "VOCdevkit" / "VOC2007"
    for image_id, (h, w), objects in VOC_IMAGES:
        img = background(rng, h, w)
        boxes = []
        for name, shape, (fy0, fx0, fy1, fx1), truncated, difficult in objects:
            y0, x0, y1, x1 = int(fy0 * h), int(fx0 * w), int(fy1 * h), int(fx1 * w)
            if shape == "rect":
                m = rect_mask(h, w, y0, x0, y1, x1)
            else:
                m = ellipse_mask(h, w, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2)
            img[m] = textured(rng, h, w, rng.uniform(0.1, 0.95, 3), rng.uniform(5, 9), rng.uniform(0, np.pi))[m]
            ys, xs = np.nonzero(m)
            # VOC boxes are 1-based and inclusive
            boxes.append(
                (
                    name,
                    (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1),
                    truncated,
                    difficult,
                )
            )
        save_jpg(root / "JPEGImages" / f"{image_id}.jpg", img)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, h, w, boxes))
    write_lines(root / "ImageSets" / "Main" / "trainval.txt", [i for i, *_ in VOC_IMAGES])


# ----------------------------------------------------------------------------------------------


DATASETS = {"davis": make_davis, "nyu": make_nyu, "saliency": make_saliency, "roxford": make_roxford, "voc": make_voc}
TOP_DIRS = ("DAVIS", "nyu_v2", "NYU", "ECSSD", "DUTS-TE", "DUT-OMRON", "revisitop", "VOC2007")


def make_sample_data(out: Path, force: bool = False) -> bool:
    """Write every sample dataset under ``out``; return False if it was already complete (and not forced)."""
    out = Path(out)
    stamp = out / STAMP
    if not force and stamp.is_file() and stamp.read_text().strip() == f"version {VERSION}":
        return False
    for d in TOP_DIRS:  # start clean: a half-written or older sample set is replaced, never mixed
        if (out / d).exists():
            shutil.rmtree(out / d)
    stamp.unlink(missing_ok=True)
    for i, make in enumerate(DATASETS.values()):
        make(out, np.random.default_rng([SEED, i]))  # one stream per dataset: datasets do not shift each other
    (out / "README.txt").write_text(
        "Synthetic sample data written by scripts/make_sample_data.py (srt-bench). It has the on-disk layouts of\n"
        "DAVIS-2017, NYU-v2 (SRT and toolbox layouts), ECSSD, DUTS-TE, DUT-OMRON, ROxford5k and VOC2007, but the images are\n"
        "synthetic: numbers computed on it only show that the pipeline runs.\n"
    )
    stamp.write_text(f"version {VERSION}\n")  # last: its presence means the set is complete
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output directory (default: data/sample)")
    parser.add_argument("--force", action="store_true", help="rewrite even if the directory holds a complete set")
    args = parser.parse_args(argv)
    if make_sample_data(args.out, force=args.force):
        print(f"sample data written to {args.out}")
    else:
        print(f"sample data already complete in {args.out} (--force rewrites it)")
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/make_sample_data.py"))
