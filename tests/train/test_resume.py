"""Exact resume: training state round trip, the data order, and whole tiny runs (slow)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from core.distributed import EpochBatchSampler
from core.runstate import capture_rng, load_train_state, preserve_rng, restore_rng, save_train_state


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2, "initial_lr": 1e-2, "name": "a"},
                             {"params": list(model[2].parameters()) + list(model[3].parameters()),
                              "lr": 1e-1, "initial_lr": 1e-1, "name": "b"}], betas=(0.9, 0.99))
    return model, opt


def _train(model, opt, steps: int):
    for _ in range(steps):
        x = torch.randn(6, 4)
        loss = model(x).square().mean() + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_train_state_round_trip_continues_identically(tmp_path):
    model, opt = _toy()
    _train(model, opt, 3)
    save_train_state(tmp_path, model=model, optimizer=opt, step=3, epoch=1, position=2, rng=[capture_rng()],
                     extra={"metrics": {"miou": 0.5}})
    _train(model, opt, 4)  # the uninterrupted continuation
    expected = [p.detach().clone() for p in model.parameters()]

    state = load_train_state(tmp_path)
    assert (state.step, state.epoch, state.position) == (3, 1, 2)
    assert state.meta["metrics"] == {"miou": 0.5}
    fresh, fresh_opt = _toy(seed=123)
    fresh.load_state_dict(state.model)
    fresh_opt.load_state_dict(state.optimizer)
    restore_rng(state.rng[0])
    _train(fresh, fresh_opt, 4)
    for a, b in zip(expected, fresh.parameters()):
        assert torch.equal(a, b)
    readable = json.loads((tmp_path / "train_state.json").read_text())
    assert readable["step"] == 3 and readable["data"] == {"epoch": 1, "position": 2}
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_capture_restore_and_preserve():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(), random.random())
    restore_rng(json.loads(json.dumps(state)))  # survives JSON
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    before = capture_rng()
    with preserve_rng():
        torch.rand(10)
        np.random.rand(10)
        random.random()
    assert capture_rng() == before


def test_epoch_sampler_is_a_pure_function_and_resumes_inside_an_epoch():
    s = EpochBatchSampler(10, batch_size=3, seed=5)
    assert s.batches_per_epoch == 3
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    assert list(s) == full  # same (seed, epoch) -> same order
    s.set_epoch(3)
    assert list(s) != full
    s.set_epoch(2, start=1)
    assert list(s) == full[1:]
    assert len(s) == 2
    # DistributedSampler's order: randperm with a generator seeded with seed + epoch
    g = torch.Generator().manual_seed(5 + 2)
    assert [i for b in full for i in b] == torch.randperm(10, generator=g).tolist()[:9]


def test_epoch_sampler_shards_ranks_disjointly():
    ranks = [EpochBatchSampler(9, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [r.epoch_indices(0) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 5  # padded to 10
    assert set(shards[0] + shards[1]) == set(range(9))
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(3, batch_size=4, seed=0)


# ---------------------------------------------------------------- whole tiny runs
def _run(args: list[str]) -> int:
    from core.train import main

    return main(args)


def _tensors(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "train_state.safetensors"))


def _status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, tiny_scenes):
    from .conftest import TINY

    common = ["--config", str(TINY), f"data.root={tiny_scenes}", "train.max_iters=4", "train.eval_every=3",
              "train.eval_limit=1", "train.batch_size=3"]
    # 8 images, batch 3: 2 batches an epoch. Stopping after 3 steps lands inside the second epoch,
    # after cam_iters (2) and an evaluation (step 3), before aff_label_iters (3) takes effect
    assert _run([*common, "--run-dir", str(tmp_path / "full")]) == 0
    assert _run([*common, "--run-dir", str(tmp_path / "part"), "train.stop_after=3"]) == 0
    part = tmp_path / "part"
    assert _status(part)["state"] == "stopped" and _status(part)["step"] == 3
    state = json.loads((part / "train_state.json").read_text())
    assert state["step"] == 3 and state["data"] == {"epoch": 1, "position": 1}
    assert _run(["--resume", str(part), "train.stop_after=null"]) == 0
    assert _status(part)["state"] == "finished" and _status(part)["step"] == 4

    full, resumed = _tensors(tmp_path / "full"), _tensors(part)
    assert full.keys() == resumed.keys()
    model_keys = [k for k in full if k.startswith("model.")]
    assert model_keys and any(k.startswith("optim.") for k in full)
    for key in full:
        if not key.startswith("rng."):
            assert torch.equal(full[key], resumed[key]), key
    # the checkpoint the app loads matches the state
    from core.checkpoint import load_checkpoint

    weights, meta = load_checkpoint(part / "checkpoint.safetensors")
    assert meta["step"] == 4 and meta["classes"][0] == "background"
    assert torch.equal(weights[model_keys[0][len("model."):]], full[model_keys[0]])
    lines = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [2, 4]
    assert [x["step"] for x in lines if x["kind"] == "eval"] == [3, 4]
    assert (part / "eval" / "step_000004.json").is_file()
    samples = np.load(part / "samples" / "latest.npz")
    assert samples["image"].dtype == np.uint8 and samples["image"].shape[-1] == 3


@pytest.mark.slow
@pytest.mark.parametrize("workers, to_group", [(0, False), (1, True)])
def test_sigterm_saves_and_exits_cleanly(tmp_path, tiny_scenes, workers, to_group):
    """SIGTERM to the trainer, and to its whole process group (as a job manager or `kill -- -PGID`
    sends it, reaching the data-loading workers too), both end in a saved, resumable "stopped" run."""
    import os
    import signal
    import subprocess
    import time

    from .conftest import PYTHON, REPO, TINY, subprocess_env

    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "core.train", "--config", str(TINY), "--run-dir", str(run),
           f"data.root={tiny_scenes}", "train.max_iters=10000", "train.log_every=1",
           f"data.num_workers={workers}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=to_group)
    try:
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.2)
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    status = _status(run)
    assert status["state"] == "stopped", status
    step = status["step"]
    assert 1 <= step < 10000
    assert json.loads((run / "train_state.json").read_text())["step"] == step
    # and it continues from there
    assert _run(["--resume", str(run), f"train.max_iters={step + 1}"]) == 0
    assert _status(run)["state"] == "finished" and _status(run)["step"] == step + 1


@pytest.mark.slow
def test_bad_config_and_missing_data_fail_in_one_line(tmp_path, capsys):
    from .conftest import TINY

    run = tmp_path / "run"
    run.mkdir()
    assert _run(["--config", str(TINY), "--run-dir", str(run), "train.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m core.train: error: ") and "train.no_such_key" in err
    assert "Traceback" not in err
    assert _status(run)["state"] == "failed" and "no_such_key" in _status(run)["message"]
    assert _run(["--config", str(TINY), "--run-dir", str(run), f"data.root={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and "Traceback" not in err
    assert _status(run)["state"] == "failed"


@pytest.mark.slow
def test_a_folder_that_holds_a_run_is_never_overwritten(tmp_path, capsys):
    from .conftest import TINY

    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (run / "status.json").write_text('{"state": "finished", "step": 1}')
    assert _run(["--config", str(TINY), "--run-dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert _status(run)["state"] == "finished"
    assert _run(["--resume", str(tmp_path / "nothing")]) == 2
    assert "cannot resume" in capsys.readouterr().err
