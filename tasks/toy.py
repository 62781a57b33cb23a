"""A tiny built-in task that exercises the runner, results store and tables without any dataset.

For ``n_images`` synthetic images (smooth seeded random patterns), it computes the extractor's
``tokens`` grid for the image and for its horizontal mirror, mirrors the second grid back, and
measures how alike the two are: the mean over grid cells of the cosine similarity (``flip_cosine``).
A ViT is not mirror-equivariant (position embeddings), so the value is below 1 and depends on the
weights and on SRT. It is deterministic and cheap, and really uses the features, which makes it a
good probe for resume (per-item cache) and for the table builder.

Metrics: ``flip_cosine`` (mean over images of the per-image mean cosine), ``feature_norm`` (mean
L2 norm of the feature vectors, a scale check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from srt.errors import UserError
from srt.io import atomic_write_text

from .base import FeatureExtractor, RunContext, Task


@dataclass
class ToyConfig:
    n_images: int = 8  # synthetic images (items)
    image_size: int = 64  # pixels per side, rounded down to a multiple of the patch size
    seed: int = 0  # seeds the images

    def validate(self) -> ToyConfig:
        if self.n_images < 1:
            raise UserError(f"task.n_images={self.n_images} is not valid; expected an integer >= 1")
        if self.image_size < 1:
            raise UserError(f"task.image_size={self.image_size} is not valid; expected an integer >= 1")
        return self


def synthetic_image(index: int, size: int, seed: int) -> torch.Tensor:
    """A smooth random RGB pattern in [0, 1], [3, size, size], fixed by (seed, index)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    coarse = torch.rand(1, 3, 5, 5, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    fine = torch.rand(1, 3, size, size, generator=gen) * 0.15
    return (smooth + fine).clamp(0, 1)[0]


class ToyTask(Task):
    name: ClassVar[str] = "toy"
    Config: ClassVar[type] = ToyConfig
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)
    data_location_settings: ClassVar[tuple[str, ...]] = ()

    def check_settings(self, model, srt) -> None:
        if self.cfg.image_size < model.patch_size:
            raise UserError(
                f"task.image_size={self.cfg.image_size} is smaller than the patch size {model.patch_size} of "
                f"{model.name}; expected at least {model.patch_size}"
            )

    def data_files(self) -> None:
        return None  # synthetic images: a function of the settings, which are part of the run identity anyway

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg = self.cfg
        p = extractor.patch_size
        size = cfg.image_size // p * p
        if size < p:
            raise UserError(f"task.image_size={cfg.image_size} is smaller than the patch size {p} of {extractor.name}")
        mean = torch.tensor(extractor.mean).view(3, 1, 1)
        std = torch.tensor(extractor.std).view(3, 1, 1)

        def compute(index: int) -> dict[str, np.ndarray]:
            image = (synthetic_image(index, size, cfg.seed) - mean) / std
            batch = torch.stack([image, image.flip(-1)]).to(ctx.device)
            with torch.no_grad():
                tokens = extractor(batch)["tokens"].float().cpu()
            a, b = tokens[0], tokens[1].flip(-1)  # mirror the mirrored image's grid back
            cosine = F.cosine_similarity(a, b, dim=0)  # [h, w]
            return {"cosine": cosine.mean().numpy(), "norm": a.norm(dim=0).mean().numpy()}

        rows, cosines, norms = ["image,flip_cosine,feature_norm"], [], []
        for i in tqdm(range(cfg.n_images), desc="toy", disable=not ctx.progress):
            if ctx.cache.skips(f"image{i:04d}"):  # another shard's item (shard=i/n)
                continue
            out = ctx.cache.get_or_compute(f"image{i:04d}", lambda i=i: compute(i))
            cosines.append(float(out["cosine"]))
            norms.append(float(out["norm"]))
            rows.append(f"{i},{cosines[-1]:.8f},{norms[-1]:.8f}")
        ctx.cache.items_done()  # a shard run stops here
        atomic_write_text(ctx.out_dir / "per_image.csv", "\n".join(rows) + "\n")
        return {"flip_cosine": float(np.mean(cosines)), "feature_norm": float(np.mean(norms))}
