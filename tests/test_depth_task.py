"""task=depth: the depther, SRT on its features and the output ensemble against transcriptions of the official
extractors (srt:feature_extractor.py DinoV2DepthFeatsEnsembledExtractor / DinoV2DepthEnsembledExtractor, with
DINOv2's CenterPadding), flip averaging, and the task end to end on synthetic NYU data in both layouts.

Models: a tiny random DINOv2-shaped ViT (dinov2_vits14, 4 blocks, 64 channels) and random heads; no NYU data and
no head weights exist on the build machine, so nothing here is a Table 2 number.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

import srt
from eval import depth as depth_eval
from tasks.base import RunContext
from tasks.depth import (
    DepthConfig,
    Depther,
    DepthTask,
    PaddedFeatures,
    block_outputs,
    center_pad,
    depth_figure,
    depth_panel,
    panel_title,
)
from tasks.depth_heads import build_head
from tasks.item_cache import ItemCache

REPO = Path(__file__).resolve().parents[1]
TINY_V2 = dict(depth=4, embed_dim=64, num_heads=2)
BLOCKS = {"linear": (3,), "linear4": (0, 1, 2, 3), "dpt": (0, 1, 2, 3)}


def tiny_depther(head: str = "linear", seed: int = 0) -> Depther:
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, outputs=block_outputs(BLOCKS[head]), **TINY_V2)
    torch.manual_seed(seed)
    h = build_head(head, bb.embed_dim)
    with torch.no_grad():  # outputs that vary over the image inside (0.001, 10) (random init is nearly flat)
        for p in h.parameters():
            p.mul_(2.0 if head == "dpt" else 4.0)
    return Depther(bb, h.eval(), BLOCKS[head]).eval()


def image(h: int = 30, w: int = 45, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- transcriptions


class CenterPaddingReference:
    """DINOv2's CenterPadding (dinov2/hub/utils.py, srt:depth_dinov2_main.py), transcribed."""

    def __init__(self, multiple):
        self.multiple = multiple

    def _get_pad(self, size):
        new_size = math.ceil(size / self.multiple) * self.multiple
        pad_size = new_size - size
        pad_size_left = pad_size // 2
        pad_size_right = pad_size - pad_size_left
        return pad_size_left, pad_size_right

    def __call__(self, x):
        pads = list(itertools.chain.from_iterable(self._get_pad(m) for m in x.shape[:1:-1]))
        return F.pad(x, pads)


def affine(t: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """The official shift: torchvision affine, translate=[i, j] (i right, j down), nearest, zero fill."""
    return TF.affine(t, translate=[i, j], angle=0, scale=1, shear=0)


def official_shifts(d: int) -> list[tuple[int, int]]:
    """Pass 0 unshifted, then the (2d+1)^2 grid, i (horizontal) outer: (2d+1)^2 + 1 passes."""
    return [(0, 0)] + [(i, j) for i in range(-d, d + 1) for j in range(-d, d + 1)]


def official_feats_srt(depther: Depther, frame: torch.Tensor, d: int, patch_size: int) -> torch.Tensor:
    """DinoV2DepthFeatsEnsembledExtractor.extract_feature (one pass at a time), transcribed."""
    img_size = frame.shape[-2:]
    shifts = official_shifts(d)
    b = len(shifts)
    arrays = None
    for ind, (i, j) in enumerate(shifts):
        x = affine(frame, i, j) if ind else frame
        out = depther.backbone(CenterPaddingReference(14)(x))  # the pre-hook pads the (shifted) batch
        pairs = [[out[f"block{k}"], out[f"block{k}_cls"]] for k in depther.blocks]
        if arrays is None:
            arrays = [[None, None] for _ in pairs]
        for fi, pair in enumerate(pairs):
            for fj, field in enumerate(pair):
                if field.dim() == 2:
                    new = field
                else:
                    new = F.interpolate(field, scale_factor=patch_size, mode="nearest")
                    new = affine(new, -i, -j) if ind else new
                arrays[fi][fj] = new if arrays[fi][fj] is None else arrays[fi][fj] + new
    for fi in range(len(arrays)):
        for fj in range(2):
            arrays[fi][fj] = arrays[fi][fj] / b
            if arrays[fi][fj].dim() != 2:
                arrays[fi][fj] = F.avg_pool2d(arrays[fi][fj], patch_size)
    out = depther.head([tuple(a) for a in arrays])
    out = torch.clamp(out, min=depther.head.min_depth, max=depther.head.max_depth)
    return F.interpolate(out, size=img_size, mode="bilinear", align_corners=False)


def official_output_ensemble(depther: Depther, frame: torch.Tensor, d: int) -> torch.Tensor:
    """DinoV2DepthEnsembledExtractor.extract_feature, transcribed (whole_inference = the depther)."""
    shifts = official_shifts(d)
    full = depther(frame)
    for i, j in shifts[1:]:
        full = full + affine(depther(affine(frame, i, j)), -i, -j)
    return full / len(shifts)


def task_for(head="linear", protocol="toolbox", root="", **kw) -> DepthTask:
    cfg = DepthConfig(
        protocol=protocol, toolbox_root=str(root) or "x", srt_root=str(root) or "x", head=head, head_weights="random",
        blocks=list(BLOCKS[head]), **kw,
    )  # fmt: skip
    return DepthTask(cfg.validate())


def srt_extractor(depther: Depther, level: int, **kw):
    return srt.build_extractor(depther.backbone, srt.SRTConfig(level=level, **kw))


# ----------------------------------------------------------------------------------------------- the depther


@pytest.mark.parametrize("hw", [(30, 45), (28, 42), (480, 640)])
def test_center_pad_is_dinov2s(hw):
    x = torch.randn(1, 3, *hw)
    torch.testing.assert_close(center_pad(x, 14), CenterPaddingReference(14)(x), rtol=0, atol=0)


def test_block_outputs_are_unnormed_patch_tokens_and_cls():
    # DINOv2's depthers read get_intermediate_layers(..., norm=False): no final norm on either
    bb = srt.load_backbone(
        "dinov2_vits14", pretrained=False, outputs=("block3", "block3_cls", "block3_norm"), **TINY_V2
    )
    m = bb.model
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        out = bb(x)
        tokens = bb.embed(x)
        for blk in m.blocks:
            tokens = blk(tokens)
    np_ = m.num_prefix_tokens
    torch.testing.assert_close(out["block3_cls"], tokens[:, 0])
    torch.testing.assert_close(out["block3"], tokens[:, np_:].transpose(1, 2).reshape(1, -1, 2, 3))
    assert not torch.allclose(out["block3"], out["block3_norm"])


def test_depther_is_whole_inference():
    dep = tiny_depther("dpt")
    x = image()
    with torch.no_grad():
        out = dep.backbone(CenterPaddingReference(14)(x))
        ref = dep.head([(out[f"block{k}"], out[f"block{k}_cls"]) for k in dep.blocks]).clamp(0.001, 10.0)
        ref = F.interpolate(ref, size=(30, 45), mode="bilinear", align_corners=False)
        torch.testing.assert_close(dep(x), ref)
    assert dep(x).shape == (1, 1, 30, 45)


@pytest.mark.parametrize("grid", [14, 16])
@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-1, 3)])
def test_padded_features_are_shift_then_pad(grid, shift):
    """SRT shifts the canvas; PaddedFeatures must equal the backbone on the shifted-then-padded image."""
    dep = tiny_depther("linear4")
    x = image(30, 45)
    fn = PaddedFeatures(dep.backbone, (30, 45), grid)
    dy, dx = shift
    with torch.no_grad():
        ours = fn(srt.shifts.shift_image(fn.canvas(x), dy, dx))
        ref = dep.backbone(CenterPaddingReference(14)(affine(x, dx, dy)))
    assert fn.canvas(x).shape[-2:] == (3 * grid, 4 * grid)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k])


def test_level0_is_the_plain_depther():
    dep = tiny_depther("linear")
    task = task_for("linear")
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(task.predictor(dep, srt.SRTConfig(level=0))(x), dep(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- SRT and +OE vs official


@pytest.mark.parametrize("head,unshift_16", [("linear", False), ("dpt", False), ("linear4", True)])
def test_srt_on_features_equals_the_official_extractor(head, unshift_16):
    dep = tiny_depther(head)
    task = task_for(head, official_unshift_16=unshift_16)
    x = image(30, 45, seed=3) if head == "linear" else image(20, 30, seed=3)  # DPT's cost grows fast with the grid
    cfg = srt.SRTConfig(level=2, official_parity=True, batch_size=7)  # the official 26 passes, incl. the duplicate
    with torch.no_grad():
        ours = task.predictor(dep, cfg)(x)
        ref = official_feats_srt(dep, x, 2, 16 if unshift_16 else 14)
        plain = dep(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # SRT changed the prediction: the comparison is not vacuous


def test_unshift_16_differs_from_14():
    dep = tiny_depther("linear")
    x = image(30, 45, seed=4)
    cfg = srt.SRTConfig(level=2)
    with torch.no_grad():
        a = task_for("linear").predictor(dep, cfg)(x)
        b = task_for("linear", official_unshift_16=True).predictor(dep, cfg)(x)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("head", ["linear", "dpt"])
def test_output_ensemble_equals_the_official_extractor(head):
    dep = tiny_depther(head)
    task = task_for(head, output_ensemble=True, oe_batch_size=5)
    x = image(30, 45, seed=5) if head == "linear" else image(20, 30, seed=5)
    cfg = srt.SRTConfig(level=1, official_parity=True)
    with torch.no_grad():
        ours = task.predictor(dep, cfg)(x)
        ref = official_output_ensemble(dep, x, 1)
        plain = dep(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the ensemble changed the prediction: the comparison is not vacuous


# ----------------------------------------------------------------------------------------------- the task


def make_sample(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_sample_data as msd
    finally:
        sys.path.remove(str(REPO / "scripts"))
    msd.make_sample_data(root)
    return root


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return make_sample(tmp_path_factory.mktemp("nyu"))


def run_task(task: DepthTask, extractor, out: Path, cache_key=None):
    ctx = RunContext(out_dir=out, cache=ItemCache(out / "cache", key=cache_key), progress=False)
    return task.run(extractor, ctx), ctx


def test_config_errors():
    with pytest.raises(ValueError, match="task.protocol='nyu'"):
        DepthConfig(protocol="nyu", toolbox_root="r").validate()
    with pytest.raises(ValueError, match="task.head='bn'"):
        DepthConfig(head="bn", toolbox_root="r").validate()
    with pytest.raises(ValueError, match="task.toolbox_root is not set"):
        DepthConfig().validate()
    with pytest.raises(ValueError, match="needs task.protocol=srt"):
        DepthConfig(toolbox_root="r", srt_literal_mask=True).validate()
    with pytest.raises(ValueError, match="official_unshift_16"):
        DepthConfig(toolbox_root="r", output_ensemble=True, official_unshift_16=True).validate()
    assert DepthConfig(toolbox_root="r").use_flip and not DepthConfig(protocol="srt", srt_root="r").use_flip


def test_unsupported_srt_settings_are_named():
    dep = tiny_depther()
    for kw, match in (({"output": "dense"}, "srt.output"), ({"fill": "reflect"}, "srt.fill=zero")):
        with pytest.raises(ValueError, match=match):
            run_task(task_for(), srt_extractor(dep, 1, **kw), Path("/nonexistent"))


def test_check_data_names_bad_files(tmp_path):
    root = make_sample(tmp_path / "s")
    task = task_for(protocol="srt", root=root / "nyu_v2")
    task.check_data()
    depth = root / "nyu_v2" / "testing" / "depths" / "00001.png"
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(depth)  # 8-bit
    with pytest.raises(ValueError, match=r"00001\.png is a L image of shape \(480, 640\); expected a 16-bit"):
        task.check_data()
    Image.fromarray(np.zeros((480, 600), np.uint16)).save(depth)  # wrong size
    with pytest.raises(ValueError, match=r"images/00001\.png is 640x480 but its depth map .*00001\.png is 600x480"):
        task.check_data()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["toolbox", "srt"])
def test_task_end_to_end_resumes_and_rescores(sample, tmp_path, protocol):
    root = sample / ("NYU" if protocol == "toolbox" else "nyu_v2")
    task = task_for("linear", protocol, root, max_images=2, n_visualizations=1)
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, **TINY_V2)
    extractor = srt.build_extractor(bb, srt.SRTConfig(level=1, samples=3, batch_size=9))
    with pytest.warns(UserWarning, match="RANDOM"):
        metrics, ctx = run_task(task, extractor, tmp_path / "run")
    names = depth_eval.TOOLBOX_METRICS if protocol == "toolbox" else depth_eval.SRT_METRICS
    assert set(names) <= set(metrics) and all(np.isfinite(metrics[k]) for k in names)
    assert metrics["n_images"] == 2 and metrics["passes_per_image"] == 3 * (2 if protocol == "toolbox" else 1)
    assert ctx.cache.computed == 2
    items = depth_eval.list_items(root, protocol)[:2]
    for it in items:
        png = tmp_path / "run" / "depth_predictions" / f"{it.id}.png"
        assert np.array(Image.open(png)).dtype == np.uint16
    vis = list((tmp_path / "run" / "depth_visualizations").rglob("*.png"))
    assert len(vis) == 1 and np.array(Image.open(vis[0])).shape[2] == 3
    # resume: nothing recomputed, same numbers
    again, ctx2 = run_task(task, extractor, tmp_path / "run")
    assert ctx2.cache.computed == 0 and ctx2.cache.loaded == 2 and again == metrics
    # a lost prediction PNG is recomputed, not scored from nothing
    (tmp_path / "run" / "depth_predictions" / f"{items[1].id}.png").unlink()
    third, ctx3 = run_task(task, extractor, tmp_path / "run")
    assert ctx3.cache.computed == 1 and {k: third[k] for k in names} == {k: metrics[k] for k in names}
    # the CLI scores the saved predictions to the same numbers (on the images the run scored)
    scored = depth_eval.evaluate(
        [depth_eval.read_depth(it.depth, protocol) for it in items],
        [depth_eval.read_prediction_png(tmp_path / "run" / "depth_predictions" / f"{it.id}.png") for it in items],
        protocol,
    )["mean"]
    assert scored == {k: metrics[k] for k in names}
    csv = (tmp_path / "run" / "per_image.csv").read_text().splitlines()
    assert len(csv) == 3 and csv[1].startswith(items[0].id)


@pytest.mark.slow
def test_literal_and_output_ensemble_run(sample, tmp_path):
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, **TINY_V2)
    extractor = srt.build_extractor(bb, srt.SRTConfig(level=1, samples=3))
    task = task_for("linear", "srt", sample / "nyu_v2", max_images=1, srt_literal_mask=True, output_ensemble=True)
    with pytest.warns(UserWarning, match="rows 0 and 1"):
        metrics, _ = run_task(task, extractor, tmp_path / "lit")
    gt = depth_eval.read_depth(depth_eval.list_items(sample / "nyu_v2", "srt")[0].depth, "srt")
    assert (gt[:6] == 0).all()  # the sample's rows 0-1 have no depth: the literal bug scores zeros -> inf / NaN
    assert not math.isfinite(metrics["AbsRel"])


def test_depth_panels_are_titled_with_colour_bars():
    rgb = np.zeros((4, 5, 3), np.uint8)
    gt = np.array([[0, 1, 2, 3, 4]] * 4, np.float32)
    fig = depth_figure(rgb, gt, gt + 0.5, "item 0: dino_vits16, +SRT L=1; RANDOM WEIGHTS")
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["input", "ground truth", "prediction", "|error|"]
    bars = {ax.get_ylabel(): ax for ax in fig.axes if ax not in panels}
    assert set(bars) == {"depth (m)", "|error| (m)"}  # one bar for GT and prediction (one scale), one for the error
    assert bars["depth (m)"].get_ylim()[1] == pytest.approx(4.5)  # the scale's top: the largest depth shown
    assert fig.get_suptitle().endswith("RANDOM WEIGHTS")
    gt_image = panels[1].images[0]
    assert gt_image.get_array().mask[:, 0].all() and tuple(gt_image.get_cmap().get_bad()[:3]) == (0, 0, 0)  # black
    panel = depth_panel(rgb, gt, gt + 0.5)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3


def test_depth_panel_title_names_the_run_and_its_weights():
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, **TINY_V2)
    cfg = task_for("linear", "srt", "nyu").cfg  # head_weights=random
    title = panel_title(bb, srt.SRTConfig(level=2), cfg)
    assert title.startswith("NYU-v2 depth (srt protocol): dinov2_vits14, +SRT L=2, linear head with RANDOM head")
    assert title.endswith("RANDOM WEIGHTS (a pipeline check, not a result)")
    assert ", baseline," in panel_title(bb, srt.SRTConfig(level=0), cfg)


def test_cli_on_saved_predictions(sample, tmp_path, capsys):
    items = depth_eval.list_items(sample / "NYU", "toolbox")
    for it in items:  # the ground truth itself, stored as a prediction: perfect scores
        gt = depth_eval.read_depth(it.depth, "toolbox")
        path = tmp_path / "pred" / f"{it.id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth_eval.depth_to_png(gt)).save(path)
    assert depth_eval.main(["--pred-dir", str(tmp_path / "pred"), "--data-root", str(sample / "NYU")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a1"] == 1.0 and out["RMSE"] == 0.0 and out["n_images"] == len(items)


# ----------------------------------------------------------------------------------------------- Table 2


def write_depth_run(root: Path, rel: str, level: int, rmse: float, variant: dict, **task) -> None:
    """A metrics.json as run.py writes it for task=depth (variant: the non-default settings)."""
    from eval.tables import DEPTH_METRICS

    task = {"name": "depth", "protocol": "toolbox", "head": "linear", "output_ensemble": False, **task}
    record = {
        "metrics": {m: (rmse if m == "RMSE" else 0.5) for m in DEPTH_METRICS},
        "variant": variant,
        "finished": "2026-01-01T00:00:00+00:00",
        "backbone": {"name": "dinov2_vits14", "weights": "pretrained timm/vit_small_patch14_dinov2.lvd142m"},
        "config": {"task": task, "backbone": {"name": "dinov2_vits14"}, "srt": {"method": "shift", "level": level}},
    }
    (root / rel).mkdir(parents=True)
    (root / rel / "metrics.json").write_text(json.dumps(record))


def test_table2_rows_and_protocol_columns(tmp_path):
    from eval import tables

    srt_dpt = {"task.protocol": "srt", "task.head": "dpt"}
    write_depth_run(tmp_path, "a", 0, 0.400, srt_dpt, protocol="srt", head="dpt")
    write_depth_run(tmp_path, "b", 3, 0.300, srt_dpt, protocol="srt", head="dpt")
    write_depth_run(
        tmp_path,
        "c",
        3,
        0.500,
        {**srt_dpt, "task.output_ensemble": True},
        protocol="srt",
        head="dpt",
        output_ensemble=True,
    )
    write_depth_run(tmp_path, "d", 0, 0.360, {"task.head": "dpt"}, head="dpt")
    [t2] = tables.build_tables(tmp_path, only=2)[0]
    v = t2.values.set_index(["backbone", "head", "method"])
    assert "settings" not in t2.values  # head, +OE and protocol are labels, not variants
    row = v.loc[("dinov2_vits14", "dpt", "+SRT")]
    assert row["srt RMSE"] == 0.300 and row["srt RMSE (paper)"] == 0.334
    assert row["rel. gain srt RMSE %"] == pytest.approx(25.0)  # 0.400 -> 0.300
    oe = v.loc[("dinov2_vits14", "dpt", "+OE")]
    assert (
        oe["srt RMSE"] == 0.500
        and oe["srt RMSE (paper)"] == 0.347
        and oe["rel. gain srt RMSE %"] == pytest.approx(-25.0)
    )
    base = v.loc[("dinov2_vits14", "dpt", "baseline")]
    assert base["toolbox RMSE"] == 0.360 and math.isnan(base["toolbox RMSE (paper)"]) and base["srt RMSE"] == 0.400


def test_data_files_are_the_protocols_files(sample):
    toolbox = task_for(protocol="toolbox", root=sample / "NYU").data_files()
    assert (
        len(toolbox.files) == 7 and "nyu_test.txt" in toolbox.files and "kitchen/sync_depth_00007.png" in toolbox.files
    )
    srt_files = task_for(protocol="srt", root=sample / "nyu_v2", max_images=2).data_files()
    assert sorted(srt_files.files) == [f"testing/{d}/0000{i}.png" for d in ("depths", "images") for i in (0, 1)]
    assert toolbox.identity()["name"] == "NYU-v2 (toolbox layout)"


def test_a_depth_map_without_valid_pixels_stops_the_run_or_is_excluded_and_counted(tmp_path):
    root = make_sample(tmp_path / "s") / "nyu_v2"
    bad = root / "testing" / "depths" / "00001.png"
    Image.fromarray(np.zeros((480, 640), np.uint16)).save(bad)  # 16-bit, every pixel 0 = invalid
    with pytest.raises(depth_eval.InvalidGroundTruthError, match=r"00001\.png has 0 valid pixels of 307200"):
        task_for(protocol="srt", root=root, max_images=2).check_data()
    task = task_for(protocol="srt", root=root, max_images=2, skip_invalid=True, n_visualizations=0)
    task.check_data()
    bb = srt.load_backbone("dinov2_vits14", pretrained=False, **TINY_V2)
    metrics, _ = run_task(task, bb, tmp_path / "run")
    assert metrics["n_images"] == 1 and metrics["n_excluded"] == 1
    assert all(math.isfinite(metrics[k]) for k in depth_eval.SRT_METRICS)
    assert list(task.record_notes()["excluded_images"]) == ["00001"]
    assert not (tmp_path / "run" / "depth_predictions" / "00001.png").exists()  # not even predicted
    assert [r.split(",")[0] for r in (tmp_path / "run" / "per_image.csv").read_text().splitlines()] == [
        "image",
        "00000",
    ]


def test_the_runner_records_excluded_images_in_metrics_json(tmp_path):
    """python run.py task=depth task.skip_invalid=true: n_images / n_excluded in the metrics, the excluded ids
    and why in metrics.json (the summary line shows the counts; the log names each id)."""
    import json

    from hydra import compose, initialize_config_dir

    from tasks import runner

    data = make_sample(tmp_path / "s")
    Image.fromarray(np.zeros((480, 640), np.uint16)).save(data / "nyu_v2" / "testing" / "depths" / "00000.png")
    overrides = [
        "task=depth", "backbone=dinov2_vits14", "backbone.pretrained=false",
        "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}", f"paths.data_root={data}",
        f"paths.results_root={tmp_path / 'results'}", "task.protocol=srt", "task.head_weights=random",
        "task.max_images=2", "task.n_visualizations=0", "task.skip_invalid=true", "progress=false", "device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    record = runner.execute(cfg, tmp_path / "run")
    assert record.metrics["n_images"] == 1.0 and record.metrics["n_excluded"] == 1.0
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(stored["excluded_images"]) == ["00000"] and "0 valid pixels" in stored["excluded_images"]["00000"]
    assert "n_excluded=1" in record.summary_line()
