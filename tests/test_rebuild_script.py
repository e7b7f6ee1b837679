"""scripts/make_default_checkpoints.sh, the orchestration alone: a stand-in Python records every
call and makes the files the real commands would, so the test checks what the rebuild runs, in
which order and on how many threads, that a second rebuild redoes nothing, that an unfinished run
is resumed, and that a failing run fails the rebuild."""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path

    args = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps([os.environ.get("OMP_NUM_THREADS"), args]) + "\\n")

    def after(flag):
        return Path(args[args.index(flag) + 1])

    def touch(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")

    if args[:3] == ["-m", "core.data.scenes", "--check"]:  # is data/scenes the benchmark this code draws?
        sys.exit(1 if os.environ.get("FAKE_STALE") else 0)
    elif args[:2] == ["-m", "core.config"]:  # the recipe of a run folder: config.yaml holds its command line
        recipe = args[2:args.index("--against")]
        sys.exit(0 if json.loads(after("--against").read_text()) == recipe else 1)
    elif args[:2] == ["-m", "core.data.scenes"]:
        touch(after("--out") / "meta.json")
        (after("--out") / "meta.json").write_text(str(os.urandom(8)))  # every drawing its own meta
    elif args[:2] == ["-m", "core.train"]:
        run = after("--resume") if "--resume" in args else after("--run-dir")
        if run.name == os.environ.get("FAKE_FAIL"):
            sys.exit(1)
        touch(run / "checkpoint.safetensors")
        if "--config" in args:  # the recipe (config and overrides), which the stand-in core.config compares
            overrides = args[args.index("--run-dir") + 2:]
            (run / "config.yaml").write_text(json.dumps([str(after("--config")), *overrides]))
        (run / "status.json").write_text(json.dumps({{"state": "finished"}}))
    elif args[:3] == ["-m", "core.convert", "export"]:
        touch(Path(args[4]))
    elif args[:2] == ["-m", "core.evaluate"]:
        touch(after("--out"))
    elif args[:2] == ["scripts/results_table.py", "--split"]:
        touch(Path(args[2] + ".gz"))
        touch(Path(args[3]))
    """
)

MODELS = ("afa_mit_b0", "supervised_mit_b0", "cnn_cam_resnet10t")
ABLATION = ("abl_baseline", "abl_par", "abl_afa")  # +L_reg is the shipped AFA model
CHAIN_A = ["afa_mit_b0", "abl_par", "cnn_cam_resnet10t"]
CHAIN_B = ["supervised_mit_b0", "abl_afa", "abl_baseline"]


@pytest.fixture
def tree(tmp_path):
    """A copy of the scripts with the shipped encoders (so no pretraining unless asked)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("make_default_checkpoints.sh", "train_or_resume.sh"):
        shutil.copy(REPO / "scripts" / name, root / "scripts" / name)
    (root / "checkpoints").mkdir()
    for encoder in ("encoder_mit_b0_fmnist", "encoder_resnet10t_fmnist"):
        (root / "checkpoints" / f"{encoder}.safetensors").write_text("x")
    fake = tmp_path / "python"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return root


def rebuild(root: Path, **env) -> tuple[int, list]:
    log = root.parent / "calls.jsonl"
    log.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environ.update(PYTHON=str(root.parent / "python"), FAKE_LOG=str(log), **env)
    # no pipes: a chain left running detached would hold them open and hide that the script returned early
    done = subprocess.run(["bash", "scripts/make_default_checkpoints.sh"], cwd=root, env=environ,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done.returncode, calls


def trained(calls) -> list[str]:
    """The run folders trained or resumed, in call order."""
    out = []
    for _, args in calls:
        if args[:2] == ["-m", "core.train"]:
            flag = "--resume" if "--resume" in args else "--run-dir"
            out.append(Path(args[args.index(flag) + 1]).name)
    return out


def evaluated(calls) -> list[str]:
    """The checkpoints evaluated, in call order."""
    return [args[args.index("--checkpoint") + 1] for _, args in calls if args[:2] == ["-m", "core.evaluate"]]


def exported(calls) -> list[str]:
    """The files exported, in call order."""
    return [args[4] for _, args in calls if args[:3] == ["-m", "core.convert", "export"]]


def position(calls, kind: str, name: str) -> int:
    """The index of the first call that trains / evaluates / exports (``kind``) something named ``name``."""
    pick = {"train": trained, "evaluate": evaluated, "export": exported}[kind]
    return next(i for i, call in enumerate(calls) if any(name in x for x in pick([call])))


def test_a_fresh_rebuild_trains_exports_and_evaluates_everything_once_on_one_thread_each(tree):
    code, calls = rebuild(tree)
    assert code == 0
    runs = trained(calls)
    assert sorted(runs) == sorted(MODELS + ABLATION)  # each once, no pretraining (encoders shipped)
    # the two chains: their order within each chain is the script's
    assert [r for r in runs if r in CHAIN_A] == CHAIN_A
    assert [r for r in runs if r in CHAIN_B] == CHAIN_B
    assert {threads for threads, args in calls if args[:2] == ["-m", "core.train"]} == {"1"}
    # the benchmark with the generator's defaults, first
    assert calls[0][1] == ["-m", "core.data.scenes", "--out", "data/scenes", "--workers", "2"]
    assert sorted(exported(calls)) == sorted(f"checkpoints/{m}_scenes.safetensors" for m in MODELS)
    assert sorted(evaluated(calls)) == sorted([f"checkpoints/{m}_scenes.safetensors" for m in MODELS]
                                       + [f"runs/{a}/checkpoint.safetensors" for a in ABLATION])
    for _, args in calls:  # the shipped models with the CRF (AFA's is the +CRF row), the ablation without
        if args[:2] == ["-m", "core.evaluate"]:
            assert ("--crf" in args) == args[args.index("--checkpoint") + 1].startswith("checkpoints/")
    # every ablation row is the shipped recipe with parts switched off: same budget and schedule
    for _, args in calls:
        if args[:2] == ["-m", "core.train"] and Path(args[args.index("--run-dir") + 1]).name in ABLATION:
            assert args[args.index("--config") + 1] == "core/configs/scenes.yaml"
            overrides = args[args.index("--run-dir") + 2:]
            assert overrides and all(o.split("=")[0] in ("train.use_par", "train.use_aff", "train.use_reg")
                                     and o.endswith("=false") for o in overrides)
    # each model is evaluated as soon as its run ends, before its chain's next run starts
    assert position(calls, "evaluate", "afa_mit_b0") < position(calls, "train", "abl_par")
    assert position(calls, "evaluate", "abl_afa") < position(calls, "train", "abl_baseline")
    for name in MODELS:
        assert (tree / "checkpoints" / f"{name}_scenes.eval.json").exists()
    assert (tree / "docs" / "results" / "abl_afa.per_image.json.gz").exists()


def test_a_second_rebuild_redoes_nothing_and_an_unfinished_run_is_resumed(tree):
    assert rebuild(tree)[0] == 0
    code, calls = rebuild(tree)
    assert code == 0
    tables = ["scripts/results_table.py", "--bootstrap"]
    # the data checked, each run's recipe compared with its folder's, the README's tables
    assert calls[0][1] == ["-m", "core.data.scenes", "--check", "data/scenes"]
    compared = [args[args.index("--against") + 1] for _, args in calls if args[:2] == ["-m", "core.config"]]
    assert sorted(compared) == sorted(f"runs/{r}/config.yaml" for r in MODELS + ABLATION)
    assert [args[:2] for _, args in calls if args[:2] != ["-m", "core.config"]][1:] == [tables, tables]
    # a run stopped half way (its state saved, not finished) and a newer checkpoint than the export
    run = tree / "runs" / "abl_par"
    (run / "status.json").write_text('{"state": "stopped"}')
    (run / "train_state.safetensors").write_text("x")
    code, calls = rebuild(tree)
    assert code == 0
    assert trained(calls) == ["abl_par"]
    resumed = next(args for _, args in calls if args[:2] == ["-m", "core.train"])
    assert resumed == ["-m", "core.train", "--resume", "runs/abl_par"]
    assert evaluated(calls) == ["runs/abl_par/checkpoint.safetensors"]  # its results are redone, no others


def test_a_redone_pretraining_the_mit_stages_first_on_both_threads_the_cnn_in_its_chain(tree):
    code, calls = rebuild(tree, REBUILD_PRETRAIN="1")
    assert code == 0
    runs = trained(calls)
    # every MiT run starts from the MiT encoder: its two stages come first, alone
    assert runs[:2] == ["pretrain_mit_b0", "pretrain_tiles_mit_b0"]
    assert sorted(runs[2:]) == sorted(("pretrain_resnet10t",) + MODELS + ABLATION)
    # only the CNN run needs the CNN's encoder: it is pretrained in chain A, just before that run
    assert [r for r in runs if r in CHAIN_A or r == "pretrain_resnet10t"] == [
        *CHAIN_A[:-1], "pretrain_resnet10t", "cnn_cam_resnet10t"]
    threads = {Path(a[a.index("--run-dir") + 1]).name: t for t, a in calls if a[:2] == ["-m", "core.train"]}
    assert {threads[r] for r in runs[:2]} == {"2"} and {threads[r] for r in runs[2:]} == {"1"}
    # the CNN's encoder is exported before the CNN run starts from it
    assert position(calls, "export", "encoder_resnet10t") < position(calls, "train", "cnn_cam_resnet10t")


def test_a_missing_encoder_is_pretrained_alone(tree):
    """Without REBUILD_PRETRAIN, only an encoder that is missing is redone."""
    (tree / "checkpoints" / "encoder_resnet10t_fmnist.safetensors").unlink()
    code, calls = rebuild(tree)
    assert code == 0
    runs = trained(calls)
    assert "pretrain_resnet10t" in runs and not any(r.startswith("pretrain_mit") for r in runs)


@pytest.mark.parametrize("failing", ["abl_afa", "afa_mit_b0"])
def test_a_failing_run_fails_the_rebuild_after_the_other_chain_ends(tree, failing):
    code, calls = rebuild(tree, FAKE_FAIL=failing)
    assert code != 0
    runs = trained(calls)
    chain = CHAIN_B if failing == "abl_afa" else CHAIN_A
    assert [r for r in runs if r in chain] == chain[: chain.index(failing) + 1]  # its chain stopped there
    # the other chain ran to its end before the rebuild returned (none is left running detached)
    assert all(r in runs for r in MODELS + ABLATION if r not in chain)
    assert not any(args[:2] == ["scripts/results_table.py", "--bootstrap"] for _, args in calls)


def test_data_of_another_version_is_redrawn_aside_and_its_runs_moved_aside_and_redone(tree):
    assert rebuild(tree)[0] == 0
    (tree / "runs" / "pretrain_mit_b0").mkdir()  # the pretraining's run is its own: it stays
    code, calls = rebuild(tree, FAKE_STALE="1")
    assert code == 0
    assert calls[1][1][:4] == ["-m", "core.data.scenes", "--out", "data/scenes"]  # redrawn after the check
    old_data = list((tree / "data").glob("scenes.old-*"))
    assert len(old_data) == 1 and (old_data[0] / "meta.json").exists()  # moved, not deleted
    assert sorted(trained(calls)) == sorted(MODELS + ABLATION)  # every run redone
    old_runs = list((tree / "runs").glob("old-*"))
    assert len(old_runs) == 1
    assert sorted(p.name for p in old_runs[0].iterdir()) == sorted([*MODELS, *ABLATION, "benchmark.json"])
    assert (tree / "runs" / "pretrain_mit_b0").is_dir()
    record = (tree / "runs" / "benchmark.json").read_text()
    assert record == (tree / "data" / "scenes" / "meta.json").read_text()  # the new data's meta


def test_a_run_of_another_recipe_is_moved_aside_and_redone(tree):
    assert rebuild(tree)[0] == 0
    # an older release's ablation row: the same run folder, half the budget
    run = tree / "runs" / "abl_par"
    recipe = json.loads((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(json.dumps([*recipe, "train.max_iters=1200"]))
    (run / "marker").write_text("the old run")
    code, calls = rebuild(tree)
    assert code == 0
    assert trained(calls) == ["abl_par"]  # redone with the recipe of today, nothing else
    assert evaluated(calls) == ["runs/abl_par/checkpoint.safetensors"]
    moved = list((tree / "runs").glob("old-*/abl_par"))
    assert len(moved) == 1 and (moved[0] / "marker").read_text() == "the old run"  # moved, not deleted
    assert json.loads((run / "config.yaml").read_text()) == recipe
