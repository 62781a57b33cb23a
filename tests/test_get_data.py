"""scripts.get_data / scripts.fetch / scripts.nyu against a local mirror (no network).

A standard-library HTTP server on 127.0.0.1 (Range requests, and a switch that drops the connection mid-file)
serves miniature archives in the official formats, built here from the shared fixtures: DAVIS's trainval zip,
ECSSD's two zips, DUTS-TE's zip, DUT-OMRON's two zips, VOC2007's trainval tar, revisitop's jpg archives and
ground-truth pickles, NYU's labelled .mat (HDF5 as MATLAB v7.3 writes it: official dataset names, transposed
axes) and splits.mat (1-based indices). Through ``--mirror``: every dataset fetched, verified, extracted,
converted, accepted by its task's check_data, then one tiny run on it.
"""

from __future__ import annotations

import io
import pickle
import shutil
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts import fetch, get_data, nyu  # noqa: E402
from srt.errors import UserError  # noqa: E402

TINY = ["backbone.pretrained=false", "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}"]


# ----------------------------------------------------------------------------------------------
# The mirror


class Mirror:
    """Files by URL path; ``drop[path] = n`` closes the connection after n bytes of that file (once)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    def handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                mirror.requests.append((path, self.headers.get("Range")))
                body = mirror.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = mirror.drop.pop(path, None)
                if cut is not None:  # announce the whole length, send part of it, hang up
                    self.wfile.write(body[start : start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        return Handler


@pytest.fixture
def server():
    mirror = Mirror()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), mirror.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Served = namedtuple("Served", "mirror url")
    yield Served(mirror, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


def serve(mirror: Mirror, url: str, body: bytes) -> None:
    parts = urllib.parse.urlparse(url)
    mirror.files[f"/{parts.netloc}{parts.path}"] = body


# ----------------------------------------------------------------------------------------------
# Miniature archives in the official formats


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(entries: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def gnd_pickle(db: list[str], queries: list[str]) -> bytes:
    gnd = [
        {
            "bbx": np.array([0.0, 0.0, 50.0, 50.0]),
            "easy": np.array([0]),
            "hard": np.array([], int),
            "junk": np.array([], int),
        }
        for _ in queries
    ]
    return pickle.dumps({"imlist": db, "qimlist": queries, "gnd": gnd})


def nyu_files(fixtures: Path, tmp: Path) -> tuple[bytes, bytes]:
    """A 4-image labelled .mat (scenes kitchen, bathroom) and a splits.mat with test = images 2 and 4 (1-based)."""
    tmp.mkdir(parents=True, exist_ok=True)
    frames = sorted((fixtures / "davis" / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:4]
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((640, 480))) for f in frames])
    yy = np.linspace(1.0, 4.0, 480)[:, None] * np.ones((1, 640))
    depths = np.stack([yy + 0.1 * k for k in range(4)])
    depths[:, :10, :20] = 0.0  # no measurement
    nyu.write_labeled(tmp / "labeled.mat", images, depths, ["kitchen", "bathroom", "kitchen", "bathroom"])
    nyu.write_splits(tmp / "splits.mat", [1, 3], [2, 4])
    return (tmp / "labeled.mat").read_bytes(), (tmp / "splits.mat").read_bytes()


def davis_zip(fixtures: Path) -> bytes:
    """DAVIS-2017-trainval-480p.zip's layout: DAVIS/{JPEGImages,Annotations}/480p/<seq>/, ImageSets/2017/."""
    davis = fixtures / "davis"
    seqs = {"blackswan": "val", "dog": "train"}
    entries = {}
    for seq in seqs:
        for k in range(3):
            entries[f"DAVIS/JPEGImages/480p/{seq}/{k:05d}.jpg"] = (
                davis / f"JPEGImages/480p/{seq}/{k:05d}.jpg"
            ).read_bytes()
            entries[f"DAVIS/Annotations/480p/{seq}/{k:05d}.png"] = (
                davis / f"Annotations/480p/{seq}/{k:05d}.png"
            ).read_bytes()
    for split in ("train", "val"):
        entries[f"DAVIS/ImageSets/2017/{split}.txt"] = "".join(f"{s}\n" for s, v in seqs.items() if v == split).encode()
    return zip_bytes(entries)


def voc_tar(fixtures: Path) -> bytes:
    voc = fixtures / "voc07" / "VOCdevkit" / "VOC2007"
    ids = ["000001", "000005"]
    entries = {f"VOCdevkit/VOC2007/JPEGImages/{i}.jpg": (voc / f"JPEGImages/{i}.jpg").read_bytes() for i in ids}
    entries.update({f"VOCdevkit/VOC2007/Annotations/{i}.xml": (voc / f"Annotations/{i}.xml").read_bytes() for i in ids})
    entries["VOCdevkit/VOC2007/ImageSets/Main/trainval.txt"] = "".join(f"{i}\n" for i in ids).encode()
    return tar_bytes(entries, mode="w")


def build_archives(fixtures: Path, tmp: Path) -> dict[str, bytes]:
    """URL -> bytes for every file of get_data.DATASETS."""
    f = fixtures
    ecssd = f / "saliency" / "ECSSD"
    ids = ["0001", "0002", "0003"]
    duts = sorted((f / "saliency" / "DUTS-TR" / "DUTS-TR-Image").glob("*.jpg"))[:3]
    ox = f / "roxford" / "roxford5k" / "jpg"
    q, db = "all_souls_000013", "all_souls_000055"
    labeled, splits = nyu_files(f, tmp)
    by_name = {
        "DAVIS-2017-trainval-480p.zip": davis_zip(f),
        "images.zip": zip_bytes({f"images/{i}.jpg": (ecssd / f"images/{i}.jpg").read_bytes() for i in ids}),
        "ground_truth_mask.zip": zip_bytes(
            {f"ground_truth_mask/{i}.png": (ecssd / f"ground_truth_mask/{i}.png").read_bytes() for i in ids}
        ),
        "DUTS-TE.zip": zip_bytes(
            {
                **{f"DUTS-TE/DUTS-TE-Image/{p.name}": p.read_bytes() for p in duts},
                **{
                    f"DUTS-TE/DUTS-TE-Mask/{p.stem}.png": (p.parents[1] / "DUTS-TR-Mask" / f"{p.stem}.png").read_bytes()
                    for p in duts
                },
            }
        ),
        # no DUT-OMRON sample exists (fixtures/PROVENANCE.md): ECSSD pairs under DUT-OMRON's names and folders
        "DUT-OMRON-image.zip": zip_bytes(
            {f"DUT-OMRON-image/im{i}.jpg": (ecssd / f"images/{i}.jpg").read_bytes() for i in ids}
        ),
        "DUT-OMRON-gt-pixelwise.zip.zip": zip_bytes(
            {f"pixelwiseGT-new-PNG/im{i}.png": (ecssd / f"ground_truth_mask/{i}.png").read_bytes() for i in ids}
        ),
        "VOCtrainval_06-Nov-2007.tar": voc_tar(f),
        "gnd_roxford5k.pkl": gnd_pickle([db], [q]),
        "oxbuild_images.tgz": tar_bytes(
            {f"{q}.jpg": (ox / f"{q}.jpg").read_bytes(), f"{db}.jpg": (ox / f"{db}.jpg").read_bytes()}
        ),
        "gnd_rparis6k.pkl": gnd_pickle(["paris_eiffel_000001"], ["paris_louvre_000001"]),
        "paris_1.tgz": tar_bytes({"paris/eiffel/paris_eiffel_000001.jpg": (ox / f"{db}.jpg").read_bytes()}),
        "paris_2.tgz": tar_bytes({"paris/louvre/paris_louvre_000001.jpg": (ox / f"{q}.jpg").read_bytes()}),
        "nyu_depth_v2_labeled.mat": labeled,
        "splits.mat": splits,
    }
    out = {}
    for d in get_data.DATASETS.values():
        for r in d.files:
            out[r.url] = by_name[r.name]
    return out


@pytest.fixture
def archives(fixtures_dir, tmp_path):
    return build_archives(fixtures_dir, tmp_path / "built")


def serve_all(server, archives, monkeypatch):
    for url, body in archives.items():
        serve(server.mirror, url, body)
    # the miniature VOC tar's md5 is not the published one: verify it against its own md5 here
    voc = get_data.DATASETS["voc2007"]
    url = voc.files[0].url
    import hashlib

    patched = fetch.Remote(url, md5=hashlib.md5(archives[url]).hexdigest(), approx_size=voc.files[0].approx_size)
    monkeypatch.setitem(get_data.DATASETS, "voc2007", get_data.Dataset(**{**voc.__dict__, "files": (patched,)}))


def tiny_runs(root: Path) -> dict[str, list[str]]:
    """One tiny run per prepared dataset (both NYU layouts)."""
    return {
        "davis": ["task=davis", f"task.root={root}/DAVIS", "task.max_frames=2"],
        "ecssd": ["task=saliency", "task.dataset=ECSSD", f"task.root={root}/ECSSD", "task.max_images=1"],
        "duts": ["task=saliency", "task.dataset=DUTS-TE", f"task.root={root}/DUTS-TE", "task.max_images=1"],
        "omron": ["task=saliency", "task.dataset=DUT-OMRON", f"task.root={root}/DUT-OMRON", "task.max_images=1"],
        "voc": ["task=discovery", f"task.root={root}/VOC2007", "task.max_images=1"],
        "roxford": ["task=retrieval", "task.dataset=roxford5k", f"task.root={root}/revisitop", "task.imsize=64"],
        "rparis": ["task=retrieval", "task.dataset=rparis6k", f"task.root={root}/revisitop", "task.imsize=64"],
        "nyu-toolbox": [
            "task=depth",
            "backbone=dinov2_vits14",
            f"task.toolbox_root={root}/NYU",
            "task.max_images=1",
            "task.head_weights=random",
        ],
        "nyu-srt": [
            "task=depth",
            "backbone=dinov2_vits14",
            "task.protocol=srt",
            f"task.srt_root={root}/nyu_v2",
            "task.max_images=1",
            "task.head_weights=random",
        ],
    }


# ----------------------------------------------------------------------------------------------
# Tests


def test_every_dataset_fetched_checked_and_run(server, archives, monkeypatch, tmp_path):
    """All eight datasets through the mirror: verified, extracted / converted, accepted by check_data, one tiny
    run on each; the lock file holds every unpublished checksum and a second call verifies without downloading."""
    from tasks import runner
    from tests.test_runner import compose_cfg

    serve_all(server, archives, monkeypatch)
    root = tmp_path / "data"
    get_data.get(["all"], root, mirror=server.url, progress=False)
    assert (root / "DAVIS" / "ImageSets" / "2017" / "train.txt").is_file()
    assert sorted(p.name for p in (root / "revisitop" / "rparis6k" / "jpg").iterdir()) == [
        "paris_eiffel_000001.jpg",
        "paris_louvre_000001.jpg",
    ]
    assert not (root / "downloads").exists() or not any((root / "downloads").rglob("*.*"))
    lock = fetch.LockFile(root)
    unpublished = [r.url for d in get_data.DATASETS.values() for r in d.files if not (r.md5 or r.sha256)]
    assert sorted(lock.entries) == sorted(unpublished)

    # NYU: the official 1-based test indices 2 and 4 are the labelled file's images 1 and 3 (0-based names)
    lines = (root / "NYU" / "nyu_test.txt").read_text().split("\n")
    assert lines[:2] == [
        "/bathroom/rgb_00001.jpg /bathroom/sync_depth_00001.png 518.8579",
        "/bathroom/rgb_00003.jpg /bathroom/sync_depth_00003.png 518.8579",
    ]
    mm = np.asarray(Image.open(root / "NYU" / "bathroom" / "sync_depth_00003.png"))
    m256 = np.asarray(Image.open(root / "nyu_v2" / "testing" / "depths" / "00003.png"))
    assert mm.shape == (480, 640) and mm[0, 0] == 0 and mm[479, 639] == int(np.float32(4.3) * 1000)
    assert m256[240, 320] == int((1.0 + 3.0 * 240 / 479 + 0.3) * 256)  # the row's depth, metres x 256
    rgb = np.asarray(Image.open(root / "nyu_v2" / "testing" / "images" / "00001.png"))
    assert rgb.shape == (480, 640, 3) and rgb[:7].any()  # srt layout: untouched; toolbox: black border
    toolbox_rgb = np.asarray(Image.open(root / "NYU" / "bathroom" / "rgb_00001.jpg")).astype(int)
    assert toolbox_rgb[:5].mean() < 2 < rgb[:5].mean()  # black up to JPEG ringing

    server.mirror.requests.clear()
    get_data.get(["all"], root, mirror=server.url, progress=False)  # prepared: checked again, nothing fetched
    assert server.mirror.requests == []

    base = ["progress=false", "device=cpu", f"paths.results_root={tmp_path / 'results'}", "srt.level=0", *TINY]
    runs = tiny_runs(root)
    for name, overrides in runs.items():
        record = runner.execute(compose_cfg([*overrides, *base]))
        assert record.metrics, name
        assert record.passes == 1, name


def test_interrupted_download_resumes_with_range(server, tmp_path):
    body = bytes(range(256)) * 4000
    url = "http://example.org/files/big.bin"
    serve(server.mirror, url, body)
    server.mirror.drop["/example.org/files/big.bin"] = 300_000
    lock = fetch.LockFile(tmp_path)
    # one try: the call stops, the partial file stays
    with pytest.raises(UserError, match="interrupted.*partial file .*big.bin.part.*resumes"):
        fetch.download(fetch.Remote(url), tmp_path, lock, server.url, progress=False, tries=1)
    assert (tmp_path / "big.bin.part").stat().st_size == 300_000 and not (tmp_path / "big.bin").exists()
    path = fetch.download(fetch.Remote(url), tmp_path, lock, server.url, progress=False)
    assert path.read_bytes() == body
    assert server.mirror.requests[-1] == ("/example.org/files/big.bin", "bytes=300000-")
    # and within one call: dropped, then resumed by the next try
    server.mirror.drop["/example.org/files/big.bin"] = 1000
    (tmp_path / "again").mkdir()
    fetch.download(
        fetch.Remote(url), tmp_path / "again", fetch.LockFile(tmp_path / "again"), server.url, progress=False
    )
    assert (tmp_path / "again" / "big.bin").read_bytes() == body
    assert server.mirror.requests[-1][1] == "bytes=1000-"


def test_checksum_mismatch_stops_and_keeps_the_bad_file_aside(server, tmp_path):
    url = "http://example.org/a.zip"
    serve(server.mirror, url, b"not what was published")
    remote = fetch.Remote(url, md5="0" * 32)
    with pytest.raises(UserError) as e:
        fetch.download(remote, tmp_path, fetch.LockFile(tmp_path), server.url, progress=False)
    got = fetch.file_digest(tmp_path / "a.zip.bad", "md5")
    for part in (url, str(tmp_path / "a.zip"), "0" * 32, got):
        assert part in str(e.value)
    assert not (tmp_path / "a.zip").exists() and (tmp_path / "a.zip.bad").is_file()
    # the lock file: the first download records, a changed file later is refused the same way
    serve(server.mirror, "http://example.org/b.bin", b"first")
    lock = fetch.LockFile(tmp_path)
    fetch.download(fetch.Remote("http://example.org/b.bin"), tmp_path / "1", lock, server.url, progress=False)
    serve(server.mirror, "http://example.org/b.bin", b"changed")
    with pytest.raises(UserError, match="recorded in .*srt-downloads.lock.json"):
        fetch.download(
            fetch.Remote("http://example.org/b.bin"),
            tmp_path / "2",
            fetch.LockFile(tmp_path),
            server.url,
            progress=False,
        )


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "absolute", "symlink", "zip-dotdot"],
)
def test_unsafe_archives_are_refused_with_nothing_written(tmp_path, kind):
    target = tmp_path / "out" / "target"
    archive = tmp_path / "bad.tar"
    if kind == "dotdot":
        archive.write_bytes(tar_bytes({"ok.txt": b"fine", "../x": b"escape"}, mode="w"))
    elif kind == "absolute":
        archive.write_bytes(tar_bytes({"ok.txt": b"fine", str(tmp_path / "abs.txt"): b"escape"}, mode="w"))
    elif kind == "symlink":
        archive.write_bytes(tar_bytes({"ok.txt": b"fine"}, mode="w", links={"link": "../../outside"}))
    else:
        archive = tmp_path / "bad.zip"
        archive.write_bytes(zip_bytes({"ok.txt": b"fine", "../x": b"escape"}))
    with pytest.raises(UserError, match="refused"):
        fetch.safe_extract(archive, target)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == sorted(["bad.tar" if kind != "zip-dotdot" else "bad.zip", "out", "out/target"])


def test_too_little_disk_refuses_before_downloading(server, archives, monkeypatch, tmp_path):
    serve_all(server, archives, monkeypatch)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(UserError, match=r"dataset.*davis2017.*needs about .* 1.0 MB free"):
        get_data.get(["davis2017"], tmp_path / "data", mirror=server.url, progress=False)
    assert server.mirror.requests == []


def test_unknown_name_and_unreachable_host(tmp_path, capsys, monkeypatch):
    assert get_data.main and fetch.MIRROR_ENV == "SRT_MIRROR"
    from srt.errors import report_user_errors

    code = report_user_errors(get_data.main, ["davis", "--root", str(tmp_path)], prog="get_data")
    err = capsys.readouterr().err
    assert code == 2 and "unknown dataset 'davis'" in err and "davis2017, ecssd, duts-te" in err
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(UserError) as e:
        get_data.get(["ecssd"], tmp_path / "d", mirror=unreachable, progress=False)
    msg = str(e.value)
    assert "127.0.0.1:9/www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/images.zip" in msg
    assert "--mirror" in msg and "SRT_MIRROR" in msg
    monkeypatch.setenv("SRT_MIRROR", unreachable)  # the environment variable is the same override
    assert fetch.mirror_of(None) == unreachable and fetch.mirror_of("http://other") == "http://other"
    monkeypatch.delenv("SRT_MIRROR")
    assert fetch.mirror_of(None) is None


def test_convert_nyu_command_and_a_failing_check_names_the_file(fixtures_dir, tmp_path, capsys):
    labeled, splits = nyu_files(fixtures_dir, tmp_path)
    from srt.errors import report_user_errors

    root = tmp_path / "data"
    args = ["nyu", "--convert", str(tmp_path / "labeled.mat"), str(tmp_path / "splits.mat"), "--root", str(root)]
    assert report_user_errors(get_data.main, [*args, "--no-progress"]) == 0
    assert (root / "nyu_v2" / "testing" / "images" / "00003.png").is_file()
    # a converted dataset the task refuses is an error naming the file
    (root / "NYU" / "kitchen").mkdir(exist_ok=True)
    bad = root / "NYU" / "bathroom" / "sync_depth_00003.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    with pytest.raises(UserError, match=r"nyu was prepared .* does not accept it: .*sync_depth_00003.png"):
        get_data.check_prepared(get_data.DATASETS["nyu"], root)
