import math

import pytest
import torch

from core.config import load_config
from core.models.registry import create_model
from core.step import training_step


def batch(b=2, size=64, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.full((b, 3, size, size), 50.0)
    mask = torch.zeros(b, size, size, dtype=torch.long)
    cls = torch.zeros(b, num_classes - 1)
    for i in range(b):
        k = i % (num_classes - 1)
        raw[i, :, 8:40, 12:44] = torch.tensor([200.0, 80.0, 40.0 + 60 * k]).view(3, 1, 1)
        mask[i, 8:40, 12:44] = k + 1
        cls[i, k] = 1
    raw = raw + torch.rand(raw.shape, generator=g) * 10
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[:, :, -6:] = False  # padding of the crop
    mask[~valid] = 255
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return {"image": (raw - mean) / std, "image_raw": raw, "cls_label": cls, "mask": mask, "valid": valid}


def make(overrides=()):
    cfg = load_config(
        None,
        [
            "model.backbone=mit_b0",
            "model.num_classes=4",
            "train.cam_iters=10",
            "train.aff_label_iters=20",
            "loss.reg_exact_max_pixels=2048",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    return create_model(cfg).train(), cfg


def grads(model):
    return {name: p.grad is not None and p.grad.abs().sum() > 0 for name, p in model.named_parameters()}


def test_classification_only_before_cam_iters():
    model, cfg = make()
    res = training_step(model, batch(), cfg, step=0)
    res.loss.backward()
    g = grads(model)
    assert set(res.logs) == {"loss", "loss_cls"} and math.isfinite(res.logs["loss"])
    assert g["classifier.weight"] and not any(v for k, v in g.items() if k.startswith("decoder."))
    assert not g["attn_proj.weight"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("step, target", [(15, "par_label"), (25, "aff_label")])
def test_full_step_every_loss_on(step, target, precision):
    model, cfg = make([f"train.precision={precision}"])
    b = batch()
    res = training_step(model, b, cfg, step=step)
    res.loss.backward()
    for key in ("loss_cls", "loss_seg", "loss_aff", "loss_reg"):
        assert key in res.logs and math.isfinite(res.logs[key]), key
    for key in ("cam", "par", "aff"):  # accuracy is NaN only when a label has no valid pixel
        all_ignored = bool((res.labels[f"{key}_label"] == 255).all())
        assert math.isfinite(res.logs[f"{key}_acc"]) != all_ignored, key
    w = cfg["loss"]
    total = (
        w["cls"] * res.logs["loss_cls"]
        + w["seg"] * res.logs["loss_seg"]
        + w["aff"] * res.logs["loss_aff"]
        + w["reg"] * res.logs["loss_reg"]
    )
    assert res.logs["loss"] == pytest.approx(total, rel=1e-5)
    g = grads(model)
    assert g["classifier.weight"] and g["attn_proj.weight"] and g["decoder.linear_pred.weight"]
    assert g["encoder.patch_embed1.proj.weight"]
    for name in ("cam_label", "par_label", "aff_label", "seg_pred"):
        lab = res.labels[name]
        assert lab.shape == (2, 64, 64)
        if name != "seg_pred":
            assert (lab[b["valid"] == 0] == 255).all()  # padding is ignored in every derived label
            allowed = {0, 255} | {int(k) + 1 for k in b["cls_label"].nonzero()[:, 1]}
            assert set(lab.unique().tolist()) <= allowed
    # the segmentation target switches to the AFA label after aff_label_iters
    assert res.logs["pseudo_acc"] == pytest.approx(res.logs[target.replace("_label", "_acc")], nan_ok=True)


def test_ablation_switches():
    model, cfg = make(["train.use_aff=false", "train.use_reg=false", "train.use_par=false"])
    res = training_step(model, batch(), cfg, step=30)
    assert "loss_aff" not in res.logs and "loss_reg" not in res.logs and "aff_label" not in res.labels
    assert res.logs["loss"] == pytest.approx(res.logs["loss_cls"] + 0.1 * res.logs["loss_seg"], rel=1e-5)


def test_supervised_and_cam_modes():
    model, cfg = make(["train.mode=supervised"])
    res = training_step(model, batch(), cfg, step=0)
    res.loss.backward()
    assert "loss_seg" in res.logs and grads(model)["decoder.linear_pred.weight"]
    cfg = load_config(
        None, ["model.name=cnn_cam", "model.backbone=resnet18", "train.mode=cam", "model.num_classes=4"]
    )
    cnn = create_model(cfg).train()
    res = training_step(cnn, batch(), cfg, step=100)
    assert set(res.logs) == {"loss", "loss_cls"}


def test_softmax_classification_for_single_label_pretraining():
    from core.config import ConfigError

    cfg = load_config(
        None, ["model.backbone=mit_b0", "model.num_classes=4", "train.mode=cam", "loss.cls_type=softmax",
               "train.precision=fp32"]  # compared with an fp32 forward below
    )
    torch.manual_seed(0)
    model = create_model(cfg).train()
    b = batch()  # one class per image
    torch.manual_seed(1)
    res = training_step(model, b, cfg, step=0)
    torch.manual_seed(1)
    logits = model(b["image"], with_decoder=False, with_affinity=False).logits
    assert res.logs["loss_cls"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, b["cls_label"].argmax(1)).item(), rel=1e-5
    )
    with pytest.raises(ConfigError, match="cls_type"):
        load_config(None, ["loss.cls_type=softmax"])  # not with the AFA mode


def test_tile_mosaic_round_trip_and_layout():
    from core.models.afa import split_mosaic, tile_mosaic

    x = torch.randn(18, 3, 5, 7)
    m = tile_mosaic(x, 3)
    assert m.shape == (2, 3, 15, 21)
    # image n*9 + i*3 + j is tile (i, j) of mosaic n
    assert torch.equal(m[1, :, 5:10, 14:21], x[9 + 1 * 3 + 2])
    assert torch.equal(split_mosaic(m, 3), x)
    with pytest.raises(ValueError, match="3x3 mosaics"):
        tile_mosaic(x[:10], 3)


def test_tile_classification_pools_each_tile_on_its_own():
    model, cfg = make(["train.mode=cam", "train.tile_grid=2", "train.batch_size=4"])
    model.eval()
    b = batch(b=4, size=64)
    from core.models.afa import split_mosaic, tile_mosaic

    with torch.no_grad():
        out = model(tile_mosaic(b["image"], 2), with_decoder=False, with_affinity=False, tiles=2)
        f4 = split_mosaic(out.enc.features[-1], 2)
        expected = model.classifier(torch.amax(f4, dim=(2, 3), keepdim=True)).flatten(1)
    assert out.logits.shape == (4, 3)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    # each tile has logits of its own (different content, different rows)
    assert not torch.allclose(out.logits[0], out.logits[1])
    model.train()
    empty = dict(b, cls_label=b["cls_label"].clone())
    empty["cls_label"][1] = 0  # an item-free tile: no class
    res = training_step(model, empty, cfg, step=0)
    res.loss.backward()
    assert set(res.logs) == {"loss", "loss_cls"} and math.isfinite(res.logs["loss"])
    assert model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.tile_grid=2", "train.mode=afa"], "train.mode=cam"),
        (["train.tile_grid=2", "train.mode=cam", "train.batch_size=6"], "multiple of 4"),
        (["train.tile_grid=2", "train.mode=cam", "train.batch_size=4", "loss.cls_type=softmax"],
         "multilabel"),
        (["train.tile_grid=0"], "positive integer"),
    ],
)
def test_tile_grid_is_validated(overrides, words):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_foreground_shares_worked_by_hand():
    """A 2x2 token grid (label 4x4 pixels, nearest-downsampled to every other pixel), radius 1 so
    every pair counts: tokens [bg, fg1, fg1, ignore] give positives (0,0), (1,1), (2,2), (1,2),
    (2,1) -- four of the five join foreground tokens."""
    from core.method.affinity import affinity_labels
    from core.step import _foreground_positive_share, _foreground_share

    tokens = torch.tensor([[0, 1], [1, 255]])
    label = tokens.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]  # (1, 4, 4)
    target = affinity_labels(label, (2, 2), radius=1)
    assert int((target == 1).sum()) == 5
    assert _foreground_positive_share(label, target, (2, 2), 255) == pytest.approx(4 / 5)
    assert _foreground_share(label, 255) == pytest.approx(8 / 16)  # ignore is not foreground
    assert _foreground_positive_share(label, torch.full_like(target, 255), (2, 2), 255) == 0.0


def test_full_step_logs_the_pseudo_labels_foreground():
    model, cfg = make()
    res = training_step(model, batch(), cfg, step=25)
    for key, name in (("par_fg", "par_label"), ("aff_fg", "aff_label")):
        lab = res.labels[name]
        assert res.logs[key] == pytest.approx(((lab > 0) & (lab != 255)).float().mean().item())
    assert 0.0 <= res.logs["aff_pos_fg"] <= 1.0
