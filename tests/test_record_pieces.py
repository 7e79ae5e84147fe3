"""The CIFAR-100 speedrun record's pieces, each against the record script's own formula (crisostomi/
cifar100-speedrun, train_cifar100_resnet_muon_exp.py): warmup-stable-decay, Muon's momentum warm-up, Muon's
"decay" update, progressive resizing, the ResNet-D block, and the BatchNorm-shift rate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifarkit.config import load_config
from cifarkit.data.loader import resize_for_step
from cifarkit.models import create_model
from cifarkit.optim import build_optimizer, set_lr, set_muon_momentum
from cifarkit.optim.muon import orthogonalize
from cifarkit.schedules import lr_at

RECORD = load_config("record100")


def record_wsd(step: int, total: int, warmup_frac: float = 0.05, cooldown_frac: float = 0.4) -> float:
    """schedule_multiplier(..., "wsd", ...) as the record's script writes it."""
    warmup, cooldown = warmup_frac * total, cooldown_frac * total
    if warmup > 0 and step < warmup:
        return step / warmup
    start = total - cooldown
    if cooldown > 0 and step >= start:
        return max(0.0, (total - step) / cooldown)
    return 1.0


@pytest.mark.parametrize("total", [301, 1290])
def test_warmup_stable_decay_is_the_records(total):
    for step in range(total):
        expected = record_wsd(step, total)
        # cifarkit's warm-up is floor(5% of the run) steps: the record's real-valued length differs by under a step
        if step < int(0.05 * total) + 1:
            continue
        assert lr_at(step, 1.0, total, RECORD.schedule) == pytest.approx(expected, abs=1e-9), step


def test_muon_momentum_warms_up_as_the_records():
    model = create_model("resnet_d", 100, widths=[8, 16, 32], blocks=[1, 1, 1])
    optimizer = build_optimizer(model, RECORD.optim, 1024)
    muon = [g for g in optimizer.param_groups if g.get("orthogonalize")][0]
    for step, total in ((0, 100), (7, 100), (15, 100), (60, 100)):
        set_muon_momentum(optimizer, step, total, RECORD.optim)
        expected = 0.85 + (0.95 - 0.85) * min(1.0, step / (0.15 * total))
        assert muon["momentum"] == pytest.approx(expected)
    others = [g for g in optimizer.param_groups if not g.get("orthogonalize")]
    assert all(g["momentum"] == 0.9 for g in others)  # SGD's momentum never changes


def test_the_records_groups_and_rates():
    model = create_model("resnet_d", 100, widths=[8, 16, 32], blocks=[1, 1, 1])
    optimizer = build_optimizer(model, RECORD.optim, 1024)
    set_lr(optimizer, 0.02)  # the schedule's peak
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["muon_filters"]["lr"] == pytest.approx(0.055)
    assert any(p is model.head.weight for p in groups["muon_filters"]["params"])  # the head takes Muon steps
    assert groups["norm_shifts"]["lr"] == pytest.approx(0.16)  # BatchNorm shifts at 8x the SGD rate
    assert groups["biases_and_norms"]["lr"] == pytest.approx(0.02)
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in groups["norm_shifts"]["params"]} == shifts


def test_a_decay_style_muon_step_is_the_records():
    """One step from the same state: decoupled decay lr*wd, then the orthogonalized Nesterov direction scaled by
    sqrt(max(1, fan_out / fan_in)) (the record's Muon.step, with its bf16/fp32 Newton-Schulz here in fp32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, bias=False), nn.Flatten(), nn.Linear(64, 10, bias=False))
    config = load_config("record100").optim
    optimizer = build_optimizer(model, config, 1024)
    optimizer.ns_dtype = torch.float32
    conv = model[0].weight
    before = conv.detach().clone()
    conv.grad = torch.randn_like(conv)
    set_lr(optimizer, 0.02)
    set_muon_momentum(optimizer, 0, 100, config)  # momentum 0.85 at the start
    optimizer.step()
    lr, wd, momentum = 0.055, 2e-4, 0.85
    buffer = conv.grad.clone()  # the momentum buffer after its first update
    update = orthogonalize((conv.grad + momentum * buffer).reshape(64, -1), dtype=torch.float32).view_as(conv)
    scale = math.sqrt(max(1.0, 64 / 27))
    expected = before * (1 - lr * wd) - lr * scale * update
    torch.testing.assert_close(conv.detach(), expected, rtol=1e-5, atol=1e-6)


def test_progressive_resizing_covers_the_first_half_only():
    x = torch.randn(4, 3, 32, 32)
    augment = RECORD.augment
    assert resize_for_step(x, 0, 100, augment).shape[-2:] == (20, 20)
    assert resize_for_step(x, 49, 100, augment).shape[-2:] == (20, 20)
    assert resize_for_step(x, 50, 100, augment) is x  # full size from the half-way step on


def test_resnet_d_takes_any_size_and_its_downsampling_skip_sees_every_pixel():
    model = create_model("resnet_d", 100).eval()
    assert sum(p.numel() for p in model.parameters()) == 2_800_704
    for size in (20, 32):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 100)
    skip = model.body[2].skip  # the first block of the second stage
    assert isinstance(skip[0], nn.AvgPool2d) and skip[1].stride == (1, 1)
