"""DINOv2 depth heads: official key names and shapes, loading, and the forward against a transcription of the reference.

The reference forwards below are transcribed from dinov2's mmcv decode heads
(dinov2/eval/depth/models/decode_heads/{linear_head,dpt_head,decode_head}.py) as functional code on the raw state
dict, keeping mmcv's in-place ReLUs and the clone in the pre-activation unit; they share nothing with
tasks/depth_heads.py but the key names, which are read from the reference too (and from transformers'
convert_dinov2_depth_to_hf.py, which renames exactly these keys of the published files).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks import depth_heads as dh

E = 64  # embed dim of the tiny test backbone (divisible by 8: DPT's post-process channels are E/8 .. E)


# ----------------------------------------------------------------------------------------------- official state dicts


def official_shapes(kind: str, e: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published head files (``decode_head.`` prefix dropped)."""
    if kind in ("linear", "linear4"):
        n = 1 if kind == "linear" else 4
        return {"conv_depth.weight": (256, 2 * e * n, 1, 1), "conv_depth.bias": (256,)}
    post = [e // 8, e // 4, e // 2, e]
    s: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(post):
        s[f"reassemble_blocks.projects.{i}.conv.weight"] = (c, e, 1, 1)
        s[f"reassemble_blocks.projects.{i}.conv.bias"] = (c,)
        s[f"reassemble_blocks.readout_projects.{i}.0.weight"] = (e, 2 * e)
        s[f"reassemble_blocks.readout_projects.{i}.0.bias"] = (e,)
        s[f"convs.{i}.conv.weight"] = (256, c, 3, 3)
    s["reassemble_blocks.resize_layers.0.weight"] = (post[0], post[0], 4, 4)  # ConvTranspose: [in, out, k, k]
    s["reassemble_blocks.resize_layers.0.bias"] = (post[0],)
    s["reassemble_blocks.resize_layers.1.weight"] = (post[1], post[1], 2, 2)
    s["reassemble_blocks.resize_layers.1.bias"] = (post[1],)
    s["reassemble_blocks.resize_layers.3.weight"] = (post[3], post[3], 3, 3)
    s["reassemble_blocks.resize_layers.3.bias"] = (post[3],)
    for i in range(4):
        s[f"fusion_blocks.{i}.project.conv.weight"] = (256, 256, 1, 1)
        s[f"fusion_blocks.{i}.project.conv.bias"] = (256,)
        units = ("res_conv_unit1", "res_conv_unit2") if i > 0 else ("res_conv_unit2",)
        for unit in units:
            for conv in ("conv1", "conv2"):
                s[f"fusion_blocks.{i}.{unit}.{conv}.conv.weight"] = (256, 256, 3, 3)
    s["project.conv.weight"] = (256, 256, 3, 3)
    s["project.conv.bias"] = (256,)
    for j, shape in ((0, (128, 256, 3, 3)), (2, (32, 128, 3, 3)), (4, (1, 32, 1, 1))):
        s[f"conv_depth.head.{j}.weight"] = shape
        s[f"conv_depth.head.{j}.bias"] = (shape[0],)
    return s


def random_state_dict(kind: str, e: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in official_shapes(kind, e).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        out[k] = torch.randn(shape, generator=g) / fan_in**0.5 + (0.05 if k.endswith("bias") else 0.0)
    return out


def write_official(path, sd: dict[str, torch.Tensor]) -> None:
    """As mmcv's save_checkpoint lays it out: prefixed state dict plus a meta dict (with a numpy scalar)."""
    torch.save(
        {
            "state_dict": {f"decode_head.{k}": v for k, v in sd.items()},
            "meta": {"iter": 38400, "best": np.float64(0.1)},
        },
        path,
    )


def features(n: int, h: int = 3, w: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, E, h, w, generator=g), torch.randn(2, E, generator=g)) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- reference transcriptions


def reference_linear(sd, feats, min_depth=0.001, max_depth=10.0):
    """BNHead._forward_feature + depth_pred (classify, UD bins, linear norm), transcribed."""
    inputs = []
    for x, cls_token in feats:
        cls_token = cls_token[:, :, None, None].expand_as(x)
        inputs.append(torch.cat((x, cls_token), 1))
    inputs = [
        F.interpolate(x, size=[s * 4 for s in inputs[0].shape[2:]], mode="bilinear", align_corners=False)
        for x in inputs
    ]
    x = torch.cat(inputs, dim=1)
    logit = F.conv2d(x, sd["conv_depth.weight"], sd["conv_depth.bias"])
    bins = torch.linspace(min_depth, max_depth, 256)
    logit = torch.relu(logit)
    logit = logit + 0.1
    logit = logit / logit.sum(dim=1, keepdim=True)
    return torch.einsum("ikmn,k->imn", [logit, bins]).unsqueeze(dim=1)


def _conv_module(sd, name, x, padding, act_first=False, act_after=False):
    """mmcv ConvModule (no norm) with an in-place ReLU before ('act','conv','norm') or after the conv."""
    if act_first:
        x = torch.relu_(x)
    x = F.conv2d(x, sd[f"{name}.conv.weight"], sd.get(f"{name}.conv.bias"), padding=padding)
    if act_after:
        x = torch.relu_(x)
    return x


def _preact_unit(sd, name, inputs):
    inputs_ = inputs.clone()
    x = _conv_module(sd, f"{name}.conv1", inputs, 1, act_first=True)
    x = _conv_module(sd, f"{name}.conv2", x, 1, act_first=True)
    return x + inputs_


def _fusion(sd, i, *inputs):
    x = inputs[0]
    if len(inputs) == 2:
        if x.shape != inputs[1].shape:
            res = F.interpolate(inputs[1], size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        else:
            res = inputs[1]
        x = x + _preact_unit(sd, f"fusion_blocks.{i}.res_conv_unit1", res)
    x = _preact_unit(sd, f"fusion_blocks.{i}.res_conv_unit2", x)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return _conv_module(sd, f"fusion_blocks.{i}.project", x, 0)


def reference_dpt(sd, feats, min_depth=0.001):
    """DPTHead.forward (readout 'project', norm_cfg None) + depth_pred (regression, no scale_up), transcribed."""
    out = []
    for i, (x, cls_token) in enumerate(feats):
        feature_shape = x.shape
        x = x.flatten(2).permute((0, 2, 1))
        readout = cls_token.unsqueeze(1).expand_as(x)
        x = F.linear(
            torch.cat((x, readout), -1),
            sd[f"reassemble_blocks.readout_projects.{i}.0.weight"],
            sd[f"reassemble_blocks.readout_projects.{i}.0.bias"],
        )
        x = F.gelu(x)
        x = x.permute(0, 2, 1).reshape(feature_shape)
        x = _conv_module(sd, f"reassemble_blocks.projects.{i}", x, 0)
        w, b = (
            sd.get(f"reassemble_blocks.resize_layers.{i}.weight"),
            sd.get(f"reassemble_blocks.resize_layers.{i}.bias"),
        )
        if i == 0:
            x = F.conv_transpose2d(x, w, b, stride=4)
        elif i == 1:
            x = F.conv_transpose2d(x, w, b, stride=2)
        elif i == 3:
            x = F.conv2d(x, w, b, stride=2, padding=1)
        out.append(x)
    x = [_conv_module(sd, f"convs.{i}", feature, 1) for i, feature in enumerate(out)]
    y = _fusion(sd, 0, x[-1])
    for i in range(1, 4):
        y = _fusion(sd, i, y, x[-(i + 1)])
    y = _conv_module(sd, "project", y, 1, act_after=True)
    h = F.conv2d(y, sd["conv_depth.head.0.weight"], sd["conv_depth.head.0.bias"], padding=1)
    h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
    h = F.conv2d(h, sd["conv_depth.head.2.weight"], sd["conv_depth.head.2.bias"], padding=1)
    h = F.relu(h)
    h = F.conv2d(h, sd["conv_depth.head.4.weight"], sd["conv_depth.head.4.bias"])
    return F.relu(h) + min_depth


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["linear", "linear4", "dpt"])
def test_module_keys_and_shapes_are_the_official_ones(kind):
    head = dh.build_head(kind, E)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == official_shapes(kind, E)


@pytest.mark.parametrize(
    "kind,n,hw", [("linear", 1, (3, 5)), ("linear4", 4, (3, 5)), ("dpt", 4, (3, 5)), ("dpt", 4, (4, 4))]
)
def test_loaded_head_matches_reference_forward(tmp_path, kind, n, hw):
    sd = random_state_dict(kind, E)
    path = tmp_path / f"dinov2_vits14_nyu_{kind}_head.pth"
    write_official(path, sd)
    head = dh.build_head(kind, E)
    dh.load_head_weights(head, path, "tiny")
    feats = features(n, *hw)
    with torch.no_grad():
        ours = head([(p.clone(), c.clone()) for p, c in feats])
        ref = (reference_dpt if kind == "dpt" else reference_linear)(sd, [(p.clone(), c.clone()) for p, c in feats])
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    if kind == "dpt":  # output size: the stride-2 conv's grid ceil(h/2), then five doublings
        assert ours.shape[-2:] == (32 * -(-hw[0] // 2), 32 * -(-hw[1] // 2))
    else:
        assert ours.shape[-2:] == (4 * hw[0], 4 * hw[1])
        assert float(ours.min()) >= 0.001 and float(ours.max()) <= 10.0  # a convex combination of the bins


def test_random_head_is_not_the_loaded_one(tmp_path):
    # loading changes the output (the test above could not pass with an ignored state dict)
    sd = random_state_dict("linear", E, seed=5)
    path = tmp_path / "h.pth"
    write_official(path, sd)
    fresh, loaded = dh.build_head("linear", E), dh.build_head("linear", E)
    dh.load_head_weights(loaded, path)
    f = features(1)
    assert not torch.allclose(fresh(f), loaded(f))


def test_plain_state_dict_without_prefix_loads(tmp_path):
    sd = random_state_dict("linear4", E)
    torch.save(sd, tmp_path / "plain.pth")
    head = dh.build_head("linear4", E)
    dh.load_head_weights(head, tmp_path / "plain.pth")
    torch.testing.assert_close(head.conv_depth.weight, sd["conv_depth.weight"])


def test_checkpoint_of_another_backbone_size_is_a_named_error(tmp_path):
    path = tmp_path / "dinov2_vitb14_nyu_linear_head.pth"
    write_official(path, random_state_dict("linear", 2 * E))
    with pytest.raises(
        ValueError,
        match=r"dinov2_vitb14_nyu_linear_head\.pth.*conv_depth\.weight has shape \(256, 256, 1, 1\), expected \(256, 128, 1, 1\)",
    ):
        dh.load_head_weights(dh.build_head("linear", E), path, "dinov2_vits14")


def test_checkpoint_of_another_head_is_a_named_error(tmp_path):
    path = tmp_path / "linear.pth"
    write_official(path, random_state_dict("linear", E))
    with pytest.raises(ValueError, match=r"linear\.pth does not fit the dpt head.*missing"):
        dh.load_head_weights(dh.build_head("dpt", E), path)


def test_unreadable_checkpoint_is_a_named_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pth"):
        dh.load_head_weights(dh.build_head("linear", E), path)


def test_official_file_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vitb14_nyu_dpt_head.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert dh.resolve_head_checkpoint("dinov2_vitb14", "dpt", "official") == cached


def test_official_file_offline_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(dh, "_reachable", lambda *a, **k: False)
    with pytest.raises(dh.HeadWeightsUnavailableError) as e:
        dh.resolve_head_checkpoint("dinov2_vits14", "linear4", "official")
    msg = str(e.value)
    assert "dinov2_vits14_nyu_linear4_head.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "task.head_weights" in msg


def test_head_weights_path_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        dh.resolve_head_checkpoint("dinov2_vits14", "dpt", str(tmp_path / "nope.pth"))


def test_no_official_head_for_other_backbones():
    with pytest.raises(ValueError, match="dinov2_vits14_reg"):
        dh.official_head_file("dinov2_vits14_reg", "dpt")


def test_head_blocks():
    assert dh.head_blocks("linear", 12) == (11,)
    assert dh.head_blocks("linear", 24) == (23,)
    assert dh.head_blocks("dpt", 12) == (2, 5, 8, 11)
    assert dh.head_blocks("linear4", 24) == (4, 11, 17, 23)
    assert dh.head_blocks("dpt", 40) == (9, 19, 29, 39)
    assert dh.head_blocks("dpt", 4, [0, 1, 2, 3]) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="task.blocks is not set"):
        dh.head_blocks("dpt", 4)
    with pytest.raises(ValueError, match="expected 1 block"):
        dh.head_blocks("linear", 4, [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        dh.head_blocks("dpt", 4, [0, 1, 2, 4])
    with pytest.raises(ValueError, match="task.head='bn'"):
        dh.head_blocks("bn", 12)
