"""Sharding (``shard=i/n``): which items a run computes when it is split over processes or machines.

:class:`Shard` assigns each item to one of n shards by a hash of its id; :class:`ShardFinished` is how a shard
run's item loops end (raised by :meth:`tasks.item_cache.ItemCache.items_done`, caught by the runner). Apart from
the item cache so that the run identity and the runner's settings can parse ``shard=`` without it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional

from srt.errors import UserError


@dataclass(frozen=True)
class Shard:
    """``shard=i/n``: this run computes the items that :func:`shard_of` assigns to shard ``index`` of ``count``.

    The assignment is a function of the item id alone (not of the order a task visits its items, nor of the
    process: no salted ``hash()``), so the n shards of a run partition its items whatever each one iterates.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, value: Any, setting: str = "shard") -> Optional[Shard]:
        """``"i/n"`` -> ``Shard(i, n)``, None -> None (a plain run); :class:`UserError` naming ``setting``."""
        if value is None:
            return None
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
        if isinstance(value, bool) or match is None:
            raise UserError(
                f"{setting}={value!r} is not valid; expected i/n, this run's shard i of n shards with 0 <= i < n "
                f"(e.g. {setting}=0/8 ... {setting}=7/8), or null for a plain run"
            )
        index, count = int(match[1]), int(match[2])
        if count < 1:
            raise UserError(f"{setting}={text} is not valid: {count} shards; expected i/n with n >= 1 and 0 <= i < n")
        if index >= count:
            raise UserError(
                f"{setting}={text} is not valid: there is no shard {index} of {count}; expected i/n with 0 <= i < n "
                f"({setting}=0/{count} ... {setting}={count - 1}/{count})"
            )
        return cls(index, count)

    def owns(self, item_id: str) -> bool:
        return shard_of(item_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(item_id: str, count: int) -> int:
    """The shard (0..count-1) of an item: the first 8 bytes of the sha256 of its id, modulo ``count``."""
    digest = hashlib.sha256(str(item_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


class ShardFinished(Exception):
    """Raised by :meth:`ItemCache.items_done` in a shard run: the task's item loops are over, the rest of
    ``Task.run`` (metrics, ranking, training) needs every item and must not run. The runner catches it."""

    def __init__(self, shard: Shard, computed: int, loaded: int, others: int, others_missing: int):
        self.shard, self.computed, self.loaded = shard, computed, loaded
        self.others, self.others_missing = others, others_missing
        super().__init__(
            f"shard {shard}: {computed} items computed, {loaded} loaded; "
            f"{others_missing} of the other shards' {others} items not cached yet"
        )
