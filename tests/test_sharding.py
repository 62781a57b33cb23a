"""Sharded runs (``shard=i/n``, tasks/item_cache.py ``Shard``; the runner in run.py):

- the assignment is a deterministic partition of the item ids (every item in exactly one shard, the same in every
  process and for every iteration order) and pinned, so shards of one run on different machines agree;
- bad ``shard`` values and ``force=true`` with a shard are named by the runner before anything is built;
- the shard is not part of the run identity: every shard and the plain run share the run directory and the item
  cache; each shard gets its own Hydra record and log file there;
- for every task, shard 0/2 then 1/2 (which finds every item cached and computes the metrics) give the metrics of an
  unsharded run, and a plain run after missing shards computes only the missing items;
- a task that does not skip the other shards' items cannot write metrics in a shard run;
- end to end through the command line with Hydra's joblib launcher (two shards in parallel processes, then one
  plain run) on DAVIS and ECSSD fixtures: the metrics equal an unsharded run's, and the plain run computes nothing.

Timing metrics (``*_s_per_*``, ``seconds_per_image``: seconds measured per item) are the only ones left out of the comparisons: they
differ between any two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tasks  # noqa: E402
from srt.errors import UserError  # noqa: E402
from tasks import runner  # noqa: E402
from tasks.item_cache import ItemCache, item_cache_for  # noqa: E402
from tasks.run_identity import run_key, run_subdir_of_config, task_key_part  # noqa: E402
from tasks.shard import Shard, ShardFinished, shard_of  # noqa: E402

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]
COMMON = ["progress=false", "device=cpu", "srt.level=1", "srt.samples=2", *TINY]  # 2 of the 9 shifts: fast


def compose_cfg(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without the timings (seconds measured by whichever process computed the item), NaN (a metric
    with nothing to average, e.g. retrieval's Hard protocol on a tiny subset) as a string, so that == compares."""
    timing = ("_s_per_", "seconds")
    return {k: "nan" if v != v else v for k, v in metrics.items() if not any(t in k for t in timing)}


# ----------------------------------------------------------------------------------------------------------
# The assignment
# ----------------------------------------------------------------------------------------------------------
IDS = [f"image{i:04d}" for i in range(300)] + [f"ECSSD/{i:04d}" for i in range(100)] + ["dog", "cows", "a/b/c"]


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_every_item_is_in_exactly_one_shard(n):
    shards = [Shard(i, n) for i in range(n)]
    for item_id in IDS:
        assert [s.owns(item_id) for s in shards].count(True) == 1, item_id
    sizes = [sum(s.owns(i) for i in IDS) for s in shards]
    assert sum(sizes) == len(IDS) and min(sizes) > 0.5 * len(IDS) / n  # a hash, not "everything in shard 0"


def test_the_cache_skips_exactly_the_other_shards_items_in_any_order(tmp_path):
    kept = []
    for i, order in enumerate([IDS, IDS[::-1], sorted(IDS, key=lambda s: s[::-1])]):
        cache = ItemCache(tmp_path / f"c{i}", shard=Shard(i, 3))
        kept.append({item_id for item_id in order if not cache.skips(item_id)})
        assert len(cache.skipped) == len(IDS) - len(kept[-1])
    assert set().union(*kept) == set(IDS) and sum(map(len, kept)) == len(IDS)  # disjoint and complete
    assert not any(ItemCache(tmp_path / "plain").skips(i) for i in IDS)  # a plain run skips nothing


def test_the_assignment_is_pinned_and_the_same_in_every_process():
    # pinned: shards of one run started by different checkouts or machines must agree (sha256, not hash())
    assert [shard_of(s, 2) for s in ("dog", "cows", "blackswan", "bike-packing")] == [0, 1, 0, 1]
    assert [shard_of(f"image{i:04d}", 2) for i in range(6)] == [0, 1, 1, 1, 0, 0]
    assert shard_of("dog", 8) == int.from_bytes(bytes.fromhex(_sha256("dog"))[:8], "big") % 8
    code = "from tasks.shard import shard_of; print([shard_of(f'image{i:04d}', 7) for i in range(50)])"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{[shard_of(f'image{i:04d}', 7) for i in range(50)]}\n"}


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# The setting
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,message",
    [
        ("2/2", r"shard=2/2 is not valid: there is no shard 2 of 2; expected i/n with 0 <= i < n \(shard=0/2 \.\.\."),
        ("0/0", r"shard=0/0 is not valid: 0 shards; expected i/n with n >= 1"),
        ("3", r"shard='3' is not valid; expected i/n"),
        ("a/b", r"shard='a/b' is not valid; expected i/n"),
        ("'-1/2'", r"shard='-1/2' is not valid; expected i/n"),
        ("1/2/3", r"shard='1/2/3' is not valid; expected i/n"),
    ],
)
def test_bad_shard_values_are_named_before_anything_is_built(value, message, tmp_path):
    cfg = compose_cfg(["task=toy", f"paths.results_root={tmp_path}", *COMMON, f"shard={value}"])
    with pytest.raises(UserError, match=message):
        runner.plan(cfg)


def test_force_cannot_clear_the_cache_other_shards_write_into(tmp_path):
    cfg = compose_cfg(["task=toy", f"paths.results_root={tmp_path}", *COMMON, "shard=0/2", "force=true"])
    with pytest.raises(UserError, match=r"force=true cannot be combined with shard=0/2: .*delete its run directory"):
        runner.plan(cfg)


def test_the_shard_is_not_part_of_the_run_identity(tmp_path):
    """Every shard and the plain run: one run directory, one run key, one item cache; their own Hydra files."""
    base = ["task=toy", "task.n_images=4", f"paths.results_root={tmp_path}", *COMMON]
    seen = set()
    for shard in (None, "0/2", "1/2", "3/8"):
        cfg = compose_cfg(base + ([f"shard={shard}"] if shard else []), hydra_cfg=True)
        p = runner.plan(runner.job_config(cfg))
        assert p.shard == Shard.parse(shard)
        key = run_key(p.task, cfg.backbone, cfg.srt, p.task.data_identity())
        cache = item_cache_for(p.run_dir, p.backbone, p.srt, task_key_part(p.task, p.task.cache_key_config()), None)
        seen.add((str(p.run_dir), json.dumps(key, sort_keys=True), str(cache.root)))
        assert p.run_dir == tmp_path / run_subdir_of_config(cfg.task, cfg.backbone, cfg.srt)
        part = "" if shard is None else "/shard-{}-of-{}".format(*shard.split("/"))
        assert cfg.hydra.output_subdir == ".hydra" + part
        log_file = OmegaConf.to_container(cfg.hydra.job_logging.handlers.file)["filename"]  # unresolved here
        assert log_file == "${hydra.runtime.output_dir}/${srt_log_file:${hydra.job.name},${shard}}"
        assert OmegaConf.create({"shard": shard, "f": "${srt_log_file:run,${shard}}"}).f == (
            "run.log" if shard is None else f"run.{part[1:]}.log"
        )
    assert len(seen) == 1
    assert "shard" not in json.dumps(json.loads(next(iter(seen))[1]))


# ----------------------------------------------------------------------------------------------------------
# Every task: shards then the metrics
# ----------------------------------------------------------------------------------------------------------
def _task_overrides(name: str, fixtures: Path, sample: Path) -> list[str]:
    return {
        "toy": ["task=toy", "task.n_images=6", "task.image_size=32"],
        "davis": ["task=davis", f"task.root={fixtures / 'davis'}", "task.sequences=[dog,cows]", "task.max_frames=2"],
        "saliency": [
            "task=saliency",
            f"paths.data_root={fixtures / 'saliency'}",
            "task.max_images=3",
            "task.solver=sparse",
        ],
        "discovery": ["task=discovery", f"task.root={fixtures / 'voc07'}", "task.max_images=3", "task.solver=sparse"],
        "retrieval": [
            "task=retrieval",
            f"task.root={fixtures / 'roxford'}",
            "task.database=[all_souls_000055]",
            "task.queries=[all_souls_000013]",
        ],
        "depth": [
            "task=depth",
            "backbone=dinov2_vits14",
            f"paths.data_root={sample}",
            "task.head_weights=random",
            "task.max_images=3",
            "task.n_visualizations=0",
        ],
        "visualize": ["task=visualize", "task.image_size=32", "task.stride=8"],
        "fidelity": [
            "task=fidelity",
            f"task.root={fixtures / 'davis' / 'JPEGImages' / '480p'}",
            "task.max_images=3",
            "task.short_side=32",
        ],
        "distill": [
            "task=distill",
            f"task.images={fixtures / 'davis' / 'JPEGImages' / '480p' / 'dog'}",
            "task.max_images=3",
            "task.short_side=32",
            "task.long_side_multiple=16",
            "task.epochs=1",
            "task.lr_milestones=[1]",
        ],
    }[name]


def test_every_registered_task_is_covered():
    params = {"toy", "davis", "saliency", "discovery", "retrieval", "depth", "visualize", "distill", "fidelity"}
    assert set(tasks.TASKS) == params, "a new task: add it to test_shards_then_metrics_equal_an_unsharded_run"


#: shards per task: enough that the first shard leaves items to another one (the assignment is pinned above)
SHARDS = {"retrieval": 4}


@pytest.mark.parametrize(
    "name", ["toy", "davis", "saliency", "discovery", "retrieval", "depth", "visualize", "distill", "fidelity"]
)
def test_shards_then_metrics_equal_an_unsharded_run(name, fixtures_dir, tmp_path, request):
    sample = request.getfixturevalue("sample_root") if name == "depth" else tmp_path
    args = [*_task_overrides(name, fixtures_dir, sample), *COMMON]
    reference = runner.execute(compose_cfg([*args, f"paths.results_root={tmp_path / 'plain'}"]))
    total, n = reference.items["computed"], SHARDS.get(name, 2)
    sharded = tmp_path / "sharded"
    records = [
        runner.execute(compose_cfg([*args, f"paths.results_root={sharded}", f"shard={i}/{n}"])) for i in range(n)
    ]
    # the shards stop before the metrics until one finds every item cached: it computes them from the cache
    # (later shards find the run finished)
    k = next(i for i, r in enumerate(records) if isinstance(r, runner.RunRecord))
    shards, last = records[:k], records[k]
    assert k > 0 and all(isinstance(r, runner.ShardRecord) and not r.completed_run for r in shards)
    assert shards[0].other_shards_missing == shards[0].other_shards_items > 0
    run_dir = Path(shards[0].run_dir)
    reads = total + reference.items["loaded"]  # task=visualize reads each item twice (colour fit, then the panels)
    assert last.items == {"computed": 0, "loaded": reads} and all(r.finished == last.finished for r in records[k:])
    assert comparable(last.metrics) == comparable(reference.metrics)
    written = [json.loads((run_dir / "shards" / f"{i}-of-{n}.json").read_text()) for i in range(k + 1)]
    assert sum(w["computed"] for w in written) == total and written[0]["computed"] == shards[0].computed
    assert [w["completed_run"] for w in written] == [False] * k + [True]
    # a plain run afterwards: finished, nothing computed
    again = runner.execute(compose_cfg([*args, f"paths.results_root={sharded}"]))
    assert comparable(again.metrics) == comparable(last.metrics) and again.run_dir == last.run_dir
    assert Path(reference.run_dir).relative_to(tmp_path / "plain") == run_dir.relative_to(sharded)


def test_a_plain_run_computes_only_the_missing_shards_items(tmp_path):
    args = ["task=toy", "task.n_images=9", "task.image_size=32", *COMMON, f"paths.results_root={tmp_path / 's'}"]
    shards = [runner.execute(compose_cfg([*args, f"shard={i}/3"])) for i in (0, 2)]  # shard 1/3 never ran
    assert all(isinstance(s, runner.ShardRecord) and s.other_shards_missing > 0 for s in shards)
    final = runner.execute(compose_cfg(args))
    done = shards[0].computed + shards[1].computed
    assert final.items == {"computed": 9 - done, "loaded": done} and 0 < done < 9
    clean = runner.execute(compose_cfg([*args[:-1], f"paths.results_root={tmp_path / 'c'}"]))
    assert final.metrics == clean.metrics


def test_a_task_that_ignores_the_shard_cannot_write_metrics(tmp_path, monkeypatch):
    args = ["task=toy", "task.n_images=4", "task.image_size=32", *COMMON, f"paths.results_root={tmp_path}", "shard=0/2"]
    toy = tasks.task_class("toy")

    def no_skip(self, extractor, ctx):  # computes every item, as a task unaware of sharding would
        return {"n": float(len([ctx.cache.get_or_compute(f"image{i:04d}", lambda: {"x": 1}) for i in range(4)]))}

    monkeypatch.setattr(toy, "run", no_skip)
    with pytest.raises(RuntimeError, match=r"shard 0/2 was asked for item 'image0001' of another shard"):
        runner.execute(compose_cfg(args))

    monkeypatch.setattr(toy, "run", lambda self, extractor, ctx: {"n": 1.0})  # no items_done()
    with pytest.raises(RuntimeError, match=r"without calling ctx.cache.items_done\(\)"):
        runner.execute(compose_cfg(args))
    assert not list(tmp_path.rglob("metrics.json"))


def test_items_done_counts_the_other_shards_items_not_cached_yet(tmp_path):
    cache = ItemCache(tmp_path, shard=Shard(0, 2))
    ids = [f"image{i:04d}" for i in range(6)]  # shard 0: 0, 4, 5
    mine = [i for i in ids if not cache.skips(i)]
    for i in mine:
        cache.get_or_compute(i, lambda: {"x": 0})
    ItemCache(tmp_path).get_or_compute("image0001", lambda: {"x": 1})  # one of the other shard's, cached meanwhile
    with pytest.raises(ShardFinished) as info:
        cache.items_done()
    assert (info.value.computed, info.value.others, info.value.others_missing) == (3, 3, 2)
    ItemCache(tmp_path).items_done()  # a plain run goes on


# ----------------------------------------------------------------------------------------------------------
# End to end: the command line with the joblib launcher
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_joblib_shards_then_a_plain_run_equal_an_unsharded_run(fixtures_dir, tmp_path):
    results = tmp_path / "sharded"
    for name in ("davis", "saliency"):
        args = [*_task_overrides(name, fixtures_dir, tmp_path), *COMMON]
        proc = subprocess.run(
            [sys.executable, "run.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "shard=0/2,1/2"]
            + [*args, f"paths.results_root={results}"],
            cwd=REPO,
            env={**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "[srt-bench] shard 0/2 | items computed=" in proc.stdout + proc.stderr
        final = runner.execute(compose_cfg([*args, f"paths.results_root={results}"]))  # the plain run
        run_dir = Path(final.run_dir)
        shards = [json.loads((run_dir / "shards" / f"{i}-of-2.json").read_text()) for i in range(2)]
        total = shards[0]["computed"] + shards[1]["computed"]
        assert shards[0]["computed"] > 0 and shards[1]["computed"] > 0
        assert final.items == {"computed": 0, "loaded": total}  # everything came from the shards' cache
        for i in range(2):  # each shard's own Hydra record and log in the shared run directory
            assert (run_dir / ".hydra" / f"shard-{i}-of-2" / "overrides.yaml").is_file()
            assert (run_dir / f"run.shard-{i}-of-2.log").is_file()
        unsharded = runner.execute(compose_cfg([*args, f"paths.results_root={tmp_path / 'plain'}"]))
        assert unsharded.items == {"computed": total, "loaded": 0}
        assert comparable(final.metrics) == comparable(unsharded.metrics), name
