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

import srt  # noqa: E402
import tasks  # noqa: E402
from eval.run_record import method_label, method_tag  # noqa: E402
from tasks import command_line, runner  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/\S+' is validated against ConfigStore schema:UserWarning"
)

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


def compose_cfg(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def options(group: str) -> list[str]:
    """Every option of a config group, including nested ones (task=demo/davis): YAML files and the entries
    run.py registers in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.object_type import ObjectType

    files = {str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml")}
    store = ConfigStore.instance()
    stored = (
        {n.removesuffix(".yaml") for n in store.list(group)} if store.get_type(group) == ObjectType.GROUP else set()
    )
    return sorted(files | stored)


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
    plan = runner.plan(cfg)
    assert plan.backbone.name == name and plan.backbone.pretrained is True and plan.backbone.model_kwargs == {}
    # every SRTConfig field is settable and validated against this backbone's patch size
    assert srt.BACKBONES[name].patch_size > plan.srt.level


@pytest.mark.parametrize("name", options("srt"))
def test_srt_option_composes_and_validates(name):
    cfg = compose_cfg([f"srt={name}", "task=toy"])
    plan = runner.plan(cfg)
    assert set(OmegaConf.to_container(cfg.srt)) == {f for f in srt.SRTConfig.__dataclass_fields__}
    expected = {"default": ("shift", 3), "baseline": ("shift", 0), "jitter": ("jitter", 3)}
    if name in expected:
        assert (plan.srt.method, plan.srt.level) == expected[name]
        label = method_label(OmegaConf.to_container(cfg.srt), OmegaConf.to_container(cfg.task))
        assert label == {"default": "+SRT", "baseline": "baseline", "jitter": "naive ensemble"}[name]


@pytest.mark.parametrize("name", options("logger"))
def test_logger_option_composes_and_validates(name, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    plan = runner.plan(compose_cfg([f"logger={name}", "task=toy"]))
    assert plan.logger.name == name
    if name == "wandb":
        assert plan.logger.mode == "offline"  # offline unless WANDB_MODE says otherwise


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert runner.plan(compose_cfg(["logger=wandb", "task=toy"])).logger.mode == "disabled"


@pytest.mark.parametrize("name", options("task"))
def test_task_option_composes_and_builds(name, sample_root):
    # DINOv2 publishes NYU depth heads for DINOv2 backbones only: plan refuses task=depth on the default dino_vits16
    backbone = ["backbone=dinov2_vits14"] if name == "depth" else []
    cfg = compose_cfg([f"task={name}", f"paths.data_root={sample_root}", *backbone])
    assert cfg.task.name in tasks.TASKS, f"conf/task/{name}.yaml names an unregistered task {cfg.task.name!r}"
    plan = runner.plan(cfg)
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
        [f"{o.get_key_element()}={v}" for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
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
        plan = runner.plan(job)
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
    assert cfg.hydra.run.dir == str(runner.plan(compose_cfg(["task=toy", "srt.level=1"])).run_dir)
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
        runner.execute(cfg, run_dir=Path("/nonexistent/never-created"))
    assert message in str(err.value)
    assert not Path("/nonexistent/never-created").exists()


def test_command_line_unknown_keys_list_the_valid_settings():
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(["task=toy", "srt.levle=3"])
    assert "srt.levle is not a valid setting; valid settings of srt: method, level" in str(err.value)
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(["task=toy", "task.n_imgs=3"])
    assert "valid settings of task: n_images, image_size, seed" in str(err.value)
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(["forse=true"])
    assert "top-level settings: paths, backbone, srt, task, logger, upsampler, force" in str(err.value)
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(["upsampler.strid=7"])
    assert "upsampler.strid is not a valid setting; valid settings of upsampler: method, stride" in str(err.value)
    # valid overrides, sweeps, appends and Hydra's own keys pass
    command_line.check_override_keys(
        [
            "-m",
            "task=toy",
            "srt.level=0,1",
            "backbone.model_kwargs={depth:2}",
            "+experiment=demo",
            "+pareto=srt_L1,stride",
            "upsampler.stride=7",
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
    assert method_tag({"method": "shift", "level": 0}, {}) == "baseline"
    assert method_tag({"method": "shift", "level": 4}, {}) == "srt-L4"


# ----------------------------------------------------------------------------------------------
# Defaults live in the dataclasses


def _defaults(schema) -> dict:
    from tasks.config_schema import defaults_of

    return {k: (None if v == {} else v) for k, v in defaults_of(schema).items()}


def _composed(cfg_node) -> dict:
    return OmegaConf.to_container(cfg_node, resolve=True)


def test_composed_defaults_are_the_dataclass_defaults(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg(["task=toy"])
    assert _composed(cfg.srt) == _defaults(srt.SRTConfig)
    assert _composed(cfg.logger) == _defaults(runner.LoggerConfig)
    assert _composed(cfg.upsampler) == _defaults(srt.UpsamplerConfig)
    assert {k: cfg[k] for k in _defaults(runner.RunnerConfig)} == _defaults(runner.RunnerConfig)
    for name in srt.BACKBONES:
        composed = _composed(compose_cfg([f"backbone={name}", "task=toy"]).backbone)
        assert composed == {**_defaults(srt.BackboneConfig), "name": name}, name
    for name in tasks.importable_tasks():
        composed = _composed(compose_cfg([f"task={name}", "paths.data_root=/d"]).task)
        expected = {"name": name, **_defaults(tasks.task_class(name).Config)}
        for key in tasks.task_class(name).data_location_settings:  # the one thing a task's YAML adds
            root = composed.pop(key, None)
            expected.pop(key, None)
            assert root is None or root.startswith("/d/"), (name, key, root)
        assert composed == expected, name
    # presets change only what they are about
    assert _composed(compose_cfg(["srt=baseline", "task=toy"]).srt) == {**_defaults(srt.SRTConfig), "level": 0}
    assert _composed(compose_cfg(["srt=jitter", "task=toy"]).srt) == {**_defaults(srt.SRTConfig), "method": "jitter"}
    csv_logger = _composed(compose_cfg(["logger=csv", "task=toy", "paths.results_root=/r"]).logger)
    assert csv_logger == {**_defaults(runner.LoggerConfig), "name": "csv", "path": "/r/runs.csv"}
    assert _composed(compose_cfg(["logger=wandb", "task=toy"]).logger) == {
        **_defaults(runner.LoggerConfig),
        "name": "wandb",
    }


@pytest.mark.parametrize(
    "path", sorted(p for g in ("srt", "logger", "task", "upsampler") for p in (CONF / g).rglob("*.yaml"))
)
def test_yaml_files_hold_only_what_differs_from_the_dataclass(path):
    group = path.relative_to(CONF).parts[0]
    values = OmegaConf.to_container(OmegaConf.load(path))
    values.pop("defaults", None)
    if group == "task":
        name = path.stem
        schema = tasks.task_class(name).Config
        base = _defaults(schema) if path.parent == CONF / "task" else _composed(compose_cfg([f"task={name}"]).task)
    else:
        schema = {"srt": srt.SRTConfig, "logger": runner.LoggerConfig, "upsampler": srt.UpsamplerConfig}[group]
        base = _defaults(schema)
    assert set(values) <= {f.name for f in schema.__dataclass_fields__.values()}, path
    repeated = {k: v for k, v in values.items() if k in base and base[k] == v}
    assert repeated == {}, f"{path.relative_to(REPO)} repeats defaults of {schema.__name__}: {repeated}"


def test_backbone_options_come_from_the_registry_not_yaml():
    assert not (CONF / "backbone").exists()
    assert not (CONF / "srt" / "default.yaml").exists() and not (CONF / "logger" / "none.yaml").exists()


def test_a_new_dataclass_field_is_a_setting_without_yaml_edits(monkeypatch):
    """Registration reads the fields: srt.step and backbone.pos_embed (added to the dataclasses only) are
    settings, and so is any field added later."""
    import dataclasses

    cfg = compose_cfg(["task=toy", "srt.step=2", "backbone.pos_embed=timm"])
    assert cfg.srt.step == 2 and cfg.backbone.pos_embed == "timm"
    set_in_yaml = {k for p in CONF.rglob("*.yaml") for k in (OmegaConf.load(p) or {}) if isinstance(k, str)}
    assert not {"step", "pos_embed"} & set_in_yaml

    grown = dataclasses.make_dataclass(
        "SRTConfig", [("novel_setting", int, dataclasses.field(default=1))], bases=(srt.SRTConfig,)
    )
    monkeypatch.setattr(srt, "SRTConfig", grown)
    try:
        command_line.register_configs()
        assert compose_cfg(["task=toy"]).srt.novel_setting == 1
        plan = runner.plan(compose_cfg(["task=toy", "srt.novel_setting=2"]))
        assert plan.srt.novel_setting == 2
        command_line.check_override_keys(["task=toy", "srt.novel_setting=2"])  # the command-line check knows it too
    finally:
        monkeypatch.undo()
        command_line.register_configs()
    assert "novel_setting" not in compose_cfg(["task=toy"]).srt


def test_validation_runs_once_per_group(monkeypatch, tmp_path):
    calls = []
    for schema in (
        srt.SRTConfig,
        srt.BackboneConfig,
        runner.LoggerConfig,
        runner.RunnerConfig,
        tasks.task_class("toy").Config,
    ):
        real = schema.validate

        def counted(self, *args, _real=real, _name=schema.__name__, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(schema, "validate", counted)
    runner.plan(compose_cfg(["task=toy"]), run_dir=tmp_path)  # (the run directory's name checks settings of its own)
    # srt.* twice by design: first without the model (a bad value is named before torch and timm are imported),
    # then against the model's patch size and depth
    expected = ["SRTConfig", "SRTConfig", "BackboneConfig", "LoggerConfig", "RunnerConfig", "ToyConfig"]
    assert sorted(calls) == sorted(expected)


# ----------------------------------------------------------------------------------------------
# Messages: the library names its arguments, the runner its settings


@pytest.mark.parametrize(
    "kwargs,library,in_runner",
    [
        ({"level": -1}, "level=-1 is not valid; expected an integer >= 0", "srt.level=-1 is not valid"),
        ({"level": 16}, "level=16 is not valid for patch size 16", "srt.level=16 is not valid for patch size 16"),
        ({"fill": "blurry"}, "fill='blurry' is not valid; expected one of zero", "srt.fill='blurry' is not valid"),
        (
            {"level": 1, "samples": 10},
            "samples=10 is not valid at level=1",
            "srt.samples=10 is not valid at srt.level=1",
        ),
        ({"stride": 5}, "stride=5 is not valid; expected a divisor of the patch size 16", "srt.stride=5 is not valid"),
    ],
)
def test_library_and_runner_phrase_the_same_check_for_their_users(kwargs, library, in_runner, tiny_kwargs):
    bb = srt.load_backbone("dino_vits16", pretrained=False, **tiny_kwargs)
    with pytest.raises(ValueError) as err:
        srt.StochasticResonance(bb, **kwargs)
    assert str(err.value).startswith(library) and "srt." not in str(err.value)
    with pytest.raises(ValueError) as err:
        runner.plan(compose_cfg(["task=toy", *(f"srt.{k}={v}" for k, v in kwargs.items())]))
    assert str(err.value).startswith(in_runner)


def test_backbone_settings_are_phrased_for_the_library_and_the_runner():
    with pytest.raises(ValueError, match=r"^name='vit_huge' is not valid; expected one of dino_vits16"):
        srt.BackboneConfig(name="vit_huge").validate()
    with pytest.raises(ValueError, match=r"^backbone.name='vit_huge' is not valid"):
        runner.plan(compose_cfg(["task=toy", "backbone.name=vit_huge"]))


@pytest.mark.slow
def test_help_and_cfg_job_show_the_groups_and_the_settings(tmp_path):
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a bare environment (caches go under this HOME)
    helped = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "backbone: " + ", ".join(sorted(srt.BACKBONES)) in helped.stdout
    assert "srt: baseline, default, jitter" in helped.stdout and "logger: csv, none, wandb" in helped.stdout
    assert "srt.SRTConfig" in helped.stdout and "_defaults" not in helped.stdout  # hidden nodes are not options
    job = subprocess.run(
        [sys.executable, "run.py", "--cfg", "job", "task=toy", "srt.level=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert job.returncode == 0, job.stderr
    printed = OmegaConf.create(job.stdout)
    assert printed.srt.level == 2 and set(printed.srt) == set(srt.SRTConfig.__dataclass_fields__)
