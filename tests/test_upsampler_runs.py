"""The ``upsampler`` config group in the runner: options compose, the default changes nothing (run key, run
directory, extractor), other methods get their own run identity and a cost record; the Pareto figure and table;
the fidelity task; DAVIS and TokenCut on the fine grid."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
import tasks  # noqa: E402
from eval import fidelity, pareto, tables  # noqa: E402
from tasks import item_cache, run_identity, runner  # noqa: E402  # noqa: E402

CONF = REPO / "conf"
TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:1,embed_dim:64,num_heads:2}", "progress=false"]


def compose_cfg(overrides, hydra_cfg=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", [*options("upsampler"), "srt"])
def test_upsampler_option_composes_and_validates(name, tmp_path, monkeypatch):
    overrides = [f"upsampler={name}", "task=toy", "backbone=dinov2_vits14"]
    if name in srt.upsamplers.HUB_PROJECTS:  # the runner locates a learned upsampler's repository in the plan
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        monkeypatch.setattr(torch.hub, "_hub_dir", None)
        with pytest.raises(
            srt.upsamplers.HubUpsamplerUnavailableError, match="not in the torch hub cache|no hub entry"
        ):
            runner.plan(compose_cfg(overrides))
        repo = tmp_path / "hub" / (srt.upsamplers.HUB_PROJECTS[name].github.replace("/", "_") + "_main")
        repo.mkdir(parents=True)
        (repo / "hubconf.py").write_text("dependencies = []\n")
        if name == "jafar":
            overrides += ["upsampler.hub_entry=my_jafar", f"upsampler.hub_dir={repo}"]
    cfg = compose_cfg(overrides)
    assert set(OmegaConf.to_container(cfg.upsampler)) == set(srt.UpsamplerConfig.__dataclass_fields__)
    assert runner.plan(cfg).upsampler.method == name


@pytest.mark.parametrize("name", options("pareto"))
def test_pareto_points_compose_and_plan(name):
    cfg = compose_cfg([f"+pareto={name}", "task=toy", "backbone=dinov2_vits14"])
    plan = runner.plan(cfg)
    assert plan.upsampler.method != "srt"


def test_the_default_upsampler_changes_nothing(tmp_path):
    with_group = compose_cfg(["task=toy", *TINY, f"paths.results_root={tmp_path}"], hydra_cfg=True)
    assert with_group.upsampler.method == "srt"
    task_cfg, bb, srt_cfg, up = with_group.task, with_group.backbone, with_group.srt, with_group.upsampler
    # the run key, run directory and item cache key are those of a config without the group
    task = tasks.build_task(task_cfg)
    assert run_identity.run_key(task, bb, srt_cfg, None, up) == run_identity.run_key(task, bb, srt_cfg, None)
    subdir = run_identity.run_subdir_of_config(task_cfg, bb, srt_cfg)
    assert run_identity.run_subdir_of_config(task_cfg, bb, srt_cfg, up) == subdir
    assert with_group.hydra.run.dir.endswith(subdir)
    assert item_cache.cache_key(bb, srt_cfg, {}, None, up) == item_cache.cache_key(bb, srt_cfg, {})
    p = runner.plan(with_group)
    backbone = srt.load_backbone("dino_vits16", pretrained=False, depth=1, embed_dim=64, num_heads=2)
    extractor = runner.build_feature_extractor(backbone, p)
    assert type(extractor) is srt.StochasticResonance and extractor.level == 3
    without = OmegaConf.masked_copy(with_group, [k for k in with_group if k not in ("upsampler", "hydra")])
    assert runner.plan(without).upsampler.method == "srt"
    record = runner.execute(compose_cfg(["task=toy", "task.n_images=1", *TINY, f"paths.results_root={tmp_path}"]))
    written = json.loads((Path(record.run_dir) / "metrics.json").read_text())
    assert "cost" not in written and "upsampler" not in written  # the record it always wrote


def test_upsampler_runs_get_their_own_identity_and_a_cost_record(tmp_path):
    base = ["task=toy", "task.n_images=2", "task.image_size=56", "backbone=dinov2_vits14", *TINY]
    base.append(f"paths.results_root={tmp_path}")
    default = runner.execute(compose_cfg(base + ["srt=baseline"]))
    bilinear = runner.execute(compose_cfg(base + ["upsampler=bilinear"]))
    stride = runner.execute(compose_cfg(base + ["upsampler=stride", "upsampler.stride=7"]))
    assert default.cost is None and default.upsampler is None
    assert Path(bilinear.run_dir).name.startswith("bilinear-") and Path(stride.run_dir).name.startswith("stride-s7-")
    assert len({default.run_key_hash, bilinear.run_key_hash, stride.run_key_hash}) == 3
    data = json.loads((Path(stride.run_dir) / "metrics.json").read_text())
    cost = data["cost"]
    assert cost["method"] == "stride" and cost["passes"] == 1 and cost["image_size"] == [56, 56]
    assert cost["tokens_per_pass"] == 64 and cost["pass_equivalents"] > 4  # (p/s)^2 = 4x the tokens, attention 16x
    assert cost["seconds_per_image"] > 0 and cost["measured_calls"] == 2
    assert data["upsampler"]["method"] == "stride" and data["variant"]["upsampler.stride"] == 7
    assert data["memory"]["process_peak_rss_mib"] >= (cost["peak_mib"] or 0)
    assert data["method"] == "stride reduction" and bilinear.method == "bilinear"
    # measure=false is not part of the identity (how a run is measured, not what it computes)
    up = data["upsampler"]
    assert run_identity.upsampler_key_part({**up, "measure": False}) == run_identity.upsampler_key_part(up)
    assert run_identity.upsampler_key_part({**up, "stride": 2}) != run_identity.upsampler_key_part(up)


def test_runner_names_upsampler_settings():
    with pytest.raises(ValueError, match=r"^upsampler.stride=5 is not valid; expected a divisor of the patch size 14"):
        runner.plan(compose_cfg(["task=toy", "backbone=dinov2_vits14", "upsampler=bilinear", "upsampler.stride=5"]))
    with pytest.raises(ValueError, match=r"^upsampler.stride=7 is not used by upsampler.method=srt"):
        runner.plan(compose_cfg(["task=toy", "backbone=dinov2_vits14", "upsampler.stride=7"]))
    with pytest.raises(
        ValueError, match=r"^srt.level=3 is not valid for upsampler.method=stride_srt at upsampler.stride=2"
    ):
        runner.plan(compose_cfg(["task=toy", "upsampler=stride_srt", "upsampler.stride=2"]))
    with pytest.raises(ValueError, match=r"^upsampler.hub_entry is only used by the learned upsamplers"):
        runner.plan(compose_cfg(["task=toy", "upsampler=stride", "upsampler.hub_entry=x"]))


def test_pareto_front_by_hand():
    cost = [1.0, 2.0, 2.0, 4.0, 3.0, math.nan]
    value = [0.5, 0.6, 0.55, 0.6, 0.7, 0.9]
    # 0.55 at cost 2 is beaten by 0.6 at cost 2; 0.6 at cost 4 by 0.6 at cost 2; a missing cost is never on it
    assert pareto.pareto_front(cost, value) == [True, True, False, False, True, False]
    assert pareto.pareto_front([1.0, 2.0], [3.0, 1.0], lower_is_better=True) == [True, True]
    assert pareto.pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties dominate nothing


def test_pareto_figure_and_table_from_runs(tmp_path):
    base = [
        "task=toy",
        "task.n_images=2",
        "task.image_size=28",
        "backbone=dinov2_vits14",
        *TINY,
        f"paths.results_root={tmp_path}",
    ]
    for point in ("nearest", "bilinear", "srt_L1", "jitter"):
        runner.execute(compose_cfg(base + [f"+pareto={point}"]))
    frame, skipped = pareto.load_points(tmp_path)
    assert not skipped
    labels = set(frame[frame["metric"] == "flip_cosine"]["label"])
    assert labels == {"nearest", "bilinear", "SRT L1, 9 shifts", "colour jitter x9 + nearest"}
    out = pareto.make_pareto_figure(tmp_path, tmp_path / "pareto.png", task="toy")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = pareto.pareto_figure(pareto.points_for(frame, "toy", "flip_cosine"), "toy", "flip_cosine")
    [row_title] = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert "weights random" in row_title and "RANDOM WEIGHTS: pipeline check only" in row_title
    built, _ = tables.build_tables(tmp_path)
    table = next(t for t in built if "accuracy against cost" in t.title)
    assert list(table.cells["method"])[:2] in (["nearest", "bilinear"], ["bilinear", "nearest"])
    assert "random" in " ".join(table.notes)
    text = tables.to_markdown(table)
    assert "| front |" in text.replace("front |", "front |") and "compute (pass eq.)" in text
    # the table's front column agrees with the front computed here
    values = dict(zip(table.values["method"], table.values["front"]))
    groups = pareto.points_for(frame, "toy", "flip_cosine")
    (group,) = groups.values()
    for label, on_front in zip(group["label"], group["front_compute"]):
        assert ("C" in values[label]) == bool(on_front)


def test_fidelity_scores_by_hand():
    a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])  # vectors: (1,0) (0,1) / (1,0) (1,0)
    # 1 - cos per pair: right: row0 1, row1 0; down: col0 0, col1 1
    edges = fidelity.edge_map(a)
    assert torch.allclose(edges, torch.tensor([[0.5, 1.0], [0.0, 0.5]], dtype=torch.float64))
    same = fidelity.fidelity_scores(a, 3 * a)
    assert same == pytest.approx({"cosine": 1.0, "edge_corr": 1.0, "edge_ratio": 1.0})
    flat = fidelity.fidelity_scores(torch.ones(2, 2, 2), a)
    assert flat["edge_ratio"] == pytest.approx(0, abs=1e-12) and flat["cosine"] == pytest.approx(2**-0.5)
    with pytest.raises(ValueError, match="same shape"):
        fidelity.fidelity_scores(a, a[:, :1])


def test_fidelity_task_at_the_token_stride_is_exact(tmp_path, fixtures_dir):
    """At s = p the field is the plain grid and the reference is the same pass: every score is exactly 1."""
    base = [
        "task=fidelity",
        f"task.root={fixtures_dir / 'davis' / 'JPEGImages' / '480p'}",
        "task.max_images=2",
        "task.short_side=56",
        "backbone=dinov2_vits14",
        *TINY,
        f"paths.results_root={tmp_path}",
    ]
    exact = runner.execute(compose_cfg(base + ["upsampler=nearest", "upsampler.stride=14"])).metrics
    assert exact["cosine"] == pytest.approx(1.0, abs=1e-6) and exact["edge_corr"] == pytest.approx(1.0, abs=1e-6)
    assert exact["n_images"] == 2
    fine = runner.execute(compose_cfg(base + ["upsampler=bilinear"])).metrics
    assert 0 < fine["cosine"] < 1 and fine["edge_ratio"] < 1  # bilinear is smoother than the finer features
    assert (Path(tmp_path) / "fidelity").exists()


@pytest.mark.slow
def test_davis_and_tokencut_on_the_fine_grid(tmp_path, fixtures_dir):
    base = ["backbone=dinov2_vits14", *TINY, f"paths.results_root={tmp_path}"]
    davis = runner.execute(
        compose_cfg(
            base
            + [
                "task=davis",
                f"task.root={fixtures_dir / 'davis'}",
                "task.sequences=[blackswan]",
                "task.max_frames=3",
                "task.short_side=112",
                "upsampler=stride",
            ]
        )
    )
    assert davis.cost["stride"] == 7 and davis.cost["image_size"] == [112, 196]
    assert 0 <= davis.metrics["J&F-Mean"] <= 1
    saliency = runner.execute(
        compose_cfg(
            base
            + [
                "task=saliency",
                f"task.root={fixtures_dir / 'saliency' / 'ECSSD'}",
                "task.max_images=1",
                "upsampler=srt_dense",
                "srt.level=1",
                "srt.samples=2",
            ]
        )
    )
    assert saliency.cost["passes"] == 2 and saliency.cost["stride"] == 7
    assert 0 <= saliency.metrics["maxF"] <= 100
