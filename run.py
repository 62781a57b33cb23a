"""Hydra entry point: compose the config, hand it to the runner, report.

    python run.py task=davis srt.level=3
    python run.py -m task=davis srt.level=0,1,2,3,4,5
    python run.py -m +experiment=table1

The pipeline (plan, checks, model, task, records, shards) is tasks/runner.py; the defaults registered with
Hydra and the check of override names are tasks/command_line.py. Bad input is one paragraph on stderr and exit
code 1; ``debug=true`` or ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tasks import command_line, runner

command_line.register_configs()

#: the process of ``python run.py``: jobs running in it print their own bad-input paragraph (runner.run_job)
_ENTRY_PID = None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    runner.run_job(cfg, Path(HydraConfig.get().runtime.output_dir), report=os.getpid() == _ENTRY_PID)


if __name__ == "__main__":
    _ENTRY_PID = os.getpid()
    command_line.check_override_keys(sys.argv[1:])
    command_line.check_results_root(sys.argv[1:])
    main()
    failed = runner.FAILED_JOBS
    if len(failed) > 1:
        print(f"error: {len(failed)} jobs stopped on bad input (each named above)", file=sys.stderr)
    sys.exit(1 if failed else 0)
