import pytest
import torch
import torch.nn.functional as F

from core.config import load_config
from core.models.registry import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=5"])
    return create_model(cfg).eval()


def test_shapes_and_heads(model):
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.logits.shape == (2, 4)
    assert out.cam.shape == (2, 4, 4, 6)  # output stride 16
    assert out.seg.shape == (2, 5, 16, 24)  # stride 4
    assert out.affinity.shape == (2, 24, 24)
    assert len(out.enc.scores) == 8 and out.enc.block_stage == [0, 0, 1, 1, 2, 2, 3, 3]


def test_attention_on_demand_equals_the_all_explicit_path(model):
    """The default pass computes maps only for the affinity blocks (6, 7) and runs fused SDPA
    elsewhere; its outputs and the affinity head's input equal the all-explicit pass's."""
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast = model(x)
        explicit = model(x, all_attention=True)
        cam_only = model.forward_cam(x)
    assert model.attention_blocks() == [6, 7]
    assert [i for i, s in enumerate(fast.enc.scores) if s is not None] == [6, 7]
    assert all(s is not None for s in explicit.enc.scores)
    assert all(s is None for s in cam_only.enc.scores) and cam_only.affinity is None
    for name in ("logits", "cam", "seg", "affinity"):
        assert (getattr(fast, name) - getattr(explicit, name)).abs().max().item() < 1e-5, name
    assert (cam_only.cam - explicit.cam).abs().max().item() < 1e-5
    for i in (6, 7):
        assert torch.allclose(fast.enc.scores[i], explicit.enc.scores[i], atol=1e-4)


def test_outputs_are_float32_under_bf16_autocast(model):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.enc.features[0].dtype == torch.bfloat16  # the encoder did run in bf16
    assert {out.logits.dtype, out.cam.dtype, out.seg.dtype, out.affinity.dtype} == {torch.float32}
    assert out.enc.scores[7].dtype == out.enc.attn[7].dtype == torch.float32


def test_classifier_is_gmp_then_bias_free_conv_and_cam_is_the_same_conv(model):
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    f4 = out.enc.features[-1]
    w = model.classifier.weight[:, :, 0, 0]
    assert model.classifier.bias is None
    assert torch.allclose(out.logits, f4.amax(dim=(2, 3)) @ w.T, atol=1e-5)
    assert torch.allclose(out.cam, torch.einsum("bdhw,kd->bkhw", f4, w), atol=1e-5)


def test_affinity_head_by_hand(model):
    out = model(torch.randn(1, 3, 64, 64))
    s = torch.cat([out.enc.scores[6], out.enc.scores[7]], dim=1)[0]  # last two stage-4 blocks: (16, N, N)
    assert s.shape[0] == 16
    s = s + s.transpose(-1, -2)
    w, b = model.attn_proj.weight[0, :, 0, 0], model.attn_proj.bias[0]
    expected = torch.sigmoid(torch.einsum("c,cij->ij", w, s) + b)
    assert torch.allclose(out.affinity[0], expected, atol=1e-5)
    assert torch.allclose(out.affinity[0], out.affinity[0].T, atol=1e-6)
    assert (out.affinity > 0).all() and (out.affinity < 1).all()


def test_cam_forward_never_runs_the_decoder(model, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoder called")

    monkeypatch.setattr(model.decoder, "forward", boom)
    out = model.forward_cam(torch.randn(1, 3, 64, 64), with_affinity=True)
    assert out.seg is None and out.affinity is not None
    assert model(torch.randn(1, 3, 64, 64), with_decoder=False).seg is None


def test_param_groups_partition_and_freeze_norms(model):
    from core.optim import split_parameters

    groups = split_parameters(model)
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in groups["encoder_norm"])
    assert all("norm" not in names[id(p)] for p in groups["encoder"])
    heads = {names[id(p)].split(".")[0] for p in groups["heads"]}
    assert heads == {"classifier", "attn_proj", "decoder"}


def test_cnn_cam_model_has_only_the_classification_branch():
    cfg = load_config(
        None, ["model.name=cnn_cam", "model.backbone=resnet18", "train.mode=cam", "model.num_classes=3"]
    )
    net = create_model(cfg).eval()
    assert net.decoder is None and not hasattr(net, "attn_proj")
    out = net(torch.randn(1, 3, 64, 64))
    assert out.seg is None and out.affinity is None and out.cam.shape == (1, 2, 4, 4)
    assert F.adaptive_max_pool2d(out.enc.features[-1], 1).shape[1] == net.encoder.embed_dims[-1]


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown model name"):
        create_model({"model": {"name": "nope", "backbone": "mit_b0", "num_classes": 3}})
    with pytest.raises(ValueError, match="mit_b0"):
        create_model({"model": {"name": "afa", "backbone": "mit_b9", "num_classes": 3}})


def test_maps_of_the_first_rows_only(model):
    """map_rows=R: the maps and the affinity of the first R images (the CAM passes skip the flips'),
    equal to the full pass's rows; every image's outputs are unchanged."""
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(x, all_attention=True)
        part = model(x, all_attention=True, map_rows=2)
    assert part.affinity.shape[0] == 2 and all(s.shape[0] == 2 for s in part.enc.scores)
    assert torch.allclose(part.affinity, full.affinity[:2], atol=1e-6)
    for i in (0, 7):
        assert torch.allclose(part.enc.attn[i], full.enc.attn[i][:2], atol=1e-6)
    for name in ("logits", "cam", "seg"):
        assert (getattr(part, name) - getattr(full, name)).abs().max().item() < 1e-5, name


def _decoder_by_the_book(head, features):
    """The SegFormer head as written: project, upsample, concatenate, fuse, predict."""
    c1, c2, c3, c4 = features
    size = c1.shape[-2:]

    def up(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    ups = [up(head.linear_c4(c4)), up(head.linear_c3(c3)), up(head.linear_c2(c2))]
    cat = torch.cat([*ups, head.linear_c1(c1)], 1)
    return head.linear_pred(head.dropout(head.linear_fuse(cat)))


@pytest.mark.parametrize("training", [False, True])
def test_decoder_composed_projections_equal_the_concatenation(model, training):
    """W_i up(P_i c_i) = up((W_i P_i) c_i): the head maps each stage with the composed matrix and
    upsamples only the fused channels; outputs and gradients equal the head as written."""
    torch.manual_seed(0)
    feats = [torch.randn(2, d, s, s, requires_grad=True) for d, s in zip((32, 64, 160, 256), (16, 8, 4, 4))]
    import copy

    head = copy.deepcopy(model.decoder).train(training)  # batch norm statistics stay the fixture's
    results = []
    for fn in (head, lambda f: _decoder_by_the_book(head, f)):
        torch.manual_seed(1)  # the same dropout draw
        head.zero_grad()
        out = fn(feats)
        out.square().mean().backward()
        results.append((out.detach(), head.linear_fuse.conv.weight.grad.clone(), feats[3].grad.clone()))
        for f in feats:
            f.grad = None
    (out, g_fuse, g_c4), (ref, ref_fuse, ref_c4) = results
    assert out.shape == ref.shape == (2, 5, 16, 16)
    assert (out - ref).abs().max().item() < 1e-4
    assert torch.allclose(g_fuse, ref_fuse, atol=1e-5) and torch.allclose(g_c4, ref_c4, atol=1e-6)
