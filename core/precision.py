"""Numeric precision of the model passes: ``fp32`` (exact), ``bf16`` or ``fp16`` autocast, or ``auto``.

``auto`` picks the fastest setting the hardware runs natively:
- CUDA: bf16 on devices with native bf16 (compute capability 8.0 and newer), fp16 with a
  gradient scaler where only fp16 has tensor cores (7.x), fp32 elsewhere;
- CPU: bf16 where the CPU has native bf16 instructions (AVX512-BF16 or AMX), fp32 elsewhere
  (without them bf16 is emulated and slower than fp32);
- any other device: fp32.

What runs in reduced precision, part by part (the rest stays fp32, and why):
- the encoder's convolutions, linears and SDPA attention, and the decoder: autocast (most of
  the time of a step; these tolerate bf16 as any transformer does);
- the blocks whose attention maps are asked for (the affinity blocks, the head viewer): their
  q.k^T, softmax and attention product in fp32 (``mit.py``): the raw scores are the affinity
  head's input and the softmax rows feed the MHSA baseline, and bf16's 8-bit mantissa would
  blur both; only a few small N x N products, so it costs little;
- the classifier / CAM 1x1 conv and the affinity head (``afa.py``): fp32 on the (possibly bf16)
  features, since the CAM is normalised and thresholded at 0.35 / 0.45 / 0.55 and the affinity
  is raised to a power and normalised; both are tiny;
- everything after the model (multi-scale merge, PAR, random walk, losses): fp32, outside
  autocast. They are element-wise or small, so reduced precision would not be faster on a CPU,
  and PAR's ten iterations and the random walk's column normalisation accumulate rounding.
The model's outputs (``AFAOutput``) are float32 whatever the setting.

TF32 on CUDA: the model passes run with TF32 off (``ieee_fp32``), for matrix products and cuDNN
convolutions alike (PyTorch allows TF32 convolutions by default). Under ``auto`` on a GPU with
TF32 (compute capability 8.0+) the heavy work already runs in bf16, so TF32 would only touch the
parts kept in fp32 on purpose; under ``fp32`` it would make the exact path inexact.
Other GPU paths: ``F.scaled_dot_product_attention`` picks the flash / memory-efficient kernels by
itself; fp16 trains with ``torch.amp.GradScaler`` (``core/train.py``); the loader pins memory and
copies batches with ``non_blocking=True`` on CUDA.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved setting: ``name`` is fp32, bf16 or fp16 on ``device_type``."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.name, torch.float32)

    @property
    def grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.name == "fp16"

    def autocast(self):
        """Context for the model passes: autocast to ``dtype`` (nothing for fp32); on CUDA also
        IEEE fp32 for the fp32 ops inside (no TF32), see the module docstring."""
        stack = contextlib.ExitStack()
        if self.device_type == "cuda":
            stack.enter_context(ieee_fp32())
        if self.name != "fp32":
            stack.enter_context(torch.autocast(self.device_type, dtype=self.dtype))
        return stack


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (torch's own check, else the Linux cpuinfo flags)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:  # pragma: no cover - a torch built without the check
                pass
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def auto_precision(device: torch.device) -> str:
    """What ``auto`` means on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16"
        return "fp16" if major >= 7 else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


@functools.lru_cache(maxsize=16)
def _resolve(setting: str, device: torch.device) -> Precision:
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    name = auto_precision(device) if setting == "auto" else setting
    return Precision(name, device.type)


def resolve_precision(setting: str | Precision, device: torch.device | str) -> Precision:
    """``auto`` / ``fp32`` / ``bf16`` / ``fp16`` (or an already resolved ``Precision``) on ``device``."""
    if isinstance(setting, Precision):
        return setting
    return _resolve(str(setting), torch.device(device))


@contextlib.contextmanager
def ieee_fp32():
    """No TF32 inside: fp32 matrix products and cuDNN convolutions in full fp32; restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def full_precision(device_type: str):
    """Inside an autocast region, run the enclosed ops in the dtype of their inputs (fp32 parts);
    nothing to do (and no cost) when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
