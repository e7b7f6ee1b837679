"""DDP on two CPU processes (gloo): training keeps the replicas identical, evaluation shards images."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import PYTHON, REPO, TINY, subprocess_env


def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_scenes):
    run = tmp_path_factory.mktemp("ddp") / "run"
    # eval_limit=3: rank 0 evaluates images 0 and 2, rank 1 image 1; cam_iters=2 leaves the decoder
    # without gradient in the first steps (find_unused_parameters)
    proc = _torchrun("-m", "core.train", "--config", str(TINY), "--run-dir", str(run),
                     f"data.root={tiny_scenes}", "train.max_iters=4", "train.eval_every=4",
                     "train.eval_limit=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


@pytest.mark.slow
def test_two_process_training_keeps_replicas_identical(ddp_run):
    status = json.loads((ddp_run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4
    replicas = json.loads((ddp_run / "replicas.json").read_text())
    assert replicas["step"] == 4 and len(replicas["digests"]) == 2
    assert replicas["digests"][0] == replicas["digests"][1]
    state = json.loads((ddp_run / "train_state.json").read_text())
    assert state["world_size"] == 2
    evals = [json.loads(x) for x in (ddp_run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 1 and evals[0]["step"] == 4
    assert json.loads((ddp_run / "eval" / "step_000004.json").read_text())["n_images"] == 3


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(ddp_run, tiny_scenes, tmp_path):
    ckpt = ddp_run / "checkpoint.safetensors"
    common = ["--checkpoint", str(ckpt), "--data", str(tiny_scenes), "--limit", "3", "--per-image"]
    proc = _torchrun("-m", "core.evaluate", *common, "--out", str(tmp_path / "ddp.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import torch

    from core.evaluate import main

    # one thread, as each torchrun rank has (OMP_NUM_THREADS=1): other thread counts sum in
    # another order, and a near-tie in a barely trained model's scores can then round either way
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    a = json.loads((tmp_path / "ddp.json").read_text())
    b = json.loads((tmp_path / "one.json").read_text())
    assert a["n_images"] == b["n_images"] == 3
    assert a["stages"] == b["stages"] and a["cls_f1"] == b["cls_f1"]
    assert len(a["per_image"]) == 3 and a["per_image"] == b["per_image"]  # gathered from both ranks
