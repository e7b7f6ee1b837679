"""ensure_scenes: generate the scenes data a run needs when it is missing, once, never half-written;
the procedural fallback in a folder of its own; core.train --make-data."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import core.data.scenes.ensure as ensure_mod
import core.data.scenes.writer as writer
from core.data.scenes import (
    CLASS_SETS,
    DEFAULT_CLASS_SET,
    SceneOptions,
    SourceMissing,
    ensure_scenes,
    generate_dataset,
    is_complete,
    procedural_root,
    read_meta,
)
from core.data.scenes.ensure import prepare_scenes_data, provenance
from core.errors import UserError

PROCEDURAL_GROUPS = [name for name, _ in CLASS_SETS[DEFAULT_CLASS_SET]["procedural"]]


@pytest.fixture
def no_fashion_mnist(monkeypatch):
    """As on a machine without Debian's dataset-fashion-mnist."""

    def missing(source=None):
        raise SourceMissing("Fashion-MNIST idx files not found (test)")

    monkeypatch.setattr(ensure_mod, "find_fashion_mnist", missing)


def test_generates_the_canonical_settings_once(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    calls: list[tuple[int, int]] = []
    ready = ensure_scenes(root, 3, 2, source="procedural", progress=lambda d, t: calls.append((d, t)))
    assert ready.generated and ready.root == root and is_complete(root)
    assert calls == [(i, 5) for i in range(1, 6)]
    meta = read_meta(root)
    assert meta["options"] == SceneOptions().__dict__ and meta["canonical"] and meta["seed"] == 0
    assert (meta["train"], meta["val"]) == (3, 2) and ready.images == 5
    before = (root / "meta.json").stat().st_mtime_ns
    again = ensure_scenes(root, 3, 2, source="procedural", progress=lambda d, t: calls.append((d, t)))
    assert not again.generated and again.meta == meta and len(calls) == 5  # nothing redone
    assert ready.replaced is None and again.replaced is None
    assert (root / "meta.json").stat().st_mtime_ns == before


def test_fallback_to_procedural_goes_to_its_own_folder(tmp_path: Path, no_fashion_mnist) -> None:
    root = tmp_path / "scenes"
    logged: list[str] = []
    ready = ensure_scenes(root, 2, 1, log=logged.append)
    assert ready.root == procedural_root(root) == tmp_path / "scenes-procedural"
    assert ready.source == "procedural" and ready.generated
    assert not root.exists()  # a dataset of shapes is never where the benchmark belongs
    assert len(logged) == 1 and "procedural" in logged[0]
    assert read_meta(ready.root)["classes"][1:] == PROCEDURAL_GROUPS
    # the next caller finds it, without generating again
    again = ensure_scenes(root, 2, 1)
    assert again.root == ready.root and not again.generated


def test_without_fallback_the_missing_source_is_an_error(tmp_path: Path, no_fashion_mnist) -> None:
    with pytest.raises(UserError, match="Fashion-MNIST"):
        ensure_scenes(tmp_path / "scenes", 2, 1, fallback_to_procedural=False)
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a scenes dataset"):
        ensure_scenes(root, 2, 1, source="procedural")
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_two_callers_at_once_generate_once_and_never_see_a_half_written_set(
    tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "scenes"
    real_render = writer._render
    inside, release = threading.Event(), threading.Event()

    def slow_render(job):  # the first image waits until the test has looked around
        inside.set()
        assert release.wait(30)
        return real_render(job)

    monkeypatch.setattr(writer, "_render", slow_render)
    results: dict[str, object] = {}

    def call(key: str) -> None:
        try:
            results[key] = ensure_scenes(root, 3, 1, source="procedural")
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[key] = exc

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert inside.wait(30)
    # mid-generation: the folder is not there (it is written beside it and renamed at the end)
    assert not root.exists() and not is_complete(root)
    assert any(p.name.startswith(".scenes.tmp-") for p in tmp_path.iterdir())
    second = threading.Thread(target=call, args=("second",))
    second.start()
    time.sleep(0.5)
    assert second.is_alive()  # waiting for the lock, not generating and not reading a partial set
    release.set()
    first.join(60)
    second.join(60)
    a, b = results["first"], results["second"]
    assert not isinstance(a, BaseException) and not isinstance(b, BaseException), results
    assert sorted([a.generated, b.generated]) == [False, True]
    assert a.meta == b.meta and a.root == b.root == root
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scenes.lock", "scenes"]


def test_provenance_tells_the_benchmark_from_other_sets(tmp_path: Path) -> None:
    meta = generate_dataset(tmp_path / "p", n_train=2, n_val=1, source="procedural")
    record = provenance(meta)
    assert record["source"] == "procedural" and record["scenes"]["benchmark"] is False
    assert record["scenes"]["train"] == 2
    canonical = dict(meta, source="fashion-mnist", train=3000, val=300)
    assert provenance(canonical)["scenes"]["benchmark"] is True
    # the benchmark as this code draws it, whatever flag the data carries: an older version, or
    # options that were the defaults once (five classes, uncapped clutter), are not it
    assert provenance(dict(canonical, version=2))["scenes"]["benchmark"] is False
    for key, old in (("class_set", "groups"), ("clutter_solid_max", 1.0)):
        stale = dict(canonical, options=dict(canonical["options"], **{key: old}))
        assert stale["canonical"] and provenance(stale)["scenes"]["benchmark"] is False
    assert provenance({}) == {}


def test_prepare_scenes_data_names_make_data(tmp_path: Path, monkeypatch, no_fashion_mnist) -> None:
    cfg = {"data": {"name": "scenes", "root": str(tmp_path / "scenes")}}
    with pytest.raises(UserError, match="--make-data"):
        prepare_scenes_data(cfg, make_data=False)
    assert list(tmp_path.iterdir()) == []
    voc = {"data": {"name": "voc", "root": str(tmp_path / "nothing")}}
    prepare_scenes_data(voc, make_data=True)  # other datasets: untouched
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ensure_mod, "DEFAULT_TRAIN", 2)
    monkeypatch.setattr(ensure_mod, "DEFAULT_VAL", 1)
    said: list[str] = []
    prepare_scenes_data(cfg, make_data=True, say=said.append)
    # Fashion-MNIST missing: procedural items, and the config now points at them
    assert cfg["data"]["root"] == str(tmp_path / "scenes-procedural")
    assert json.loads((tmp_path / "scenes-procedural" / "meta.json").read_text())["source"] == "procedural"
    assert any("procedural" in line for line in said)


@pytest.mark.slow
def test_core_train_make_data_end_to_end(tmp_path: Path, monkeypatch, no_fashion_mnist, capsys) -> None:
    """``python -m core.train`` on a missing scenes folder: without --make-data one line naming it
    (exit 2, no run folder); with it the data is generated, the run trains, and its checkpoint
    records the procedural source."""
    from core.checkpoint import read_meta as read_checkpoint_meta
    from core.train import main
    from tests.train.conftest import TINY

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data, run = tmp_path / "scenes", tmp_path / "run"
    args = ["--config", str(TINY), "--run-dir", str(run), f"data.root={data}", "train.max_iters=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--make-data" in err and "Traceback" not in err and not run.exists()
    monkeypatch.setattr(ensure_mod, "DEFAULT_TRAIN", 4)
    monkeypatch.setattr(ensure_mod, "DEFAULT_VAL", 2)
    assert main([*args, "--make-data"]) == 0
    meta = read_checkpoint_meta(run / "checkpoint.safetensors")
    assert meta["data"]["root"] == str(tmp_path / "scenes-procedural")
    assert meta["data"]["source"] == "procedural" and meta["data"]["scenes"]["benchmark"] is False
    assert meta["classes"] == ["background", *PROCEDURAL_GROUPS]


def test_check_cli_says_whether_a_folder_is_the_benchmark_and_why_not(tmp_path: Path, capsys) -> None:
    from core.data.scenes.cli import main

    meta = generate_dataset(tmp_path / "p", n_train=2, n_val=1, source="procedural")
    folder = tmp_path / "bench"
    folder.mkdir()
    canonical = dict(meta, source="fashion-mnist", train=3000, val=300)
    (folder / "meta.json").write_text(json.dumps(canonical))
    assert main(["--check", str(folder)]) == 0
    assert "is the benchmark" in capsys.readouterr().out
    # another version with an old default: exit 1, each difference named with both values
    old = dict(canonical, version=2, options=dict(canonical["options"], class_set="groups"))
    (folder / "meta.json").write_text(json.dumps(old))
    assert main(["--check", str(folder)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("version: 2, benchmark ")
    assert lines[1] == f"options.class_set: 'groups', benchmark {canonical['options']['class_set']!r}"
    assert main(["--check", str(tmp_path / "p")]) == 1  # a drawing of its own: not the benchmark
    assert main(["--check", str(tmp_path / "nothing")]) == 2  # no dataset: bad input, one line
    assert "not a finished scenes dataset" in capsys.readouterr().err


def _make_outdated(root: Path, **changes) -> None:
    """Rewrite ``root``'s meta.json as older code drawing *its* benchmark would have written it."""
    meta = read_meta(root)
    meta.update(changes)
    assert meta["canonical"]  # drawn with the defaults of its time
    (root / "meta.json").write_text(json.dumps(meta))


OLD_DEFAULTS = dict(SceneOptions().__dict__, class_set="groups")  # version 2's five classes


@pytest.mark.parametrize("changes", [{"version": 2}, {"options": OLD_DEFAULTS}])
def test_an_outdated_benchmark_is_moved_aside_and_redrawn(tmp_path: Path, changes) -> None:
    root = tmp_path / "scenes"
    ensure_scenes(root, 2, 1, source="procedural")
    _make_outdated(root, **changes)
    (root / "marker").write_text("old data")
    logged: list[str] = []
    ready = ensure_scenes(root, 2, 1, source="procedural", log=logged.append)
    assert ready.generated and ready.root == root and not (root / "marker").exists()
    now = read_meta(root)
    assert now["version"] == ensure_mod.VERSION and now["options"] == SceneOptions().__dict__
    aside = list(tmp_path.glob("scenes.old-*"))
    assert len(aside) == 1 and (aside[0] / "marker").read_text() == "old data"  # kept, not deleted
    assert len(logged) == 1 and str(aside[0]) in logged[0] and ready.replaced == aside[0]
    # a set drawn with options of one's own (not the defaults of any time) is never touched
    own = tmp_path / "own"
    generate_dataset(own, n_train=2, n_val=1, source="procedural", opts=SceneOptions(clutter=0.0))
    (own / "marker").write_text("mine")
    _ = ensure_scenes(own, 2, 1, source="procedural")
    assert (own / "marker").exists() and not list(tmp_path.glob("own.old-*"))


def test_a_new_run_on_an_outdated_benchmark_names_make_data_and_a_resumed_run_keeps_it(
    tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "scenes"
    ensure_scenes(root, 2, 1, source="procedural")
    _make_outdated(root, version=2)
    cfg = {"data": {"name": "scenes", "root": str(root)}}
    with pytest.raises(UserError, match="version 2 of the scenes benchmark.*--make-data"):
        prepare_scenes_data(cfg, make_data=False)
    prepare_scenes_data(cfg, make_data=False, new_run=False)  # resumed: the data it began with
    assert read_meta(root)["version"] == 2 and not list(tmp_path.glob("scenes.old-*"))
    # with --make-data: the current benchmark is drawn, and the run's config points at it
    monkeypatch.setattr(ensure_mod, "DEFAULT_TRAIN", 2)
    monkeypatch.setattr(ensure_mod, "DEFAULT_VAL", 1)
    prepare_scenes_data(cfg, make_data=True, say=lambda line: None)
    assert read_meta(cfg["data"]["root"])["version"] == ensure_mod.VERSION
