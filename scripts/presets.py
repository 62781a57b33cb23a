"""The paper's presets (conf/experiment/) expanded into their runs, as ``python run.py -m +experiment=NAME`` would:
one list of overrides per job of the preset's sweep (``hydra.sweeper.params``), composed with Hydra's own
parser, so that ``scripts.paper`` and ``scripts.get_weights`` see exactly the runs the presets define."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

#: what `make paper` runs, in the order of the report: Tables 1-4, Fig. 3, the upsampler Pareto points, Fig. 1
PAPER_PRESETS = ("table1", "table2", "table3", "table4_discovery", "table4_retrieval", "fig3", "upsamplers", "fig1")


@contextmanager
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on conf/ with the runner's settings registered in Hydra's ConfigStore."""
    from hydra import initialize_config_dir

    from tasks import command_line

    command_line.register_configs()  # the dataclass defaults, as run.py registers them

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def sweep(preset: str, overrides: Sequence[str] = ()) -> list[list[str]]:
    """The jobs of ``+experiment=<preset>``: for each, the sweep overrides (``key=value``), in Hydra's order
    (the cartesian product of the preset's sweeper params, the first key varying slowest). Call inside
    :func:`hydra_conf`."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose("config", overrides=[f"+experiment={preset}", *overrides], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params or {})
    user_keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    axes = []
    for key, value in params.items():
        if key.lstrip("+~") in user_keys:  # a command-line override replaces the preset's sweep of that key
            continue
        parsed = OverridesParser.create().parse_overrides([f"{key}={value}"])[0]
        values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [str(parsed.value())]
        axes.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*axes)]


def compose_job(preset: str, job: Sequence[str], overrides: Sequence[str] = ()) -> DictConfig:
    """The job's config as run.py composes it (call inside :func:`hydra_conf`)."""
    from hydra import compose

    return compose("config", overrides=[f"+experiment={preset}", *job, *overrides])


def job_command(preset: str, job: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """The run.py arguments of one job (a single run: the same config as the job of the multirun)."""
    return [f"+experiment={preset}", *job, *overrides]
