"""Self-distillation by SRT (task=distill), CPU, tiny random ViT, four real DAVIS frames, seconds:

- the schedule, distances and trainable sets are the official ones (hand-computed cases);
- the loss falls, and the saved student moves towards the teacher's SRT features (recomputed here from a fresh
  teacher) and away from its own initial features;
- a run interrupted after an epoch, or killed with SIGKILL, resumes from its checkpoint without recomputing the
  teacher targets and ends with bit-identical weights to an uninterrupted run;
- the student loads in another task through backbone.pretrained=<file>, whose record and table row say
  "distilled"; bad input (empty folder, corrupt checkpoint, targets of another grid) gets named errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
from eval import tables  # noqa: E402
from eval.run_record import read_record  # noqa: E402
from tasks import distill, runner  # noqa: E402
from tasks.davis import DINO_MEAN, DINO_STD, dino_frame_size, read_frame  # noqa: E402

TINY_KW = dict(depth=2, embed_dim=64, num_heads=2)
TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a loaded shared machine two threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def frames(fixtures_dir) -> Path:
    return fixtures_dir / "davis" / "JPEGImages" / "480p" / "dog"


def args(root: Path, frames: Path, *extra: str, epochs: int = 8) -> list[str]:
    return [
        "task=distill",
        f"task.images={frames}",
        "task.max_images=4",
        "task.short_side=48",
        "task.long_side_multiple=16",
        f"task.epochs={epochs}",
        "task.lr_milestones=[5,6]",
        "task.lr=1e-3",
        "srt.level=2",
        "progress=false",
        "device=cpu",
        f"paths.results_root={root}",
        *TINY,
        *extra,
    ]


def test_official_schedule_distances_and_trainable_sets():
    # the official adjust_lr: epoch e (from 0) runs at lr * decay^(number of milestones < e)
    assert [distill.lr_factor(e, [25, 40], 0.1) for e in (0, 25, 26, 40, 41, 49)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    s = torch.tensor([[[[1.0]], [[0.0]]], [[[0.0]], [[2.0]]]])  # [B=2, C=2, 1, 1]
    t = torch.tensor([[[[0.0]], [[1.0]]], [[[0.0]], [[1.0]]]])
    assert distill.distance(s, t, "mse").item() == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert distill.distance(s, t, "l1").item() == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert distill.distance(s, t, "cosine").item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)
    bb = srt.load_backbone("dino_vits16", pretrained=False, **TINY_KW).trainable_copy()
    names = lambda: {n for n, p in bb.model.named_parameters() if p.requires_grad}  # noqa: E731
    assert len(distill.set_trainable(bb, "all")) == len(list(bb.model.parameters()))
    distill.set_trainable(bb, "last")
    assert names() and all(n.startswith(("blocks.1.", "norm.")) for n in names())
    distill.set_trainable(bb, "bias")
    assert names() and all("bias" in n for n in names())


def test_a_trainable_copy_trains_and_the_original_stays_frozen():
    bb = srt.load_backbone("dino_vits16", pretrained=False, **TINY_KW)
    student = bb.trainable_copy()
    assert student.train().training and not bb.train().training
    assert all(p.requires_grad for p in student.parameters()) and not any(p.requires_grad for p in bb.parameters())
    student(torch.randn(1, 3, 32, 32))["tokens"].sum().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert student.outputs == bb.outputs and student.model is not bb.model


def _images(frames: Path, n: int = 4) -> list[torch.Tensor]:
    out = []
    for path in sorted(frames.glob("*.jpg"))[:n]:
        size = dino_frame_size(854, 480, 48, 16)
        out.append(read_frame(path, size, DINO_MEAN, DINO_STD)[0][None])
    return out


def test_the_student_moves_to_the_srt_features_and_away_from_its_own(tmp_path, frames):
    record = runner.execute(compose_cfg(args(tmp_path, frames)))
    m, out = record.metrics, Path(record.run_dir)
    assert m["loss_last_epoch"] < 0.5 * m["loss_first_epoch"]
    assert [m[f"loss_epoch_{k}"] for k in (1, 8)] == [m["loss_first_epoch"], m["loss_last_epoch"]]
    assert m["target_distance_final"] < 0.5 * m["target_distance_initial"]
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss,penalty,lr" and len(lines) == 9
    assert [float(r.split(",")[3]) for r in lines[1:]] == pytest.approx([1e-3] * 6 + [1e-4, 1e-5])
    assert (out / "loss.png").stat().st_size > 1000

    student = srt.load_backbone("dino_vits16", pretrained=out / "student.safetensors", outputs=("tokens",), **TINY_KW)
    initial = srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), **TINY_KW)
    teacher = srt.StochasticResonance(initial, level=2)  # recomputed here, not read from the run's cache
    to_target = to_target_before = from_initial = 0.0
    with torch.no_grad():
        for x in _images(frames):
            s, i, t = student(x)["tokens"], initial(x)["tokens"], teacher(x)["tokens"]
            to_target += F.mse_loss(s, t).item()
            to_target_before += F.mse_loss(i, t).item()
            from_initial += F.mse_loss(s, i).item()
    assert to_target < 0.5 * to_target_before  # towards the teacher's SRT features
    assert from_initial > 0.5 * to_target_before  # away from its own initial features, about as far as they were
    assert to_target / 4 == pytest.approx(m["target_distance_final"], rel=0.05)  # float16 targets in the run


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, frames, monkeypatch):
    clean = runner.execute(compose_cfg(args(tmp_path / "clean", frames)))
    real_save = distill.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        if state["epoch"] == 3:
            raise Interrupted

    monkeypatch.setattr(distill, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        runner.execute(compose_cfg(args(tmp_path / "resumed", frames)))
    monkeypatch.setattr(distill, "save_checkpoint", real_save)
    resumed = runner.execute(compose_cfg(args(tmp_path / "resumed", frames)))
    assert resumed.items == {"computed": 0, "loaded": 4}  # teacher targets were not recomputed
    assert resumed.metrics == clean.metrics
    a = load_file(Path(clean.run_dir) / "student.safetensors")
    b = load_file(Path(resumed.run_dir) / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, frames):
    epochs = 60
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [sys.executable, "run.py", *args(killed, frames, epochs=epochs)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(killed.rglob(distill.CHECKPOINT)):  # kill as soon as the first epoch is saved
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint was written in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    [ckpt] = killed.rglob(distill.CHECKPOINT)
    state = torch.load(ckpt, weights_only=True)  # never half written
    assert 1 <= state["epoch"] < epochs and not list(killed.rglob("metrics.json"))
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch" in proc.stdout + proc.stderr
    [record] = [read_record(p) for p in killed.rglob("metrics.json")]
    clean = runner.execute(compose_cfg(args(tmp_path / "clean", frames, epochs=epochs)))
    assert record.metrics == clean.metrics
    a = load_file(Path(clean.run_dir) / "student.safetensors")
    b = load_file(Path(record.run_dir) / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_student_loads_in_a_task_as_the_distilled_row(tmp_path, frames):
    trained = runner.execute(compose_cfg(args(tmp_path, frames, epochs=2)))
    student = Path(trained.run_dir) / "student.safetensors"
    used = runner.execute(
        compose_cfg(
            [
                "task=toy",
                "task.n_images=2",
                "task.image_size=32",
                "srt.level=0",
                "progress=false",
                "device=cpu",
                f"paths.results_root={tmp_path / 'eval'}",
                f"backbone.pretrained={student}",
                "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}",
            ]
        )
    )
    assert used.method == "distilled" and used.backbone["weights"].endswith("distilled student)")
    assert used.backbone["distilled"] is True and used.backbone["distilled_from"].startswith("random")
    trained_how = srt.backbones.read_student_record(student)  # the training record in the file's metadata
    assert trained_how["backbone"] == "dino_vits16" and trained_how["teacher_weights"].startswith("random")
    assert trained_how["distill"]["epochs"] == 2 and trained_how["srt"]["level"] == 2
    [row, *_] = tables.rows_of_record(used, Path("metrics.json"))
    assert (row["method"], row["weights"], row["level"]) == ("distilled", "random", 0)
    with pytest.raises(ValueError, match="distilled from backbone 'dino_vits16'; load it as that backbone"):
        srt.load_backbone("dino_vits8", pretrained=student, **TINY_KW)


def test_bad_input_gets_named_errors(tmp_path, frames, monkeypatch):
    real_load = srt.load_backbone

    def no_model(*a, **k):
        raise AssertionError("a model was built before the images were checked")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"task.images: folder .*empty holds no images \(searched recursively"):
        runner.execute(compose_cfg(args(tmp_path, tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match=r"nowhere"):
        runner.execute(compose_cfg(["task=distill", f"paths.data_root={tmp_path / 'nowhere'}", *TINY]))
    with pytest.raises(ValueError, match="task.loss='huber' is not valid; expected one of mse, l1, cosine"):
        runner.execute(compose_cfg(args(tmp_path, frames, "task.loss=huber")))
    monkeypatch.setattr(srt, "load_backbone", real_load)

    with pytest.raises(ValueError, match="srt.output=pooled"):
        runner.execute(compose_cfg(args(tmp_path, frames, "srt.output=dense")))

    # a corrupt checkpoint is named, not silently restarted from scratch
    done = runner.execute(compose_cfg(args(tmp_path / "c", frames, epochs=1)))
    run_dir = Path(done.run_dir)
    (run_dir / "metrics.json").unlink()
    (run_dir / distill.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"distill checkpoint .*checkpoint.pt cannot be read"):
        runner.execute(compose_cfg(args(tmp_path / "c", frames, epochs=1)))
    # targets on another grid than the student's (e.g. from another patch size) are named with both shapes
    (run_dir / distill.CHECKPOINT).unlink()
    [target] = [p for p in run_dir.rglob("*.npz") if "00000" in p.name]
    import numpy as np

    np.savez(target, tokens=np.zeros((64, 6, 10), dtype=np.float16))
    with pytest.raises(ValueError, match=r"student tokens \(1, 64, 3, 5\) and teacher targets \(1, 64, 6, 10\) differ"):
        runner.execute(compose_cfg(args(tmp_path / "c", frames, epochs=1)))


def test_default_images_are_the_davis_train_frames(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_sample_data import make_sample_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    make_sample_data(tmp_path)
    plan = runner.plan(compose_cfg(["task=distill", f"paths.data_root={tmp_path}", *TINY]))
    images, base = plan.task.image_list()
    train = (tmp_path / "DAVIS" / "ImageSets" / "2017" / "train.txt").read_text().split()
    assert base == tmp_path / "DAVIS" / "JPEGImages" / "480p"
    assert images and {p.parent.name for p in images} == set(train)
    assert images == sorted(images)


def test_a_distilled_pretrained_student_is_the_distill_by_srt_row_of_table_1(tmp_path):
    def write(rel: str, weights: str, distilled_from: str | None, jf: float) -> None:
        record = {
            "metrics": {"J&F-Mean": jf},
            "finished": "2026-01-02T00:00:00+00:00",
            "backbone": {
                "name": "dino_vits16",
                "weights": weights,
                "distilled": distilled_from is not None,
                "distilled_from": distilled_from,
            },
            "config": {"task": {"name": "davis"}, "backbone": {"name": "dino_vits16"}, "srt": {"level": 0}},
        }
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.json").write_text(json.dumps(record))

    write("base", "pretrained timm/vit_small_patch16_224.dino (cache model.safetensors)", None, 0.600)
    teacher = "pretrained timm/vit_small_patch16_224.dino (cache x)"
    write("student", "file /r/student.safetensors (sha256 ab, distilled student)", teacher, 0.612)
    [t1] = tables.build_tables(tmp_path, only=1)[0]
    row = t1.values.set_index(["backbone", "weights", "method", "L"]).loc[("dino_vits16", "pretrained", "distilled", 0)]
    assert row["J&F-Mean"] == 0.612 and row["J&F-Mean (paper)"] == 0.625  # beside the paper's "Distill by SRT"
    assert row["rel. gain J&F-Mean %"] == pytest.approx(2.0)  # over the same backbone's pretrained baseline


def test_a_checkpoint_is_read_safely_and_checked_against_the_student_before_any_model(tmp_path):
    """DistillTask.check_run_dir (the runner calls it before building the backbone): a checkpoint of this model
    passes; one of a deeper or wider model, or one without the keys of a distill checkpoint, is named."""
    task = distill.DistillTask(distill.DistillConfig(images=str(tmp_path)))
    task.check_settings(srt.model_info("dino_vits16", **TINY_KW), srt.SRTConfig(level=1).validate())
    task.check_run_dir(tmp_path)  # no checkpoint: nothing to check

    def write(**kwargs) -> None:
        student = srt.load_backbone("dino_vits16", pretrained=False, **{**TINY_KW, **kwargs}).model.state_dict()
        state = dict.fromkeys(distill.CHECKPOINT_KEYS, 0)
        distill.save_checkpoint(tmp_path / distill.CHECKPOINT, {**state, "student": student})

    write()
    task.check_run_dir(tmp_path)
    write(depth=3)
    with pytest.raises(ValueError, match=r"holds a student of another model \(3 blocks\); .* has 2 blocks, width 64"):
        task.check_run_dir(tmp_path)
    write(patch_size=8)
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight \(64, 3, 8, 8\)"):
        task.check_run_dir(tmp_path)
    distill.save_checkpoint(tmp_path / distill.CHECKPOINT, {"student": {}})
    with pytest.raises(ValueError, match=r"lacks \['fingerprint', 'epoch'.* not a checkpoint of task=distill"):
        task.check_run_dir(tmp_path)


def test_the_loss_plot_says_what_was_distilled_and_the_weights():
    history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    title = distill.loss_title(3, "dino_vits16", "random (init_seed=0)")
    fig = distill.loss_curve_figure(history, "mse", title, level=3)
    ax = fig.axes[0]
    assert ax.get_title().replace("\n", " ").startswith("self-distillation by SRT (L=3): dino_vits16; RANDOM WEIGHTS")
    assert ax.get_ylabel() == "mse to SRT targets"
    plain = distill.loss_title(0, "dino_vits16", "pretrained timm/x")
    assert "SRT" not in plain.replace("no SRT", "") and plain.endswith("pretrained weights")  # level 0: not SRT
    ax0 = distill.loss_curve_figure(history, "mse", plain, level=0).axes[0]
    assert ax0.get_ylabel() == "mse to plain targets" and "self-distillation by SRT" not in ax0.get_title()
    assert distill.loss_curve_png(history, "mse", title, 3)[:8] == b"\x89PNG\r\n\x1a\n"
