"""Shared pytest fixtures: tiny random ViTs and the real data fixtures beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# every setting's default in Hydra's ConfigStore, as run.py does when imported: tests compose configs
from tasks import command_line  # noqa: E402

command_line.register_configs()


def _fixtures_root() -> Path:
    # ../shared/fixtures beside the checkout (CI layout); SRT_FIXTURES overrides.
    root = Path(os.environ.get("SRT_FIXTURES", REPO.parent / "shared" / "fixtures"))
    if not root.is_dir():
        raise RuntimeError(f"real-data fixtures not found at {root}; put the shared fixtures there or set SRT_FIXTURES")
    return root


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _fixtures_root()


TINY = dict(depth=2, embed_dim=64, num_heads=2)


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict:
    """Model kwargs for a tiny random ViT (fast on CPU)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The synthetic sample data of scripts/make_sample_data.py (what `make demo` runs on), made once per session.
    Shared: tests read it and copy what they change."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_sample_data import make_sample_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    root = tmp_path_factory.mktemp("sample")
    make_sample_data(root)
    return root


@pytest.fixture(autouse=True, scope="session")
def _private_srt_cache(tmp_path_factory):
    """srt.io's content-hash tables go to a session folder, not the user's ~/.cache/srt (subprocesses inherit it)."""
    previous = os.environ.get("SRT_CACHE_DIR")
    os.environ["SRT_CACHE_DIR"] = str(tmp_path_factory.mktemp("srt-cache"))
    yield
    if previous is None:
        os.environ.pop("SRT_CACHE_DIR", None)
    else:
        os.environ["SRT_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
