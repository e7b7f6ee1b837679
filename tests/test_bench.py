"""The benchmark's reference arrangement computes the same labels as the fast path, and the
benchmark command prints one JSON object (timings themselves are not asserted)."""

import json

import torch

from core.bench import _synthetic_batch, main
from core.bench_reference import ReferencePAR, reference_pseudo_labels
from core.config import load_config
from core.method.par import apply_par, par_kernel
from core.models.registry import create_model
from core.step import pseudo_labels


def test_reference_par_equals_ours():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 40, 48, generator=g) * 255
    maps = torch.rand(1, 3, 40, 48, generator=g)
    ref = ReferencePAR(iters=5)(img, maps)
    ours = apply_par(par_kernel(img), maps, iters=5)
    assert torch.allclose(ref, ours, atol=1e-5)


def test_reference_step_gives_the_same_pseudo_labels():
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=5", "train.precision=fp32"])
    torch.manual_seed(0)
    model = create_model(cfg).eval()  # no drop path: both arrangements see the same CAMs
    batch = _synthetic_batch(2, 64, 5, torch.device("cpu"), cfg)
    ours = pseudo_labels(model, batch, cfg, use_afa=True)
    ref = reference_pseudo_labels(
        model, batch, cfg, ReferencePAR(cfg["par"]["dilations"], cfg["par"]["iters"])
    )
    for name in ("cam_label", "par_label", "aff_label"):
        agree = (ours[name] == ref[name]).float().mean().item()
        assert agree > 0.995, (name, agree)


def test_bench_prints_one_json_object(capsys):
    assert main(["--only", "par", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"par_s", "par_ref_s", "par_speedup", "torch", "threads", "device"} <= set(result)
    assert result["par_s"] > 0 and result["par_ref_s"] > 0
