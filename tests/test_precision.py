import pytest
import torch

from core.config import ConfigError, load_config
from core.precision import Precision, auto_precision, cpu_has_native_bf16, full_precision, resolve_precision


def test_explicit_settings_and_auto_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == Precision("fp32", "cpu")
    assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    assert resolve_precision("fp16", cpu).dtype == torch.float16
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert auto_precision(cpu) == resolve_precision("auto", cpu).name == expected
    assert auto_precision(torch.device("meta")) == "fp32"  # any other device: the exact path
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", cpu)


def test_only_fp16_uses_a_grad_scaler():
    assert [Precision(n, "cpu").grad_scaler for n in ("fp32", "bf16", "fp16")] == [False, False, True]


def test_autocast_contexts():
    x = torch.randn(4, 4)
    with Precision("fp32", "cpu").autocast():
        assert (x @ x).dtype == torch.float32
    with Precision("bf16", "cpu").autocast():
        assert (x @ x).dtype == torch.bfloat16
        with full_precision("cpu"):  # the parts that stay fp32 inside an autocast region
            assert (x @ x).dtype == torch.float32
        assert (x @ x).dtype == torch.bfloat16


def test_cuda_passes_run_without_tf32_and_restore_the_flags():
    """Checked on a CPU machine through the flags only (the autocast of a CUDA Precision is not
    entered here: it needs a GPU)."""
    from core.precision import ieee_fp32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    try:
        with ieee_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_config_precision_and_the_legacy_amp_key(tmp_path):
    assert load_config()["train"]["precision"] == "auto"
    assert "amp" not in load_config()["train"]
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=half"])
    with pytest.raises(ConfigError, match="unknown config key 'train.amp'"):
        load_config(None, ["train.amp=true"])  # only old files are translated, not new overrides
    for amp, precision in (("false", "fp32"), ("true", "auto")):
        path = tmp_path / f"run_{amp}.yaml"  # a run folder's config.yaml written before the change
        path.write_text(f"train:\n  amp: {amp}\n  max_iters: 5\n")
        cfg = load_config(path)
        assert cfg["train"]["precision"] == precision and cfg["train"]["max_iters"] == 5
        assert load_config(path, ["train.precision=bf16"])["train"]["precision"] == "bf16"
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  amp: false\n  precision: bf16\n")
    assert load_config(both)["train"]["precision"] == "bf16"
