"""Pairing input images with their ground truth by name, never by position.

A layout that keeps images and ground truth in two folders (NYU-v2's ``testing/images`` and ``testing/depths``,
a saliency dataset's image and mask folders, a DAVIS sequence's frames and annotations) pairs files whose names
(stems) are equal. Sorted order is only how they are listed: a missing, extra or renamed file on either side
would otherwise shift every later pair by one and score each prediction against another image's ground truth,
a silent wrong number. :func:`pair_by_name` names the first name (in sorted order) that has no partner.

Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from srt.errors import MissingFileError, UserError

__all__ = ["pair_by_name"]


def pair_by_name(
    images: Sequence[Path],
    targets: Sequence[Path],
    image_what: str,
    target_what: str,
    target_dir: Path,
    target_suffix: str,
) -> list[tuple[Path, Path]]:
    """``(image, target)`` pairs in the images' order, matched by stem.

    ``targets`` are the ground-truth files found in ``target_dir``; the target an image expects is
    ``target_dir / (stem + target_suffix)``. The first name (sorted) without a partner is an error:
    :class:`srt.errors.MissingFileError` naming the expected target when an image has none, a
    :class:`srt.errors.UserError` naming the target when it has no image; both say how many do not pair."""
    by_stem = {t.stem: t for t in targets}
    image_stems = {i.stem: i for i in images}
    orphans = sorted(s for s in by_stem if s not in image_stems)
    lacking = sorted(s for s in image_stems if s not in by_stem)
    if lacking or orphans:
        counts = (
            f"{len(lacking)} of the {len(images)} {image_what}s have no {target_what} of their name and "
            f"{len(orphans)} of the {len(targets)} {target_what}s have no {image_what} of theirs; "
            f"{image_what}s and {target_what}s are paired by name, not by order"
        )
        if lacking and (not orphans or lacking[0] <= orphans[0]):
            stem = lacking[0]
            raise MissingFileError(
                f"{target_what} {target_dir / (stem + target_suffix)} does not exist: {image_what} "
                f"{image_stems[stem]} has none ({counts})"
            )
        stem = orphans[0]
        raise UserError(
            f"{target_what} {by_stem[stem]} has no {image_what} named {stem} beside it ({counts}); remove it or "
            f"restore its {image_what}"
        )
    return [(i, by_stem[i.stem]) for i in images]
