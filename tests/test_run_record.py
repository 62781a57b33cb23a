"""The run record (eval/run_record.py): metrics.json written, read back and named in one place.

- a record round-trips through metrics.json field for field (NaN included), unknown keys survive;
- every method label and directory tag, from one rule, and every consumer (summary line, CSV logger,
  table builder, run directory) shows the same label;
- a bad metrics.json is a ValueError naming the file and the field; records of the previous schema read;
- the loggers (csv, wandb offline) and the environment helpers that fill a record.
"""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from eval import tables
from eval.run_record import (
    METHOD_LABELS,
    RunRecord,
    method_label,
    method_tag,
    non_default_settings,
    read_record,
    write_record,
)
from tasks import environment
from tasks.loggers import LoggerConfig, make_logger
from tasks.run_identity import finished_record, run_subdir


def full_record(run_dir: str = "results/toy/x/srt-L3-abc", **changes) -> RunRecord:
    values = dict(
        metrics={"flip_cosine": 0.5, "feature_norm": float("nan")},
        config={
            "task": {"name": "toy", "n_images": 3},
            "backbone": {"name": "dino_vits16", "pretrained": False},
            "srt": {"method": "shift", "level": 3},
            "paths": {"data_root": "data"},
        },
        variant={"task.n_images": 3},
        data={"name": "ECSSD", "files": 4, "sha256": "0" * 64},
        run_dir=run_dir,
        run_key_hash="abc",
        overrides=["task=toy"],
        backbone={"name": "dino_vits16", "weights": "random (init_seed=0)", "patch_size": 16, "distilled": False},
        srt={"method": "shift", "level": 3},
        passes=49,
        items={"computed": 3, "loaded": 0},
        wall_time_s=1.5,
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:02+00:00",
        memory={"process_peak_rss_mib": 100.0},
        device="cpu",
        versions={"torch": "2"},
        git={"commit": None, "dirty": None},
        host="h",
        command=["run.py"],
    )
    values.update(changes)
    return RunRecord(**values)


# ----------------------------------------------------------------------------------------------
# Round trip


def test_record_round_trip(tmp_path):
    record = full_record()
    path = write_record(tmp_path, record)
    assert path == tmp_path / "metrics.json"
    data = json.loads(path.read_text())
    assert data["schema"] == 2 and data["method"] == "+SRT" and data["metrics"]["feature_norm"] is None
    back = read_record(tmp_path)  # a run directory names its metrics.json
    assert math.isnan(back.metrics.pop("feature_norm")) and math.isnan(record.metrics.pop("feature_norm"))
    assert back == record


def test_unknown_keys_survive_a_rewrite_and_method_is_derived(tmp_path):
    data = full_record().to_json()
    data["loss_per_epoch"] = [3.0, 2.0]  # written by a newer version
    data["method"] = "baseline"  # stale: the label always comes from the config
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    record = read_record(tmp_path)
    assert record.extra == {"loss_per_epoch": [3.0, 2.0]} and record.method == "+SRT"
    write_record(tmp_path, record)
    assert json.loads((tmp_path / "metrics.json").read_text())["loss_per_epoch"] == [3.0, 2.0]


def test_records_of_the_previous_schema_read(tmp_path):
    old = {  # schema 1: no "data", "method" stored
        "schema": 1,
        "metrics": {"CorLoc": 61.0},
        "method": "+SRT",
        "config": {"task": {"name": "discovery"}, "backbone": {"name": "dino_vits16"}, "srt": {"level": 0}},
        "run_key_hash": "x",
    }
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    record = read_record(tmp_path)
    assert record.schema == 1 and record.data is None and record.method == "baseline" and record.level == 0


@pytest.mark.parametrize(
    "content,reason",
    [
        ("{not json", "not a readable metrics.json"),
        ("[1, 2]", "expected a JSON object"),
        ('{"metrics": {}}', "missing 'config' or 'metrics' object ('config' is absent"),
        ('{"config": {}, "metrics": {"a": 1}}', "config.task is missing or not an object"),
        (
            '{"config": {"task": {"name": "t"}, "backbone": {}, "srt": {}}, "metrics": {}}',
            "config.backbone.name is missing",
        ),
        (
            '{"config": {"task": {"name": "t"}, "backbone": {"name": "b"}, "srt": {"level": "x"}}, "metrics": {}}',
            "config.srt.level='x' is not an integer",
        ),
        (
            '{"config": {"task": {"name": "t"}, "backbone": {"name": "b"}, "srt": {}}, "metrics": {"J": "high"}}',
            "metric 'J' is 'high'; expected a number",
        ),
        (
            '{"config": {"task": {"name": "t"}, "backbone": {"name": "b"}, "srt": {}}, "metrics": {}, "passes": "9"}',
            "'passes' is \"9\" (str); expected an integer",
        ),
        (
            '{"config": {"task": {"name": "t"}, "backbone": {"name": "b"}, "srt": {}}, "metrics": {}, "passes": true}',
            "'passes' is true (bool); expected an integer",
        ),
    ],
)
def test_a_bad_record_names_the_file_and_the_field(tmp_path, content, reason):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_record(path)
    assert str(path) in str(err.value) and reason in str(err.value)
    assert finished_record(tmp_path, "x") is None  # a corrupt record means: not finished


def test_finished_record_needs_the_same_identity(tmp_path):
    write_record(tmp_path, full_record(run_key_hash="abc"))
    assert finished_record(tmp_path, "abc").metrics["flip_cosine"] == 0.5
    assert finished_record(tmp_path, "other") is None  # written by another identity: recompute
    assert finished_record(tmp_path / "nowhere", "abc") is None


# ----------------------------------------------------------------------------------------------
# The method's name, from one rule


LABEL_CASES = [
    # srt settings, task settings, backbone section -> label, directory tag
    ({"method": "shift", "level": 0}, {}, None, "baseline", "baseline"),
    ({"method": "shift", "level": 3}, {}, None, "+SRT", "srt-L3"),
    ({"level": 2}, {}, None, "+SRT", "srt-L2"),  # method defaults to shift
    ({"method": "shift", "level": 3}, {"output_ensemble": True}, None, "+OE", "oe-L3"),
    ({"method": "shift", "level": 0}, {"output_ensemble": True}, None, "baseline", "baseline"),
    ({"method": "shift", "level": 3}, {"output_ensemble": False}, None, "+SRT", "srt-L3"),
    ({"method": "jitter", "level": 3}, {}, None, "naive ensemble", "jitter-L3"),
    ({"method": "jitter", "level": 0}, {}, None, "naive ensemble", "jitter-L0"),
    ({"method": "jitter", "level": 3}, {"output_ensemble": True}, None, "naive ensemble", "jitter-L3"),
    ({"method": "shift", "level": 0}, {}, {"distilled": True}, "distilled", "baseline"),
    ({"method": "shift", "level": 3}, {}, {"distilled": True}, "distilled", "srt-L3"),
    ({"method": "shift", "level": 0}, {}, {"distilled": False}, "baseline", "baseline"),
]


@pytest.mark.parametrize("srt_cfg,task,backbone,label,tag", LABEL_CASES)
def test_every_method_label_and_tag(srt_cfg, task, backbone, label, tag):
    assert method_label(srt_cfg, task, backbone) == label
    # the directory is named before the weights are loaded, so a distilled student's tag is its SRT's
    assert method_tag(srt_cfg, task) == tag


def test_every_label_has_a_case_and_a_place_in_the_tables():
    assert {case[3] for case in LABEL_CASES} == set(METHOD_LABELS) == set(tables.METHOD_ORDER)


@pytest.mark.parametrize("level", ["abc", None, 1.5, True])
def test_the_directory_tag_never_raises(level):
    # Hydra resolves the run directory before the runner reports the bad setting by name
    assert method_tag({"method": "shift", "level": level}, {}).startswith("srt-L")
    assert method_tag({"method": "jitter", "level": level}, {}).startswith("jitter-L")
    with pytest.raises(ValueError, match="srt.level=.* is not an integer"):
        method_label({"method": "shift", "level": level}, {})


@pytest.mark.parametrize("srt_cfg,task,backbone,label,tag", LABEL_CASES)
def test_every_consumer_shows_the_same_label(tmp_path, srt_cfg, task, backbone, label, tag):
    config = {"task": {"name": "toy", **task}, "backbone": {"name": "dino_vits16"}, "srt": srt_cfg}
    record = full_record(config=config, backbone=backbone or {}, run_dir=str(tmp_path / "run"))
    write_record(tmp_path / "run", record)
    assert f"| {label} |" in record.summary_line()
    logger = make_logger(LoggerConfig(name="csv", path=str(tmp_path / "runs.csv")).validate())
    logger.log_run(read_record(tmp_path / "run"), tmp_path / "run")
    with open(tmp_path / "runs.csv", newline="") as f:
        assert [row["method"] for row in csv.DictReader(f)] == [label]
    frame, skipped = tables.load_results(tmp_path)
    assert skipped == [] and set(frame["method"]) == {label}
    assert run_subdir(config["task"], config["backbone"], srt_cfg, {}).split("/")[-1].rsplit("-", 1)[0] == tag


def test_non_default_settings():
    got = non_default_settings(
        {"a": 1, "b": 2, "c": 3, "level": 5}, {"a": 1, "b": 0, "level": 3}, "srt", skip=("level",)
    )
    assert got == {"srt.b": 2, "srt.c": 3}


# ----------------------------------------------------------------------------------------------
# What fills a record: environment helpers and loggers


def test_run_metadata_helpers():
    versions = environment.library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["python"].count(".") == 2
    mem = environment.peak_memory()
    assert mem["process_peak_rss_mib"] > 10
    git = environment.git_revision()
    assert set(git) == {"commit", "dirty"}
    assert git["commit"] is None or len(git["commit"]) == 40


def test_csv_logger_appends_rows_and_widens_columns(tmp_path):
    logger = make_logger(LoggerConfig(name="csv", path=str(tmp_path / "runs.csv")).validate())
    logger.log_run(full_record(run_dir="r1", metrics={"flip_cosine": 0.5}), tmp_path)
    logger.log_run(full_record(run_dir="r2", metrics={"CorLoc": 61.0}), tmp_path)
    with open(tmp_path / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run_dir"] for r in rows] == ["r1", "r2"]
    assert rows[0]["flip_cosine"] == "0.5" and rows[0]["CorLoc"] == ""
    assert rows[1]["CorLoc"] == "61.0" and rows[1]["passes"] == "49" and rows[1]["task"] == "toy"


def test_logger_config_validation():
    with pytest.raises(ValueError, match="logger.name='tb' is not valid; expected one of none, csv, wandb"):
        LoggerConfig(name="tb").validate()
    with pytest.raises(ValueError, match="logger.path is required for logger=csv"):
        LoggerConfig(name="csv").validate()


@pytest.mark.slow
def test_wandb_logger_works_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # records the original value, so the logger's setdefault is undone
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "per_image.csv").write_text("image,flip_cosine\n0,0.5\n")
    make_logger(LoggerConfig(name="wandb").validate()).log_run(full_record(run_dir=str(tmp_path)), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "wandb did not write an offline run (it must never need the network)"
    assert os.environ["WANDB_MODE"] == "offline"
    saved = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert "per_image.csv" in saved and any(n.endswith(".wandb") for n in saved)
