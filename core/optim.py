"""AdamW with the paper's parameter groups, and the warm-up + polynomial learning-rate schedule.

Groups (afa-spec.md, section 2): the encoder at ``optim.lr``; the encoder's normalisation layers
at ``optim.norm_lr`` (0 = frozen, the paper) without weight decay; classifier, affinity head and
decoder at ``optim.lr x optim.head_lr_mult``.
"""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
               nn.modules.instancenorm._InstanceNorm)


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{"encoder", "encoder_norm", "heads"}`` lists of trainable parameters: the parameters of
    normalisation layers inside ``model.encoder`` are ``encoder_norm``, the rest of the encoder is
    ``encoder``, everything outside it (classifier, affinity head, decoder) is ``heads``."""
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    norm_ids = {
        id(p)
        for module in (encoder.modules() if encoder is not None else ())
        if isinstance(module, _NORM_TYPES)
        for p in module.parameters(recurse=False)
    }
    groups: dict[str, list[nn.Parameter]] = {"encoder": [], "encoder_norm": [], "heads": []}
    for p in model.parameters():
        if p.requires_grad:
            key = "encoder_norm" if id(p) in norm_ids else "encoder" if id(p) in encoder_ids else "heads"
            groups[key].append(p)
    return groups


def build_optimizer(model: nn.Module, optim_cfg: dict) -> AdamW:
    """AdamW over the three groups; each group remembers its base rate as ``initial_lr``."""
    lr = float(optim_cfg["lr"])
    wd = float(optim_cfg["weight_decay"])
    settings = {
        "encoder": (lr, wd),
        "encoder_norm": (float(optim_cfg["norm_lr"]), 0.0),
        "heads": (lr * float(optim_cfg["head_lr_mult"]), wd),
    }
    groups = []
    for name, params in split_parameters(model).items():
        if not params:
            continue
        group_lr, group_wd = settings[name]
        groups.append({"params": params, "name": name, "lr": group_lr, "initial_lr": group_lr,
                       "weight_decay": group_wd})
    return AdamW(groups, lr=lr, betas=tuple(optim_cfg["betas"]), weight_decay=wd, eps=1e-8)


class WarmupPoly:
    """Learning-rate multiplier as a pure function of the 0-based iteration ``step``.

    The same definition as the authors' PolyWarmupAdamW, with W = warmup_iters, r = warmup_ratio,
    T = max_iters, p = power:

        step < W:       mult = 1 - (1 - step / W) * (1 - r)      (linear from r to 1)
        W <= step < T:  mult = (1 - step / T) ** p               (decay counted from step 0, not
                                                                  from W, so mult drops from 1 to
                                                                  1 - W/T when warm-up ends)
        step >= T:      mult = 0

    Iteration ``step`` is trained with ``lr = initial_lr * mult(step)``.
    """

    def __init__(self, warmup_iters: int, warmup_ratio: float, max_iters: int, power: float):
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.max_iters = int(max_iters)
        self.power = float(power)

    @classmethod
    def from_config(cls, cfg: dict) -> WarmupPoly:
        o = cfg["optim"]
        return cls(o["warmup_iters"], o["warmup_ratio"], cfg["train"]["max_iters"], o["power"])

    def multiplier(self, step: int) -> float:
        if step < self.warmup_iters:
            return 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
        if step < self.max_iters:
            return (1.0 - step / self.max_iters) ** self.power
        return 0.0

    def apply(self, optimizer: AdamW, step: int) -> float:
        """Set every group's rate for iteration ``step``; return the multiplier."""
        mult = self.multiplier(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * mult
        return mult
