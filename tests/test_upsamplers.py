"""Fine-feature methods (srt/upsamplers/): one interface, stride reduction's geometry and position embeddings,
the ensembles built from the shared pass ensemble, the cost model, measurement and bad input."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import srt
from srt.upsamplers import (
    EnsembleFine,
    InterpolatedFine,
    Meter,
    ShiftJitterEnsemble,
    StrideError,
    StrideReducedViT,
    build_upsampler,
    cubic_axis_weights,
    vit_pass_macs,
)

TINY = dict(depth=2, embed_dim=64, num_heads=2)
METHODS = ("srt_dense", "nearest", "bilinear", "stride", "stride_srt", "jitter", "shift_jitter")


def tiny(name: str = "dino_vits16", outputs=("tokens", "keys", "cls"), **kwargs):
    return srt.load_backbone(name, pretrained=False, outputs=outputs, **{**TINY, **kwargs})


# ---------------------------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_the_interface(method):
    bb = tiny()
    p = bb.patch_size
    up = build_upsampler(bb, {"method": method}, {"level": 1})
    x = torch.randn(2, 3, 2 * p, 3 * p)
    out = up(x)
    assert up.stride == p // 2 and up.patch_size == p and up.name == bb.name
    assert up.mean == bb.mean and up.std == bb.std and up.weights == bb.weights and up.backbone is bb
    assert set(out) == {"tokens", "keys", "cls"}
    assert out["tokens"].shape == (2, 64, 4, 6) and out["keys"].shape == (2, 64, 4, 6) and out["cls"].shape == (2, 64)
    same = up.dense(x, up.stride)
    assert torch.equal(same["tokens"], out["tokens"])
    cost = up.cost((2 * p, 3 * p))
    assert cost.passes == up.passes and cost.tokens_per_pass > 0 and cost.pass_equivalents >= cost.passes
    report = up.report()
    assert report["image_size"] == [2 * p, 3 * p] and report["measured_calls"] == 2


def test_nearest_is_srt_level_zero_dense():
    bb = tiny()
    x = torch.randn(1, 3, 48, 64)
    for stride in (1, 4, 8):
        up = build_upsampler(bb, {"method": "nearest", "stride": stride})
        ref = srt.StochasticResonance(bb, level=0).dense(x, stride)
        assert torch.allclose(up(x)["tokens"], ref["tokens"], atol=1e-6)


class Ramp:
    """A fake token-grid function: channel 0 = the x pixel coordinate of each token's centre, channel 1 = y."""

    patch_size, stride, passes, name, weights = 8, 8, 1, "ramp", "none"
    mean = std = (0.5, 0.5, 0.5)

    def __call__(self, images):
        B, _, H, W = images.shape
        ys = (torch.arange(H // 8) + 0.5) * 8
        xs = (torch.arange(W // 8) + 0.5) * 8
        grid = torch.stack([xs[None, :].expand(H // 8, -1), ys[:, None].expand(-1, W // 8)])
        return {"tokens": grid[None].expand(B, -1, -1, -1).clone()}


def test_bilinear_interpolates_between_token_centres():
    ramp = Ramp()
    up = InterpolatedFine(ramp, ramp, 8, 2, "bilinear", "bilinear")
    out = up(torch.zeros(1, 3, 32, 48))["tokens"][0]  # 16 x 24 cells of 2 px
    centres_x = (torch.arange(24) + 0.5) * 2
    centres_y = (torch.arange(16) + 0.5) * 2
    # interior cells (between the first and last token centres) read the exact cell centre; outside, clamped
    assert torch.allclose(out[0, 0], centres_x.clamp(4, 44))
    assert torch.allclose(out[1, :, 0], centres_y.clamp(4, 28))


def test_srt_settings_reach_the_ensemble():
    bb = tiny()
    up = build_upsampler(bb, {"method": "srt_dense", "stride": 4}, {"level": 2, "samples": 5, "sampling": "stratified"})
    assert isinstance(up, EnsembleFine) and up.passes == 5
    x = torch.randn(1, 3, 32, 48)
    ref = srt.StochasticResonance(bb, level=2, samples=5, sampling="stratified").dense(x, 4)
    assert torch.equal(up(x)["tokens"], ref["tokens"])


def test_jitter_method_is_the_jitter_ensemble_upsampled():
    bb = tiny()
    up = build_upsampler(bb, {"method": "jitter", "stride": 4, "interpolation": "bilinear"}, {"jitter_passes": 3})
    assert up.passes == 3
    x = torch.randn(1, 3, 32, 48)
    tokens = srt.JitterEnsemble(bb, passes=3)(x)["tokens"]
    expected = F.interpolate(tokens, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(up(x)["tokens"], expected, atol=1e-6)


class Recorder:
    """Records every batch it sees; returns its mean colour as a 1x1-cell grid per token (cheap)."""

    patch_size, name = 8, "recorder"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append(x.clone())
        return {"tokens": F.avg_pool2d(x, 8)}


def test_shift_jitter_shifts_then_jitters_every_pass():
    fn = Recorder()
    x = torch.randn(1, 3, 16, 24)
    ens = ShiftJitterEnsemble(fn, level=1, patch_size=8, jitter_strength=0.3, batch_size=1)
    ens.dense(x, 4)
    assert len(fn.seen) == 9 == ens.passes
    for t, (dy, dx) in enumerate(ens.shift_set):
        expected = ens.jitter(srt.shift_image(x, dy, dx), t)
        assert torch.allclose(fn.seen[t], expected, atol=1e-6), f"pass {t}"
    assert not torch.allclose(fn.seen[1], srt.shift_image(x, *list(ens.shift_set)[1]))  # jittered indeed


def test_shift_jitter_without_jitter_is_srt():
    bb = tiny()
    mean, std = torch.tensor(bb.mean).view(3, 1, 1), torch.tensor(bb.std).view(3, 1, 1)
    x = (torch.rand(1, 3, 32, 48) - mean) / std  # a real image: jitter's clamp to [0, 1] changes nothing
    ens = ShiftJitterEnsemble(bb, level=1, jitter_strength=0.0)
    assert torch.allclose(
        ens.dense(x, 4)["tokens"], srt.StochasticResonance(bb, level=1).dense(x, 4)["tokens"], atol=1e-5
    )


# ---------------------------------------------------------------------------------------------- stride reduction


@pytest.mark.parametrize("n_in", [14, 37])
@pytest.mark.parametrize("n_out", [3, 10, 14, 34, 37, 61])
def test_cubic_axis_weights_are_torchs_bicubic(n_in, n_out):
    grid = torch.randn(1, 4, n_in, n_in, dtype=torch.float64)
    centres = torch.arange(n_out) + 0.5
    ref = F.interpolate(grid, scale_factor=(n_out + 0.1) / n_in, mode="bicubic", antialias=False)
    W = cubic_axis_weights(centres, n_in, n_in / (n_out + 0.1), antialias=False)
    assert torch.allclose(torch.einsum("yi,bcij,xj->bcyx", W, grid, W), ref, atol=1e-12)
    ref_aa = F.interpolate(grid, size=(n_out, n_out), mode="bicubic", antialias=True)
    W = cubic_axis_weights(centres, n_in, n_in / n_out, antialias=True)
    assert torch.allclose(torch.einsum("yi,bcij,xj->bcyx", W, grid, W), ref_aa, atol=1e-12)


@pytest.mark.parametrize(
    "name,pos_embed",
    [
        ("dino_vits16", "reference"),
        ("dinov2_vits14", "reference"),
        ("dinov2_vits14_reg", "reference"),
        ("dino_vits16", "timm"),
    ],
)
def test_stride_reduction_at_the_patch_stride_is_the_backbone(name, pos_embed):
    bb = tiny(name, pos_embed=pos_embed)
    p = bb.patch_size
    for hw in ((3 * p, 5 * p), (14 * p, 14 * p) if p == 16 else (37 * p // 4, 37 * p // 4)):
        x = torch.randn(1, 3, *hw)
        if x.shape[-1] % p:
            continue
        a, b = bb(x), StrideReducedViT(bb, p)(x)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=2e-5), (name, hw, key)


@pytest.mark.parametrize("patch,stride", [(16, 8), (16, 4), (14, 7), (14, 2), (16, 1)])
def test_stride_reduction_token_windows(patch, stride):
    """A single bright pixel reaches exactly the tokens whose p x p window [i s - a, i s - a + p) contains it,
    a = floor((p - s) / 2): the grid is H/s x W/s and centred on the output cells."""
    bb = tiny("dino_vits16" if patch == 16 else "dinov2_vits14")
    sr = StrideReducedViT(bb, stride)
    H, W = 2 * patch, 3 * patch
    a = (patch - stride) // 2
    for y, x in [(0, 0), (patch - 1, patch + 3), (H - 1, W - 1), (5, 2 * patch)]:
        img = torch.zeros(1, 3, H, W)
        img[0, :, y, x] = 1.0
        response = (sr.patch_tokens(img) - sr.patch_tokens(torch.zeros_like(img)))[0].abs().sum(-1) > 0
        i = torch.arange(H // stride)[:, None]
        j = torch.arange(W // stride)[None, :]
        expected = (
            (i * stride - a <= y) & (y < i * stride - a + patch) & (j * stride - a <= x) & (x < j * stride - a + patch)
        )
        assert response.shape == (H // stride, W // stride)
        assert torch.equal(response, expected), (y, x)
    centres = sr.token_centres(4)
    cells = (torch.arange(4) + 0.5) * stride
    assert torch.allclose(centres - cells, torch.full((4,), (patch - stride) % 2 / 2, dtype=torch.float64))


def test_stride_reduction_tokens_on_plain_windows_start_from_the_plain_embedding():
    """p=14, s=2 (p/s = 7, odd): token 7k+3 sees exactly plain token k's pixels and gets its position embedding,
    so the state entering block 0 is the backbone's there (also with resampling: 42x56 px is not the 37x37 table)."""
    for name in ("dinov2_vits14", "dinov2_vits14_reg"):
        bb = tiny(name)
        sr = StrideReducedViT(bb, 2)
        x = torch.randn(1, 3, 42, 56)
        plain, fine = bb.embed(x), sr.embed(x)
        n = bb.num_prefix_tokens
        assert torch.allclose(fine[:, :n], plain[:, :n])
        fine_grid = fine[:, n:].reshape(1, 21, 28, -1)[:, 3::7, 3::7]
        assert torch.allclose(fine_grid.reshape(1, 12, -1), plain[:, n:], atol=1e-5), name


def test_stride_reduction_rejects_sam_and_bad_strides():
    bb = tiny()
    with pytest.raises(StrideError, match=r"divisor of p=16"):
        StrideReducedViT(bb, 5)
    sam = srt.load_backbone(
        "sam_vitb16", pretrained=False, outputs=("tokens",), depth=1, embed_dim=64, num_heads=2, global_attn_indexes=()
    )
    with pytest.raises(ValueError, match="not available for sam_vitb16"):
        StrideReducedViT(sam, 8)


# ---------------------------------------------------------------------------------------------- cost model


def test_cost_model_by_hand():
    bb = tiny("dinov2_vits14")  # C = 64, depth 2, 1 prefix token
    # 2 blocks x (12 n C^2 + 2 n^2 C) with n = 6 patch tokens + CLS
    assert vit_pass_macs(6, bb) == 2 * (12 * 7 * 64 * 64 + 2 * 49 * 64)
    size = (28, 42)  # 2 x 3 plain tokens
    plain = 2 * (12 * 7 * 64**2 + 2 * 7**2 * 64)
    strided = 2 * (12 * 25 * 64**2 + 2 * 25**2 * 64)  # 4 x 6 tokens at s = 7
    stride = build_upsampler(bb, {"method": "stride"})
    cost = stride.cost(size)
    assert (cost.passes, cost.tokens_per_pass) == (1, 24)
    assert cost.pass_equivalents == pytest.approx(strided / plain, rel=1e-3)
    assert "16x" in cost.attention  # (p/s)^4 attention pairs
    assert build_upsampler(bb, {"method": "srt_dense"}, {"level": 1}).cost(size).pass_equivalents == 9
    both = build_upsampler(bb, {"method": "stride_srt"}, {"level": 1, "samples": 3}).cost(size)
    assert both.passes == 3 and both.pass_equivalents == pytest.approx(3 * strided / plain, rel=1e-3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-memory peaks are read from /proc")
def test_meter_sees_a_calls_peak_memory():
    meter = Meter(enabled=True)
    for size_mb in (8, 400, 8):  # the first call is left out once there are more; the 400 MB one is the peak
        with meter.measure(2, torch.device("cpu")):
            t = torch.ones(size_mb * 2**18)  # 4 bytes each
            t += 1
            del t
    assert meter.calls == 3 and meter.images == 6
    assert 380 <= meter.peak_mib <= 1200
    assert srt.upsamplers.process_peak_rss_mib() >= meter.peak_mib


# ---------------------------------------------------------------------------------------------- bad input


def test_strides_a_method_cannot_produce():
    bb = tiny()
    with pytest.raises(ValueError, match=r"^stride=5 is not valid; expected a divisor of the patch size 16"):
        build_upsampler(bb, {"method": "bilinear", "stride": 5})
    stride = build_upsampler(bb, {"method": "stride", "stride": 8})
    with pytest.raises(StrideError, match=r"stride cannot produce stride 4 .* produces strides \[8\]"):
        stride.dense(torch.randn(1, 3, 32, 32), 4)
    both = build_upsampler(bb, {"method": "stride_srt", "stride": 4}, {"level": 1})
    assert both.strides == (1, 2, 4)
    with pytest.raises(StrideError, match="produces strides"):
        both.dense(torch.randn(1, 3, 32, 32), 8)
    with pytest.raises(ValueError, match=r"^level=3 is not valid for method=stride_srt at stride=2: .* level < 2"):
        build_upsampler(bb, {"method": "stride_srt", "stride": 2}, {"level": 3})
    with pytest.raises(ValueError, match="use method srt_dense"):
        srt.UpsamplerConfig(method="srt", stride=8).validate(16)
    with pytest.raises(ValueError, match="^hub_entry is only used by the learned upsamplers"):
        srt.UpsamplerConfig(method="bilinear", hub_entry="x").validate(16)
    with pytest.raises(ValueError, match="^upsampler.method='bicubic' is not valid"):
        srt.UpsamplerConfig(method="bicubic").validate(16, group="upsampler")
    with pytest.raises(ValueError, match="jitter_passes=4 does not match the 9 shifted passes"):
        build_upsampler(bb, {"method": "shift_jitter"}, {"level": 1, "jitter_passes": 4})


def test_bad_images():
    up = build_upsampler(tiny(), {"method": "bilinear"})
    with pytest.raises(ValueError, match=r"4-D tensor"):
        up(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        up(torch.randn(1, 3, 30, 32))
