"""Every config group option and every experiment preset composes with Hydra and passes the runner's checks.

Presets are discovered by globbing conf/experiment/*.yaml, so presets added later are covered too; each of
their sweep combinations is composed and planned (settings typed and validated, task built) without
building a model. Also: the run directory is a deterministic function of the config, and bad settings
give errors that name the setting.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import run  # noqa: E402  (the entry point module; importing it does not start Hydra)
import srt  # noqa: E402
import tasks  # noqa: E402
from tasks import results  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/\S+' is validated against ConfigStore schema:UserWarning"
)

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


def compose_cfg(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def options(group: str) -> list[str]:
    """Every option of a config group, including nested ones (task=demo/davis)."""
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml"))


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_sample_data import make_sample_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    root = tmp_path_factory.mktemp("sample")
    make_sample_data(root)
    return root


def test_config_groups_exist_with_the_fixed_defaults():
    cfg = compose_cfg(["task=toy"], hydra_cfg=True)
    assert cfg.backbone.name == "dino_vits16" and cfg.srt.level == 3 and cfg.logger.name == "none"
    assert OmegaConf.to_container(cfg.paths)["data_root"] == "${oc.env:SRT_DATA,data}"
    assert cfg.paths.results_root == "results"
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    defaults = OmegaConf.load(CONF / "config.yaml").defaults
    assert {"task": "davis"} in [OmegaConf.to_container(d) for d in defaults if not isinstance(d, str)]


def test_one_backbone_config_per_registry_name():
    assert options("backbone") == sorted(srt.BACKBONES)


@pytest.mark.parametrize("name", options("backbone"))
def test_backbone_option_composes_and_validates(name):
    cfg = compose_cfg([f"backbone={name}", "task=toy"])
    plan = run.plan(cfg)
    assert plan.backbone.name == name and plan.backbone.pretrained is True and plan.backbone.model_kwargs == {}
    # every SRTConfig field is settable and validated against this backbone's patch size
    assert srt.BACKBONES[name].patch_size > plan.srt.level


@pytest.mark.parametrize("name", options("srt"))
def test_srt_option_composes_and_validates(name):
    cfg = compose_cfg([f"srt={name}", "task=toy"])
    plan = run.plan(cfg)
    assert set(OmegaConf.to_container(cfg.srt)) == {f for f in srt.SRTConfig.__dataclass_fields__}
    expected = {"default": ("shift", 3), "baseline": ("shift", 0), "jitter": ("jitter", 3)}
    if name in expected:
        assert (plan.srt.method, plan.srt.level) == expected[name]
        assert (
            run.method_label(plan.srt) == {"default": "+SRT", "baseline": "baseline", "jitter": "naive ensemble"}[name]
        )


@pytest.mark.parametrize("name", options("logger"))
def test_logger_option_composes_and_validates(name, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    plan = run.plan(compose_cfg([f"logger={name}", "task=toy"]))
    assert plan.logger.name == name
    if name == "wandb":
        assert plan.logger.mode == "offline"  # offline unless WANDB_MODE says otherwise


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert run.plan(compose_cfg(["logger=wandb", "task=toy"])).logger.mode == "disabled"


@pytest.mark.parametrize("name", options("task"))
def test_task_option_composes_and_builds(name, sample_root):
    cfg = compose_cfg([f"task={name}", f"paths.data_root={sample_root}"])
    assert cfg.task.name in tasks.TASKS, f"conf/task/{name}.yaml names an unregistered task {cfg.task.name!r}"
    plan = run.plan(cfg)
    assert isinstance(plan.task, tasks.task_class(cfg.task.name))


def test_data_root_comes_from_srt_data(monkeypatch, tmp_path):
    monkeypatch.setenv("SRT_DATA", str(tmp_path))
    assert compose_cfg(["task=toy"]).paths.data_root == str(tmp_path)


@pytest.mark.parametrize(
    "launcher,target",
    [
        ("basic", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_options_compose(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}", "task=toy"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "joblib":
        assert cfg.hydra.launcher.n_jobs == 2
    if launcher == "submitit_slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0  # runs resume, so resubmission after a timeout is safe


def _sweep_combinations(params) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [
        [f"{o.key_or_group}={v}" for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
        for o in parsed
    ]
    return [list(c) for c in itertools.product(*choices)]


EXPERIMENTS = options("experiment")


def test_demo_preset_exists():
    assert "demo" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_preset_composes_and_every_sweep_job_plans(name, sample_root):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.lstrip().startswith("# @package _global_"), f"conf/experiment/{name}.yaml must be a _global_ package"
    base = [f"+experiment={name}", f"paths.data_root={sample_root}"]
    cfg = compose_cfg(base, hydra_cfg=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    combos = _sweep_combinations(params) if params else [[]]
    dirs = set()
    for combo in combos:
        job = compose_cfg(base + combo, hydra_cfg=True)
        plan = run.plan(job)
        assert plan.task is not None
        dirs.add(job.hydra.run.dir)
    assert len(dirs) == len(combos), f"{name}: sweep jobs share a run directory: {sorted(dirs)}"


def test_demo_preset_is_tiny_random_and_sweeps_levels_0_and_3():
    cfg = compose_cfg(["+experiment=demo"], hydra_cfg=True)
    assert cfg.backbone.pretrained is False and cfg.backbone.model_kwargs.depth == 2
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {"srt.level": "0,3"}


# ----------------------------------------------------------------------------------------------
# The run directory


def run_dir(overrides: list[str]) -> str:
    return compose_cfg(["task=toy", *overrides], hydra_cfg=True).hydra.run.dir


def test_run_dir_is_a_function_of_the_config():
    a = run_dir(["srt.level=2"])
    assert a == run_dir(["srt.level=2"])  # same command, same directory: resumable
    assert a.startswith("results/toy/dino_vits16/srt-L2-")
    assert run_dir(["srt.level=0"]).startswith("results/toy/dino_vits16/baseline-")
    assert run_dir(["srt=jitter"]).startswith("results/toy/dino_vits16/jitter-L3-")
    assert run_dir(["srt.level=2", *TINY]).startswith("results/toy/dino_vits16-random/srt-L2-")
    assert run_dir(["srt.level=2", "srt.fill=reflect"]) != a  # any result-changing setting: another directory
    assert run_dir(["srt.level=2", "task.n_images=3"]) != a
    assert run_dir(["srt.level=2", "srt.batch_size=4"]) == a  # speed settings do not change results
    assert run_dir(["srt.level=2", "paths.results_root=/elsewhere"]).startswith("/elsewhere/toy/")


@pytest.mark.parametrize("bad", ["srt.level=abc", "srt.method=3", "task.n_images=lots", "backbone.name=???"])
def test_run_dir_resolves_even_for_bad_settings(bad):
    # Hydra resolves the run directory before the runner can report the bad setting by name
    assert run_dir([bad]).startswith("results/toy/")


def test_run_dir_matches_the_runner_and_the_sweep_subdir():
    cfg = compose_cfg(["task=toy", "srt.level=1"], hydra_cfg=True)
    assert cfg.hydra.run.dir == f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
    assert cfg.hydra.run.dir == str(run.plan(compose_cfg(["task=toy", "srt.level=1"])).run_dir)
    assert cfg.hydra.job.chdir is False


def test_dataset_appears_in_the_run_dir(sample_root):
    if "saliency" not in tasks.importable_tasks() or not (CONF / "task" / "saliency.yaml").exists():
        pytest.skip("the saliency task is not available yet")
    d = compose_cfg(["task=saliency", "task.dataset=DUTS-TE", "srt.level=0"], hydra_cfg=True).hydra.run.dir
    assert d.startswith("results/saliency/DUTS-TE/dino_vits16/baseline-")


# ----------------------------------------------------------------------------------------------
# Bad settings: named errors, before any model is built


@pytest.mark.parametrize(
    "override,message",
    [
        ("srt.level=abc", "srt.level='abc' has the wrong type; expected int"),
        ("srt.level=16", "srt.level=16 is not valid for patch size 16"),
        ("srt.fill=blurry", "srt.fill='blurry' is not valid; expected one of zero, reflect, replicate"),
        ("+srt.levle=3", "srt.levle is not a valid setting; valid settings of srt: method, level"),
        ("backbone.name=vit_huge", "backbone.name='vit_huge' is not valid; expected one of dino_vits16"),
        ("+backbone.wieghts=x", "backbone.wieghts is not a valid setting"),
        ("task.n_images=0", "task.n_images=0 is not valid"),
        ("task.n_images=many", "task.n_images='many' has the wrong type; expected int"),
        ("+task.n_imgs=3", "task.n_imgs is not a valid setting; valid settings of task: n_images, image_size, seed"),
        ("logger.name=tensorboard", "logger.name='tensorboard' is not valid; expected one of none, csv, wandb"),
        ("device=gpu", "device='gpu' is not valid"),
        ("force=maybe", "(top level).force='maybe' has the wrong type; expected bool"),
    ],
)
def test_bad_settings_are_named_before_any_model_is_built(override, message, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    cfg = compose_cfg(["task=toy", override])
    with pytest.raises(ValueError) as err:
        run.execute(cfg, run_dir=Path("/nonexistent/never-created"))
    assert message in str(err.value)
    assert not Path("/nonexistent/never-created").exists()


def test_command_line_unknown_keys_list_the_valid_settings():
    with pytest.raises(SystemExit) as err:
        run.check_override_keys(["task=toy", "srt.levle=3"])
    assert "srt.levle is not a valid setting; valid settings of srt: method, level" in str(err.value)
    with pytest.raises(SystemExit) as err:
        run.check_override_keys(["task=toy", "task.n_imgs=3"])
    assert "valid settings of task: n_images, image_size, seed" in str(err.value)
    with pytest.raises(SystemExit) as err:
        run.check_override_keys(["forse=true"])
    assert "top-level settings: paths, backbone, srt, task, logger, force" in str(err.value)
    # valid overrides, sweeps, appends and Hydra's own keys pass
    run.check_override_keys(
        [
            "-m",
            "task=toy",
            "srt.level=0,1",
            "backbone.model_kwargs={depth:2}",
            "+experiment=demo",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=1",
            "force=true",
        ]
    )


def test_unknown_and_unavailable_tasks_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'nope'; valid tasks: .*toy"):
        tasks.task_class("nope")
    monkeypatch.setitem(tasks.TASKS, "ghost", "tasks.ghost_not_written_yet:GhostTask")
    with pytest.raises(tasks.TaskUnavailableError, match="task 'ghost' is registered .* does not exist yet"):
        tasks.task_class("ghost")
    assert "ghost" not in tasks.importable_tasks() and "toy" in tasks.importable_tasks()
    assert tasks.task_class("toy").__name__ == "ToyTask"  # the missing module breaks nothing else


def test_task_config_without_name_is_an_error():
    with pytest.raises(ValueError, match="the task config has no 'name'"):
        tasks.build_task({"n_images": 2})


def test_results_resolver_is_registered_on_import():
    assert OmegaConf.has_resolver("srt_run_subdir")
    assert results.method_tag("shift", 0) == "baseline" and results.method_tag("shift", 4) == "srt-L4"
