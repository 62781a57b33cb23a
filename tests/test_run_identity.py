"""Run identity (tasks/run_identity.py, Task.data_files): independent of where the data lies, not of what it is.

- the identity of a dataset is its name and a fingerprint of the files a run reads (relative paths and
  content hashes): moving the folder keeps it, adding, removing or editing a file changes it (also a same-size
  edit); the hashes are remembered by size and mtime, so an unchanged file is not read again; each task lists
  only what it reads (checked on the real fixtures);
- a checkpoint file is identified by its content: replaced at the same path it is another run (and another
  item cache), moved it is the same run;
- path-valued task settings enter neither the run directory nor the item cache key;
- end to end: a finished run whose dataset folder moved is reported finished without building a model;
  an interrupted one resumes from its item cache; a dataset with one more image is a new run.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import srt  # noqa: E402
import tasks  # noqa: E402
from eval.run_record import read_record  # noqa: E402
from tasks import runner  # noqa: E402  (registers the configs with Hydra)
from tasks.base import DataFiles  # noqa: E402
from tasks.run_identity import config_hash, run_key, run_subdir  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/\S+' is validated against ConfigStore schema:UserWarning"
)
TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


def compose_cfg(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


# ----------------------------------------------------------------------------------------------
# Hashes and names


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({"a": 1})) == 16


def test_run_subdir_layout():
    task = {"name": "saliency", "dataset": "DUTS-TE", "root": "/data/DUTS-TE"}
    srt_cfg = {"method": "shift", "level": 3, "batch_size": 32}
    d = run_subdir(task, {"name": "dino_vits16", "pretrained": True}, srt_cfg, {"k": 1})
    head, tag = d.rsplit("/", 1)
    assert head == "saliency/DUTS-TE/dino_vits16" and tag.startswith("srt-L3-") and len(tag) == len("srt-L3-") + 8
    assert tag.endswith(config_hash({"k": 1}, 8))
    assert run_subdir(
        {"name": "toy"}, {"name": "x", "pretrained": False}, {"method": "jitter", "level": 2}, {}
    ).startswith("toy/x-random/jitter-L2-")
    assert run_subdir({"name": "toy"}, {"name": "x", "pretrained": "/w.pth"}, {"level": 0}, {}).startswith(
        "toy/x-file/baseline-"
    )


# ----------------------------------------------------------------------------------------------
# Dataset fingerprints


def write(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_data_files_identity_follows_content_not_location(tmp_path):
    a = tmp_path / "a"
    files = [write(a / "img" / "1.jpg", b"one"), write(a / "img" / "2.jpg", b"two!"), write(a / "gt" / "1.png")]
    ident = DataFiles.under("set", a, files).identity()
    assert ident["name"] == "set" and ident["files"] == 3 and len(ident["sha256"]) == 64

    b = tmp_path / "elsewhere" / "b"
    shutil.move(a, b)
    moved = [b / p.relative_to(a) for p in files]
    assert DataFiles.under("set", b, moved).identity() == ident  # moved: same identity

    assert DataFiles.under("set", b, moved[:2]).identity() != ident  # a file fewer
    assert DataFiles.under("set", b, [*moved, write(b / "img" / "3.jpg")]).identity() != ident  # a file more
    (b / "img" / "2.jpg").write_bytes(b"twoo!")  # resized
    assert DataFiles.under("set", b, moved).identity() != ident
    assert DataFiles.under("other", b, moved).identity()["name"] == "other"
    (b / "gt" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1\.png does not exist \(a file of the set dataset\)"):
        DataFiles.under("set", b, moved).identity()


def test_a_same_size_edit_changes_the_identity_and_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    from srt import io as srt_io

    files = [write(tmp_path / "gt.pkl", b"\x00\x01\x02"), write(tmp_path / "img.jpg", b"image")]
    first = DataFiles.under("set", tmp_path, files).identity()
    reads = []
    real = srt_io._sha256_of_file
    monkeypatch.setattr(srt_io, "_sha256_of_file", lambda path: reads.append(path.name) or real(path))
    assert DataFiles.under("set", tmp_path, files).identity() == first and reads == []  # remembered
    files[0].write_bytes(b"\x00\x09\x02")  # same size, new content (e.g. one index fixed in a pickle)
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 1))
    edited = DataFiles.under("set", tmp_path, files).identity()
    assert edited != first and reads == ["gt.pkl"]  # only the changed file was read again


def test_a_checkpoint_replaced_at_the_same_path_is_another_run(tmp_path, monkeypatch):
    import torch

    def tiny_checkpoint(seed: int) -> None:
        bb = srt.load_backbone("dino_vits16", pretrained=False, init_seed=seed, depth=2, embed_dim=64, num_heads=2)
        torch.save(bb.model.state_dict(), weights)

    weights = tmp_path / "weights" / "student.pth"
    weights.parent.mkdir()
    tiny_checkpoint(seed=1)
    args = [
        "task=toy",
        "task.n_images=2",
        "task.image_size=32",
        "srt.level=0",
        "progress=false",
        "device=cpu",
        f"paths.results_root={tmp_path / 'results'}",
        f"backbone.pretrained={weights}",
        "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}",
    ]
    first = runner.execute(compose_cfg(args))
    assert first.items == {"computed": 2, "loaded": 0}
    tiny_checkpoint(seed=2)  # another file at the same path
    second = runner.execute(compose_cfg(args))
    assert second.run_dir != first.run_dir and second.items == {"computed": 2, "loaded": 0}
    assert second.metrics["feature_norm"] != first.metrics["feature_norm"]
    moved = tmp_path / "elsewhere.pth"
    shutil.move(weights, moved)  # the same file elsewhere: the same (finished) run
    monkeypatch.setattr(srt, "load_backbone", lambda *a, **k: pytest.fail("a finished run built a model"))
    again = runner.execute(compose_cfg([*args[:-2], f"backbone.pretrained={moved}", args[-1]]))
    assert again.run_dir == second.run_dir and again.finished == second.finished


def build(name: str, **settings):
    return tasks.build_task({"name": name, **settings})


def moved_copy(src: Path, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a" / src.name, tmp_path / "b" / "deeper" / src.name
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    return a, b


def test_davis_lists_what_a_run_reads(fixtures_dir, tmp_path):
    a, b = moved_copy(fixtures_dir / "davis", tmp_path)
    task = build("davis", root=str(a), sequences=["dog"], max_frames=4)
    files = task.data_files()
    assert files.name == "DAVIS-2017"
    assert sorted(files.files) == [
        "Annotations/480p/dog/00000.png",
        "Annotations/480p/dog/00001.png",
        "Annotations/480p/dog/00002.png",
        "Annotations/480p/dog/00003.png",
        "ImageSets/2017/val.txt",
        "JPEGImages/480p/dog/00000.jpg",
        "JPEGImages/480p/dog/00001.jpg",
        "JPEGImages/480p/dog/00002.jpg",
        "JPEGImages/480p/dog/00003.jpg",
    ]
    ident = task.data_identity()
    assert build("davis", root=str(b), sequences=["dog"], max_frames=4).data_identity() == ident
    write(a / "JPEGImages" / "Full-Resolution" / "dog" / "00000.jpg")  # not read at 480p: same identity
    assert task.data_identity() == ident
    write(a / "Annotations" / "480p" / "dog" / "00002.png", b"edited")  # read: another identity
    assert task.data_identity() != ident


def test_saliency_lists_images_and_masks(fixtures_dir, tmp_path):
    a, b = moved_copy(fixtures_dir / "saliency" / "ECSSD", tmp_path)
    task = build("saliency", root=str(a), dataset="ECSSD")
    files = task.data_files()
    n = len(list((a / "images").glob("*.jpg")))
    assert files.name == "ECSSD" and len(files.files) == 2 * n
    assert {k.split("/")[0] for k in files.files} == {"images", "ground_truth_mask"}
    assert len(build("saliency", root=str(a), dataset="ECSSD", max_images=2).data_files().files) == 4
    ident = task.data_identity()
    assert build("saliency", root=str(b), dataset="ECSSD").data_identity() == ident
    write(a / "README.txt")  # beside the dataset, not read
    assert task.data_identity() == ident
    shutil.copy(a / "images" / "0001.jpg", a / "images" / "9999.jpg")
    shutil.copy(a / "ground_truth_mask" / "0001.png", a / "ground_truth_mask" / "9999.png")
    assert task.data_identity() != ident


def test_discovery_lists_the_image_set_its_images_and_annotations(fixtures_dir, tmp_path):
    a, b = moved_copy(fixtures_dir / "voc07", tmp_path)
    task = build("discovery", root=str(a))
    files = task.data_files()
    voc = a / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert files.name == "VOC2007" and len(files.files) == 1 + 2 * len(ids)
    assert f"VOCdevkit/VOC2007/JPEGImages/{ids[0]}.jpg" in files.files
    ident = task.data_identity()
    assert build("discovery", root=str(b)).data_identity() == ident
    (voc / "Annotations" / f"{ids[0]}.xml").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ids[0]}.xml does not exist"):
        task.data_identity()


def test_retrieval_lists_the_ground_truth_and_its_images(fixtures_dir, tmp_path):
    a, b = moved_copy(fixtures_dir / "roxford", tmp_path)
    subset = dict(database=["all_souls_000055"], queries=["all_souls_000013"])  # the fixture's two images
    task = build("retrieval", root=str(a), **subset)
    files = task.data_files()
    assert files.name == "roxford5k" and sorted(files.files) == [
        "roxford5k/gnd_roxford5k.pkl",
        "roxford5k/jpg/all_souls_000013.jpg",
        "roxford5k/jpg/all_souls_000055.jpg",
    ]
    ident = task.data_identity()
    assert build("retrieval", root=str(b), **subset).data_identity() == ident
    shutil.copy(a / "roxford5k" / "jpg" / "all_souls_000013.jpg", a / "roxford5k" / "jpg" / "not_listed.jpg")
    assert task.data_identity() == ident  # not in the ground truth: not read
    (a / "roxford5k" / "jpg" / "all_souls_000055.jpg").write_bytes(b"truncated")
    assert task.data_identity() != ident


def test_toy_reads_no_files():
    assert build("toy").data_files() is None and build("toy").data_identity() is None


def test_the_default_hook_lists_every_file_under_the_root(tmp_path, monkeypatch):
    """A task that does not override data_files() still gets a correct identity (every file under root)."""
    from tasks.saliency import SaliencyTask

    monkeypatch.delattr(SaliencyTask, "data_files")
    write(tmp_path / "ECSSD" / "images" / "1.jpg")
    write(tmp_path / "ECSSD" / "ground_truth_mask" / "1.png")
    files = build("saliency", root=str(tmp_path / "ECSSD")).data_files()
    assert files.name == "ECSSD" and sorted(files.files) == ["ground_truth_mask/1.png", "images/1.jpg"]


def test_run_key_leaves_out_where_the_data_lies(tmp_path):
    data = {"name": "ECSSD", "files": 2, "sha256": "0" * 64}
    a = run_key(build("saliency", root="/mnt/a/ECSSD"), {"name": "x"}, {"level": 3, "batch_size": 4}, data)
    b = run_key(build("saliency", root="/b/ECSSD"), {"name": "x"}, {"level": 3, "batch_size": 64}, data)
    assert a == b and "root" not in a["task"] and a["data"] == data
    other = run_key(build("saliency", root="/b/ECSSD"), {"name": "x"}, {"level": 3}, {**data, "files": 3})
    assert config_hash(other) != config_hash(a)


# ----------------------------------------------------------------------------------------------
# End to end through the runner


def saliency_args(data_root: Path, results: Path, *extra: str) -> list[str]:
    return [
        "task=saliency",
        "srt.level=1",
        "progress=false",
        "device=cpu",
        f"paths.data_root={data_root}",
        f"paths.results_root={results}",
        *TINY,
        *extra,
    ]


def test_hydra_run_dir_is_the_same_for_moved_data_and_new_for_changed_data(sample_root, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(sample_root / "ECSSD", a / "ECSSD")
    dir_a = compose_cfg(saliency_args(a, tmp_path / "r"), hydra_cfg=True).hydra.run.dir
    b = tmp_path / "b" / "c"
    shutil.move(a, b)
    assert compose_cfg(saliency_args(b, tmp_path / "r"), hydra_cfg=True).hydra.run.dir == dir_a
    (b / "ECSSD" / "images" / "0005.jpg").unlink()
    (b / "ECSSD" / "ground_truth_mask" / "0005.png").unlink()
    assert compose_cfg(saliency_args(b, tmp_path / "r"), hydra_cfg=True).hydra.run.dir != dir_a


@pytest.mark.slow
def test_moved_data_finds_finished_runs_and_the_item_cache(sample_root, tmp_path, monkeypatch):
    results = tmp_path / "results"
    a = tmp_path / "a"
    shutil.copytree(sample_root / "ECSSD", a / "ECSSD")
    first = runner.execute(compose_cfg(saliency_args(a, results)))
    n = first.items["computed"]
    assert n == 5 and first.data["name"] == "ECSSD" and first.data["files"] == 10
    assert read_record(first.run_dir).data == first.data  # the fingerprint is recorded in metrics.json

    # the folder moves (or the results are used on another machine with the data elsewhere)
    b = tmp_path / "moved" / "elsewhere"
    shutil.move(a, b)
    real_load = srt.load_backbone

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run built a model")

    monkeypatch.setattr(srt, "load_backbone", no_model)
    again = runner.execute(compose_cfg(saliency_args(b, results)))
    assert again.run_dir == first.run_dir and again.finished == first.finished and again.metrics == first.metrics

    # an interrupted run (no metrics.json, one item missing) resumes from the cache after the move
    monkeypatch.setattr(srt, "load_backbone", real_load)
    run_dir = Path(first.run_dir)
    (run_dir / "metrics.json").unlink()
    next(run_dir.joinpath("cache").rglob("0003.npz")).unlink()
    c = tmp_path / "third"
    shutil.move(b, c)
    resumed = runner.execute(compose_cfg(saliency_args(c, results)))
    assert resumed.run_dir == first.run_dir and resumed.items == {"computed": 1, "loaded": n - 1}
    scores = ("maxF", "IoU", "Acc", "n_images")  # (the timings differ)
    assert {k: resumed.metrics[k] for k in scores} == pytest.approx({k: first.metrics[k] for k in scores})

    # one image more: not the old finished run
    shutil.copy(c / "ECSSD" / "images" / "0001.jpg", c / "ECSSD" / "images" / "0006.jpg")
    shutil.copy(c / "ECSSD" / "ground_truth_mask" / "0001.png", c / "ECSSD" / "ground_truth_mask" / "0006.png")
    grown = runner.execute(compose_cfg(saliency_args(c, results)))
    assert grown.run_dir != first.run_dir and grown.items == {"computed": 6, "loaded": 0}
    assert grown.data["files"] == 12 and grown.metrics["n_images"] == 6
