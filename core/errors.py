"""The one exception type for bad input the user controls, and how entry points report it.

``UserError`` means "fix your config, file, folder or device": a command-line entry point prints
its message as one line on stderr and exits with code 2; the app shows the message as is. Every
other exception is a bug: it keeps its traceback (in the CLI's output, in the app's log).
Specific kinds (``ConfigError``, ``CheckpointError``, ``DatasetError``, ``ImageReadError``) are
subclasses, so code that only needs "is this the user's fault?" catches ``UserError``.

Library errors that mean bad input (a missing file, random bytes where weights were expected, an
unknown device) are turned into a ``UserError`` where the user's input is read, with a message
that says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class UserError(Exception):
    """A problem the user can fix; its message is one line that says what and how."""


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``exc``'s message on one line (whitespace collapsed), cut to ``limit`` characters.

    A torch DataLoader re-raises a worker's exception with the worker's traceback as its message;
    only that exception's own message (the traceback's last line) is kept."""
    text = str(exc)
    if _WORKER_TRACEBACK in text:
        last = text.rstrip().splitlines()[-1]
        _, sep, message = last.partition(": ")
        text = message if sep else last
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ``UserError``s, so that ``run_cli`` reports them as one
    line with exit code 2 like every other bad input (``--help`` still prints the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def existing_file(
    path: str | os.PathLike, error: type[UserError] = UserError, what: str = "the file", fix: str = ""
) -> Path:
    """``path`` when it names a file with something in it; else ``error``: "WHAT PATH does not
    exist", "... is a folder, not a file" or "... is empty (0 bytes)", then ``fix`` (what to do)."""
    path = Path(path)
    if not path.exists():
        problem = "does not exist"
    elif path.is_dir():
        problem = "is a folder, not a file"
    elif path.stat().st_size == 0:
        problem = "is empty (0 bytes)"
    else:
        return path
    raise error(f"{what} {path} {problem}{fix}")


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Run a CLI's ``main``: a ``UserError`` becomes ``prog: error: MESSAGE`` and exit code 2;
    anything else propagates with its traceback (a bug must stay visible). A reader that closes
    the output early (``... | head``) ends the command quietly with exit code 1, as Python's own
    documentation advises, instead of a ``BrokenPipeError`` traceback."""
    try:
        return int(main() or 0)
    except UserError as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout's pipe is gone: point it at /dev/null so the interpreter's final flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
