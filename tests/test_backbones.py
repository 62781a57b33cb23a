"""The backbone registry and weight loading: official checkpoint formats, the HF cache, offline errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import torch

import srt
from srt.backbones import BACKBONES, WeightsUnavailableError

TINY = dict(depth=2, embed_dim=64, num_heads=2)


def _tiny_kwargs(name: str) -> dict:
    if BACKBONES[name].family == "sam":
        return dict(TINY, global_attn_indexes=[1], window_size=4, img_size=64)
    return dict(TINY)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_registry_matches_timm_and_runs_any_multiple_of_p(name):
    spec = BACKBONES[name]
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    assert tuple(cfg.mean) == pytest.approx(spec.mean) and tuple(cfg.std) == pytest.approx(spec.std)
    sam = spec.family == "sam"
    outputs = ("tokens", "keys", "block0") + (() if sam else ("cls", "block1_norm_cls"))
    bb = srt.load_backbone(name, pretrained=False, outputs=outputs, **_tiny_kwargs(name))
    assert bb.patch_size == spec.patch_size and not any(p.requires_grad for p in bb.parameters())
    assert not bb.training and bb.weights.startswith("random")
    p = bb.patch_size
    for h, w in [(2, 3), (4, 2)]:  # non-square, two sizes: position embeddings are interpolated
        out = bb(torch.randn(1, 3, h * p, w * p))
        assert list(out) == list(outputs)
        assert out["tokens"].shape[-2:] == (h, w) and out["keys"].shape == (1, 64, h, w)
        if not sam:
            assert out["cls"].shape == (1, 64)


def test_outputs_mean_what_they_say():
    """tokens = final-norm patch tokens of the last block; keys = the last qkv's middle third; blockK raw."""
    bb = srt.load_backbone(
        "dino_vits16",
        pretrained=False,
        outputs=("tokens", "cls", "keys", "queries", "values", "block0", "block-1", "block1_norm"),
        **TINY,
    )
    m = bb.model
    x = torch.randn(2, 3, 32, 48)
    out = bb(x)
    t = bb.embed(x)  # position embeddings: test_reference_position_embeddings
    t0 = m.blocks[0](t)
    qkv = m.blocks[1].attn.qkv(m.blocks[1].norm1(t0))
    t1 = m.blocks[1](t0)
    grid = lambda s: s[:, 1:].transpose(1, 2).reshape(2, -1, 2, 3)  # noqa: E731
    torch.testing.assert_close(out["tokens"], grid(m.norm(t1)))
    torch.testing.assert_close(out["block1_norm"], grid(m.norm(t1)))
    torch.testing.assert_close(out["cls"], m.norm(t1)[:, 0])
    torch.testing.assert_close(out["block0"], grid(t0))
    torch.testing.assert_close(out["block-1"], grid(t1))
    for i, name in enumerate(("queries", "keys", "values")):
        torch.testing.assert_close(out[name], grid(qkv[..., i * 64 : (i + 1) * 64]))
    # with timm's position embeddings: the same as timm's own feature API
    bb.pos_embed_resampling = None
    ref = m.forward_intermediates(x, indices=[1], norm=True, intermediates_only=True)[0]
    torch.testing.assert_close(bb(x)["tokens"], ref)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'dino_vit'; valid names: dino_vits16"):
        srt.load_backbone("dino_vit", pretrained=False)
    with pytest.raises(ValueError, match="unknown output 'attn'; valid outputs: tokens, cls, keys"):
        srt.load_backbone("dino_vits16", pretrained=False, outputs=("attn",), **TINY)
    with pytest.raises(ValueError, match="block index 5 is out of range"):
        srt.load_backbone("dino_vits16", pretrained=False, outputs=("block5",), **TINY)
    with pytest.raises(ValueError, match="unknown output 'cls'"):
        srt.load_backbone("sam_vitb16", pretrained=False, outputs=("cls",), **_tiny_kwargs("sam_vitb16"))


def _source_model(name: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(BACKBONES[name].timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, **TINY)


def _assert_same_features(bb, source: torch.nn.Module):
    # at the checkpoint's own grid no position embedding is resampled, so timm's features are the reference
    x = torch.randn(1, 3, *(n * bb.patch_size for n in source.patch_embed.grid_size))
    ref = source.forward_intermediates(x, indices=[len(source.blocks) - 1], norm=True, intermediates_only=True)[0]
    torch.testing.assert_close(bb(x)["tokens"], ref)


def test_official_dino_backbone_file_loads(tmp_path):
    """dino_deitsmall16_pretrain.pth: a plain state dict with DINO's key names (which timm shares)."""
    source = _source_model("dino_vits16")
    sd = source.state_dict()
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(sd)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(sd, path)
    bb = srt.load_backbone("dino_vits16", pretrained=str(path), **TINY)
    _assert_same_features(bb, source)
    assert bb.weights.startswith(f"file {path} (sha256 ")


def test_official_dino_full_checkpoint_uses_the_teacher(tmp_path):
    """DINO's training checkpoint: {'teacher': {'module.backbone.*', 'module.head.*'}, 'student': ...}."""
    teacher, student = _source_model("dino_vits16", 1), _source_model("dino_vits16", 2)
    ckpt = {
        "teacher": {
            **{f"module.backbone.{k}": v for k, v in teacher.state_dict().items()},
            "module.head.mlp.0.weight": torch.randn(32, 64),
            "module.head.last_layer.weight_v": torch.randn(10, 32),
        },
        "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
        "epoch": torch.tensor(100),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    _assert_same_features(srt.load_backbone("dino_vits16", pretrained=path, **TINY), teacher)
    _assert_same_features(srt.load_backbone("dino_vits16", pretrained=path, checkpoint_key="student", **TINY), student)
    with pytest.raises(ValueError, match="has no key 'ema'"):
        srt.load_backbone("dino_vits16", pretrained=path, checkpoint_key="ema", **TINY)


def test_official_dinov2_files_load(tmp_path):
    """DINOv2 hub checkpoints: mask_token, ls*.gamma; with registers: register_tokens, pos_embed with a CLS slot."""
    source = _source_model("dinov2_vits14")
    sd = dict(source.state_dict(), mask_token=torch.zeros(1, 64))
    assert any(k.endswith("ls1.gamma") for k in sd)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    _assert_same_features(srt.load_backbone("dinov2_vits14", pretrained=path, **TINY), source)

    reg = _source_model("dinov2_vits14_reg")
    rsd = reg.state_dict()
    cls_pos = torch.randn(1, 1, 64)
    official = {k: v for k, v in rsd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(
        register_tokens=rsd["reg_token"],
        cls_token=rsd["cls_token"] - cls_pos,
        pos_embed=torch.cat([cls_pos, rsd["pos_embed"]], dim=1),
        mask_token=torch.zeros(1, 64),
    )
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)
    _assert_same_features(srt.load_backbone("dinov2_vits14_reg", pretrained=path, **TINY), reg)


def test_timm_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    source = _source_model("mae_vitb16")
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    _assert_same_features(srt.load_backbone("mae_vitb16", pretrained=path, **TINY), source)


def test_bad_checkpoints_name_the_file(tmp_path):
    source = _source_model("dino_vits16")
    sd = source.state_dict()
    del sd["norm.weight"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"broken.pth does not match .*missing \['norm.weight'\]"):
        srt.load_backbone("dino_vits16", pretrained=path, **TINY)
    with pytest.raises(WeightsUnavailableError, match="nothere.pth does not exist"):
        srt.load_backbone("dino_vits16", pretrained=tmp_path / "nothere.pth", **TINY)
    # arbitrary pickled objects are refused (weights_only=True), never executed
    evil = tmp_path / "evil.pth"
    torch.save({"model": Path("x")}, evil)
    with pytest.raises(ValueError, match="evil.pth"):
        srt.load_backbone("dino_vits16", pretrained=evil, **TINY)


def _isolated_hub(monkeypatch, tmp_path) -> Path:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_offline_pretrained_raises_named_error(monkeypatch, tmp_path):
    cache = _isolated_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        srt.load_backbone("dino_vits16", pretrained=True)
    msg = str(err.value)
    assert "'dino_vits16'" in msg and "timm/vit_small_patch16_224.dino" in msg and str(cache) in msg
    assert "pretrained='/path/to/file'" in msg and "dino_deitsmall16_pretrain.pth" in msg
    assert "Random weights are never substituted" in msg


def test_unreachable_hub_raises_without_long_retries(monkeypatch, tmp_path):
    _isolated_hub(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def refuse(address, timeout=None, **kwargs):
        calls.append((address, timeout))
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailableError, match="hub is unreachable"):
        srt.load_backbone("dinov2_vits14", pretrained=True)
    assert calls == [(("huggingface.co", 443), 3.0)]  # one short probe, no retries


def test_pretrained_true_loads_from_the_hf_cache(monkeypatch, tmp_path):
    """The real pretrained=True path, fed by a file laid out as the Hugging Face cache stores it."""
    from safetensors.torch import save_file

    cache = _isolated_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _source_model("dino_vits16", seed=3)  # tiny, to stay fast: the file is what counts
    repo = cache / "models--timm--vit_small_patch16_224.dino"
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    save_file(source.state_dict(), str(snap / "model.safetensors"))
    bb = srt.load_backbone("dino_vits16", pretrained=True, **TINY)
    assert bb.weights.startswith("pretrained timm/vit_small_patch16_224.dino (cache model.safetensors")
    _assert_same_features(bb, source)


def _reference_interpolate_pos_encoding(pos_embed, rows, cols, offset, antialias):
    """Transcription of DINO's / DINOv2's ``interpolate_pos_encoding`` (vision_transformer.py): ``pos_embed`` is
    [1, 1 + N, C] with the CLS slot first; the patch grid (sqrt N square) is resampled bicubically with scale
    factors ((rows + offset) / sqrt N, (cols + offset) / sqrt N), or to the size when offset is 0."""
    n_patch = pos_embed.shape[1] - 1
    side = int(n_patch**0.5)
    if rows * cols == n_patch and rows == cols:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        kw = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)}
    else:
        kw = {"size": (rows, cols)}
    grid = torch.nn.functional.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([cls_pos[:, None], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


@pytest.mark.parametrize(
    "name,size",
    [
        ("dino_vits16", (224, 320)),
        ("dino_vits16", (480, 832)),
        ("dino_vits8", (224, 320)),
        ("dino_vits8", (480, 832)),
        ("dino_vits16", (224, 224)),  # the native grid: no resampling at all
        ("dinov2_vits14", (476, 840)),
        ("dinov2_vits14", (224, 224)),
        ("dinov2_vits14_reg", (476, 840)),
    ],
)
def test_reference_position_embeddings(name, size):
    """DINO / DINOv2 backbones embed exactly as the original code (CLS + resampled position embeddings,
    registers after CLS without position), by default; backbone.pos_embed=timm keeps timm's resampling."""
    bb = srt.load_backbone(name, pretrained=False, outputs=("tokens",), **TINY)
    m = bb.model
    torch.nn.init.normal_(m.pos_embed, std=1.0)  # a rough embedding makes resampling differences visible
    x = torch.randn(1, 3, *size)
    rows, cols = size[0] // bb.patch_size, size[1] // bb.patch_size
    patches = m.patch_embed(x).reshape(1, rows * cols, -1)
    if m.reg_token is None:  # DINO / DINOv2: pos_embed [1, 1 + N, C] with the CLS slot
        official_pos, cls = m.pos_embed, m.cls_token
    else:  # timm stores DINOv2-reg without the CLS slot (it is folded into cls_token): add an empty one back
        official_pos, cls = torch.cat([torch.zeros_like(m.pos_embed[:, :1]), m.pos_embed], dim=1), m.cls_token
    resampling = BACKBONES[name].reference_pos_embed
    tokens = torch.cat([cls, patches], dim=1) + _reference_interpolate_pos_encoding(
        official_pos, rows, cols, resampling.offset, resampling.antialias
    )
    if m.reg_token is not None:
        tokens = torch.cat([tokens[:, :1], m.reg_token, tokens[:, 1:]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(bb.embed(x), tokens, atol=1e-6, rtol=0)
        timm_bb = srt.load_backbone(name, pretrained=False, outputs=("tokens",), pos_embed="timm", **TINY)
        timm_bb.model.load_state_dict(m.state_dict())
        differs = not torch.allclose(timm_bb.embed(x), tokens, atol=1e-3)
    # timm resamples by size with antialiasing: DINOv2-reg's own formula, but not DINO's / DINOv2's scale factors
    off_grid = (rows, cols) != tuple(m.patch_embed.grid_size)
    assert differs == (off_grid and resampling.offset != 0)
