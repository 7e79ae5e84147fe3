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
    c = load_config("elu-seed", ["schedule.name=cosine", "schedule.final_lr_fraction=0.1"]).schedule
    assert lr_at(0, 1.0, 100, c) == pytest.approx(1.0) and lr_at(100, 1.0, 100, c) == pytest.approx(0.1)
    c = load_config("elu-seed", ["schedule.name=linear", "schedule.warmup_steps=10"]).schedule
    assert lr_at(4, 1.0, 110, c) == pytest.approx(0.5) and lr_at(60, 1.0, 110, c) == pytest.approx(0.5)


def test_unknown_schedule():
    with pytest.raises(ConfigError,
                       match="schedule.name must be one of step, constant, cosine, linear, wsd; got 'zigzag'"):
        load_config("elu-seed", ["schedule.name=zigzag"])


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
