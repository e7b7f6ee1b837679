import os

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoint import CheckpointError, atomic_write, load_checkpoint, read_meta, save_checkpoint


def test_round_trip_and_fp16(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b.count": torch.tensor(7)}
    meta = {"model": {"backbone": "mit_b0"}, "classes": ["background", "x"], "step": 5}
    path = save_checkpoint(tmp_path / "m.safetensors", sd, meta, dtype=torch.float16)
    state, got = load_checkpoint(path)
    assert got["step"] == 5 and got["classes"] == ["background", "x"] and got["format"] == 1
    assert state["a.weight"].dtype == torch.float16 and state["b.count"].item() == 7
    assert torch.allclose(state["a.weight"].float(), sd["a.weight"], atol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def explode(tmp):
        tmp.write_bytes(b"half-written")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, explode)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_clear_errors(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    (tmp_path / "j.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    (tmp_path / "x.pth").write_bytes(b"pickle")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for name, message in (
        ("nope.safetensors", "nope.safetensors does not exist"),
        ("", "is a folder, not a file"),
        ("e.safetensors", "is empty"),
        ("j.safetensors", "not a safetensors"),
        ("x.pth", "core.convert"),
        ("foreign.safetensors", "not an AFA Explorer checkpoint"),
    ):
        with pytest.raises(CheckpointError, match=message):
            read_meta(tmp_path / name)
