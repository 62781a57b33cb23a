"""Fetch and prepare the paper's datasets in the layouts the tasks read (``make data``).

    python -m scripts.get_data --list                              what each dataset needs, where it goes
    python -m scripts.get_data davis2017 ecssd --root data         fetch, verify, extract, check
    python -m scripts.get_data all --root data --mirror http://cache.local/srt
    python -m scripts.get_data nyu --convert LABELED_MAT SPLITS_MAT --root data   (files obtained by other means)

Each dataset: its official files (URLs from the publishers' pages and download scripts: docs/paper.md lists
them), downloaded with resume and verification (:mod:`scripts.fetch`; checksums the publishers state, else the
sha256 recorded at the first download in ``<root>/srt-downloads.lock.json``), a free-disk check first, extraction
that refuses unsafe archive members, NYU's conversion (:mod:`scripts.nyu`), then the task's own ``check_data``
on the result: "prepared" means a run will accept it. The archives are deleted after a successful preparation
(``--keep-archives`` keeps them under ``<root>/downloads/``). Run with the same ``--root`` as ``paths.data_root``
(or ``SRT_DATA``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # python scripts/get_data.py: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import fetch, nyu  # noqa: E402
from scripts.fetch import Remote  # noqa: E402
from srt.errors import UserError, paragraph, report_user_errors  # noqa: E402

MB, GB = 10**6, 10**9
REVISITOP_GND = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{0}/gnd_{0}.pkl"


@dataclass(frozen=True)
class Dataset:
    name: str
    what: str
    folders: tuple[str, ...]  # where it goes, relative to --root
    files: tuple[Remote, ...]
    disk_bytes: int  # approximate size once prepared
    checks: tuple[dict[str, Any], ...]  # task configs whose check_data must accept it ("{root}" = --root)
    extract_to: str = ""  # archives are extracted into <root>/<extract_to>
    flatten_into: Optional[str] = None  # revisitop: every file of the archives moved into this one folder
    notes: tuple[str, ...] = field(default_factory=tuple)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "davis2017",
            "DAVIS-2017 train+val 480p (Table 1, Fig. 3: val; distillation: train)",
            ("DAVIS",),
            (
                Remote(
                    "https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip",
                    approx_size=800 * MB,
                ),
            ),
            850 * MB,
            (
                {"name": "davis", "root": "{root}/DAVIS", "split": "val"},
                {"name": "distill", "root": "{root}/DAVIS", "split": "train"},
            ),
        ),
        Dataset(
            "ecssd",
            "ECSSD, 1000 images and masks (Table 3)",
            ("ECSSD",),
            (
                Remote(
                    "https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/images.zip", approx_size=65 * MB
                ),
                Remote(
                    "https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/ground_truth_mask.zip",
                    approx_size=3 * MB,
                ),
            ),
            70 * MB,
            ({"name": "saliency", "dataset": "ECSSD", "root": "{root}/ECSSD"},),
            extract_to="ECSSD",
        ),
        Dataset(
            "duts-te",
            "DUTS-TE, 5019 images and masks (Table 3)",
            ("DUTS-TE",),
            (Remote("http://saliencydetection.net/duts/download/DUTS-TE.zip", approx_size=140 * MB),),
            145 * MB,
            ({"name": "saliency", "dataset": "DUTS-TE", "root": "{root}/DUTS-TE"},),
        ),
        Dataset(
            "dut-omron",
            "DUT-OMRON, 5168 images and pixel-wise masks (Table 3)",
            ("DUT-OMRON",),
            (
                Remote("http://saliencydetection.net/dut-omron/download/DUT-OMRON-image.zip", approx_size=160 * MB),
                Remote(
                    "http://saliencydetection.net/dut-omron/download/DUT-OMRON-gt-pixelwise.zip.zip",
                    approx_size=10 * MB,
                ),
            ),
            175 * MB,
            ({"name": "saliency", "dataset": "DUT-OMRON", "root": "{root}/DUT-OMRON"},),
            extract_to="DUT-OMRON",
        ),
        Dataset(
            "voc2007",
            "PASCAL VOC2007 trainval (Table 4, object discovery)",
            ("VOC2007",),
            (
                Remote(
                    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
                    md5="c52e279531787c972589f7e41ab4ae64",  # torchvision's VOC table
                    approx_size=460 * MB,
                ),
            ),
            470 * MB,
            ({"name": "discovery", "root": "{root}/VOC2007"},),
            extract_to="VOC2007",
        ),
        Dataset(
            "roxford5k",
            "Revisited Oxford 5k: 5063 images + revisitop ground truth (Table 4, retrieval)",
            ("revisitop/roxford5k",),
            (
                Remote(REVISITOP_GND.format("roxford5k"), approx_size=150 * 1000),
                Remote("http://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images.tgz", approx_size=1900 * MB),
            ),
            1900 * MB,
            ({"name": "retrieval", "dataset": "roxford5k", "root": "{root}/revisitop"},),
            extract_to="revisitop/roxford5k",
            flatten_into="revisitop/roxford5k/jpg",
        ),
        Dataset(
            "rparis6k",
            "Revisited Paris 6k: 6392 images + revisitop ground truth (DINO's second retrieval set)",
            ("revisitop/rparis6k",),
            (
                Remote(REVISITOP_GND.format("rparis6k"), approx_size=200 * 1000),
                Remote("http://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1.tgz", approx_size=1200 * MB),
                Remote("http://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2.tgz", approx_size=1300 * MB),
            ),
            2500 * MB,
            ({"name": "retrieval", "dataset": "rparis6k", "root": "{root}/revisitop"},),
            extract_to="revisitop/rparis6k",
            flatten_into="revisitop/rparis6k/jpg",
        ),
        Dataset(
            "nyu",
            "NYU-Depth-v2 labelled set + official split -> 654 test images in both Table 2 layouts",
            ("NYU", "nyu_v2"),
            (
                Remote(
                    "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat",
                    approx_size=2900 * MB,
                ),
                Remote("http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat", approx_size=3000),
            ),
            600 * MB,
            (
                {"name": "depth", "protocol": "toolbox", "toolbox_root": "{root}/NYU", "srt_root": "{root}/nyu_v2"},
                {"name": "depth", "protocol": "srt", "toolbox_root": "{root}/NYU", "srt_root": "{root}/nyu_v2"},
            ),
            notes=("converted by scripts/nyu.py; the .mat is kept only with --keep-archives",),
        ),
    )
}


def select(names: list[str]) -> list[Dataset]:
    if not names:
        raise UserError(f"name at least one dataset (or 'all'); valid names: {', '.join(DATASETS)}")
    if "all" in names:
        return list(DATASETS.values())
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise UserError(f"unknown dataset {unknown[0]!r}; valid names: {', '.join(DATASETS)} (or all)")
    return [DATASETS[n] for n in dict.fromkeys(names)]


def listing(datasets: list[Dataset], root: Path) -> str:
    lines = []
    for d in datasets:
        lines.append(f"{d.name}: {d.what}")
        lines.append(
            f"  goes to: {', '.join(str(root / f) for f in d.folders)}  (~{fetch.human(d.disk_bytes)} on disk)"
        )
        for r in d.files:
            check = f"md5 {r.md5} (published)" if r.md5 else "sha256 recorded at the first download"
            lines.append(f"  {r.url}  ~{fetch.human(r.expected_bytes)}  {check}")
        lines.extend(f"  note: {n}" for n in d.notes)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Preparation


def marker(root: Path, d: Dataset) -> Path:
    return root / f".srt-prepared-{d.name}.json"


def check_prepared(d: Dataset, root: Path) -> None:
    """The tasks' own check_data on the prepared folders; a refusal is an error naming the dataset and file."""
    import tasks

    for check in d.checks:
        cfg = {k: v.format(root=root) if isinstance(v, str) else v for k, v in check.items()}
        try:
            tasks.build_task(cfg).check_data()
        except UserError as e:
            raise UserError(
                f"{d.name} was prepared under {root} but task {cfg['name']} does not accept it: {paragraph(e)}"
            ) from e


def _flatten(source: Path, dest: Path) -> None:
    """revisitop's step: every file found under ``source`` moved into ``dest`` (its subfolders dropped)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.is_symlink():
            path.replace(dest / path.name)
    shutil.rmtree(source)


def needed_bytes(d: Dataset, root: Path) -> int:
    """What preparing ``d`` still needs on disk: the files not downloaded yet and the prepared dataset."""
    downloads = root / "downloads" / d.name
    return sum(r.expected_bytes for r in d.files if not (downloads / r.name).is_file()) + d.disk_bytes


def prepare(d: Dataset, root: Path, mirror: Optional[str], keep: bool, progress: bool) -> None:
    lock = fetch.LockFile(root)
    downloads = root / "downloads" / d.name
    fetch.check_free_disk(root, needed_bytes(d, root), f"dataset {d.name}")
    paths = [fetch.download(r, downloads, lock, mirror, progress) for r in d.files]
    if d.name == "nyu":
        nyu.convert(paths[0], paths[1], root, progress)
    else:
        for path in paths:
            if path.suffix == ".pkl":
                (root / d.extract_to).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, root / d.extract_to / path.name)
                continue
            staging = root / d.extract_to / (".extract-" + path.name) if d.flatten_into else root / d.extract_to
            fetch.safe_extract(path, staging)
            if d.flatten_into:
                _flatten(staging, root / d.flatten_into)
    check_prepared(d, root)
    from srt.io import atomic_write_json

    atomic_write_json(marker(root, d), {"files": {r.url: (downloads / r.name).name for r in d.files}})
    if not keep:
        shutil.rmtree(downloads, ignore_errors=True)


def get(names: list[str], root: Path, mirror: Optional[str] = None, keep: bool = False, progress: bool = True) -> None:
    datasets = select(names)
    root.mkdir(parents=True, exist_ok=True)
    todo = [d for d in datasets if not marker(root, d).is_file()]
    total = sum(needed_bytes(d, root) for d in todo)
    fetch.check_free_disk(root, total, f"datasets {', '.join(d.name for d in todo)}" if todo else "nothing")
    for d in datasets:
        if d not in todo:
            check_prepared(d, root)
            print(f"{d.name}: already prepared under {root} (and accepted by its task's check)")
            continue
        print(f"{d.name}: {d.what}")
        prepare(d, root, mirror, keep, progress)
        print(f"{d.name}: ready under {', '.join(str(root / f) for f in d.folders)}")


def convert_nyu(labeled: Path, splits: Path, root: Path, progress: bool = True) -> None:
    """``--convert``: the user's own copies of the two files (no download, no checksum), both layouts, checked."""
    root.mkdir(parents=True, exist_ok=True)
    fetch.check_free_disk(root, DATASETS["nyu"].disk_bytes, "the NYU conversion")
    nyu.convert(labeled, splits, root, progress)
    check_prepared(DATASETS["nyu"], root)
    print(f"nyu: converted {labeled} into {root / 'NYU'} (toolbox layout) and {root / 'nyu_v2'} (srt layout)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.get_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"datasets: {', '.join(DATASETS)} or all")
    parser.add_argument("--root", type=Path, default=Path("data"), help="where datasets go (= paths.data_root)")
    parser.add_argument("--list", action="store_true", help="print what each dataset needs and where it goes")
    parser.add_argument("--mirror", help=f"fetch every file from MIRROR/<host>/<path> (default ${fetch.MIRROR_ENV})")
    parser.add_argument("--keep-archives", action="store_true", help="keep the downloaded files under ROOT/downloads")
    parser.add_argument("--convert", nargs=2, type=Path, metavar=("LABELED_MAT", "SPLITS_MAT"), help="nyu only")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        print(listing(select(args.names or ["all"]), args.root))
        return 0
    if args.convert:
        if args.names != ["nyu"]:
            raise UserError(f"--convert converts the NYU files; expected the name nyu alone, got {args.names}")
        convert_nyu(*args.convert, args.root, not args.no_progress)
        return 0
    get(args.names, args.root, fetch.mirror_of(args.mirror), args.keep_archives, not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m scripts.get_data"))
