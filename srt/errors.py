"""Errors the user can fix, and how every entry point reports them: one paragraph, no traceback.

A :class:`UserError` is bad input: a setting, a missing or corrupt file, a checkpoint that does not fit, a
device that is not there. Its message names the setting or the file, what was found and what was expected.
The library, the tasks and the metric code raise it (or a subclass); every entry point (``run.py``, each
``python -m eval.*`` and ``scripts/*`` command) catches it in one place and prints the message as one
paragraph, without a traceback, and exits non-zero. Anything else is a bug and keeps its traceback.
``HYDRA_FULL_ERROR=1`` or ``SRT_DEBUG=1`` in the environment (``debug=true`` in the runner) shows the full
trace of user errors too.

:class:`UserError` subclasses ValueError, so ``except ValueError`` and ``pytest.raises(ValueError)`` still
catch it; :class:`MissingFileError` is also a FileNotFoundError, :class:`BudgetError` also a MemoryError.

Standard library only: the metric and table CLIs import it without loading torch.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Optional

__all__ = [
    "BudgetError",
    "MissingFileError",
    "UserError",
    "WeightsUnavailableError",
    "debug_requested",
    "is_user_error",
    "paragraph",
    "report_user_errors",
]

#: environment variables that ask for the full traceback of user errors
DEBUG_ENV = ("SRT_DEBUG", "HYDRA_FULL_ERROR")


class UserError(ValueError):
    """Bad input the user can fix; the message names the setting or file, what was found and what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed to (a dataset, a checkpoint, a results folder) is not there."""


class WeightsUnavailableError(MissingFileError):
    """Pretrained weights were asked for but cannot be found locally or downloaded."""


class BudgetError(UserError, MemoryError):
    """A setting asks for more memory than its budget setting allows."""


def is_user_error(error: BaseException) -> bool:
    """A :class:`UserError`, or an operating-system error about a named path (permission denied, disk full,
    not a directory ...): the environment, not a bug. OSErrors without a file name (e.g. an image decoder's)
    are bugs: the code should have named the file."""
    return isinstance(error, UserError) or (isinstance(error, OSError) and getattr(error, "filename", None) is not None)


def paragraph(error: BaseException) -> str:
    """The error's message as one paragraph (line breaks and runs of spaces folded)."""
    text = str(error)
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename is not None:
        code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
        target = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
        text = (
            f"{target}: {error.strerror or text}{code}. Files are written atomically, so nothing finished before "
            "this was damaged: once the cause is fixed, the same command resumes where it stopped"
        )
    return " ".join(text.split())


def debug_requested() -> bool:
    """Whether the environment asks for full tracebacks (``SRT_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in DEBUG_ENV)


def report_user_errors(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None, prog: str = "") -> int:
    """Run a command-line ``main(argv)`` and return its exit code; a user error is printed to stderr as
    ``<prog>: error: <one paragraph>`` with exit code 2 (argparse's code for bad arguments). Other exceptions
    propagate with their traceback, as do user errors when :func:`debug_requested`.

    Every ``__main__`` of eval/ and scripts/ is ``sys.exit(report_user_errors(main, prog=...))``."""
    try:
        code = main(argv) if argv is not None else main()
    except Exception as e:  # noqa: BLE001 - only user errors are caught; the rest is re-raised below
        if not is_user_error(e) or debug_requested():
            raise
        print(f"{prog or 'error'}: error: {paragraph(e)} (SRT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return int(code or 0)
