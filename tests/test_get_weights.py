"""scripts.get_weights through a local mirror (no network): a backbone lands in the Hugging Face cache layout that
srt/backbones.py looks up, verified against the sha256 the hub's API states; a depth head lands where
tasks/depth_heads.py looks; --print lists each file with its destination."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts import get_weights  # noqa: E402
from srt.errors import UserError  # noqa: E402
from tests.test_get_data import serve, server  # noqa: E402, F401 - the mirror fixture


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_backbone_and_head_land_where_the_runs_look(server, caches, capsys):  # noqa: F811
    import srt.backbones
    from tasks.depth_heads import resolve_head_checkpoint

    weights = get_weights.catalog(("table4_discovery",))
    assert [(w.kind, w.name) for w in weights] == [("backbone", "dino_vits16")]
    w = weights[0]
    body = b"safetensors stand-in " * 1000
    sha = hashlib.sha256(body).hexdigest()
    serve(server.mirror, w.url, body)
    api = {"sha": "abc123", "siblings": [{"rfilename": "model.safetensors", "lfs": {"sha256": sha, "size": len(body)}}]}
    serve(server.mirror, f"https://huggingface.co/api/models/{w.repo_id}/revision/main", json.dumps(api).encode())
    snap = get_weights.fetch_backbone(w, server.url, progress=False)
    assert snap == w.dest / "snapshots" / "abc123" / "model.safetensors" and snap.read_bytes() == body
    assert srt.backbones._cached_hub_file(w.repo_id) == snap  # what check_weights / load_backbone find

    # a mismatch with the hub's sha256 is refused (another repository, same server)
    bad = get_weights.Weight(
        "backbone",
        "x",
        "https://huggingface.co/timm/x/resolve/main/model.safetensors",
        caches / "hf" / "models--timm--x",
        10,
        ("t",),
        "timm/x",
    )
    serve(server.mirror, bad.url, b"tampered")
    api["siblings"][0]["lfs"]["size"] = len(b"tampered")
    serve(server.mirror, "https://huggingface.co/api/models/timm/x/revision/main", json.dumps(api).encode())
    with pytest.raises(UserError, match=f"sha256 .*expected {sha} \\(published\\)"):
        get_weights.fetch_backbone(bad, server.url, progress=False)

    head = get_weights.Weight(
        "head",
        "dinov2_vits14_nyu_linear_head.pth",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_linear_head.pth",
        caches / "torch" / "hub" / "checkpoints" / "dinov2_vits14_nyu_linear_head.pth",
        10,
        ("table2",),
    )
    serve(server.mirror, head.url, b"head bytes")
    path = get_weights.fetch_head(head, server.url, progress=False)
    assert resolve_head_checkpoint("dinov2_vits14", "linear", "official") == path


def test_print_lists_every_file_and_where_it_goes(caches, capsys):
    assert get_weights.main(["--print", "--presets", "table4_retrieval"]) == 0
    out = capsys.readouterr().out
    assert "dino_vits16" in out and "models--timm--vit_small_patch16_224.dino" in out and "~86.7 MB" in out
    with pytest.raises(UserError, match="unknown preset 'table9'"):
        get_weights.main(["--print", "--presets", "table9"])
