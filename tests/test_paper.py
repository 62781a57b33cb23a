"""scripts.paper: the plan's pass counts equal what the runs then record; missing datasets and weights are named
rows of the plan and of REPORT.md; overrides pass through to run.py (sample data, tiny random ViT, no network)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eval.run_record import read_record  # noqa: E402
from scripts import paper  # noqa: E402
from srt.errors import UserError  # noqa: E402

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}", "device=cpu"]
LINE = re.compile(r"^\s+(\S+(?: \S+)?)\s+(\w+)\s+(.*?)\s+passes=(\d+|-).*-> (\S+)")


def plan_lines(text: str) -> dict[str, int]:
    """run directory (relative to the results) -> passes, from the printed plan."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(4) != "-":
            out[m.group(5)] = int(m.group(4))
    return out


def test_dry_run_plan_matches_what_the_runs_record(sample_root, tmp_path, capsys):
    results = tmp_path / "results"
    args = [
        "--presets",
        "table3",
        "--results",
        str(results),
        "--probe-reps",
        "1",
        f"paths.data_root={sample_root}",
        "task.dataset=ECSSD",
        "task.max_images=2",
        "progress=false",
        *TINY,
    ]
    assert paper.main(["--dry-run", *args]) == 0
    printed = capsys.readouterr().out
    planned = plan_lines(printed)
    assert len(planned) == 2 and sorted(planned.values()) == [1, 49], printed
    assert "Basis of the estimate:" in printed and "ms/pass" in printed
    assert not list(results.rglob("metrics.json"))  # a dry run runs nothing

    assert paper.main(args) == 0
    recorded = {p.parent.relative_to(results).as_posix(): read_record(p).passes for p in results.rglob("metrics.json")}
    assert recorded == planned
    report = (results / "REPORT.md").read_text()
    assert "Table 3" in report and "Nothing was missing" in report
    # the same command again: both runs are finished, nothing is started
    capsys.readouterr()
    assert paper.main(["--dry-run", *args]) == 0
    assert capsys.readouterr().out.count("finished ") == 2


def test_missing_dataset_and_weights_are_named_rows(sample_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    shutil.rmtree(data / "DUT-OMRON")
    probe = paper.Probe("cpu", 1)
    runs = paper.build_plan(["table3"], [f"paths.data_root={data}", "task.max_images=1", *TINY], probe)
    missing = {r.missing for r in runs if r.status == "missing"}
    assert missing == {("dataset", "DUT-OMRON")}
    runs += paper.build_plan(["table4_retrieval"], [f"paths.data_root={data}", "srt.level=0", "device=cpu"], probe)
    rows = "\n".join(paper.missing_rows(runs))
    assert "| dataset | DUT-OMRON | 2 (table3) |" in rows and "DUT-OMRON-image" in rows
    assert "| weights | dino_vits16 | 1 (table4_retrieval) |" in rows and "get_weights" in rows
    with pytest.raises(UserError, match="unknown preset 'tableX'"):
        paper.main(["--dry-run", "--presets", "tableX"])
