"""Fetch every pretrained weight the paper's presets use into the caches the runs read.

    python -m scripts.get_weights                 download (resume, verify) what is missing
    python -m scripts.get_weights --print         names, sizes and where each file goes (copy them to a cluster)
    python -m scripts.get_weights --mirror URL    every file from URL/<host>/<path> (default $SRT_MIRROR)

- Backbones (``backbone.pretrained=true``: srt/backbones.py looks them up in the Hugging Face hub cache,
  ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``): each preset's backbones (DINO ViT-S/16, S/8, B/16; DINOv2 S/B/L-14;
  Fig. 1's CLIP / supervised / DINO / SAM / MAE ViT-B/16), the timm repository's ``model.safetensors``, written
  in the hub cache's own layout (``models--timm--<name>/blobs/<sha256>``, ``snapshots/<commit>/model.safetensors``,
  ``refs/main``). Its sha256 and the commit are the hub's (``/api/models/<repo>/revision/main``); when that
  answer is not available, the sha256 is recorded at the first download in the cache's lock file.
- DINOv2's NYU depth heads Table 2 uses (``task.head_weights=official``: tasks/depth_heads.py reads
  ``$TORCH_HOME/hub/checkpoints``): ``dinov2_<arch>_nyu_{linear,dpt}_head.pth`` from dl.fbaipublicfiles.com,
  sha256 recorded at the first download (no checksum is published).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import fetch, presets  # noqa: E402
from srt.errors import UserError, report_user_errors  # noqa: E402
from srt.io import move_into_place  # noqa: E402

HF = "https://huggingface.co"
HUB_FILE = "model.safetensors"  # what timm loads first from its hub repositories


@dataclass(frozen=True)
class Weight:
    kind: str  # "backbone" | "head"
    name: str  # registry backbone name, or the head file's name
    url: str
    dest: Path  # where the file goes (for a backbone: its repository folder in the hub cache)
    approx_bytes: int
    used_by: tuple[str, ...]
    repo_id: Optional[str] = None


def used_weights(names: tuple[str, ...] = presets.PAPER_PRESETS) -> dict[tuple[str, str], set[str]]:
    """(kind, name) -> presets needing it: backbones of every job with pretrained=true, heads of depth jobs."""
    from tasks.depth_heads import official_head_file

    used: dict[tuple[str, str], set[str]] = {}
    with presets.hydra_conf():
        for preset in names:
            for job in presets.sweep(preset):
                cfg = presets.compose_job(preset, job)
                if cfg.backbone.pretrained is True:
                    used.setdefault(("backbone", cfg.backbone.name), set()).add(preset)
                if cfg.task.name == "depth" and cfg.task.head_weights == "official":
                    used.setdefault(("head", official_head_file(cfg.backbone.name, cfg.task.head)), set()).add(preset)
    return used


def _approx_bytes(kind: str, name: str) -> int:
    """float32 parameters x 4 bytes, counted on the meta device (nothing allocated, nothing downloaded)."""
    import timm
    import torch

    import srt
    from tasks import depth_heads

    with torch.device("meta"):
        if kind == "backbone":
            model = timm.create_model(srt.BACKBONES[name].timm_name, pretrained=False)
        else:
            arch = name.split("_")[1]  # dinov2_<arch>_nyu_<head>_head.pth
            backbone = next(b for b, a in depth_heads.OFFICIAL_ARCH.items() if a == arch)
            dim = timm.create_model(srt.BACKBONES[backbone].timm_name, pretrained=False).embed_dim
            model = depth_heads.build_head(name.split("_")[3], dim, depth_heads.NYU_DEPTH_RANGE)
    return 4 * sum(p.numel() for p in model.parameters())


def catalog(names: tuple[str, ...] = presets.PAPER_PRESETS) -> list[Weight]:
    import timm

    import srt
    from srt.backbones import _hub_cache_dir  # the cache load_backbone reads
    from tasks import depth_heads

    out = []
    for (kind, name), users in sorted(used_weights(names).items()):
        if kind == "backbone":
            repo = timm.models.get_pretrained_cfg(srt.BACKBONES[name].timm_name).hf_hub_id
            dest = _hub_cache_dir() / f"models--{repo.replace('/', '--')}"
            url = f"{HF}/{repo}/resolve/main/{HUB_FILE}"
        else:
            arch = name.split("_")[1]
            url = depth_heads.OFFICIAL_URL.format(arch=arch, file=name)
            dest, repo = depth_heads.hub_checkpoint_dir() / name, None
        out.append(Weight(kind, name, url, dest, _approx_bytes(kind, name), tuple(sorted(users)), repo))
    return out


def hub_revision(repo: str, mirror: Optional[str]) -> Optional[tuple[str, Optional[str], Optional[int]]]:
    """(commit, sha256 of model.safetensors, size) from the hub's API, or None when it cannot be asked."""
    url = fetch.mirrored(f"{HF}/api/models/{repo}/revision/main?blobs=true", mirror)
    try:
        with urllib.request.urlopen(url, timeout=fetch.TIMEOUT_S) as resp:
            info = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    for sib in info.get("siblings", []):
        if sib.get("rfilename") == HUB_FILE:
            lfs = sib.get("lfs") or {}
            return info.get("sha"), lfs.get("sha256"), lfs.get("size") or sib.get("size")
    return info.get("sha"), None, None


def fetch_backbone(w: Weight, mirror: Optional[str], progress: bool) -> Path:
    """model.safetensors into the hub cache layout; returns the snapshot path load_backbone will find."""
    refs = w.dest / "refs" / "main"
    if refs.is_file():
        snap = w.dest / "snapshots" / refs.read_text().strip() / HUB_FILE
        if snap.is_file():
            return snap
    info = hub_revision(w.repo_id, mirror)
    commit, sha, size = info if info else (None, None, None)
    commit = commit or "srt-get-weights"  # any name works for the cache lookup; the hub's commit when known
    blobs = w.dest / "blobs"
    lock = fetch.LockFile(w.dest)
    remote = fetch.Remote(w.url, sha256=sha, size=size, approx_size=w.approx_bytes)
    path = fetch.download(remote, blobs, lock, mirror, progress)
    blob = blobs / (sha or fetch.file_digest(path))
    move_into_place(path, blob)
    snap = w.dest / "snapshots" / commit / HUB_FILE
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.unlink(missing_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(commit)
    return snap


def fetch_head(w: Weight, mirror: Optional[str], progress: bool) -> Path:
    lock = fetch.LockFile(w.dest.parent)
    return fetch.download(fetch.Remote(w.url, approx_size=w.approx_bytes), w.dest.parent, lock, mirror, progress)


def describe(weights: list[Weight]) -> str:
    lines = ["| kind | name | size | URL | goes to | used by |", "|---|---|---|---|---|---|"]
    for w in weights:
        where = w.dest / "snapshots/<commit>" / HUB_FILE if w.kind == "backbone" else w.dest
        lines.append(
            f"| {w.kind} | {w.name} | ~{fetch.human(w.approx_bytes)} | {w.url} | {where} | {', '.join(w.used_by)} |"
        )
    total = sum(w.approx_bytes for w in weights)
    lines.append(
        f"\n{len(weights)} files, ~{fetch.human(total)} in all. On an offline machine, copy the hub cache folders "
        "(models--timm--*) and the head files to the same places (HF_HUB_CACHE / TORCH_HOME set alike)."
    )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.get_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="list names, sizes and destinations; download nothing")
    parser.add_argument("--mirror", help=f"fetch every file from MIRROR/<host>/<path> (default ${fetch.MIRROR_ENV})")
    parser.add_argument("--presets", nargs="+", default=list(presets.PAPER_PRESETS), help="default: every paper preset")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = [p for p in args.presets if not (presets.CONF_DIR / "experiment" / f"{p}.yaml").is_file()]
    if unknown:
        raise UserError(f"unknown preset {unknown[0]!r}; the paper's: {', '.join(presets.PAPER_PRESETS)}")
    weights = catalog(tuple(args.presets))
    if args.print:
        print(describe(weights))
        return 0
    mirror = fetch.mirror_of(args.mirror)
    pending = [w for w in weights if not (w.dest.is_file() or (w.dest / "refs" / "main").is_file())]
    for cache in {w.dest.parent for w in pending}:  # the hub cache and the torch hub checkpoints folder
        need = sum(w.approx_bytes for w in pending if w.dest.parent == cache)
        fetch.check_free_disk(cache, need, f"the weights going to {cache}")
    for w in weights:
        path = (fetch_backbone if w.kind == "backbone" else fetch_head)(w, mirror, not args.no_progress)
        print(f"{w.kind} {w.name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m scripts.get_weights"))
