"""Downloads that resume and verify, and archive extraction that trusts nothing in the archive.

Used by ``scripts.get_data`` (datasets) and ``scripts.get_weights`` (checkpoints). Standard library only.

- :func:`download`: HTTP(S) GET into ``<file>.part``; an interrupted transfer resumes from the partial file's size
  with an HTTP ``Range`` request (a few tries within one call, and again on the next call); a tqdm bar; the file is
  verified (size, the published checksum if there is one, else the checksum the :class:`LockFile` recorded at the
  first download) and only then moved to its name. A mismatch moves the bad file aside (``<file>.bad``) and
  stops with the URL, the file and both checksums.
- :func:`mirrored`: ``--mirror URL`` / ``$SRT_MIRROR`` replaces every host: ``http://host/a/b.zip`` is fetched
  as ``<mirror>/host/a/b.zip`` (the tree ``wget -x`` writes), for proxy caches, offline copies and the tests.
- :func:`check_free_disk`: refuse before downloading when the disk lacks the room.
- :func:`safe_extract`: tar / zip extraction that first checks every member (no absolute path, no ``..``, no link
  whose target leaves the destination, no device file) and writes nothing when one fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Optional

from tqdm import tqdm

from srt.errors import UserError
from srt.io import atomic_write_json, move_into_place

MIRROR_ENV = "SRT_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where it is published and what is known about it."""

    url: str
    size: Optional[int] = None  # bytes, when known (approximate sizes are ``approx_size``)
    md5: Optional[str] = None  # a checksum the publisher (or a reference loader such as torchvision) states
    sha256: Optional[str] = None
    approx_size: Optional[int] = None  # for the free-disk check and --list when the exact size is not published

    @property
    def name(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name

    @property
    def expected_bytes(self) -> int:
        return self.size or self.approx_size or 0


def mirror_of(mirror: Optional[str]) -> Optional[str]:
    """The mirror to use: the argument, else ``$SRT_MIRROR``, else None (the official hosts)."""
    return mirror or os.environ.get(MIRROR_ENV) or None


def mirrored(url: str, mirror: Optional[str]) -> str:
    """``url`` on the mirror (``<mirror>/<host>/<path>``), or ``url`` itself without one."""
    if not mirror:
        return url
    parts = urllib.parse.urlparse(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def mirror_hint() -> str:
    return (
        f"to fetch from elsewhere (a proxy cache, a copy made on a machine with network), pass --mirror URL or set "
        f"{MIRROR_ENV}=URL: a file http://host/path is then read from URL/host/path"
    )


# ----------------------------------------------------------------------------------------------
# Checksums and the lock file


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class LockFile:
    """``<root>/srt-downloads.lock.json``: the sha256 and size of every file downloaded under ``root`` whose
    publisher states no checksum, recorded at its first download; later downloads are verified against it.
    Delete an entry to accept a file the publisher changed."""

    NAME = "srt-downloads.lock.json"

    def __init__(self, root: Path):
        self.path = Path(root) / self.NAME
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError as e:
                raise UserError(f"lock file {self.path} is not valid JSON ({e}); fix or delete it") from e

    def get(self, url: str) -> Optional[dict]:
        return self.entries.get(url)

    def record(self, url: str, sha256: str, size: int) -> None:
        self.entries[url] = {"sha256": sha256, "size": size, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(self.path, self.entries)


# ----------------------------------------------------------------------------------------------
# Download


def check_free_disk(folder: Path, needed: int, what: str) -> None:
    """UserError when the file system of ``folder`` has less than ``needed`` bytes free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise UserError(
            f"{what} needs about {human(needed)} under {folder} but its disk has {human(free)} free; free some "
            "space or choose another --root"
        )


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _open(url: str, offset: int, mirror_used: bool):
    headers = {"User-Agent": "srt-bench-get-data"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file already holds everything
            return None
        raise UserError(f"downloading {url} failed: HTTP {e.code} {e.reason}; {mirror_hint()}") from e
    except (urllib.error.URLError, OSError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        where = "the mirror" if mirror_used else "the host"
        raise UserError(
            f"cannot reach {url} ({reason}): {where} is unreachable from this machine; {mirror_hint()}"
        ) from e


def _transfer(url: str, part: Path, progress: bool, mirror_used: bool) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (resuming with Range when it exists).
    Raises ConnectionError when the connection ends before the announced length."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, mirror_used)
    if resp is None:
        return
    with resp:
        if offset and resp.status != 206:  # the server ignored Range: start again
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
            ) as bar,
        ):
            while True:
                try:
                    block = resp.read(CHUNK)
                except (HTTPException, OSError) as e:  # IncompleteRead, reset: keep what arrived
                    raise ConnectionError(f"connection lost after {f.tell()} bytes: {e}") from e
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
            got = f.tell()
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


def download(
    remote: Remote,
    folder: Path,
    lock: LockFile,
    mirror: Optional[str] = None,
    progress: bool = True,
    tries: int = 3,
) -> Path:
    """``folder/<remote.name>``, downloaded (resumed, verified) unless it is already there and verifies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    if final.is_file():
        verify(final, remote, lock)
        return final
    url = mirrored(remote.url, mirror)
    part = final.with_name(final.name + ".part")
    for attempt in range(1, tries + 1):
        try:
            _transfer(url, part, progress, mirror is not None)
            break
        except ConnectionError as e:
            if attempt == tries:
                raise UserError(
                    f"downloading {url} was interrupted ({e}); the partial file {part} is kept and the same command "
                    "resumes it"
                ) from e
    verify(part, remote, lock, shown_as=final)
    move_into_place(part, final)
    return final


def verify(path: Path, remote: Remote, lock: LockFile, shown_as: Optional[Path] = None) -> None:
    """Size and checksum of ``path`` against the publisher's (or the lock file's); a mismatch moves the file aside
    to ``<name>.bad`` (never used) and raises a UserError naming the URL, the file and both checksums."""
    shown = shown_as or path
    size = path.stat().st_size
    checks: list[tuple[str, str, str]] = []  # (algorithm, expected, source)
    if remote.md5:
        checks.append(("md5", remote.md5, "published"))
    if remote.sha256:
        checks.append(("sha256", remote.sha256, "published"))
    entry = lock.get(remote.url)
    if entry is not None:
        checks.append(("sha256", entry["sha256"], f"recorded in {lock.path} at the first download"))
    problems = []
    if remote.size is not None and size != remote.size:
        problems.append(f"size {size} bytes, expected {remote.size}")
    digests: dict[str, str] = {}
    for algorithm, expected, source in checks:
        digests.setdefault(algorithm, file_digest(path, algorithm))
        if digests[algorithm] != expected.lower():
            problems.append(f"{algorithm} {digests[algorithm]}, expected {expected} ({source})")
    if problems:
        bad = shown.with_name(shown.name + ".bad")
        move_into_place(path, bad)
        raise UserError(
            f"{remote.url} -> {shown} failed verification: {'; '.join(problems)}. The file was moved aside to {bad} "
            "and is not used; run the command again to download it anew (if the publisher changed the file, "
            f"delete its entry in {lock.path})"
        )
    if entry is None and not (remote.md5 or remote.sha256):
        lock.record(remote.url, digests.get("sha256") or file_digest(path), size)


# ----------------------------------------------------------------------------------------------
# Extraction of untrusted archives


def _inside(target: Path, candidate: Path) -> bool:
    return os.path.commonpath([str(target), str(candidate)]) == str(target)


def _check_member(target: Path, name: str, archive: Path, link: Optional[str] = None, hard: bool = False) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"archive {archive} holds the absolute path {name!r}; refused (nothing was extracted)")
    if ".." in pure.parts:
        raise UserError(
            f"archive {archive} holds the path {name!r}, which climbs out with '..'; refused (nothing was extracted)"
        )
    dest = Path(os.path.normpath(target / pure))
    if not _inside(target, dest):
        raise UserError(f"archive {archive} member {name!r} would be written outside {target}; refused")
    if link is not None:
        base = target if hard else dest.parent
        where = Path(os.path.normpath(base / link))
        if PurePosixPath(link).is_absolute() or not _inside(target, where):
            raise UserError(
                f"archive {archive} holds the link {name!r} -> {link!r}, which points outside {target}; refused "
                "(nothing was extracted)"
            )


def safe_extract(archive: Path, target: Path) -> list[str]:
    """Extract a .tar[.gz|.bz2|...] or .zip into ``target`` after checking every member; returns member names."""
    archive, target = Path(archive), Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                mode = info.external_attr >> 16
                link = zf.read(info).decode("utf-8", "replace") if stat.S_ISLNK(mode) else None
                _check_member(target, info.filename, archive, link)
            zf.extractall(target)  # zipfile writes links as plain files holding the target's name
            return [i.filename for i in infos]
    if not tarfile.is_tarfile(archive):
        raise UserError(f"{archive} is neither a zip nor a tar archive")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise UserError(f"archive {archive} holds the special file {m.name!r} (device or fifo); refused")
            _check_member(target, m.name, archive, m.linkname if (m.issym() or m.islnk()) else None, hard=m.islnk())
        tf.extractall(target, members=members, filter="data")  # the checks above, and the standard library's too
        return [m.name for m in members]


def remove_quietly(paths: Iterable[Path]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
