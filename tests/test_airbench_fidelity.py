"""The pieces of `fast10` that follow airbench94 (legacy/airbench94.py), each checked against what that file
does, and the bf16 choice of `train.amp = "auto"`."""

from __future__ import annotations

import math

import pytest
import torch

from cifarkit.config import load_config
from cifarkit.data.loader import AugmentConfig, DeviceLoader
from cifarkit.device import choose_autocast, cpu_bf16_flags
from cifarkit.models import create_model
from cifarkit.optim import build_optimizer, parameter_groups
from cifarkit.schedules import lr_at
from cifarkit.train.averaging import WeightAverager
from cifarkit.train.metrics import TTA_MODES, predict_logits

INTEL_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_auto_amp_uses_bf16_only_where_the_cpu_runs_it_natively():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cpu_bf16_flags(INTEL_AMX) == ["avx512_bf16", "amx_bf16"] and cpu_bf16_flags(ARM_BF16) == ["bf16"]
    dtype, why = choose_autocast("auto", cpu, INTEL_AMX)
    assert dtype is torch.bfloat16 and "avx512_bf16, amx_bf16" in why
    dtype, why = choose_autocast("auto", cpu, OLD_X86)
    assert dtype is None and "would be emulated" in why
    assert choose_autocast("auto", cpu, "")[0] is None  # nothing known: not assumed
    assert choose_autocast("auto", cuda, OLD_X86)[0] is torch.bfloat16
    assert choose_autocast("bf16", cpu, OLD_X86)[0] is torch.bfloat16  # asked for: given
    assert choose_autocast("off", cpu, INTEL_AMX)[0] is None


def test_lr_triangle_starts_at_a_fifth_of_the_peak_as_airbench():
    config = load_config("fast10")
    total = 426
    warmup = int(0.23 * total)
    base = config.optim.lr

    def airbench(step):  # legacy/airbench94.py get_lr, with its int() for the warm-up length
        if step < warmup:
            return 0.2 * (1 - step / warmup) + 1.0 * step / warmup
        frac = (step - warmup) / (total - warmup)
        return 1.0 * (1 - frac) + 0.07 * frac

    for step in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, 300, total - 1):
        assert lr_at(step, base, total, config.schedule) == pytest.approx(base * airbench(step)), step


def test_weight_decay_matches_airbench_per_step_decay():
    """airbench94: SGD on the summed loss with lr 11.5/kilostep and weight_decay wd/lr (wd = 0.0153 * 1024 /
    kilostep), so a step shrinks weights by lr * wd/lr = wd. Ours: mean loss, lr 1.5, our weight_decay."""
    c = load_config("fast10").optim
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    airbench_decay_per_step = 0.0153 * 1024 / kilostep
    assert c.lr * c.weight_decay == pytest.approx(airbench_decay_per_step, rel=1e-4)
    assert c.lr * c.norm_lr_scale * c.norm_weight_decay == pytest.approx(airbench_decay_per_step, rel=1e-4)
    assert c.lr == pytest.approx(11.5 / kilostep * 1024)


def test_whitening_bias_starts_at_zero_trains_like_a_kernel_and_freezes_after_three_epochs():
    model = create_model("airbench", 10, widths=[8, 16, 16])
    assert torch.count_nonzero(model.whiten.bias) == 0
    groups = {g["name"]: g for g in parameter_groups(model, 0.0, None, 1e-3, 64.0, 1e-5)}
    assert any(p is model.whiten.bias for p in groups["kernels"]["params"])
    assert groups["kernels"]["lr_scale"] == 1.0 and groups["kernels"]["weight_decay"] == 1e-3
    assert not any(p is model.whiten.bias for p in groups["biases_and_norms"]["params"])
    assert model.frozen_parameters(2) == [] and model.frozen_parameters(3) == [model.whiten.bias]


def test_final_pool_is_a_global_max_over_the_3x3_map_as_airbench():
    """airbench94's MaxPool2d(3) meets a 3x3 map (32 -> 31 by the unpadded whitening conv -> 15 -> 7 -> 3), so it
    is a global max: both pools give the same logits on CIFAR-sized input."""
    torch.manual_seed(0)
    model = create_model("airbench", 10, widths=[8, 16, 16]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.layers[:4](model.whiten(x)).shape == (2, 16, 3, 3)
    global_pool = create_model("airbench", 10, widths=[8, 16, 16], final_pool="global").eval()
    global_pool.load_state_dict(model.state_dict())
    assert torch.equal(model(x), global_pool(x))


def test_alternating_flips_show_every_image_both_ways_in_two_epochs():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    images[:, :, :, 0] = 255  # a left edge, so a flip is visible
    config = AugmentConfig(pad=0, flip=True, flip_mode="alternate")
    loader = DeviceLoader(images, torch.arange(8), 8, torch.nn.Identity(), config, seed=3)

    def orientation_by_image():
        x, y = loader.next_batch()
        return {int(label): bool(xi[0, 0, 0] != 255) for xi, label in zip(x, y, strict=True)}

    first, second, third = orientation_by_image(), orientation_by_image(), orientation_by_image()
    assert all(first[i] != second[i] for i in range(8)) and first == third
    assert 0 < sum(first.values()) < 8  # a random start for each image


def test_lookahead_averages_batchnorm_statistics_too():
    model = create_model("airbench", 10, widths=[8, 16, 16])
    averager = WeightAverager(model, decay=0.5, every=1, lookahead=True)
    norm = model.layers[1].norm1
    before = norm.running_mean.clone()
    norm.running_mean.add_(2.0)
    averager.update(model, 0, 1)
    assert torch.allclose(norm.running_mean, before + 1.0)  # halfway, and the live model is reset to it


def test_translate_tta_is_airbench_level_two():
    model = create_model("airbench", 10, widths=[8, 16, 16]).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")

        def mirror(v):
            return 0.5 * model(v) + 0.5 * model(v.flip(-1))

        expected = 0.5 * mirror(x) + 0.5 * torch.stack([mirror(padded[:, :, :32, :32]),
                                                         mirror(padded[:, :, 2:, 2:])]).mean(0)
        assert torch.allclose(predict_logits(model, x, "flip_translate"), expected, atol=1e-5)
        assert torch.allclose(predict_logits(model, x, True), mirror(x), atol=1e-6)
    assert set(TTA_MODES) == {"none", "flip", "flip_translate"}


def test_no_validation_split_trains_on_everything_and_keeps_the_last_weights(tmp_path, fake_root):
    import json

    from cifarkit.train import train
    from tests.test_train import tiny_config

    results = train(tiny_config(tmp_path, fake_root, "data.val_per_class=0", "train.steps=4", "train.eval_every=2"),
                    log=lambda _: None)
    assert results["val"] is None and results["train_images"] == 600 and results["best_step"] == 4
    assert results["selection"].startswith("last weights (no validation split")
    assert not (tmp_path / "run" / "best.pt").exists() and math.isfinite(results["test"]["top1"])
    assert all("val/loss" not in json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open())
    from cifarkit.train.results import summarize_runs

    summary = summarize_runs([results, results])
    assert "val_top1" not in summary and json.dumps(summary, allow_nan=False)  # strict JSON, no NaN


def test_fast10_builds_its_optimizer():
    config = load_config("fast10")
    model = create_model(config.model.name, 10, **config.model.kwargs)
    optimizer = build_optimizer(model, config.optim)
    assert {g["name"] for g in optimizer.param_groups} == {"first_kernel", "kernels", "biases_and_norms"}
