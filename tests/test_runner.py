"""The runner end to end, on the built-in toy task (so the machinery is tested without other tasks):

- a run writes a complete metrics.json; a finished run is not recomputed; force=true recomputes;
- a multirun through the real command line writes one metrics.json per job and a table;
- a run killed with SIGKILL midway resumes when the same command is re-run: it computes only the
  missing items, and its final metrics equal those of an uninterrupted run;
- the csv logger appends a row per run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from eval import tables  # noqa: E402
from eval.run_record import read_record  # noqa: E402
from tasks import runner  # noqa: E402

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def toy(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "task=toy",
        "task.n_images=3",
        "task.image_size=32",
        "progress=false",
        "device=cpu",
        f"paths.results_root={tmp_path}",
        *TINY,
        *extra,
    ]


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_run_writes_a_complete_metrics_json(tmp_path):
    cfg = compose_cfg(toy(tmp_path, "srt.level=1"))
    record = runner.execute(cfg)
    run_dir = Path(record.run_dir)
    assert run_dir.parent == tmp_path / "toy" / "dino_vits16-random" and run_dir.name.startswith("srt-L1-")
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(data["metrics"]) == {"flip_cosine", "feature_norm"}
    assert 0 < data["metrics"]["flip_cosine"] <= 1
    assert data["method"] == "+SRT" and data["passes"] == 9 and data["srt"]["level"] == 1
    assert data["backbone"]["weights"].startswith("random") and data["backbone"]["depth"] == 2
    assert data["config"]["task"] == {"name": "toy", "n_images": 3, "image_size": 32, "seed": 0}
    assert data["variant"] == {
        "task.n_images": 3,
        "task.image_size": 32,
        "backbone.depth": 2,
        "backbone.embed_dim": 64,
        "backbone.num_heads": 2,
    }
    assert data["items"] == {"computed": 3, "loaded": 0}
    assert data["data"] is None  # the toy task reads no files
    for key in ("wall_time_s", "started", "finished", "memory", "versions", "git", "host", "run_key_hash"):
        assert key in data, key
    assert data["versions"]["torch"] and data["memory"]["process_peak_rss_mib"] > 0
    assert (run_dir / "per_image.csv").read_text().count("\n") == 4


def test_finished_runs_are_skipped_and_force_recomputes(tmp_path, monkeypatch):
    first = runner.execute(compose_cfg(toy(tmp_path, "srt.level=0")))
    real_load = srt.load_backbone

    def no_model(*a, **k):
        raise AssertionError("a finished run built a model")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    again = runner.execute(compose_cfg(toy(tmp_path, "srt.level=0")))
    assert again.metrics == first.metrics and again.finished == first.finished

    monkeypatch.setattr(srt, "load_backbone", real_load)
    forced = runner.execute(compose_cfg(toy(tmp_path, "srt.level=0", "force=true")))
    assert forced.items == {"computed": 3, "loaded": 0}  # the cache was cleared too
    assert forced.metrics == pytest.approx(first.metrics, rel=1e-6)
    assert forced.run_dir == first.run_dir


def test_csv_logger_appends_one_row_per_run(tmp_path):
    for level in (0, 1):
        runner.execute(compose_cfg(toy(tmp_path, f"srt.level={level}", "logger=csv")))
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("finished,task,dataset,backbone,weights,method,level,passes")
    assert ",baseline,0,1," in lines[1] and ",+SRT,1,9," in lines[2]


@pytest.mark.slow
def test_multirun_on_the_command_line_writes_results_and_a_table(tmp_path):
    proc = cli(["-m", *toy(tmp_path, "srt.level=0,1")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(tmp_path.rglob("metrics.json"))
    assert [p.parent.name.split("-")[0] for p in found] == ["baseline", "srt"]
    assert "[srt-bench] toy | dino_vits16 (random) | +SRT | flip_cosine=" in proc.stdout + proc.stderr
    assert "RANDOM weights" in proc.stdout + proc.stderr
    built, skipped = tables.build_tables(tmp_path)
    assert skipped == []
    toy_table = [t for t in built if t.title.startswith("toy")][0]
    assert list(toy_table.cells["method"]) == ["baseline", "+SRT"] and list(toy_table.cells["L"]) == [0, 1]
    values = {m: json.loads(p.read_text())["metrics"]["flip_cosine"] for m, p in zip(("baseline", "+SRT"), found)}
    assert list(toy_table.values["flip_cosine"]) == [values["baseline"], values["+SRT"]]


@pytest.mark.slow
def test_command_line_unknown_key_is_named_with_the_valid_settings(tmp_path):
    # (invalid values are checked in-process in test_config.py; unknown keys are caught before Hydra starts)
    proc = cli(toy(tmp_path, "srt.levle=3"))
    assert proc.returncode != 0 and "srt.levle is not a valid setting; valid settings of srt: method" in proc.stderr
    assert not tmp_path.exists() or not list(tmp_path.rglob("*"))


@pytest.mark.slow
def test_a_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    n = 30  # enough that even a fast machine cannot finish before the poll below notices two cached items
    args = [
        "task=toy",
        f"task.n_images={n}",
        "task.image_size=64",
        "srt.level=2",
        "progress=false",
        "device=cpu",
        *TINY,
    ]
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "run.py", *args, f"paths.results_root={killed_root}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(killed_root.rglob("*.npz"))) < 2:  # wait until some items are cached, then kill
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no item was cached in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    cached = len(list(killed_root.rglob("*.npz")))
    assert 2 <= cached < n, f"{cached} of {n} items were cached when the run was killed"
    assert not list(killed_root.rglob("metrics.json")), "a killed run must not look finished"

    resumed = cli([*args, f"paths.results_root={killed_root}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [path] = killed_root.rglob("metrics.json")
    record = read_record(path)
    assert record.items["loaded"] == cached and record.items["computed"] == n - cached

    clean = runner.execute(compose_cfg([*args, f"paths.results_root={clean_root}"]))
    assert clean.items == {"computed": n, "loaded": 0}
    assert record.metrics == clean.metrics
    assert Path(record.run_dir).relative_to(killed_root) == Path(clean.run_dir).relative_to(clean_root)


@pytest.mark.parametrize("task", ["davis", "saliency", "discovery"])
def test_a_missing_dataset_is_named_before_any_model_is_built(tmp_path, monkeypatch, task):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the dataset was checked")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    cfg = compose_cfg(
        [f"task={task}", f"paths.data_root={tmp_path / 'nowhere'}", f"paths.results_root={tmp_path}", *TINY]
    )
    with pytest.raises(FileNotFoundError, match=r"nowhere.* \(datasets are read under paths.data_root="):
        runner.execute(cfg)
