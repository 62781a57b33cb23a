"""Learned upsamplers through torch.hub (srt.upsamplers.HubUpsampler), tested on stub hub repositories written to a
temporary TORCH_HOME. Each stub follows its project's entry-point names and call signature as read in the
project's repository (FeatUp 6b5a6c0, LoftUp 6620d9b, AnyUp 351807a, NAF ad4e24d; JAFAR 94d4d54 has no hubconf),
and checks its arguments the way the real module would fail (an image must have 3 channels, features must have the
channel count the module was built for). No network: sockets are blocked for every test here."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import srt
from srt.upsamplers import HubUpsampler, HubUpsamplerUnavailableError, LearnedFine, build_upsampler

COMMON = """
import torch
import torch.nn as nn
import torch.nn.functional as F

dependencies = ["torch"]


class ChannelNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        nn.init.constant_(self.norm.bias, 0.5)  # "trained" weights a test can recognise

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
"""

# mhamilton723/FeatUp hubconf.py: dinov2(pretrained=True, use_norm=True) -> UpsampledBackbone(.model, .upsampler, .dim);
# JBUStack.forward(source, guidance) upsamples 2x four times
FEATUP = (
    COMMON
    + """

class JBUStack(nn.Module):
    def forward(self, source, guidance):
        assert guidance.shape[1] == 3, "guidance must be an image"
        for _ in range(4):
            source = F.interpolate(source, scale_factor=2, mode="nearest")
        return source


class UpsampledBackbone(nn.Module):
    def __init__(self, use_norm):
        super().__init__()
        self.dim = 384
        self.model = nn.Sequential(nn.Identity(), ChannelNorm(384)) if use_norm else nn.Identity()
        self.upsampler = JBUStack()

    def forward(self, image):
        return self.upsampler(self.model(image), image)


def dinov2(pretrained=True, use_norm=True):
    return UpsampledBackbone(use_norm)


def dino16(pretrained=True, use_norm=True):
    return UpsampledBackbone(use_norm)
"""
)

# andrehuang/loftup hubconf.py: loftup_dinov2s(pretrained=True, progress=True, **kwargs) ->
# UpsamplerwithChannelNorm.forward(lr_feats, img): the output has the guidance image's size
LOFTUP = (
    COMMON
    + """

class UpsamplerwithChannelNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.channelnorm = ChannelNorm(dim)
        self.guidance_sizes = []

    def forward(self, lr_feats, img):
        assert img.shape[1] == 3, "img must be an image"
        self.guidance_sizes.append(tuple(img.shape[-2:]))
        return F.interpolate(self.channelnorm(lr_feats), size=img.shape[-2:], mode="nearest")


def loftup_dinov2s(pretrained=True, progress=True, **kwargs):
    return UpsamplerwithChannelNorm(384)
"""
)

# image_features_size: up(image, features, output_size) -> features at output_size. The stub adds a trace of
# the image, so that a test can tell which argument was used as what.
SIZED = (
    COMMON
    + """

class Sized(nn.Module):
    def forward(self, image, features, output_size=None, *args, **kwargs):
        assert image.shape[1] == 3, "image must be an image"
        output_size = output_size if output_size is not None else image.shape[-2:]
        trace = F.adaptive_avg_pool2d(image.mean(1, keepdim=True), output_size)
        return F.interpolate(features, size=output_size, mode="nearest") + 1e-3 * trace
"""
)
# wimmerth/anyup hubconf.py: anyup(use_natten=False, pretrained=True, device='cpu'), anyup_multi_backbone(...)
ANYUP = (
    SIZED
    + """

def anyup(use_natten=False, pretrained=True, device="cpu"):
    return Sized()


def anyup_multi_backbone(use_natten=False, pretrained=True, device="cpu"):
    return Sized()
"""
)
# valeoai/NAF hubconf.py: naf(pretrained=True, device="cpu")
NAF = (
    SIZED
    + """

def naf(pretrained=True, device="cpu"):
    return Sized()
"""
)
# JAFAR has no hubconf; a user's own hub repository with an entry returning the JAFAR module
JAFAR = (
    SIZED
    + """

def my_jafar(pretrained=True):
    return Sized()
"""
)
BROKEN = (
    COMMON
    + """

class Wrong(nn.Module):
    def forward(self, image, features, output_size):
        return features  # not resized: the wrong shape


def naf(pretrained=True, device="cpu"):
    return Wrong()
"""
)


def write_repo(root: Path, name: str, source: str) -> Path:
    repo = root / name
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(textwrap.dedent(source))
    return repo


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A TORCH_HOME whose hub directory holds stub repositories named as torch.hub stores them; no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(*args, **kwargs):
        raise AssertionError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = Path(torch.hub.get_dir())
    write_repo(root, "mhamilton723_FeatUp_main", FEATUP)
    write_repo(root, "andrehuang_loftup_main", LOFTUP)
    write_repo(root, "wimmerth_anyup_main", ANYUP)
    write_repo(root, "valeoai_NAF_main", NAF)
    return root


def backbone(embed_dim=384):
    return srt.load_backbone(
        "dinov2_vits14", pretrained=False, outputs=("tokens", "cls"), depth=1, embed_dim=embed_dim, num_heads=6
    )


def test_featup_adapter_normalises_then_upsamples_our_tokens(hub):
    bb = backbone()
    up = build_upsampler(bb, {"method": "featup", "stride": 7})
    assert isinstance(up, LearnedFine) and up.upsampler.entry == "dinov2"
    assert up.upsampler.repo == hub / "mhamilton723_FeatUp_main"
    x = torch.randn(1, 3, 28, 42)
    out = up(x)
    assert out["tokens"].shape == (1, 384, 4, 6) and out["cls"].shape == (1, 384)
    # the project's ChannelNorm (bias 0.5) ran on our tokens: every cell's channel mean is 0.5 (the tokens': 0)
    assert bb(x)["tokens"].mean(1).abs().max() < 1e-5
    assert torch.allclose(out["tokens"].mean(1), torch.full((1, 4, 6), 0.5), atol=1e-5)
    assert up.cost((28, 42)).passes == 1 and "FeatUp" in up.cost((28, 42)).extra


def test_loftup_gets_the_image_at_the_output_size(hub):
    up = build_upsampler(backbone(), {"method": "loftup", "stride": 2})
    x = torch.randn(2, 3, 28, 42)
    assert up(x)["tokens"].shape == (2, 384, 14, 21)
    assert up.upsampler.hub_model.guidance_sizes == [(14, 21)]


@pytest.mark.parametrize("method", ["anyup", "naf"])
def test_sized_signature_routes_image_and_features(hub, method):
    bb = backbone()
    up = build_upsampler(bb, {"method": method, "stride": 7})
    x = torch.randn(1, 3, 28, 42)
    tokens = bb(x)["tokens"]
    trace = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), (4, 6))
    expected = F.interpolate(tokens, size=(4, 6), mode="nearest") + 1e-3 * trace
    assert torch.allclose(up(x)["tokens"], expected, atol=1e-6)


def test_jafar_needs_an_entry_and_takes_the_sized_call(hub, tmp_path):
    with pytest.raises(HubUpsamplerUnavailableError, match="no hubconf.py at 94d4d54"):
        build_upsampler(backbone(), {"method": "jafar"})
    repo = write_repo(tmp_path, "my_jafar_repo", JAFAR)
    up = build_upsampler(backbone(), {"method": "jafar", "hub_dir": str(repo), "hub_entry": "my_jafar"})
    assert up(torch.randn(1, 3, 28, 28))["tokens"].shape == (1, 384, 4, 4)


def test_missing_repository_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(HubUpsamplerUnavailableError) as err:
        build_upsampler(backbone(), {"method": "naf"})
    text = str(err.value)
    assert "valeoai/NAF" in text and str(tmp_path / "empty" / "hub") in text
    assert "torch.hub.load('valeoai/NAF'" in text and "upsampler.hub_dir" in text
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(HubUpsamplerUnavailableError, match="hubconf.py does not exist"):
        build_upsampler(backbone(), {"method": "naf", "hub_dir": str(tmp_path)})


def test_missing_entry_lists_the_entries(hub):
    with pytest.raises(
        HubUpsamplerUnavailableError, match=r"no entry point 'nope'; it has \[.*'anyup', 'anyup_multi_backbone'"
    ):
        build_upsampler(backbone(), {"method": "anyup", "hub_entry": "nope"})
    with pytest.raises(HubUpsamplerUnavailableError, match="no hub entry point for backbone dino_vits16"):
        HubUpsampler("loftup", "dino_vits16")


def test_upsampler_built_for_another_backbone(hub):
    small = srt.load_backbone(
        "dinov2_vits14", pretrained=False, outputs=("tokens",), depth=1, embed_dim=64, num_heads=2
    )
    x = torch.randn(1, 3, 28, 28)
    for method in ("featup", "loftup"):
        up = build_upsampler(small, {"method": method})
        with pytest.raises(ValueError, match="built for 384-channel features; this backbone's grid has 64 channels"):
            up(x)


def test_wrong_output_shape_is_named(hub, tmp_path):
    repo = write_repo(tmp_path, "broken", BROKEN)
    up = build_upsampler(backbone(), {"method": "naf", "hub_dir": str(repo)})
    with pytest.raises(ValueError, match=r"NAF .* returned \(1, 384, 2, 2\) .* expected \(1, 384, 4, 4\)"):
        up(torch.randn(1, 3, 28, 28))


def test_wrong_signature_setting_is_caught(hub):
    up = build_upsampler(backbone(), {"method": "naf", "hub_signature": "features_image", "hub_output": "image"})
    with pytest.raises(ValueError, match="NAF .* failed on features"):
        up(torch.randn(1, 3, 28, 28))
