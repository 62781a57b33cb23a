"""Where and with what a run ran: git revision, library versions, peak memory, time, host (for metrics.json)."""

from __future__ import annotations

import platform
import resource
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_revision(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code runs from (None when not a git checkout)."""

    def git(*args: str) -> Optional[str]:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in (
        "srt-bench",
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "scipy",
        "pandas",
        "opencv-python-headless",
        "scikit-image",
        "pysodmetrics",
        "hydra-core",
        "omegaconf",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def peak_memory() -> dict[str, Optional[float]]:
    """Peak resident memory of this process (MiB; over its whole life, so across the jobs of a
    sequential multirun) and, on CUDA, the peak allocated by torch since the last reset."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 1024 if sys.platform != "darwin" else rss / (1024 * 1024)  # KiB on Linux, bytes on macOS
    cuda = None
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.max_memory_allocated() / (1024 * 1024)
    except ImportError:  # pragma: no cover
        pass
    return {
        "process_peak_rss_mib": round(rss_mib, 1),
        "cuda_peak_allocated_mib": None if cuda is None else round(cuda, 1),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def host() -> str:
    return socket.gethostname()
