"""The app's one error path: a UserError is shown as its message; anything else (a bug) is
logged with its traceback and shown as "internal error (logged)"."""

import logging

import numpy as np
import pytest

from app import backend
from app.errors import INTERNAL_ERROR, OUT_OF_MEMORY, guarded, user_message
from app.inspect_view import on_image
from app.state import Session
from core.errors import UserError


@pytest.mark.parametrize(
    "bug", [ValueError("shapes (3, 4) and (5,) do not match"), RuntimeError("index 7 out of range")]
)
def test_a_core_bug_is_logged_with_its_traceback_not_shown(fake_backend, ids, monkeypatch, caplog, bug):
    """The real backend calls core.analyze; a core function failing there is a bug, whatever its type."""
    import core

    def broken_analyze(*args, **kwargs):
        raise bug

    monkeypatch.setattr(backend.BACKEND, "analyze", backend.CoreBackend.analyze.__get__(backend.BACKEND))
    monkeypatch.setattr(core, "analyze", broken_analyze)
    with caplog.at_level(logging.ERROR, logger="afa_app"):
        views = on_image(np.zeros((32, 32, 3), dtype=np.uint8), ids[0], ids[1], False, 0.5, False, Session())
    assert views == {"status": f"⚠️ {INTERNAL_ERROR}"}
    assert str(bug) not in views["status"]
    record = next(r for r in caplog.records if r.name == "afa_app" and r.exc_info)
    assert record.exc_info[1] is bug and "broken_analyze" in caplog.text and "Traceback" in caplog.text


def test_a_user_error_is_shown_as_its_message_and_not_logged(fake_backend, ids, caplog):
    fake_backend.fail_analyze = UserError("afa.safetensors does not fit its model config")
    views = on_image(np.zeros((32, 32, 3), dtype=np.uint8), ids[0], ids[1], False, 0.5, False, Session())
    assert views == {"status": "⚠️ afa.safetensors does not fit its model config"}
    assert not [r for r in caplog.records if r.name == "afa_app"]


def test_out_of_memory_says_so_and_is_logged(fake_backend, ids, caplog):
    fake_backend.fail_analyze = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
    views = on_image(np.zeros((32, 32, 3), dtype=np.uint8), ids[0], ids[1], False, 0.5, False, Session())
    assert views == {"status": f"⚠️ {OUT_OF_MEMORY}"}
    assert "can't allocate memory" in caplog.text


def test_messages_are_one_line():
    assert user_message(UserError("two\n  lines")) == "two lines"
    assert user_message(KeyError("secret detail")) == INTERNAL_ERROR


def test_guarded_reports_in_the_named_view():
    @guarded(status="train_status")
    def refuse():
        raise UserError("no run to stop")

    assert refuse() == {"train_status": "⚠️ no run to stop"}


def test_read_errors_do_not_show_server_paths(fake_backend, ids):
    from core.io import ImageReadError

    path = "/tmp/gradio/0123abcd/holiday.jpg"
    fake_backend.fail_read = ImageReadError(f"the file '{path}' is empty (0 bytes).")
    views = on_image(path, ids[0], ids[1], False, 0.5, False, Session())
    assert views["status"] == "⚠️ the file 'holiday.jpg' is empty (0 bytes)."
