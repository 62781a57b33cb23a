"""The backbone registry: each name's timm architecture, patch size, normalisation and official checkpoint.

Plain data, no torch or timm: the settings (``backbone.name=...``) and ``python run.py --help`` read it without
importing the models; :mod:`srt.backbones` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

_DINO_URL = "https://dl.fbaipublicfiles.com/dino/{0}/{0}.pth"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{0}/{1}.pth"


@dataclass(frozen=True)
class PosEmbedResampling:
    """The original code's bicubic resampling of the patch position embeddings (an N x N grid) to h x w.

    DINO ``vision_transformer.interpolate_pos_encoding`` and DINOv2's (hub defaults) use scale factors
    ``(h + 0.1) / N, (w + 0.1) / N`` (output size floor(N * factor) = h, w; the coordinates follow the factor, not
    the size) with no antialiasing; DINOv2 models with registers use the output size and antialiasing
    (``interpolate_offset=0.0, interpolate_antialias=True``). Neither resamples when the grid is N x N.
    timm resamples by size with antialiasing, which differs by about 5% in the features at 480p.
    """

    offset: float = 0.1
    antialias: bool = False


DINO_RESAMPLING = PosEmbedResampling(offset=0.1, antialias=False)
DINOV2_REG_RESAMPLING = PosEmbedResampling(offset=0.0, antialias=True)


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str  # timm architecture.tag; the tag names the pretrained weights
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str = "vit"  # vit: timm VisionTransformer (CLS token); sam: VisionTransformerSAM (no CLS)
    official_url: str | None = None  # where the original authors publish the checkpoint
    # how the original code resamples position embeddings to another grid (None: timm's way is the reference)
    reference_pos_embed: PosEmbedResampling | None = None


def _dino(timm_name: str, patch: int, official_file: str) -> BackboneSpec:
    return BackboneSpec(
        timm_name,
        patch,
        IMAGENET_MEAN,
        IMAGENET_STD,
        official_url=_DINO_URL.format(official_file),
        reference_pos_embed=DINO_RESAMPLING,
    )


def _dinov2(timm_name: str, arch: str, registers: bool = False) -> BackboneSpec:
    file = f"{arch}_reg4_pretrain" if registers else f"{arch}_pretrain"
    resampling = DINOV2_REG_RESAMPLING if registers else DINO_RESAMPLING
    return BackboneSpec(
        timm_name,
        14,
        IMAGENET_MEAN,
        IMAGENET_STD,
        official_url=_DINOV2_URL.format(arch, file),
        reference_pos_embed=resampling,
    )


BACKBONES: dict[str, BackboneSpec] = {
    "dino_vits16": _dino("vit_small_patch16_224.dino", 16, "dino_deitsmall16_pretrain"),
    "dino_vitb16": _dino("vit_base_patch16_224.dino", 16, "dino_vitbase16_pretrain"),
    "dino_vits8": _dino("vit_small_patch8_224.dino", 8, "dino_deitsmall8_pretrain"),
    "dino_vitb8": _dino("vit_base_patch8_224.dino", 8, "dino_vitbase8_pretrain"),
    "dinov2_vits14": _dinov2("vit_small_patch14_dinov2.lvd142m", "dinov2_vits14"),
    "dinov2_vitb14": _dinov2("vit_base_patch14_dinov2.lvd142m", "dinov2_vitb14"),
    "dinov2_vitl14": _dinov2("vit_large_patch14_dinov2.lvd142m", "dinov2_vitl14"),
    "dinov2_vits14_reg": _dinov2("vit_small_patch14_reg4_dinov2.lvd142m", "dinov2_vits14", registers=True),
    "dinov2_vitb14_reg": _dinov2("vit_base_patch14_reg4_dinov2.lvd142m", "dinov2_vitb14", registers=True),
    "dinov2_vitl14_reg": _dinov2("vit_large_patch14_reg4_dinov2.lvd142m", "dinov2_vitl14", registers=True),
    "clip_vitb16": BackboneSpec("vit_base_patch16_clip_224.openai", 16, CLIP_MEAN, CLIP_STD),
    "mae_vitb16": BackboneSpec("vit_base_patch16_224.mae", 16, IMAGENET_MEAN, IMAGENET_STD),
    # the supervised ViT-B/16 of the official visualisation notebook (PROTOCOLS.md 1.2)
    "sup_vitb16": BackboneSpec("vit_base_patch16_224.augreg_in1k", 16, HALF, HALF),
    "sam_vitb16": BackboneSpec("samvit_base_patch16.sa1b", 16, IMAGENET_MEAN, IMAGENET_STD, family="sam"),
}
