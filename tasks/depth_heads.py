"""DINOv2's NYU depth heads in plain PyTorch, loading the official head checkpoints (PROTOCOLS.md 1.6, 2.2).

DINOv2 publishes frozen-backbone depth heads (``dinov2_vit{s,b,l,g}14_nyu_{linear,linear4,dpt}_head.pth``,
mmcv checkpoints: ``{"state_dict": {"decode_head.<name>": tensor}, "meta": ...}``). The modules here mirror
the parameter names of dinov2's mmcv decode heads (``dinov2/eval/depth/models/decode_heads``), so a
checkpoint loads with ``strict=True`` after the ``decode_head.`` prefix is dropped.

Input of every head: a list, one entry per selected block, of ``(patch tokens [B,E,h,w], CLS [B,E])`` taken
from the backbone *without* the final norm (DINOv2's depthers call ``get_intermediate_layers(n=blocks,
reshape=True, return_class_token=True, norm=False)``; in this suite: outputs ``block{k}`` and ``block{k}_cls``).
Output: depth in metres ``[B,1,h',w']`` at the head's own resolution (4h x 4w for the linear heads, 16 h_r x
16 w_r for DPT, h_r = ceil(h/2)*2); the depther clamps it to [min_depth, max_depth] and resizes it bilinearly to
the image (:class:`tasks.depth.Depther`).

- ``linear`` / ``linear4`` (dinov2 ``BNHead``; its BatchNorm line is commented out upstream, so it is a 1x1
  conv): per block, the CLS token broadcast onto the patch grid and concatenated (2E channels), bilinear 4x
  resize, concatenation over the blocks, 1x1 conv to 256 bin logits; depth = sum_k p_k b_k with
  p = (ReLU(logit) + 0.1) normalised over bins and b = linspace(min_depth, max_depth, 256) ("UD" bins).
  ``linear`` reads the last block, ``linear4`` four blocks.
- ``dpt`` (dinov2 ``DPTHead``, readout "project", no norm layers): per block, Linear(2E -> E) + GELU on
  [patch, CLS], 1x1 projection to [E/8, E/4, E/2, E] channels, resampled x4 / x2 / x1 / x0.5
  (ConvTranspose, ConvTranspose, identity, strided conv), 3x3 convs to 256 channels, four fusion blocks
  (pre-activation residual units, x2 bilinear upsampling with align_corners=True), a 3x3 conv + ReLU, and the
  depth head (conv, x2 upsampling, conv, ReLU, 1x1 conv); depth = ReLU(out) + min_depth.

Blocks (:func:`head_blocks`): S/B [2, 5, 8, 11], L [4, 11, 17, 23], g [9, 19, 29, 39] for linear4 and dpt;
the last block for linear. NYU depth range (0.001, 10) (the mmcv NYU configs; dinov2's hub code hard-codes
max_depth=80 for the linear head, which is KITTI's range).

Cost model (E channels, h x w tokens, n blocks; FLOPs counted with torch's FlopCounterMode for a 480x640 image,
35x46 tokens, E=384): linear: the 4x resize and a 1x1 conv of 2nE -> 256 channels at 4h x 4w, about 10 GFLOP;
dpt: dominated by the 3x3 convs of 256 channels at up to 8h_r x 8w_r (h_r = 2 ceil(h/2)) and the depth head at
16h_r x 16w_r, about 420 GFLOP, six times the ViT-S/14 forward (about 70 GFLOP). So SRT on the features (head
once) costs far less than the output ensemble (head on every pass) with DPT: ``scripts/bench_depth.py``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from srt.errors import MissingFileError, UserError

HEADS = ("linear", "linear4", "dpt")
NYU_DEPTH_RANGE = (0.001, 10.0)
N_BINS = 256
DPT_CHANNELS = 256

#: blocks read by linear4 and dpt, by backbone depth (dinov2/hub/depthers.py): S/B 12, L 24, g 40 blocks
FOUR_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    12: (2, 5, 8, 11),
    24: (4, 11, 17, 23),
    40: (9, 19, 29, 39),
}
#: registry backbone -> the name DINOv2 publishes its heads under
OFFICIAL_ARCH = {
    "dinov2_vits14": "vits14",
    "dinov2_vitb14": "vitb14",
    "dinov2_vitl14": "vitl14",
    "dinov2_vitg14": "vitg14",
}
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/{file}"

Features = Sequence[tuple[torch.Tensor, torch.Tensor]]


def head_blocks(head: str, depth: int, blocks: Sequence[int] | None = None) -> tuple[int, ...]:
    """0-based blocks the head reads: DINOv2's choice for a 12/24/40-block backbone, or ``blocks`` if given.

    ValueError (naming ``task.blocks``) when the backbone depth has no official choice and none is given,
    or when the given blocks do not fit the head or the backbone."""
    check_head(head)
    n = 1 if head == "linear" else 4
    if blocks is None:
        if head == "linear":
            return (depth - 1,)
        if depth not in FOUR_BLOCKS:
            raise UserError(
                f"task.blocks is not set and a {depth}-block backbone has no official choice of 4 blocks for the "
                f"{head} head (official: {', '.join(f'{d} blocks: {list(b)}' for d, b in FOUR_BLOCKS.items())}); "
                f"set task.blocks to 4 block indices in 0..{depth - 1}"
            )
        return FOUR_BLOCKS[depth]
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != n:
        raise UserError(f"task.blocks={list(blocks)} is not valid for the {head} head; expected {n} block indices")
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise UserError(f"task.blocks={list(blocks)}: {bad} out of range for a {depth}-block backbone (0..{depth - 1})")
    return blocks


def check_head(head: str) -> str:
    if head not in HEADS:
        raise UserError(f"task.head={head!r} is not valid; expected one of {', '.join(HEADS)}")
    return head


# ----------------------------------------------------------------------------------------------
# Building blocks named as mmcv names them (``<module>.conv``), so official checkpoints load as they are


class _Conv(nn.Module):
    """A conv with optional ReLU before or after it (mmcv ``ConvModule`` without a norm layer)."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool, relu: str = "", stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        self.relu = relu  # "", "before" (pre-activation units) or "after"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu == "before":
            x = F.relu(x)  # not in place: the residual unit adds its unactivated input
        x = self.conv(x)
        return F.relu(x) if self.relu == "after" else x


class _ResidualUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3, bias=False, relu="before")
        self.conv2 = _Conv(channels, channels, 3, bias=False, relu="before")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class _Fusion(nn.Module):
    """Adds the (resized) skip features through a residual unit, refines, upsamples x2, projects 1x1."""

    def __init__(self, channels: int, with_skip: bool):
        super().__init__()
        self.res_conv_unit1 = _ResidualUnit(channels) if with_skip else None
        self.res_conv_unit2 = _ResidualUnit(channels)
        self.project = _Conv(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class _Reassemble(nn.Module):
    """Readout projection of [patch, CLS], 1x1 projection and resampling of each block's tokens."""

    def __init__(self, embed_dim: int, channels: Sequence[int]):
        super().__init__()
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in channels
        )
        self.projects = nn.ModuleList(_Conv(embed_dim, c, 1, bias=True) for c in channels)
        c = list(channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )

    def forward(self, features: Features) -> list[torch.Tensor]:
        out = []
        for i, (patch, cls) in enumerate(features):
            B, E, h, w = patch.shape
            tokens = patch.flatten(2).transpose(1, 2)  # [B, hw, E]
            readout = cls[:, None, :].expand(B, h * w, E)
            x = self.readout_projects[i](torch.cat([tokens, readout], dim=-1))
            x = x.transpose(1, 2).reshape(B, E, h, w)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class _DepthOutput(nn.Module):
    """DPT's depth head: conv 3x3 (C -> C/2), x2 bilinear (align_corners=True), conv 3x3 (-> 32), ReLU, conv 1x1."""

    def __init__(self, channels: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


# ----------------------------------------------------------------------------------------------
# The heads


class DepthHead(nn.Module):
    """Common interface: ``head(features) -> depth [B,1,h',w']`` in metres; ``min_depth``, ``max_depth``, ``kind``."""

    kind: str
    n_blocks: int

    def __init__(self, embed_dim: int, min_depth: float, max_depth: float):
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise UserError(f"depth range ({min_depth}, {max_depth}) is not valid; expected 0 < min < max")
        self.embed_dim, self.min_depth, self.max_depth = int(embed_dim), float(min_depth), float(max_depth)

    def _check(self, features: Features) -> None:
        if len(features) != self.n_blocks:
            raise UserError(f"the {self.kind} head reads {self.n_blocks} blocks; got features of {len(features)}")
        for patch, cls in features:
            if patch.dim() != 4 or cls.dim() != 2 or patch.shape[1] != self.embed_dim or cls.shape[1] != self.embed_dim:
                raise UserError(
                    f"the {self.kind} head expects (patch [B,{self.embed_dim},h,w], CLS [B,{self.embed_dim}]) per "
                    f"block; got {tuple(patch.shape)}, {tuple(cls.shape)}"
                )


class LinearDepthHead(DepthHead):
    """DINOv2's ``linear`` (1 block) / ``linear4`` (4 blocks) head: see the module docstring."""

    def __init__(
        self, embed_dim: int, n_blocks: int = 1, min_depth: float = 0.001, max_depth: float = 10.0, upsample: int = 4
    ):
        super().__init__(embed_dim, min_depth, max_depth)
        if n_blocks not in (1, 4):
            raise UserError(f"the linear head reads 1 or 4 blocks; got {n_blocks}")
        self.kind = "linear" if n_blocks == 1 else "linear4"
        self.n_blocks, self.upsample = n_blocks, upsample
        self.conv_depth = nn.Conv2d(2 * embed_dim * n_blocks, N_BINS, kernel_size=1)
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, N_BINS), persistent=False)

    def forward(self, features: Features) -> torch.Tensor:
        self._check(features)
        size = [s * self.upsample for s in features[0][0].shape[2:]]
        maps = []
        for patch, cls in features:
            x = torch.cat([patch, cls[:, :, None, None].expand_as(patch)], dim=1)
            maps.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        logits = self.conv_depth(torch.cat(maps, dim=1))
        weights = F.relu(logits) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.bins.to(weights.dtype))[:, None]


class DPTDepthHead(DepthHead):
    """DINOv2's ``dpt`` head: see the module docstring."""

    kind = "dpt"
    n_blocks = 4

    def __init__(self, embed_dim: int, min_depth: float = 0.001, max_depth: float = 10.0):
        super().__init__(embed_dim, min_depth, max_depth)
        post = [embed_dim // 2 ** (3 - i) for i in range(4)]
        self.reassemble_blocks = _Reassemble(embed_dim, post)
        self.convs = nn.ModuleList(_Conv(c, DPT_CHANNELS, 3, bias=False) for c in post)
        self.fusion_blocks = nn.ModuleList(_Fusion(DPT_CHANNELS, with_skip=i > 0) for i in range(4))
        self.project = _Conv(DPT_CHANNELS, DPT_CHANNELS, 3, bias=True, relu="after")
        self.conv_depth = _DepthOutput(DPT_CHANNELS)

    def forward(self, features: Features) -> torch.Tensor:
        self._check(features)
        x = [conv(f) for conv, f in zip(self.convs, self.reassemble_blocks(features))]
        out = self.fusion_blocks[0](x[3])
        for i in range(1, 4):  # coarse to fine: the skip of fusion block i is block 3 - i
            out = self.fusion_blocks[i](out, x[3 - i])
        return F.relu(self.conv_depth(self.project(out))) + self.min_depth


def build_head(kind: str, embed_dim: int, depth_range: tuple[float, float] = NYU_DEPTH_RANGE) -> DepthHead:
    check_head(kind)
    if kind == "dpt":
        return DPTDepthHead(embed_dim, *depth_range)
    return LinearDepthHead(embed_dim, 1 if kind == "linear" else 4, *depth_range)


# ----------------------------------------------------------------------------------------------
# Official checkpoints


class HeadWeightsUnavailableError(MissingFileError):
    """The official head checkpoint is not on this machine and cannot be downloaded."""


def official_head_file(backbone: str, head: str, dataset: str = "nyu") -> str:
    """``dinov2_vits14_nyu_dpt_head.pth`` etc.; ValueError for backbones DINOv2 publishes no depth head for."""
    check_head(head)
    if backbone not in OFFICIAL_ARCH:
        raise UserError(
            f"DINOv2 publishes NYU depth heads for {', '.join(OFFICIAL_ARCH)} only, not {backbone!r}; "
            "pass a head checkpoint path (task.head_weights=/path/to/head.pth) or task.head_weights=random"
        )
    return f"dinov2_{OFFICIAL_ARCH[backbone]}_{dataset}_{head}_head.pth"


def hub_checkpoint_dir() -> Path:
    """Where torch.hub keeps downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints`` (default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _reachable(host: str = "dl.fbaipublicfiles.com", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_head_checkpoint(backbone: str, head: str, weights: str, download: bool = True) -> Path:
    """The checkpoint file for ``task.head_weights``: ``official`` (the hub cache, downloaded if reachable) or a path."""
    if weights != "official":
        path = Path(os.path.expanduser(weights))
        if not path.is_file():
            raise HeadWeightsUnavailableError(f"head checkpoint {path} (task.head_weights) does not exist")
        return path
    name = official_head_file(backbone, head)
    path = hub_checkpoint_dir() / name
    if path.is_file():
        return path
    arch = OFFICIAL_ARCH[backbone]
    url = OFFICIAL_URL.format(arch=arch, file=name)
    if download and _reachable():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)  # writes a temp file, then renames
        return path
    raise HeadWeightsUnavailableError(
        f"the DINOv2 {head} depth head for {backbone} ({name}) is not at {path} and {url} is unreachable (offline). "
        f"Download it on a machine with network and copy it there (or set TORCH_HOME so that "
        f"$TORCH_HOME/hub/checkpoints/{name} exists), or pass its path: task.head_weights=/path/to/{name}. "
        "Random head weights are never substituted (task.head_weights=random asks for them explicitly)."
    )


def _load_tensors(path: Path) -> Mapping[str, Any]:
    """The checkpoint read safely (:func:`srt.safe_load.load_torch_file`). mmcv writes a ``meta`` dict beside the
    state dict that may hold numpy scalars (e.g. a best score), which weights_only refuses; those numpy types
    (plain values, no code) are allowed."""
    import numpy as np

    from srt.safe_load import CheckpointReadError, load_torch_file

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [np.dtype, *{type(np.dtype(code)) for code in "?bhilqefdBHILQ"}]
    try:
        return load_torch_file(path, [scalar, *dtypes])
    except CheckpointReadError as e:
        raise UserError(f"cannot read head checkpoint {path}: {e.reason}") from e


def head_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The head's tensors from an official checkpoint (``state_dict`` / ``decode_head.`` prefix) or a plain dict."""
    obj = _load_tensors(path)
    if not isinstance(obj, Mapping):
        raise UserError(f"head checkpoint {path} holds a {type(obj).__name__}; expected a dict of tensors")
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping):
        raise UserError(f"head checkpoint {path}: 'state_dict' is a {type(sd).__name__}, expected a dict of tensors")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("decode_head.") for k in tensors):
        tensors = {k[len("decode_head.") :]: v for k, v in tensors.items() if k.startswith("decode_head.")}
    if not tensors:
        raise UserError(f"head checkpoint {path} contains no tensors (top-level keys: {sorted(obj)[:10]})")
    return tensors


def load_head_weights(head: DepthHead, path: str | os.PathLike, backbone: str = "") -> None:
    """Load a checkpoint into ``head``; ValueError naming the file and the expected shapes when it does not fit."""
    path = Path(path)
    sd = head_state_dict(path)
    own = head.state_dict()
    what = f"the {head.kind} head of {backbone or 'a backbone'} (embed_dim {head.embed_dim})"
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise UserError(
            f"head checkpoint {path} does not fit {what}: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}; is it a checkpoint of another head?"
        )
    bad = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if sd[k].shape != own[k].shape]
    if bad:
        k, got, expected = bad[0]
        raise UserError(
            f"head checkpoint {path} does not fit {what}: decode_head.{k} has shape {got}, expected {expected} "
            f"({len(bad)} tensors differ); is it the head of another backbone size?"
        )
    head.load_state_dict(sd, strict=True)
