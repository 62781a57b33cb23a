"""Shared pytest fixtures: tiny random ViTs and the real data fixtures beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
