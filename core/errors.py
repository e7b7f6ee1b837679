"""The one exception type for bad input the user controls, and how entry points report it.

``UserError`` means "fix your config, file, folder or device": a command-line entry point prints
its message as one line on stderr and exits with code 2; the app shows the message as is. Every
other exception is a bug: it keeps its traceback (in the CLI's output, in the app's log).
Specific kinds (``ConfigError``, ``CheckpointError``, ``DatasetError``, ``ImageReadError``) are
subclasses, so code that only needs "is this the user's fault?" catches ``UserError``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix; its message is one line that says what and how."""


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s message on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Run a CLI's ``main``: a ``UserError`` becomes ``prog: error: MESSAGE`` and exit code 2;
    anything else propagates with its traceback (a bug must stay visible)."""
    try:
        return int(main() or 0)
    except UserError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
