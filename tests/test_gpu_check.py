"""scripts/gpu_check.py: without CUDA it says so and exits 0; its checks run on the CPU (--device cpu --small),
pass on the real core and fail when the reference disagrees."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_cpu_small_runs_every_check(capsys, tmp_path, monkeypatch):
    out = tmp_path / "check.md"
    assert gpu_check.main(["--device", "cpu", "--small", "--repeats", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("| yes |") == 4 and "| NO |" not in text
    assert "max relative error" in text and "| SRT pooled |" in text and "| SRT dense s=8 |" in text
    rel = float(text.split("max relative error ")[1].split()[0])
    assert 0 < rel < 0.05  # bf16 differs from float32, but not by much

    # a reference that disagrees (as a broken core would) turns the rows to NO and the exit code to 1
    real = gpu_check.brute_force_reference()
    skewed = types.SimpleNamespace(brute_force=lambda *a, **k: real.brute_force(*a, **k) + 1e-2, pool=real.pool)
    monkeypatch.setattr(gpu_check, "brute_force_reference", lambda: skewed)
    bb = gpu_check.backbone(torch.device("cpu"), small=True)
    rows, ok = gpu_check.exactness(bb, torch.device("cpu"), small=True)
    assert not ok and sum("| NO |" in r for r in rows) == 4
