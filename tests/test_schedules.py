"""Schedules at their boundaries, and the Keras-semantics L2 gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarkit.config import load_config
from cifarkit.errors import ConfigError
from cifarkit.optim import build_optimizer, parameter_groups
from cifarkit.schedules import dropout_at, lr_at, validate_dropout_events

SEED = load_config("elu-seed")
INITIAL = [0.5] * 7


@pytest.mark.parametrize("step,lr", [(0, 0.01), (34_999, 0.01), (35_000, 0.001), (164_999, 0.001)])
def test_seed_learning_rate_drops_after_35k_steps(step, lr):
    assert lr_at(step, SEED.optim.lr, SEED.train.steps, SEED.schedule) == pytest.approx(lr)


@pytest.mark.parametrize("step,rates", [
    (0, INITIAL),
    (84_999, INITIAL),
    (85_000, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]),
    (134_999, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]),
    (135_000, [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.0]),
    (164_999, [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.0]),
])
def test_seed_dropout_schedule(step, rates):
    assert dropout_at(step, INITIAL, SEED.schedule.dropout_events) == pytest.approx(rates)


def test_dropout_events_are_validated():
    with pytest.raises(ConfigError, match="sets 2 rates"):
        validate_dropout_events([{"step": 5, "set": [0.1, 0.2]}], 7)
    with pytest.raises(ConfigError, match="should be"):
        validate_dropout_events([{"step": 5, "scale": 2, "set": [0.1]}], 1)


def test_cosine_and_linear_end_points():
    c = load_config("elu-seed", ["schedule.lr=cosine", "schedule.final_lr_fraction=0.1"]).schedule
    assert lr_at(0, 1.0, 100, c) == pytest.approx(1.0) and lr_at(100, 1.0, 100, c) == pytest.approx(0.1)
    c = load_config("elu-seed", ["schedule.lr=linear", "schedule.warmup_steps=10"]).schedule
    assert lr_at(4, 1.0, 110, c) == pytest.approx(0.5) and lr_at(60, 1.0, 110, c) == pytest.approx(0.5)


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="schedule.lr must be one of step, constant, cosine, linear; got 'zigzag'"):
        load_config("elu-seed", ["schedule.lr=zigzag"])


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 3)


def test_keras_l2_gradient_matches_hand_computation():
    """With a zero data gradient, one SGD step (momentum buffer starts at the gradient) gives
    w - lr * 2 * lambda * w: the gradient of Keras's `lambda * sum(w^2)`. Biases are not decayed."""
    torch.manual_seed(0)
    model = TwoLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = load_config("elu-seed").optim  # l2 0.0005, first layer 0.01, lr 0.01, momentum 0.9
    optimizer = build_optimizer(model, config)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    lr = config.lr
    after = model.state_dict()
    assert torch.allclose(after["conv.weight"], before["conv.weight"] * (1 - lr * 2 * 0.01))
    assert torch.allclose(after["conv2.weight"], before["conv2.weight"] * (1 - lr * 2 * 0.0005))
    assert torch.allclose(after["fc.weight"], before["fc.weight"] * (1 - lr * 2 * 0.0005))
    for name in ("conv.bias", "conv2.bias", "fc.bias"):
        assert torch.equal(after[name], before[name])


def test_l2_in_the_loss_gives_the_same_gradient_as_weight_decay():
    torch.manual_seed(0)
    model = TwoLayer()
    lam = 0.0005
    loss = lam * sum((m.weight ** 2).sum() for m in (model.conv2, model.fc))
    loss.backward()
    assert torch.allclose(model.fc.weight.grad, 2 * lam * model.fc.weight)
    groups = parameter_groups(model, lam, 0.01)
    assert [g["name"] for g in groups] == ["first_kernel", "kernels", "biases_and_norms"]
    assert groups[1]["weight_decay"] == pytest.approx(2 * lam)


def test_learning_rate_scaling_with_the_global_batch():
    from cifarkit.optim import scaled_lr

    base = load_config("elu-seed", ["optim.lr=0.1", "optim.base_batch_size=128"]).optim
    assert scaled_lr(base, 512) == pytest.approx(0.1)  # "none" by default: the lr is taken as given
    linear = load_config("elu-seed", ["optim.lr=0.1", "optim.base_batch_size=128", "optim.lr_scaling=linear"]).optim
    assert scaled_lr(linear, 512) == pytest.approx(0.4)
    root = load_config("elu-seed", ["optim.lr=0.1", "optim.base_batch_size=128", "optim.lr_scaling=sqrt"]).optim
    assert scaled_lr(root, 512) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="lr_scaling"):  # refused when the config is loaded
        load_config("elu-seed", ["optim.lr_scaling=cubic"])


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_fused_cpu_step_is_the_per_parameter_loop_to_float_rounding(nesterov):
    """optim.fused_on_cpu (the default) takes the same SGD steps as torch's per-parameter loop: momentum,
    Nesterov, each group's weight decay and learning rate, through 10 steps of a network with batch
    normalization under bf16 autocast; only float rounding (a fused multiply-add) may differ."""
    import copy

    from cifarkit.models import create_model
    from cifarkit.optim import fused_sgd_runs_on, set_lr
    from cifarkit.train.guard import ensure_momentum_buffers

    if not fused_sgd_runs_on("cpu"):
        pytest.skip("this torch has no fused SGD kernel for the CPU")
    torch.manual_seed(0)
    models = [create_model("elu11_paper", 100, width=0.1, batchnorm=True)]
    models.append(copy.deepcopy(models[0]))
    base = ["optim.lr=0.05", "optim.l2=0.0005", "optim.norm_weight_decay=0.001",
            f"optim.nesterov={str(nesterov).lower()}"]
    optimizers = [build_optimizer(models[0], load_config("elu11-paper", [*base, "optim.fused_on_cpu=false"]).optim),
                  build_optimizer(models[1], load_config("elu11-paper", base).optim)]
    assert [g["fused"] for g in optimizers[1].param_groups] == [True] * len(optimizers[1].param_groups)
    assert not any(g["fused"] for g in optimizers[0].param_groups)
    for optimizer in optimizers:
        ensure_momentum_buffers(optimizer)  # as training does
    for step in range(10):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
        for model, optimizer in zip(models, optimizers, strict=True):
            set_lr(optimizer, 0.05 * 0.9**step)
            torch.manual_seed(step)  # the same dropout masks
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for (key, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=key)

    # a checkpoint from a machine that took the loop, resumed here: the state is its, the kernel this machine's
    from cifarkit.optim import load_optimizer_state

    load_optimizer_state(optimizers[1], optimizers[0].state_dict())
    assert all(g["fused"] for g in optimizers[1].param_groups)
    load_optimizer_state(optimizers[0], optimizers[1].state_dict())
    assert not any(g["fused"] for g in optimizers[0].param_groups)
    buffers = [optimizers[0].state[p]["momentum_buffer"] for p in models[0].parameters()]
    assert all(torch.equal(a, optimizers[1].state[p]["momentum_buffer"])
               for a, p in zip(buffers, models[1].parameters(), strict=True))
