"""The runner's top-level settings (``force``, ``device``, ``progress``, ``seed``, ``debug``, ``shard``), and the
checks of the settings that need no model (:func:`check_model_free_settings`).

In a module of its own, not in run.py: parallel launchers (joblib, submitit) pickle run.py's functions by
value into their worker processes, where a dataclass defined in ``__main__`` could not have its type hints
(``Optional[str]``) resolved by OmegaConf; a class of an importable module is pickled by reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from srt.errors import UserError

from .shard import Shard


@dataclass
class RunnerConfig:
    """Top-level settings besides the config groups."""

    force: bool = False  # recompute even when the run directory holds a finished run
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N | mps
    progress: bool = True  # tqdm bars
    seed: int = 0  # torch's global seed before the task runs
    debug: bool = False  # show the traceback of errors in the input too (as HYDRA_FULL_ERROR=1)
    # i/n: compute only shard i (0 <= i < n) of the items into the run's item cache, then stop without metrics
    # (shards/<i>-of-<n>.json records it); null: a plain run. Not part of the run's identity (docs/cluster.md)
    shard: Optional[str] = None
    # refuse a run whose estimated peak memory exceeds what the device has available (tasks/memory.py)
    check_memory: bool = True

    def validate(self) -> RunnerConfig:
        device = self.device
        if not (device in ("cpu", "cuda", "mps", "auto") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise UserError(f"device={device!r} is not valid; expected cpu, cuda, cuda:N, mps or auto")
        if self.run_shard() is not None and self.force:
            raise UserError(
                f"force=true cannot be combined with shard={self.shard}: it clears the item cache the other shards "
                "are writing into; to recompute a sharded run, delete its run directory, then run the shards again"
            )
        return self

    def run_shard(self) -> Optional[Shard]:
        """The parsed ``shard`` setting (None: a plain run); UserError naming the setting when malformed."""
        return Shard.parse(self.shard, "shard")


def check_model_free_settings(backbone_cfg: Any, srt_cfg: Any, upsampler_cfg: Any = None) -> tuple[Any, Any, Any]:
    """``backbone.*``, ``srt.*`` and ``upsampler.*`` typed and checked as far as no model is needed (no torch or
    timm is imported): a bad value there is named in well under a second. Returns the typed configs; the runner
    checks ``srt.*`` and ``upsampler.*`` again against the model's patch size and depth."""
    import srt

    from .config_schema import typed_config

    backbone = typed_config(srt.BackboneConfig, backbone_cfg, "backbone").validate(group="backbone")
    srt_typed = typed_config(srt.SRTConfig, srt_cfg, "srt").validate(group="srt")
    upsampler = typed_config(srt.UpsamplerConfig, upsampler_cfg if upsampler_cfg is not None else {}, "upsampler")
    upsampler.validate(group="upsampler", srt=srt_typed)
    return backbone, srt_typed, upsampler
