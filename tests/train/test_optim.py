"""Optimiser groups (frozen encoder norms, 10x heads) and the warm-up + poly schedule."""

from __future__ import annotations

import pytest
import torch

from core.config import load_config
from core.models.registry import create_model
from core.optim import WarmupPoly, build_optimizer


@pytest.fixture(scope="module")
def cfg():
    return load_config("core/configs/tiny.yaml")


def test_groups_norm_frozen_heads_10x(cfg):
    torch.manual_seed(0)
    model = create_model(cfg)
    opt = build_optimizer(model, cfg["optim"])
    groups = {g["name"]: g for g in opt.param_groups}
    lr = cfg["optim"]["lr"]
    assert groups["encoder"]["lr"] == pytest.approx(lr)
    assert groups["encoder"]["weight_decay"] == pytest.approx(0.01)
    assert groups["encoder_norm"]["lr"] == 0.0
    assert groups["encoder_norm"]["weight_decay"] == 0.0
    assert groups["heads"]["lr"] == pytest.approx(10 * lr)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    norm_ids = {id(p) for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)
                for p in m.parameters(recurse=False)}
    assert norm_ids and norm_ids == {id(p) for p in groups["encoder_norm"]["params"]}
    head_ids = {id(p) for n, p in model.named_parameters() if not n.startswith("encoder.")}
    assert head_ids == {id(p) for p in groups["heads"]["params"]}

    # one real step: norm parameters do not move, the others do
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    WarmupPoly.from_config(cfg).apply(opt, 5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        assert moved == (id(p) not in norm_ids), name


def test_schedule_values_by_hand():
    s = WarmupPoly(warmup_iters=1500, warmup_ratio=1e-6, max_iters=20000, power=1.0)
    assert s.multiplier(0) == pytest.approx(1e-6)
    assert s.multiplier(750) == pytest.approx(1 - 0.5 * (1 - 1e-6))  # halfway up: 0.5000005
    assert s.multiplier(1499) == pytest.approx(1 - (1 / 1500) * (1 - 1e-6))
    assert s.multiplier(1500) == pytest.approx(0.925)  # decay counts from step 0: 1 - 1500/20000
    assert s.multiplier(10000) == pytest.approx(0.5)
    assert s.multiplier(19999) == pytest.approx(5e-5)
    assert s.multiplier(20000) == 0.0
    squared = WarmupPoly(warmup_iters=10, warmup_ratio=0.1, max_iters=100, power=2.0)
    assert squared.multiplier(5) == pytest.approx(0.55)  # 1 - 0.5 * 0.9
    assert squared.multiplier(50) == pytest.approx(0.25)
    no_warmup = WarmupPoly(warmup_iters=0, warmup_ratio=1e-6, max_iters=4, power=1.0)
    assert [no_warmup.multiplier(i) for i in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_schedule_sets_every_group_from_its_base_rate():
    w = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [w], "lr": 1.0, "initial_lr": 1.0},
                             {"params": [b], "lr": 10.0, "initial_lr": 10.0}])
    s = WarmupPoly(warmup_iters=4, warmup_ratio=0.0, max_iters=8, power=1.0)
    s.apply(opt, 2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 5.0])
    s.apply(opt, 6)  # pure function of the step: no drift from earlier calls
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 2.5])
