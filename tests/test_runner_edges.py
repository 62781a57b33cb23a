"""The runner's edges (issue 20 items 7 and 8): operating-system errors as one paragraph with nothing finished
damaged, the results folder checked before Hydra makes the run directory, mistyped keys under the default task,
overrides Hydra's grammar refuses, the resume announcement, and the lock that keeps two identical runs from
computing the same thing at once."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from srt.errors import is_user_error, paragraph
from srt.io import atomic_write_bytes, atomic_write_json
from tasks import command_line, runner

REPO = Path(__file__).resolve().parents[1]
TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]
TOY = ["task=toy", "task.n_images=3", "srt.level=1", *TINY]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(command_line.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs mounted at ``path`` (root and a kernel that allows it); skips the test otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount permission): {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    """Write a filler file until the file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


# ----------------------------------------------------------------------------------------------
# Operating-system errors


def test_a_full_disk_names_the_file_and_keeps_the_finished_one(tmp_path):
    with _tmpfs(tmp_path / "small", "256k") as fs:
        target = fs / "metrics.json"
        atomic_write_json(target, {"J&F-Mean": 0.5})
        before = target.read_bytes()
        filler = _fill(fs)
        with pytest.raises(OSError) as err:
            atomic_write_bytes(target, b"x" * 200_000)  # a metrics, cache or checkpoint write: one mechanism
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
        assert is_user_error(err.value)
        message = paragraph(err.value)
        assert str(target) in message and "No space left on device (ENOSPC)" in message and "\n" not in message
        assert target.read_bytes() == before  # the finished file is untouched
        assert sorted(p.name for p in fs.iterdir()) == ["filler", "metrics.json"]  # no temporary file left
        filler.unlink()
        atomic_write_bytes(target, b"x" * 200_000)  # space again: the same write goes through
        assert target.stat().st_size == 200_000


def test_a_run_on_a_full_disk_stops_with_one_paragraph_and_resumes(tmp_path, capsys):
    with _tmpfs(tmp_path / "small", "1m") as fs:
        cfg = _compose([*TOY, f"paths.results_root={fs}"])
        run_dir = runner.plan(cfg).run_dir
        filler = _fill(fs)
        assert runner.run_job(cfg, run_dir, report=True) is None
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "ENOSPC" in err and str(fs) in err and "\n" not in err
        assert "Traceback" not in err
        filler.unlink()
        runner.FAILED_JOBS.clear()
        record = runner.run_job(cfg, run_dir, report=True)
        assert record is not None and record.items["computed"] + record.items["loaded"] == 3


def test_results_root_under_a_file_or_read_only_is_named_before_hydra(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"paths.results_root=.*a_file is a file, not a folder"):
        command_line.check_results_root([f"paths.results_root={a_file}/results"])
    with _tmpfs(tmp_path / "ro", "64k", read_only=True) as fs:
        with pytest.raises(SystemExit, match="is on a read-only file system"):
            command_line.check_results_root([f"paths.results_root={fs}/results"])
    command_line.check_results_root([f"paths.results_root={tmp_path}/fine"])  # a folder that can be made


def test_run_py_reports_a_results_root_under_a_file_as_one_paragraph(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    done = subprocess.run(
        [sys.executable, "run.py", *TOY, f"paths.results_root={a_file}/r"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert "is a file, not a folder" in done.stderr


# ----------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    "args,default_task",
    [(["task.max_frame=3"], "davis"), (["+experiment=table3", "task.max_frame=3"], "saliency")],
)
def test_a_mistyped_key_under_the_default_or_preset_task_lists_its_keys(args, default_task):
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(args)
    assert "task.max_frame is not a valid setting" in str(err.value)
    valid = [k for k in command_line.task_config_nodes()[default_task] if k != "name"]
    assert ", ".join(valid) in str(err.value)


def test_an_override_hydra_cannot_read_gets_a_hint_to_quote_it():
    with pytest.raises(SystemExit) as err:
        command_line.check_override_keys(["task=davis", "paths.data_root=/data/my set (1)"])
    message = str(err.value)
    assert "paths.data_root='\"/data/my set (1)\"'" in message and "SRT_DATA=" in message


def test_the_task_nodes_equal_the_dataclasses_they_are_cached_from():
    import tasks
    from tasks.config_schema import config_node

    nodes = command_line.task_config_nodes()
    for name in tasks.importable_tasks():
        expected = {"name": name, **config_node(tasks.task_class(name).Config)}
        assert nodes[name] == _json_round_trip(expected), name


def _json_round_trip(value):
    import json

    return json.loads(json.dumps(value))


# ----------------------------------------------------------------------------------------------
# Resuming and the run lock


def test_a_resumed_run_announces_what_is_cached(tmp_path, caplog):
    cfg = _compose([*TOY, f"paths.results_root={tmp_path}"])
    first = runner.execute(cfg)
    (Path(first.run_dir) / "metrics.json").unlink()  # as if killed after its items
    with caplog.at_level(logging.INFO, logger="srt-bench"):
        again = runner.execute(cfg)
    assert again.items == {"computed": 0, "loaded": 3}
    assert any(r.getMessage().startswith("resuming: 3 items") for r in caplog.records)


def test_a_second_identical_run_waits_for_the_first_and_names_it(tmp_path):
    cfg = _compose([*TOY, f"paths.results_root={tmp_path}"])
    run_dir = runner.plan(cfg).run_dir
    run_dir.mkdir(parents=True)
    with open(run_dir / "run.lock", "a+") as lock:  # this process plays the first run, holding the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"pid {os.getpid()} on this host\n")
        lock.flush()
        second = subprocess.Popen(
            [sys.executable, "run.py", *TOY, f"paths.results_root={tmp_path}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        waited = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "waiting for it to finish" not in waited:
            line = second.stdout.readline()
            if not line:
                break
            waited += line
        assert f"pid {os.getpid()}" in waited and "waiting for it to finish" in waited
        assert not (run_dir / "metrics.json").exists()  # it computes nothing while the first holds the run
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, waited + out
    assert (run_dir / "metrics.json").is_file()
