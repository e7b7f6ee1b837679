"""core.errors: one user-error type, one line and exit code 2 in every CLI, bugs keep their traceback."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from core.errors import ArgumentParser, UserError, one_line, run_cli


def test_every_specific_user_error_is_a_user_error():
    from core.checkpoint import CheckpointError
    from core.config import ConfigError
    from core.data import DatasetError
    from core.io import ImageReadError

    for kind in (ConfigError, CheckpointError, DatasetError, ImageReadError):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError)  # ValueError: compatibility
    assert not issubclass(UserError, ValueError)  # a plain ValueError is a bug, not the user's fault
    import core.runstate

    assert getattr(core.runstate, "UserError", UserError) is UserError  # no second type
    assert not hasattr(core.runstate, "user_error_types")


def test_run_cli_one_line_and_exit_2_for_user_errors_only(capsys):
    def bad_input():
        raise UserError("data.root   does not exist;\n  set it to the dataset folder")

    assert run_cli(bad_input, "prog") == 2
    err = capsys.readouterr().err
    assert err == "prog: error: data.root does not exist; set it to the dataset folder\n"
    assert run_cli(lambda: None, "prog") == 0 and run_cli(lambda: 3, "prog") == 3

    def bug():
        raise ValueError("a bug in the library")

    with pytest.raises(ValueError, match="a bug"):  # propagates: Python prints its traceback
        run_cli(bug, "prog")


def test_usage_errors_are_user_errors(capsys):
    parser = ArgumentParser(prog="python -m x")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    with pytest.raises(UserError, match=r"invalid choice: 'tpu'.*see python -m x --help"):
        parser.parse_args(["--device", "tpu"])
    assert run_cli(lambda: parser.parse_args(["--nope"]), "python -m x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --nope" in err


class _Unreadable(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserError(f"the image broken_{index}.jpg is truncated")


def test_one_line_keeps_the_message_of_an_error_raised_in_a_data_worker():
    loader = DataLoader(_Unreadable(), batch_size=1, num_workers=1)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # torch puts the worker's traceback into the message
    assert one_line(info.value) == "the image broken_0.jpg is truncated"
    assert one_line(UserError("x" * 500)).endswith("...") and len(one_line(UserError("x" * 500))) == 400


def test_run_cli_ends_quietly_when_the_reader_closes_the_pipe():
    """``python scripts/... --list | head``: the reader goes away mid-output; the command ends with
    exit code 1 and nothing on stderr, not a BrokenPipeError traceback."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from core.errors import run_cli\n"
            "def main():\n"
            "    for i in range(200000):\n"
            "        print('line', i)\n"
            "raise SystemExit(run_cli(main, 'prog'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.read(20).startswith(b"line 0")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err, err
