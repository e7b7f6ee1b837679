"""The converter for the authors' checkpoints. The key layout below is written out from the
authors' model files (rulixiang/afa: wetr/mix_transformer.py, wetr/segformer_head.py,
wetr/model_attn_aff.py), independently of our modules."""

import pytest
import torch

from core.convert import VOC_CLASSES, convert_official_afa, main
from core.loading import load_model

B0 = {"dims": [32, 64, 160, 256], "heads": [1, 2, 5, 8], "depths": [2, 2, 2, 2]}
SR = [8, 4, 2, 1]


def authors_state_dict(arch=B0, num_classes=21, embed=256, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    shapes = {}
    in_ch = 3
    for i, d in enumerate(arch["dims"], start=1):
        k = 7 if i == 1 else 3
        shapes[f"encoder.patch_embed{i}.proj.weight"] = (d, in_ch, k, k)
        shapes[f"encoder.patch_embed{i}.proj.bias"] = (d,)
        shapes[f"encoder.patch_embed{i}.norm.weight"] = (d,)
        shapes[f"encoder.patch_embed{i}.norm.bias"] = (d,)
        for j in range(arch["depths"][i - 1]):
            p = f"encoder.block{i}.{j}."
            shapes.update(
                {
                    p + "norm1.weight": (d,),
                    p + "norm1.bias": (d,),
                    p + "attn.q.weight": (d, d),
                    p + "attn.q.bias": (d,),
                    p + "attn.kv.weight": (2 * d, d),
                    p + "attn.kv.bias": (2 * d,),
                    p + "attn.proj.weight": (d, d),
                    p + "attn.proj.bias": (d,),
                    p + "norm2.weight": (d,),
                    p + "norm2.bias": (d,),
                    p + "mlp.fc1.weight": (4 * d, d),
                    p + "mlp.fc1.bias": (4 * d,),
                    p + "mlp.dwconv.dwconv.weight": (4 * d, 1, 3, 3),
                    p + "mlp.dwconv.dwconv.bias": (4 * d,),
                    p + "mlp.fc2.weight": (d, 4 * d),
                    p + "mlp.fc2.bias": (d,),
                }
            )
            if SR[i - 1] > 1:
                s = SR[i - 1]
                shapes.update(
                    {
                        p + "attn.sr.weight": (d, d, s, s),
                        p + "attn.sr.bias": (d,),
                        p + "attn.norm.weight": (d,),
                        p + "attn.norm.bias": (d,),
                    }
                )
        shapes[f"encoder.norm{i}.weight"] = (d,)
        shapes[f"encoder.norm{i}.bias"] = (d,)
        shapes[f"decoder.linear_c{i}.proj.weight"] = (embed, d)
        shapes[f"decoder.linear_c{i}.proj.bias"] = (embed,)
        in_ch = d
    shapes.update(
        {
            "decoder.linear_fuse.conv.weight": (embed, 4 * embed, 1, 1),
            "decoder.linear_fuse.bn.weight": (embed,),
            "decoder.linear_fuse.bn.bias": (embed,),
            "decoder.linear_fuse.bn.running_mean": (embed,),
            "decoder.linear_fuse.bn.running_var": (embed,),
            "decoder.linear_pred.weight": (num_classes, embed, 1, 1),
            "decoder.linear_pred.bias": (num_classes,),
            "attn_proj.weight": (1, 2 * arch["heads"][-1], 1, 1),
            "attn_proj.bias": (1,),
            "classifier.weight": (num_classes - 1, arch["dims"][-1], 1, 1),
        }
    )
    sd = {k: torch.randn(v, generator=gen) * 0.05 for k, v in shapes.items()}
    sd["decoder.linear_fuse.bn.running_var"] = sd["decoder.linear_fuse.bn.running_var"].abs() + 0.5
    sd["decoder.linear_fuse.bn.num_batches_tracked"] = torch.tensor(1234)
    return sd


def test_every_weight_lands_in_place(tmp_path):
    sd = authors_state_dict()
    src = tmp_path / "afa_voc.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, src)  # as saved from a DDP-wrapped model
    out = convert_official_afa(src, tmp_path / "afa.safetensors", backbone="mit_b0")
    model = load_model(out, device="cpu")
    ours = model.state_dict()
    assert set(ours) == set(sd)
    for key, value in sd.items():
        assert torch.equal(ours[key], value), key
    assert model.classes == VOC_CLASSES and model.kind == "afa"
    assert model.meta["model"]["strides"] == [4, 2, 2, 1]
    # the converted model runs end to end and the affinity head reads 2 blocks x 8 heads
    out = model(torch.randn(1, 3, 64, 64))
    assert out.seg.shape == (1, 21, 16, 16) and out.affinity.shape == (1, 16, 16)


def test_wrong_backbone_and_bad_files(tmp_path, capsys):
    src = tmp_path / "afa.pth"
    torch.save(authors_state_dict(), src)
    with pytest.raises(ValueError, match="is --backbone right"):
        convert_official_afa(src, tmp_path / "x.safetensors", backbone="mit_b1")
    assert not (tmp_path / "x.safetensors").exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    assert main(["official-afa", str(junk), str(tmp_path / "y.safetensors"), "--backbone", "mit_b0"]) == 2
    err = capsys.readouterr().err
    assert "not a readable PyTorch" in err and "weights_only" not in err and err.count("\n") == 1
    torch.save({"encoder.x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="classifier.weight"):
        convert_official_afa(tmp_path / "other.pth", tmp_path / "z.safetensors", backbone="mit_b0")


def test_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    src = tmp_path / "evil.pth"
    torch.save({"classifier.weight": torch.zeros(20, 256, 1, 1), "x": Evil()}, src)
    with pytest.raises(ValueError, match="pickled Python objects .* never loaded") as err:
        convert_official_afa(src, tmp_path / "e.safetensors", backbone="mit_b0")
    assert "weights_only=False" not in str(err.value)


def test_export_fp16_and_encoder_only(tmp_path):
    from core.checkpoint import save_checkpoint
    from core.config import load_config
    from core.convert import export_checkpoint
    from core.models.registry import create_model

    cfg = load_config(None, ["model.backbone=mit_b0", "model.num_classes=3"])
    torch.manual_seed(0)
    model = create_model(cfg, classes=["background", "a", "b"]).eval()
    meta = {"model": cfg["model"], "classes": model.classes, "mean": model.mean, "std": model.std, "step": 7}
    full = save_checkpoint(tmp_path / "full.safetensors", model.state_dict(), meta)
    small = export_checkpoint(full, tmp_path / "small.safetensors", fp16=True)
    assert small.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(1, 3, 64, 64)
    a, b = model(x), load_model(small, device="cpu")(x)
    assert (
        torch.allclose(a.logits, b.logits, atol=5e-2)
        and (a.seg.argmax(1) == b.seg.argmax(1)).float().mean() > 0.95
    )
    enc = export_checkpoint(full, tmp_path / "enc.safetensors", encoder_only=True)
    cfg2 = load_config(None, ["model.backbone=mit_b0", "model.num_classes=5", f"model.pretrained={enc}"])
    fresh = create_model(cfg2)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[key], value), key
    assert main(["export", str(tmp_path / "nope.safetensors"), str(tmp_path / "x.safetensors")]) == 2
