"""What checking data before the first forward pass costs, on the real fixtures: per file, a header check
(``srt.io.check_image``: header and end marker), a full decode (``srt.io.read_image``), a content hash the
first time (sha256) and when remembered (``srt.io.FileHashes``: one stat).

    python scripts/bench_data_checks.py [--fixtures DIR] [--repeats 5]

Prints one Markdown table: milliseconds per file (best of ``--repeats`` passes over the files) and the ratio
header check / full decode. Annotations and ground truth are decoded in full by the tasks' ``check_data``
(they are small, and a bad one would otherwise surface only when scoring); input images get the header
check, because a full decode of every input costs as much as reading them again for the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from srt import io as srt_io  # noqa: E402
from srt.errors import MissingFileError, report_user_errors  # noqa: E402

#: (label, glob under the fixtures folder, what the tasks do with these files)
SETS = (
    ("DAVIS frames 854x480 (JPEG)", "davis/JPEGImages/480p/*/*.jpg", "header check"),
    ("DAVIS annotations (palette PNG)", "davis/Annotations/480p/*/*.png", "full decode"),
    ("ECSSD images (JPEG)", "saliency/ECSSD/images/*.jpg", "header check"),
    ("ECSSD masks (PNG)", "saliency/ECSSD/ground_truth_mask/*.png", "full decode"),
    ("VOC07 images (JPEG)", "voc07/VOCdevkit/VOC2007/JPEGImages/*.jpg", "header check"),
    ("ROxford images 1024x768 (JPEG)", "roxford/roxford5k/jpg/*.jpg", "header check"),
)


def best_ms(fn, files: list[Path], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("SRT_FIXTURES", str(REPO.parent / "shared" / "fixtures"))
    parser.add_argument("--fixtures", default=default, help="the shared fixtures folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the files (the best is reported)")
    args = parser.parse_args(argv)
    root = Path(args.fixtures)
    if not root.is_dir():
        raise MissingFileError(f"fixtures folder {root} does not exist; pass --fixtures DIR or set SRT_FIXTURES")
    print("| files | n | header check ms | full decode ms | header / full | sha256 first ms | sha256 remembered ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for label, pattern, used in SETS:
            files = sorted(root.glob(pattern))
            if not files:
                continue
            header = best_ms(srt_io.check_image, files, args.repeats)
            full = best_ms(lambda f: srt_io.read_image(f, None), files, args.repeats)
            hashes = srt_io.FileHashes(Path(cache) / label.split()[0])
            first = best_ms(hashes.sha256, files, 1)  # the first time only: later passes are remembered
            remembered = best_ms(hashes.sha256, files, args.repeats)
            print(
                f"| {label} ({used} in check_data) | {len(files)} | {header:.3f} | {full:.2f} | {header / full:.3f} "
                f"| {first:.3f} | {remembered:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="scripts/bench_data_checks.py"))
