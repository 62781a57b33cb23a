"""Self-distillation by SRT (paper Eq. 4, the "Distill by SRT" row of Table 1).

    python run.py task=distill                                     # DINO ViT-S/16 on the DAVIS-2017 train frames
    python run.py task=davis srt.level=0 backbone.pretrained=<run dir>/student.safetensors   # evaluate the student

A trainable copy of the run's backbone (the student) is fine-tuned so that its last-layer normed patch tokens
(``tokens``) match the SRT features of the frozen original (the teacher: the runner's extractor, i.e. SRT with
the ``srt.*`` settings, pooled to the token grid) on unlabelled images:

    min_w  sum_x  d(phi_w(x), SRT(x, w_0))  +  norm_penalty * ||w||_2

Defaults are the official code's (srt:main.py ``--do_distill``, srt:distill_utils.py; PROTOCOLS.md 1.7): images
read as DINO reads DAVIS frames (short side 480, long side floored to a multiple of 64, ImageNet mean and DINO's
std 0.228) -- normalised **once** (the official dataset normalises a second time, a bug not copied); the DAVIS
train split's frames; one image per step; MSE over all token entries; AdamW lr 3e-4, betas (0.9, 0.999), no
decoupled weight decay but ``1e-5 * sqrt(sum of squared trainable weights)`` added to the loss; 50 epochs; all
parameters trainable; the learning rate of epoch e (from 0) is ``lr * 0.1^(number of milestones < e)`` with
milestones 25 and 40, as the official ``adjust_lr`` (so the first decayed epoch is 26; torch's MultiStepLR would
start at 25). Differences: the images are shuffled each epoch by a seeded generator (``task.shuffle``; the
official code iterates its dataset in a fixed order: ``task.shuffle=false``); teacher targets are cached per
image in the run's item cache (float16 by default) instead of a hard-coded features folder.

Resumable: teacher targets (T forward passes each) are computed once per image and cached; after every epoch
an atomic ``checkpoint.pt`` holds the student, optimiser, scheduler, epoch, loss history and RNG states, and a
re-run of the same command continues from it and ends with the same weights as an uninterrupted run.

Outputs in the run directory: ``student.safetensors`` (the student's timm state dict; its metadata holds the
training record, which marks runs that load it as distilled), ``checkpoint.pt``, ``loss.csv`` (epoch, loss,
penalty, lr) and ``loss.png`` (titled with the level and the teacher's weights; at ``srt.level=0`` the targets are
the plain features and the title says so). Metrics: ``loss_first_epoch``, ``loss_last_epoch`` and ``loss_epoch_<k>`` (mean
distance per epoch, penalty excluded), ``target_distance_initial`` / ``target_distance_final`` (the distance of
the initial / final student to the targets over all images, eval mode), ``n_images``, ``epochs``.

Cost: targets n * T forward passes once; an epoch n forward + backward passes of the student; memory: the
student with its optimiser state (3x its weights) and one batch of activations; the cache n * C * h * w values.
bfloat16 autocast on CUDA (``task.autocast``); float32 on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import srt
from eval import davis as davis_eval
from srt import viz
from srt.errors import UserError
from srt.io import atomic_write_bytes, atomic_write_text, check_image

from .base import DataFiles, FeatureExtractor, RunContext, Task, check_each
from .davis import DINO_MEAN, DINO_STD, frame_size, read_frame
from .images import check_run_size, item_ids, list_images
from .run_identity import config_hash

log = logging.getLogger(__name__)

LOSSES = ("mse", "l1", "cosine")
UNFREEZE = ("all", "bias", "last", "last2")
TARGET_DTYPES = ("float16", "float32")
CHECKPOINT = "checkpoint.pt"
#: settings that do not change the teacher targets (left out of the item cache key)
TRAINING_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "betas",
    "weight_decay",
    "norm_penalty",
    "lr_milestones",
    "lr_decay",
    "loss",
    "unfreeze",
    "shuffle",
    "seed",
    "autocast",
    "student_file",
)


@dataclass
class DistillConfig:
    """The ``task.*`` settings of task=distill. Defaults are the official code's (see the module docstring)."""

    images: Optional[str] = None  # a folder of images (searched recursively) or one file; null: DAVIS `split` frames
    root: str = "???"  # DAVIS root (JPEGImages/<resolution>/<seq>/*.jpg, ImageSets/2017/<split>.txt)
    split: str = "train"  # the paper distils on the DAVIS-2017 train frames
    resolution: str = "480p"
    short_side: int = 480  # images resized as DAVIS frames: short side -> 480, long side floored to a multiple of 64
    long_side_multiple: int = 64
    # normalised once (the official dataset normalises a second time by mistake); DINO's DAVIS std 0.228 kept
    # for parity with task=davis; null: the backbone's own
    mean: Optional[list[float]] = field(default_factory=lambda: list(DINO_MEAN))
    std: Optional[list[float]] = field(default_factory=lambda: list(DINO_STD))
    max_images: Optional[int] = None  # TEST/DEBUG ONLY: the first N images; null = all
    target_dtype: str = "float16"  # the cached teacher targets: float16 (half the disk) | float32
    epochs: int = 50
    batch_size: int = 1  # images per step (the official code: 1); a batch's images must share a size
    lr: float = 3e-4  # AdamW
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (official: 0)
    norm_penalty: float = 1e-5  # the official term: + norm_penalty * sqrt(sum of squared trainable weights)
    # lr * lr_decay^(number of milestones < epoch), epochs counted from 0 (the official adjust_lr)
    lr_milestones: list[int] = field(default_factory=lambda: [25, 40])
    lr_decay: float = 0.1
    loss: str = "mse"  # mse | l1 | cosine (1 - cosine per token)
    unfreeze: str = "all"  # all | bias | last (last block + final norm) | last2
    shuffle: bool = True  # a seeded permutation per epoch; false: the official fixed order
    seed: int = 0  # seeds the shuffling
    autocast: bool = True  # bfloat16 autocast on CUDA (no effect on CPU)
    student_file: str = "student.safetensors"  # under the run directory

    def validate(self) -> DistillConfig:
        if self.images is None and self.root in ("", "???"):
            raise UserError("task.root is not set and task.images is null; expected a DAVIS root or an image folder")
        for name in ("epochs", "batch_size", "short_side", "long_side_multiple"):
            if getattr(self, name) < 1:
                raise UserError(f"task.{name}={getattr(self, name)} is not valid; expected an integer >= 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"task.max_images={self.max_images} is not valid; expected null or >= 1")
        for name, choices in (("loss", LOSSES), ("unfreeze", UNFREEZE), ("target_dtype", TARGET_DTYPES)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"task.{name}={getattr(self, name)!r} is not valid; expected one of {', '.join(choices)}"
                )
        if not self.lr > 0:
            raise UserError(f"task.lr={self.lr} is not valid; expected a number > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"task.betas={self.betas} is not valid; expected two numbers in [0, 1)")
        for name in ("weight_decay", "norm_penalty", "lr_decay"):
            if getattr(self, name) < 0:
                raise UserError(f"task.{name}={getattr(self, name)} is not valid; expected a number >= 0")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise UserError(f"task.{name}={value} is not valid; expected null or 3 numbers")
        if not self.student_file.endswith(".safetensors"):
            raise UserError(
                f"task.student_file={self.student_file!r} is not valid; expected a name ending .safetensors"
            )
        return self


def lr_factor(epoch: int, milestones: list[int], decay: float) -> float:
    """The official step schedule: epoch e (from 0) runs at lr * decay^(number of milestones < e)."""
    return decay ** sum(1 for m in milestones if m < epoch)


def distance(student: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean distance between token grids [B,C,h,w]: mse / l1 over all entries, cosine: mean of 1 - cos per token."""
    if kind == "mse":
        return F.mse_loss(student, target)
    if kind == "l1":
        return F.l1_loss(student, target)
    return (1 - F.cosine_similarity(student, target, dim=1)).mean()


def set_trainable(student: srt.Backbone, mode: str) -> list[torch.nn.Parameter]:
    """Mark which parameters train (the official ``thaw`` modes, for any depth); return them."""
    last = student.depth - 1
    heads = ("norm.", "neck.")  # the final norm (ViT) or the neck (SAM) feed ``tokens``

    def wanted(name: str) -> bool:
        if mode == "all":
            return True
        if mode == "bias":
            return "bias" in name
        blocks = (last,) if mode == "last" else (last - 1, last)
        return name.startswith(heads) or any(name.startswith(f"blocks.{b}.") for b in blocks)

    params = []
    for name, p in student.model.named_parameters():
        p.requires_grad_(wanted(name))
        if p.requires_grad:
            params.append(p)
    return params


def teacher_backbone(extractor: FeatureExtractor) -> srt.Backbone:
    """The frozen backbone inside the runner's extractor (SRT wrapper or plain backbone)."""
    if isinstance(extractor, srt.JitterEnsemble):
        raise UserError("task=distill distils SRT features; srt.method=jitter is not valid here (use srt.method=shift)")
    bb = getattr(extractor, "wrapped", extractor)
    if not isinstance(bb, srt.Backbone):
        raise TypeError(f"task=distill needs an srt.Backbone inside the extractor; got {type(bb).__name__}")
    return bb


class DistillTask(Task):
    name: ClassVar[str] = "distill"
    Config: ClassVar[type] = DistillConfig
    outputs: ClassVar[tuple[str, ...]] = ("tokens",)
    #: where the images lie; the run identity uses the image files themselves (:meth:`data_files`)
    data_location_settings: ClassVar[tuple[str, ...]] = ("root", "images")

    # -- data --------------------------------------------------------------------------------------

    def image_list(self) -> tuple[list[Path], Path]:
        """The training images and the folder their cache ids are relative to."""
        cfg = self.cfg
        if cfg.images is not None:
            found = list_images([cfg.images], "task.images")
            base = Path(cfg.images) if Path(cfg.images).is_dir() else Path(cfg.images).parent
        else:
            root = Path(cfg.root)
            found = [
                p
                for seq in davis_eval.select_sequences(root, cfg.split, None)
                for p in davis_eval.image_paths(root, seq, cfg.resolution)
            ]
            base = root / "JPEGImages" / cfg.resolution
        if cfg.max_images is not None:
            found = found[: cfg.max_images]
        return [Path(p) for p in found], base

    def check_settings(self, model: srt.ModelInfo, srt_cfg: srt.SRTConfig) -> None:
        if srt_cfg.method == "jitter":
            raise UserError(
                "task=distill distils SRT features; srt.method=jitter is not valid here (use srt.method=shift)"
            )
        if srt_cfg.output != "pooled":
            raise UserError(
                f"srt.output={srt_cfg.output} is not valid for task=distill: the teacher's SRT features must be on the "
                "token grid; expected srt.output=pooled"
            )
        self._patch_size, self._model = model.patch_size, model

    def check_data(self) -> None:
        """Every training image checked whole (:func:`srt.io.check_image`) and, once the model's patch size is
        known (:meth:`check_settings`), its resized size checked against it."""
        self.images, self.base = self.image_list()
        check_each(self.images, lambda path: self._size(path, getattr(self, "_patch_size", None)), "training images")

    def _size(self, path: Path, patch: Optional[int]) -> Optional[tuple[int, int]]:
        """The size frames of ``path`` are resized to (None without a patch size); errors name the file."""
        w, h = check_image(path, "image")
        if patch is None:
            return None
        how = f"resized to task.short_side={self.cfg.short_side}; the stated minimum is one patch before resizing"
        check_run_size(path, (w, h), (w, h), patch, how)
        size = frame_size(w, h, patch, self.cfg.short_side, self.cfg.long_side_multiple)
        if size[0] % patch or size[1] % patch:
            raise UserError(
                f"{path} is resized to {size[0]}x{size[1]} (task.short_side={self.cfg.short_side}, "
                f"task.long_side_multiple={self.cfg.long_side_multiple}), not a multiple of the patch size {patch}; "
                "choose settings that give multiples of it"
            )
        return size

    def data_files(self) -> DataFiles:
        images, base = self.image_list()
        return DataFiles.under("DAVIS-2017" if self.cfg.images is None else "images", base, images)

    def cache_key_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.cfg).items() if k not in TRAINING_KEYS}

    def _load(self, path: Path, patch: int, mean, std) -> torch.Tensor:
        return read_frame(path, self._size(path, patch), mean, std)[0]

    def check_run_dir(self, run_dir: Path) -> None:
        """A checkpoint an earlier run left (``checkpoint.pt``) read safely and checked against the configured
        student (keys; the shapes its ModelInfo fixes: width, depth, patch size) before any model is built."""
        path = Path(run_dir) / CHECKPOINT
        model = getattr(self, "_model", None)
        if path.exists():
            state = read_checkpoint_file(path)
            if model is not None:
                check_student_state(path, state["student"], model)

    # -- run ---------------------------------------------------------------------------------------

    def run(self, extractor: FeatureExtractor, ctx: RunContext) -> dict[str, float]:
        cfg = self.cfg
        images, base = getattr(self, "images", None), getattr(self, "base", None)
        if images is None:
            images, base = self.image_list()
        teacher = teacher_backbone(extractor)
        _check_teacher(extractor)
        mean = cfg.mean if cfg.mean is not None else teacher.mean
        std = cfg.std if cfg.std is not None else teacher.std
        ids = item_ids(images, base)
        data = _Data(images, ids, lambda path: self._load(path, teacher.patch_size, mean, std), ctx)
        self._compute_targets(extractor, data, ctx)
        ctx.cache.items_done()  # a shard run stops here: shards split the teacher targets, training needs them all
        training = _Training(cfg, teacher, extractor, data, ctx.device)
        ckpt_path = ctx.out_dir / CHECKPOINT
        fingerprint = config_hash({"task": asdict(cfg), "images": ids, "teacher": teacher.weights}, 16)
        if ctx.extras.get("config", {}).get("force") and ckpt_path.exists():
            ckpt_path.unlink()
        history, initial = training.resume(ckpt_path, fingerprint)
        for epoch in range(len(history), cfg.epochs):
            history.append(training.epoch(epoch, ctx.progress))
            log.info(
                "distill: epoch %d/%d loss %.6g lr %.3g", epoch + 1, cfg.epochs, history[-1]["loss"], history[-1]["lr"]
            )
            save_checkpoint(ckpt_path, training.state(fingerprint, epoch + 1, history, initial))
        final = training.student_distance()
        self._write_outputs(ctx.out_dir, training.student, teacher, extractor, history, len(images))
        width = len(str(cfg.epochs))
        return {
            "loss_first_epoch": history[0]["loss"],
            "loss_last_epoch": history[-1]["loss"],
            **{f"loss_epoch_{h['epoch']:0{width}d}": h["loss"] for h in history},
            "target_distance_initial": initial,
            "target_distance_final": final,
            "n_images": float(len(images)),
            "epochs": float(cfg.epochs),
        }

    def _compute_targets(self, extractor: FeatureExtractor, data: _Data, ctx: RunContext) -> None:
        """The teacher's SRT features of every image, cached once (resumed runs load them)."""
        dtype = getattr(torch, self.cfg.target_dtype)

        def compute_target(i: int) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                x = data.image(i)[None].to(ctx.device)
                return {"tokens": extractor(x)["tokens"][0].to(dtype)}

        for i in tqdm(range(len(data.images)), desc="teacher targets", disable=not ctx.progress):
            if ctx.cache.skips(f"targets/{data.ids[i]}"):  # another shard's image (shard=i/n)
                continue
            ctx.cache.get_or_compute(f"targets/{data.ids[i]}", lambda: compute_target(i))

    def _write_outputs(self, out_dir: Path, student, teacher, extractor, history: list[dict], n_images: int) -> None:
        """The student (safetensors, with its training record), loss.csv and loss.png."""
        cfg = self.cfg
        record = {
            "teacher_weights": teacher.weights,
            "srt": dataclasses.asdict(extractor.config) if hasattr(extractor, "config") else {},
            "distill": asdict(cfg),
            "n_images": n_images,
            "loss_last_epoch": history[-1]["loss"],
            "run_dir": str(out_dir),
        }
        atomic_write_bytes(out_dir / cfg.student_file, srt.backbones.student_file_bytes(student, record))
        atomic_write_text(
            out_dir / "loss.csv",
            "epoch,loss,penalty,lr\n"
            + "".join(f"{h['epoch']},{h['loss']:.8g},{h['penalty']:.8g},{h['lr']:.8g}\n" for h in history),
        )
        level = getattr(getattr(extractor, "config", None), "level", 0)
        title = loss_title(level, teacher.name, teacher.weights)
        atomic_write_bytes(out_dir / "loss.png", loss_curve_png(history, cfg.loss, title, level))


def _check_teacher(extractor: FeatureExtractor) -> None:
    if extractor.stride != extractor.patch_size:
        raise UserError(
            f"task=distill needs the teacher's SRT features on the token grid (srt.output=pooled); "
            f"the extractor returns stride {extractor.stride}, the patch size is {extractor.patch_size}"
        )
    if getattr(extractor, "passes", 1) == 1:
        log.warning("srt.level=0: the teacher targets are the backbone's own features; the student will not move")


@dataclass
class _Data:
    """The training images, their cache ids, how one is loaded, and the cached teacher targets."""

    images: list[Path]
    ids: list[str]
    load: Any  # path -> [3,H,W] normalised
    ctx: RunContext

    def image(self, i: int) -> torch.Tensor:
        return self.load(self.images[i])

    def target(self, i: int) -> torch.Tensor:  # the epochs read the cached targets (n * C * h * w: not kept in memory)
        with np.load(self.ctx.cache.path(f"targets/{self.ids[i]}")) as data:
            return torch.from_numpy(data["tokens"]).float()


class _Training:
    """The student, its optimiser, schedule and shuffling: one epoch, the distance to the targets, the state
    a checkpoint holds and resuming from one."""

    def __init__(self, cfg: DistillConfig, teacher: srt.Backbone, extractor: FeatureExtractor, data: _Data, device):
        self.cfg, self.data, self.device, self.teacher_patch = cfg, data, device, extractor.patch_size
        self.student = teacher.trainable_copy().to(device)
        self.student.set_outputs(("tokens",))
        self.params = set_trainable(self.student, cfg.unfreeze)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: lr_factor(e, list(cfg.lr_milestones), cfg.lr_decay)
        )
        self.shuffle = torch.Generator().manual_seed(cfg.seed)

    def amp(self):
        if self.cfg.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compare(self, out: torch.Tensor, t: torch.Tensor, first: int) -> torch.Tensor:
        if out.shape != t.shape:
            raise UserError(
                f"student tokens {tuple(out.shape)} and teacher targets {tuple(t.shape)} differ for "
                f"{self.data.images[first]}: teacher and student must share the patch size and image size "
                f"(student patch size {self.student.patch_size}, teacher {self.teacher_patch})"
            )
        return distance(out.float(), t, self.cfg.loss)

    def student_distance(self) -> float:
        self.student.eval()
        data, device = self.data, self.device
        with torch.no_grad(), self.amp():
            d = [
                self.compare(self.student(data.image(i)[None].to(device))["tokens"], data.target(i)[None].to(device), i)
                for i in range(len(data.images))
            ]
        return float(torch.stack(d).mean())

    def epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        """One epoch of steps; its history row (mean loss and penalty, the learning rate it ran at)."""
        cfg, data, n = self.cfg, self.data, len(self.data.images)
        self.student.train()
        order = torch.randperm(n, generator=self.shuffle).tolist() if cfg.shuffle else list(range(n))
        lr = self.optimizer.param_groups[0]["lr"]
        losses, penalties = [], []
        batches = [order[k : k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
        for batch in tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
            x = _stack([data.image(i) for i in batch], [data.images[i] for i in batch]).to(self.device)
            t = torch.stack([data.target(i) for i in batch]).to(self.device)
            with self.amp():
                d = self.compare(self.student(x)["tokens"], t, batch[0])
            penalty = torch.sqrt(sum(q.pow(2).sum() for q in self.params)) * cfg.norm_penalty
            self.optimizer.zero_grad(set_to_none=True)
            (d + penalty).backward()
            self.optimizer.step()
            losses.append(d.item())
            penalties.append(penalty.item())
        self.scheduler.step()
        return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "penalty": float(np.mean(penalties)), "lr": lr}

    def state(self, fingerprint: str, epoch: int, history: list[dict], initial: float) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "student": self.student.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            "initial_distance": initial,
            "rng": {
                "shuffle": self.shuffle.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else None,
            },
        }

    def resume(self, path: Path, fingerprint: str) -> tuple[list[dict], float]:
        """(history, initial distance): restored from the checkpoint at ``path`` if there is one, else fresh."""
        state = load_checkpoint(path, fingerprint) if path.exists() else None
        if state is None:
            return [], self.student_distance()
        self.student.model.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("distill: resuming after epoch %d from %s", state["epoch"], path)
        return list(state["history"]), float(state["initial_distance"])


def _stack(tensors: list[torch.Tensor], paths: list[Path]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise UserError(
            f"task.batch_size={len(tensors)}: images of one batch must share a size after resizing; "
            f"{', '.join(f'{p} {tuple(t.shape[1:])}' for p, t in zip(paths, tensors))}"
        )
    return torch.stack(tensors)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to memory, then an atomic write: a killed run leaves the previous checkpoint or this one."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


CHECKPOINT_KEYS = ("fingerprint", "epoch", "student", "optimizer", "scheduler", "history", "initial_distance", "rng")


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """A distill checkpoint read safely (:func:`srt.safe_load.load_torch_file`) with every key it must hold;
    UserError naming the file (not a checkpoint, refused objects, missing keys) otherwise."""
    from srt.safe_load import CheckpointReadError, load_torch_file

    try:
        state = load_torch_file(path)
    except CheckpointReadError as e:
        raise UserError(
            f"distill checkpoint {path} cannot be read: {e.reason}; delete it or re-run with force=true"
        ) from e
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"distill checkpoint {path} lacks {[k for k in CHECKPOINT_KEYS if k not in (state if isinstance(state, dict) else {})]}"
            f" (it holds {found}); it is not a checkpoint of task=distill: delete it or re-run with force=true"
        )
    return state


def check_student_state(path: Path, student: Any, model: srt.ModelInfo) -> None:
    """The checkpoint's student against the configured one: a state dict of tensors with the model's number of
    blocks, its patch size (the patch embedding's kernel) and, for ViTs (a CLS token), its width. UserError
    naming the file and both shapes otherwise."""
    if not isinstance(student, dict) or not all(isinstance(v, torch.Tensor) for v in student.values()):
        raise UserError(f"distill checkpoint {path}: 'student' is not a state dict of tensors; delete it")
    blocks = {int(k.split(".")[1]) for k in student if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    found = [f"{len(blocks)} blocks"] if len(blocks) != model.depth else []
    kernel = student.get("patch_embed.proj.weight")
    if kernel is None or tuple(kernel.shape[-2:]) != (model.patch_size, model.patch_size):
        found.append(f"patch_embed.proj.weight {None if kernel is None else tuple(kernel.shape)}")
    cls = student.get("cls_token")
    if cls is not None and cls.shape[-1] != model.embed_dim:
        found.append(f"cls_token {tuple(cls.shape)}")
    if found:
        raise UserError(
            f"distill checkpoint {path} holds a student of another model ({', '.join(found)}); the configured "
            f"{model.name} has {model.depth} blocks, width {model.embed_dim}, patch size {model.patch_size}: "
            "delete it or re-run with force=true"
        )


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    """A checkpoint written by this configuration; ValueError naming the file when it is unreadable or foreign."""
    state = read_checkpoint_file(path)
    if state["fingerprint"] != fingerprint:
        raise UserError(
            f"distill checkpoint {path} was written with other settings, images or teacher weights; "
            "delete it or re-run with force=true"
        )
    return state


def loss_title(level: int, teacher: str, weights: Any) -> str:
    """What the loss plot shows: self-distillation by SRT at level > 0; at level 0 the targets are the backbone's
    own features (a control, not SRT distillation). With the teacher's weights (random ones said so)."""
    what = (
        f"self-distillation by SRT (L={level})" if level > 0 else "distillation to plain features (srt.level=0, no SRT)"
    )
    return f"{what}: {teacher}; {viz.weights_caption(weights)}"


def loss_curve_figure(history: list[dict[str, float]], loss: str, title: str, level: int = 1):
    """The loss per epoch (log scale) as a matplotlib Figure (the object API: no display backend needed)."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(5, 3.4), dpi=120)
    ax = fig.subplots()
    ax.plot(epochs, [h["loss"] for h in history], marker="o", markersize=3)
    if all(h["loss"] > 0 for h in history):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss} to {'SRT' if level > 0 else 'plain'} targets")
    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curve_png(history: list[dict[str, float]], loss: str, title: str, level: int = 1) -> bytes:
    """:func:`loss_curve_figure` as PNG bytes."""
    buf = io.BytesIO()
    loss_curve_figure(history, loss, title, level).savefig(buf, format="png")
    return buf.getvalue()
