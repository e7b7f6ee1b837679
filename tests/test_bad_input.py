"""The bad-input matrix: every CLI answers bad configs, files, folders and options with exit code
2 and exactly one line on stderr (no traceback), and writes nothing outside the run folder it was
told to use (for most cases: nothing at all).

Each case runs the CLI in-process through its ``main(argv)`` inside a workspace (the current
directory is the workspace, so relative defaults land there too); the workspace and the case's
own folder are snapshotted before and after. A few subprocess runs check the real entry points.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "core" / "configs" / "tiny.yaml"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


# ---------------------------------------------------------------- the workspace (built once)
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _evil_pickle(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    torch.save({"classifier.weight": torch.zeros(20, 256, 1, 1), "x": Evil()}, path)


@pytest.fixture(scope="session")
def ws(tmp_path_factory, tiny_scenes) -> Path:
    """Datasets (sound and broken), a config, a finished run, checkpoints and bad files."""
    from core.checkpoint import save_checkpoint
    from core.config import load_config
    from core.data import class_names
    from core.models.registry import create_model
    from core.runstate import save_model_checkpoint
    from core.train import main as train_main

    from .test_convert import authors_state_dict

    root = tmp_path_factory.mktemp("workspace")
    data = root / "data"
    shutil.copytree(tiny_scenes, data / "scenes")
    train_names = (data / "scenes" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    val_names = (data / "scenes" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    shutil.copytree(tiny_scenes, data / "broken_jpeg")
    _truncate(data / "broken_jpeg" / "JPEGImages" / f"{train_names[3]}.jpg")
    _truncate(data / "broken_jpeg" / "JPEGImages" / f"{val_names[1]}.jpg")
    shutil.copytree(tiny_scenes, data / "broken_mask")
    _truncate(data / "broken_mask" / "SegmentationClass" / f"{val_names[0]}.png")
    (data / "empty").mkdir()

    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"]["root"] = str(data / "scenes")
    cfg["train"]["out_dir"] = str(root / "runs")
    cfg["train"]["max_iters"] = 1
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    for key, value in {"broken_jpeg": "broken_jpeg", "broken_mask": "broken_mask"}.items():
        cfg_b = yaml.safe_load(yaml.safe_dump(cfg))
        cfg_b["data"]["root"] = str(data / value)
        cfg_b["train"]["batch_size"] = len(train_names)  # one batch holds every image
        (root / f"config_{key}.yaml").write_text(yaml.safe_dump(cfg_b))

    assert train_main(["--config", str(root / "config.yaml"), "--run-dir", str(root / "run_done")]) == 0

    full = load_config(root / "config.yaml")
    torch.manual_seed(0)
    model = create_model(full, classes=class_names(full))
    save_model_checkpoint(root / "model.safetensors", model, full, step=0)
    other = load_config(root / "config.yaml", ["model.num_classes=4"])
    save_model_checkpoint(root / "four_classes.safetensors", create_model(other), other, step=0)
    lying = dict(full, model={**full["model"], "backbone": "mit_b1"})
    save_model_checkpoint(root / "lying.safetensors", model, lying, step=0)
    save_checkpoint(root / "no_encoder.safetensors", {"decoder.x": torch.zeros(2)},
                    {"model": full["model"], "classes": class_names(full)})
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(root / "plain.safetensors"))
    save_file({"x": torch.zeros(2)}, str(root / "bad_meta.safetensors"), metadata={"afa_explorer": "{oops"})
    shutil.copy(root / "model.safetensors", root / "cut.safetensors")
    _truncate(root / "cut.safetensors")

    rng = np.random.default_rng(0)
    (root / "random.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "random.pth").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "random.safetensors").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "empty.pth").write_bytes(b"")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "notes.txt").write_text("these are not weights\n")
    (root / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (root / "three_classes.txt").write_text("background\na\nb\n")
    (root / "one_class.txt").write_text("background\n")
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("x")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("train: [1, 2\n")
    _evil_pickle(root / "evil.pth")
    torch.save(torch.zeros(3), root / "tensor.pth")
    torch.save({"encoder.x": torch.zeros(1)}, root / "no_classifier.pth")
    torch.save(authors_state_dict(), root / "authors.pth")
    (root / "idx").mkdir()
    (root / "idx" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    return root


# ---------------------------------------------------------------- snapshot and one case
def _snapshot(*roots: Path) -> dict[str, tuple]:
    state = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path.is_symlink() or path.is_dir():
                state[str(path)] = ("dir",)
            else:  # size and modification time: any write changes them
                stat = path.stat()
                state[str(path)] = ("file", stat.st_size, stat.st_mtime_ns)
    return state


def _changed(before: dict, after: dict) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _check(main: Callable[[list[str]], int], argv: list[str], ws: Path, tmp: Path, capsys, monkeypatch,
           run_dir: Path | None, words: str) -> None:
    """``main(argv)``: exit code 2, one line on stderr naming ``words``, no traceback, and no file
    created or changed outside ``run_dir`` (inside the workspace and the case folder)."""
    monkeypatch.chdir(tmp)
    capsys.readouterr()
    before = _snapshot(ws, tmp)
    code = main(argv)
    out = capsys.readouterr()
    after = _snapshot(ws, tmp)
    assert code == 2, out.err
    assert out.err.count("\n") == 1 and out.err.endswith("\n"), out.err
    assert "Traceback" not in out.err and ": error: " in out.err
    assert words.lower() in out.err.lower(), out.err
    assert "weights_only=False" not in out.err
    changed = _changed(before, after)
    if run_dir is not None:
        changed = {p for p in changed if not Path(p).is_relative_to(run_dir)}
    assert not changed, f"written outside the run folder: {sorted(changed)}"


def _params(cases: list) -> list:
    """``(id, *values)`` tuples (and ready ``pytest.param``s) -> parameter sets."""
    return [c if hasattr(c, "marks") else pytest.param(*c[1:], id=c[0]) for c in cases]


def _fill(template: list[str], ws: Path, tmp: Path) -> list[str]:
    return [a.format(ws=ws, tmp=tmp) for a in template]


# ---------------------------------------------------------------- python -m core.train
def _copy_run(ws: Path, tmp: Path) -> None:
    shutil.copytree(ws / "run_done", tmp / "run")


def _copy_run_cut_state(ws: Path, tmp: Path) -> None:
    _copy_run(ws, tmp)
    _truncate(tmp / "run" / "train_state.safetensors")


def _dataset_folder(ws: Path, tmp: Path) -> None:
    shutil.copytree(ws / "data" / "scenes", tmp / "dataset")


CFG = ["--config", "{ws}/config.yaml", "--run-dir", "{tmp}/run"]
TRAIN_CASES = [
    # (id, argv, prepare, the run folder that may change, words in the message)
    ("config_missing", ["--config", "{ws}/nope.yaml", "--run-dir", "{tmp}/run"], None, None, "not found"),
    ("config_not_yaml", ["--config", "{ws}/broken.yaml"], None, None, "not valid YAML"),
    ("config_a_list", ["--config", "{ws}/list.yaml"], None, None, "mapping"),
    ("config_a_folder", ["--config", "{ws}/folder"], None, None, "not found"),
    ("no_config", [], None, None, "--config"),
    ("unknown_key", [*CFG, "train.no_such_key=1"], None, None, "train.no_such_key"),
    ("override_without_value", [*CFG, "train.max_iters"], None, None, "key.sub=value"),
    ("negative_lr", [*CFG, "optim.lr=-0.001"], None, None, "optim.lr"),
    ("fractional_batch", [*CFG, "train.batch_size=2.5"], None, None, "train.batch_size"),
    ("bad_crop", [*CFG, "data.crop_size=33"], None, None, "data.crop_size"),
    ("bad_mode", [*CFG, "train.mode=bogus"], None, None, "train.mode"),
    ("device_tpu", [*CFG, "train.device=tpu"], None, None, "train.device"),
    ("bad_on_corrupt", [*CFG, "data.on_corrupt=maybe"], None, None, "data.on_corrupt"),
    pytest.param([*CFG, "train.device=cuda"], None, None, "CUDA is not available", id="device_cuda",
                 marks=NO_CUDA),
    ("unknown_backbone", [*CFG, "model.backbone=mit_b9"], None, "{tmp}/run", "mit_b9"),
    ("batch_over_dataset", [*CFG, "train.batch_size=64"], None, "{tmp}/run", "train.batch_size"),
    ("pretrained_missing", [*CFG, "model.pretrained={ws}/missing.safetensors"], None, "{tmp}/run",
     "does not exist"),
    ("pretrained_random_bytes", [*CFG, "model.pretrained={ws}/random.pth"], None, "{tmp}/run",
     "not a readable PyTorch"),
    ("pretrained_pickle", [*CFG, "model.pretrained={ws}/evil.pth"], None, "{tmp}/run", "never loaded"),
    ("pretrained_empty", [*CFG, "model.pretrained={ws}/empty.safetensors"], None, "{tmp}/run", "empty"),
    ("pretrained_cut", [*CFG, "model.pretrained={ws}/cut.safetensors"], None, "{tmp}/run",
     "not a readable"),
    ("data_missing", [*CFG, "data.root={ws}/nowhere"], None, "{tmp}/run", "nowhere"),
    ("data_not_a_dataset", [*CFG, "data.root={ws}/data/empty"], None, "{tmp}/run", "classes.txt"),
    ("classes_mismatch", [*CFG, "model.num_classes=4"], None, "{tmp}/run", "model.num_classes"),
    ("truncated_training_jpeg", ["--config", "{ws}/config_broken_jpeg.yaml", "--run-dir", "{tmp}/run"], None,
     "{tmp}/run", "is truncated"),
    ("run_dir_holds_a_run", ["--config", "{ws}/config.yaml", "--run-dir", "{tmp}/run"], _copy_run, None,
     "--resume"),
    ("resume_missing", ["--resume", "{tmp}/nothing"], None, None, "cannot resume"),
    ("resume_not_a_run", ["--resume", "{tmp}/dataset"], _dataset_folder, None, "is it a run folder"),
    ("resume_cut_state", ["--resume", "{tmp}/run"], _copy_run_cut_state, "{tmp}/run", "damaged"),
    ("resume_other_model", ["--resume", "{tmp}/run", "model.backbone=mit_b1"], _copy_run, "{tmp}/run",
     "does not fit"),
    ("usage", ["--config", "{ws}/config.yaml", "--no-such-option"], None, None, "unrecognized"),
]


@pytest.mark.parametrize("argv, prepare, run_dir, words", _params(TRAIN_CASES))
def test_train_bad_input(argv, prepare, run_dir, words, ws, tmp_path, capsys, monkeypatch):
    from core.train import main

    if prepare is not None:
        prepare(ws, tmp_path)
    run = Path(run_dir.format(ws=ws, tmp=tmp_path)) if run_dir else None
    _check(main, _fill(argv, ws, tmp_path), ws, tmp_path, capsys, monkeypatch, run, words)
    if run is not None and (run / "status.json").is_file() and prepare is None:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed" and words.lower() in status["message"].lower()


# ---------------------------------------------------------------- python -m core.evaluate
EV = ["--data", "{ws}/data/scenes"]
EVALUATE_CASES = [
    ("checkpoint_missing", ["--checkpoint", "{ws}/none.safetensors", *EV], "does not exist"),
    ("checkpoint_empty", ["--checkpoint", "{ws}/empty.safetensors", *EV], "empty"),
    ("checkpoint_random_bytes", ["--checkpoint", "{ws}/random.safetensors", *EV], "not a safetensors"),
    ("checkpoint_pth", ["--checkpoint", "{ws}/evil.pth", *EV], "pickle"),
    ("checkpoint_folder", ["--checkpoint", "{ws}/folder", *EV], "folder"),
    ("checkpoint_foreign", ["--checkpoint", "{ws}/plain.safetensors", *EV], "not an AFA Explorer checkpoint"),
    ("checkpoint_bad_meta", ["--checkpoint", "{ws}/bad_meta.safetensors", *EV], "damaged metadata"),
    ("checkpoint_cut", ["--checkpoint", "{ws}/cut.safetensors", *EV], "not a safetensors"),
    ("checkpoint_lies", ["--checkpoint", "{ws}/lying.safetensors", *EV], "does not fit"),
    ("classes_mismatch", ["--checkpoint", "{ws}/four_classes.safetensors", *EV], "model.num_classes"),
    ("data_missing", ["--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/nowhere"], "not found"),
    ("data_a_file", ["--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/notes.txt"], "not found"),
    ("data_empty_folder", ["--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/data/empty"],
     "classes.txt"),
    ("split_missing", ["--checkpoint", "{ws}/model.safetensors", *EV, "--split", "test"], "test.txt"),
    ("truncated_val_jpeg", ["--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/data/broken_jpeg"],
     "is truncated"),
    ("truncated_val_mask", ["--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/data/broken_mask"],
     "val_000000.png"),
    ("limit_zero", ["--checkpoint", "{ws}/model.safetensors", *EV, "--limit", "0"], "--limit"),
    ("scales_negative", ["--checkpoint", "{ws}/model.safetensors", *EV, "--scales", "1", "-1"], "--scales"),
    ("out_is_a_folder", ["--checkpoint", "{ws}/model.safetensors", *EV, "--out", "{ws}/folder"], "folder"),
    ("device_tpu", ["--checkpoint", "{ws}/model.safetensors", *EV, "--device", "tpu"], "invalid choice"),
    pytest.param(["--checkpoint", "{ws}/model.safetensors", *EV, "--device", "cuda"], "CUDA is not available",
                 id="device_cuda", marks=NO_CUDA),
    ("no_checkpoint_option", EV, "--checkpoint"),
    ("set_unknown_key", ["--checkpoint", "{ws}/model.safetensors", *EV, "--set", "cam.nope=1"], "cam.nope"),
    ("set_other_section", ["--checkpoint", "{ws}/model.safetensors", *EV, "--set", "model.backbone=mit_b9"],
     "only the cam"),
    ("set_bad_value", ["--checkpoint", "{ws}/model.safetensors", *EV, "--set", "cam.scales=[0]"],
     "cam.scales"),
]


@pytest.mark.parametrize("argv, words", _params(EVALUATE_CASES))
def test_evaluate_bad_input(argv, words, ws, tmp_path, capsys, monkeypatch):
    from core.evaluate import main

    _check(main, _fill(argv, ws, tmp_path), ws, tmp_path, capsys, monkeypatch, None, words)


# ---------------------------------------------------------------- python -m core.convert
OUT = "{tmp}/out.safetensors"
CONVERT_CASES = [
    ("src_missing", ["official-afa", "{ws}/none.pth", OUT, "--backbone", "mit_b0"], "does not exist"),
    ("src_empty", ["official-afa", "{ws}/empty.pth", OUT, "--backbone", "mit_b0"], "empty"),
    ("src_random_bytes", ["official-afa", "{ws}/random.pth", OUT, "--backbone", "mit_b0"],
     "not a readable PyTorch"),
    ("src_text", ["official-afa", "{ws}/notes.txt", OUT, "--backbone", "mit_b0"], "not a readable PyTorch"),
    ("src_folder", ["official-afa", "{ws}/folder", OUT, "--backbone", "mit_b0"], "is a folder"),
    ("src_pickled_objects", ["official-afa", "{ws}/evil.pth", OUT, "--backbone", "mit_b0"], "never loaded"),
    ("src_a_tensor", ["official-afa", "{ws}/tensor.pth", OUT, "--backbone", "mit_b0"], "not a state dict"),
    ("src_not_afa", ["official-afa", "{ws}/no_classifier.pth", OUT, "--backbone", "mit_b0"],
     "classifier.weight"),
    ("wrong_backbone", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b1"], "--backbone right"),
    ("unknown_backbone", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b9"], "mit_b9"),
    ("classes_missing", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b0",
                         "--classes", "{ws}/MISSING.txt"], "no such file"),
    ("classes_wrong_count", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b0",
                             "--classes", "{ws}/three_classes.txt"], "must list 21 names"),
    ("classes_one", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b0",
                     "--classes", "{ws}/one_class.txt"], "at least one class"),
    ("classes_binary", ["official-afa", "{ws}/authors.pth", OUT, "--backbone", "mit_b0",
                        "--classes", "{ws}/binary.txt"], "not a readable text file"),
    ("out_is_a_folder", ["official-afa", "{ws}/authors.pth", "{ws}/folder", "--backbone", "mit_b0"],
     "is a folder"),
    ("no_backbone", ["official-afa", "{ws}/authors.pth", OUT], "--backbone"),
    ("unknown_kind", ["other-format", "{ws}/authors.pth", OUT], "invalid choice"),
    ("export_missing", ["export", "{ws}/none.safetensors", OUT], "does not exist"),
    ("export_random_bytes", ["export", "{ws}/random.safetensors", OUT], "not a safetensors"),
    ("export_no_encoder", ["export", "{ws}/no_encoder.safetensors", OUT, "--encoder-only"], "no encoder"),
]


@pytest.mark.parametrize("argv, words", _params(CONVERT_CASES))
def test_convert_bad_input(argv, words, ws, tmp_path, capsys, monkeypatch):
    from core.convert import main

    _check(main, _fill(argv, ws, tmp_path), ws, tmp_path, capsys, monkeypatch, None, words)


# ---------------------------------------------------------------- python -m core.data.scenes
SC = ["--out", "{tmp}/scenes", "--train", "2", "--val", "1", "--source", "procedural"]
SCENES_CASES = [
    ("size_128", ["--out", "{tmp}/scenes", "--size", "128"], "--scale-max"),
    ("size_tiny", [*SC, "--size", "8"], "--size"),
    ("out_not_empty", ["--out", "{ws}/folder", "--source", "procedural"], "not empty"),
    ("out_a_file", ["--out", "{ws}/notes.txt", "--source", "procedural"], "not a scenes dataset"),
    ("source_missing", ["--out", "{tmp}/scenes", "--source", "{ws}/nowhere"], "not found"),
    ("source_without_files", ["--out", "{tmp}/scenes", "--source", "{ws}/folder"], "Fashion-MNIST"),
    ("objects_order", [*SC, "--min-objects", "3", "--max-objects", "1"], "--min-objects"),
    ("no_objects", [*SC, "--max-objects", "0"], "--max-objects"),
    ("scale_zero", [*SC, "--scale-min", "0"], "--scale-min"),
    ("scales_reversed", [*SC, "--scale-min", "3", "--scale-max", "2"], "--scale-min"),
    ("occlusion", [*SC, "--occlusion", "1.5"], "--occlusion"),
    ("clutter", [*SC, "--clutter", "-1"], "--clutter"),
    ("clutter-solid-max", [*SC, "--clutter-solid-max", "0"], "--clutter-solid-max"),
    ("camouflage", [*SC, "--camouflage", "2"], "--camouflage"),
    ("texture", [*SC, "--texture", "1.5"], "--texture"),
    ("rotation", [*SC, "--max-rotation", "-5"], "--max-rotation"),
    ("quality", [*SC, "--quality", "0"], "--quality"),
    ("train_negative", ["--out", "{tmp}/scenes", "--train", "-1", "--source", "procedural"], "--train"),
    ("workers", [*SC, "--workers", "0"], "--workers"),
    ("class_set", [*SC, "--classes", "bogus"], "invalid choice"),
    ("size_not_a_number", [*SC, "--size", "big"], "invalid int value"),
]


@pytest.mark.parametrize("argv, words", _params(SCENES_CASES))
def test_scenes_bad_input(argv, words, ws, tmp_path, capsys, monkeypatch):
    from core.data.scenes.cli import main

    _check(main, _fill(argv, ws, tmp_path), ws, tmp_path, capsys, monkeypatch, None, words)


# ---------------------------------------------------------------- python -m core.bench
BENCH_CASES = [
    ("device_tpu", ["--device", "tpu", "--only", "par"], "tpu"),
    pytest.param(["--device", "cuda", "--only", "par"], "CUDA is not available", id="device_cuda",
                 marks=NO_CUDA),
    ("repeats_zero", ["--repeats", "0", "--only", "par"], "--repeats"),
    ("repeats_negative", ["--repeats", "-2", "--only", "par"], "--repeats"),
    ("repeats_not_a_number", ["--repeats", "many"], "invalid int value"),
    ("unknown_part", ["--only", "everything"], "invalid choice"),
    ("unknown_option", ["--fast"], "unrecognized"),
]


@pytest.mark.parametrize("argv, words", _params(BENCH_CASES))
def test_bench_bad_input(argv, words, ws, tmp_path, capsys, monkeypatch):
    from core.bench import main

    _check(main, _fill(argv, ws, tmp_path), ws, tmp_path, capsys, monkeypatch, None, words)


# ---------------------------------------------------------------- the runs themselves
def test_resume_on_a_folder_that_is_not_a_run_writes_nothing(ws, tmp_path, capsys, monkeypatch):
    """Item 3 of the reliability issue: it used to write a "failed" status.json into the folder."""
    from core.train import main

    _dataset_folder(ws, tmp_path)
    for extra in ([], ["train.max_iters=3"]):
        _check(main, ["--resume", str(tmp_path / "dataset"), *extra], ws, tmp_path, capsys, monkeypatch,
               None, "cannot resume")
    assert not (tmp_path / "dataset" / "status.json").exists()


def test_temporary_files_of_a_killed_save_are_removed_at_resume(ws, tmp_path, capsys):
    """A kill -9 during an atomic write leaves ``.NAME.XXXXXXXX.tmp``; resuming that run removes
    them (and only them)."""
    from core.train import main

    _copy_run(ws, tmp_path)
    run = tmp_path / "run"
    left = [run / ".train_state.safetensors.k3x_9a2b.tmp", run / ".checkpoint.safetensors.zz00aa11.tmp",
            run / "samples" / ".latest.npz.abcdefgh.tmp"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * 1000)
    mine = [run / "notes.tmp", run / ".hidden.tmp", run / "keep.txt"]
    for path in mine:
        path.write_text("the user's")
    assert main(["--resume", str(run), "train.max_iters=2"]) == 0
    assert not any(p.exists() for p in left)
    assert all(p.read_text() == "the user's" for p in mine)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_skip_trains_around_a_truncated_image(ws, tmp_path, capsys):
    from core.train import main

    run = tmp_path / "run"
    assert main(["--config", str(ws / "config_broken_jpeg.yaml"), "--run-dir", str(run),
                 "data.on_corrupt=skip", "train.batch_size=2", "train.max_iters=4"]) == 0
    err = capsys.readouterr().err
    assert "skipping an unreadable training image" in err and "is truncated" in err
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["-m", "core.train", "--config", "{ws}/config.yaml", "optim.lr=-1"], "optim.lr"),
    (["-m", "core.train", "--resume", "{ws}/data/scenes"], "cannot resume"),
    (["-m", "core.convert", "official-afa", "{ws}/random.pth", "{tmp}/x.safetensors", "--backbone", "mit_b0"],
     "not a readable PyTorch"),
], ids=["train", "train_resume", "convert"])
def test_the_real_entry_points(args, words, ws, tmp_path):
    before = _snapshot(ws, tmp_path)
    proc = _python(*_fill(args, ws, tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not _changed(before, _snapshot(ws, tmp_path))


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(tmp_path):
    code = ("import core.convert as c\n"
            "def broken(*a, **k):\n    raise KeyError('a bug')\n"
            "c.convert_official_afa = broken\n"
            "raise SystemExit(c.main(['official-afa', 'a.pth', 'b.safetensors', '--backbone', 'mit_b0']))\n")
    proc = _python("-c", code, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'a bug'" in proc.stderr


def test_image_of_text_is_not_an_image(tmp_path):
    """(also: a JPEG header followed by text, the classic mislabelled upload)"""
    from core.data.voc import load_rgb
    from core.io import ImageReadError

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "JPEG")
    path = tmp_path / "fake.jpg"
    path.write_bytes(buf.getvalue()[:20] + b"this is not image data" * 10)
    with pytest.raises(ImageReadError, match="fake.jpg"):
        load_rgb(path)
