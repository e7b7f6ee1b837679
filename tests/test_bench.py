"""The benchmark's reference arrangement computes the same labels as the fast path, and the
benchmark command prints one JSON object (timings themselves are not asserted)."""

import json

import torch

from core.bench import _synthetic_batch, main
from core.bench_reference import (
    ReferencePAR,
    _reference_encoder,
    reference_forward,
    reference_pseudo_labels,
    reference_training_step,
)
from core.config import load_config
from core.method.affinity import radius_mask
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
        model, batch, cfg, ReferencePAR(cfg["par"]["dilations"], cfg["par"]["iters"]), radius_mask(6, 6, 8)
    )
    for name in ("cam_label", "par_label", "aff_label"):
        agree = (ours[name] == ref[name]).float().mean().item()
        assert agree > 0.995, (name, agree)


def test_reference_network_is_the_same_arithmetic():
    """The authors' arrangement of the encoder and forward computes our model's outputs; its score
    copies are our raw scores, pooled over the query grid in the reduced blocks as theirs are."""
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=5"])
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x, all_attention=True)
        feats, copies = _reference_encoder(model.encoder, x)
        logits, seg, _, aff = reference_forward(model, x)
        cam, aff_cam = reference_forward(model, x, cam_only=True)
    for f, ref in zip(ours.enc.features, feats):
        assert (f - ref).abs().max().item() < 1e-4
    assert torch.allclose(copies[7], ours.enc.scores[7], atol=1e-4)  # stage 4: no reduction
    pooled = torch.nn.functional.avg_pool2d(ours.enc.scores[0][0, 0].T.reshape(-1, 16, 24), 8)  # sr 8
    assert torch.allclose(copies[0][0, 0], pooled.reshape(6, 6).T, atol=1e-3)
    for name, value in (("logits", logits), ("seg", seg), ("affinity", aff), ("cam", cam)):
        assert (getattr(ours, name) - value).abs().max().item() < 1e-4, name
    assert torch.equal(aff, aff_cam)


def test_reference_training_step_back_propagates():
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=5"])
    torch.manual_seed(0)
    model = create_model(cfg).train()
    batch = _synthetic_batch(2, 64, 5, torch.device("cpu"), cfg)
    masks = {"train": radius_mask(4, 4, 8), "infer": radius_mask(6, 6, 8)}
    loss = reference_training_step(model, batch, cfg, ReferencePAR(), masks)
    loss.backward()  # may be NaN, as theirs, when a label has no foreground or no background pixel
    assert loss.shape == () and loss.requires_grad
    for p in (model.attn_proj, model.decoder.linear_pred, model.encoder.patch_embed1.proj):
        assert p.weight.grad is not None


def test_bench_prints_one_json_object(capsys):
    assert main(["--only", "par", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"par_s", "par_ref_s", "par_speedup", "torch", "threads", "device"} <= set(result)
    assert result["par_s"] > 0 and result["par_ref_s"] > 0


def test_step_peak_memory_in_a_fresh_process():
    """The CPU peak is measured in a spawned process (its first step); it is positive and grows
    with the batch. The shapes are large enough that the activations (about 60 MB apart) dominate
    the noise of the process's own start (a few MB: at crop 64, batch 1 against 4 differed by
    less than that and once came out in the wrong order)."""
    from core.bench import step_peak_mb

    small = step_peak_mb(torch.device("cpu"), crop=128, batch_size=1, backbone="mit_b0", num_classes=3)
    large = step_peak_mb(torch.device("cpu"), crop=128, batch_size=8, backbone="mit_b0", num_classes=3)
    assert 0 < small and large - small > 20  # MB: batch 8 holds 7 more crops of activations


def test_bench_scenes_crop_is_validated(capsys):
    assert main(["--only", "scenes", "--scenes-crop", "8"]) == 2
    assert "--scenes-crop must be in [32, 2048]" in capsys.readouterr().err
