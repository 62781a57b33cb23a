"""Reading ``torch.save`` files safely, with messages a user can act on.

Every checkpoint the project reads (backbone weights, depth heads, a distillation run's ``checkpoint.pt``) goes
through :func:`load_torch_file`: ``torch.load(weights_only=True)``, so a pickle that would call code is refused
before any of it runs. torch's own messages are not shown as they are: for a refused pickle they advise
re-running with ``weights_only=False`` (which would run the code), and for a file that is not a checkpoint
they report the unpickler's internals (``KeyError: '101'``, ``invalid load key``, a miniz error). Instead the
file is first classified by its first bytes (a ``torch.save`` zip archive, a pickle, or neither) and the error
says which: not a checkpoint, a damaged archive, or objects that are not tensors (naming the refused global).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import MissingFileError, UserError

__all__ = ["CheckpointReadError", "load_torch_file"]

#: what a checkpoint should hold, said in every refusal
EXPECTED = "expected a file written by torch.save holding tensors (a state dict) or a .safetensors file"


class CheckpointReadError(UserError):
    """A file that cannot be read as tensors; ``reason`` says why without the file name (callers re-word)."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"cannot read checkpoint {path} as tensors (torch.load weights_only=True): {reason}")


def _container(path: Path) -> str | None:
    """'zip' (torch.save's format since 1.6), 'pickle' (the legacy format: protocol marker 0x80) or None."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" or zipfile.is_zipfile(path):  # the local header: a truncated archive still has it
        return "zip"
    return "pickle" if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 else None


def _refusal(message: str) -> str:
    """The part of torch's weights_only refusal that names what was refused (never its advice)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (
            f"it holds a Python object ({found.group(1)}) that loading would have to call, so it was refused "
            f"and nothing of it ran; {EXPECTED}"
        )
    detail = re.search(r"(Unsupported operand \d+|Unsupported class [\w.]+|[A-Z][\w ]*not supported[^.\n]*)", message)
    what = f" ({detail.group(1)})" if detail else ""
    return f"it holds pickle content the safe loader does not read{what}, so it was refused and not run; {EXPECTED}"


def load_torch_file(path: str | os.PathLike, extra_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` (with ``extra_globals`` allowed, e.g. numpy
    scalars of a metadata dict); :class:`CheckpointReadError` saying whether the file is not a checkpoint,
    damaged, or holds objects other than tensors; :class:`srt.errors.MissingFileError` if it is not there."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file {path} does not exist")
    kind = _container(path)
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(12)
        raise CheckpointReadError(
            path,
            f"it is not a checkpoint: neither a torch.save zip archive nor a pickle (it starts with {head!r}); "
            f"{EXPECTED}",
        )
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointReadError(path, _refusal(str(e))) from None  # torch's text advises weights_only=False
    except Exception as e:  # noqa: BLE001 - a damaged file: say so, with torch's first sentence
        first = str(e).split(". ")[0].strip() or type(e).__name__
        raise CheckpointReadError(
            path, f"it looks like a {kind} checkpoint but is damaged or truncated ({first}); {EXPECTED}"
        ) from e
