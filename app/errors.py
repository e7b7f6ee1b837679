"""The app's one error path.

A ``core.errors.UserError`` (bad input the user controls: an image, a checkpoint, a setting) is
shown as its message. Anything else is a bug: it is logged on the server with its traceback and
the user reads "internal error (logged)". Running out of memory is logged the same way but says
so, because the user can do something about it (a smaller image).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import gradio as gr

from core.errors import UserError, one_line

log = logging.getLogger("afa_app")

INTERNAL_ERROR = "internal error (logged)"
OUT_OF_MEMORY = "Out of memory while analysing this image; try a smaller image (or fewer users at once)."


def guarded(handler: Callable[..., dict] | None = None, *, status: str = "status"):
    """Turn any failure of ``handler`` into a one-line ``status`` view (and a toast).
    Use as ``@guarded`` or ``@guarded(status="train_status")``."""
    if handler is None:
        return functools.partial(guarded, status=status)

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the point is that nothing escapes to the UI
            if not isinstance(exc, UserError):
                log.exception("internal error in %s", handler.__name__)
            message = user_message(exc)
            gr.Warning(message)
            return {status: f"⚠️ {message}"}

    return wrapper


def user_message(exc: BaseException) -> str:
    """The one line the user reads about ``exc``: never a traceback, never a bug's details."""
    if isinstance(exc, UserError):
        return one_line(exc)
    if is_out_of_memory(exc):
        return OUT_OF_MEMORY
    return INTERNAL_ERROR


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
