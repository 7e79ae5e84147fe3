"""The ELU paper's comparison: the 11-layer network, the activation and batch-normalization options, the
recipe, and the activation-mean measurement (Figure 2a)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cifarkit.config import load_config
from cifarkit.models import create_model
from cifarkit.models.activations import ShiftedReLU, make_activation


def conv_param_count(stacks, num_classes):
    """By hand from the paper's table: weights k*k*in*out plus one bias per unit, layer after layer."""
    total, channels = 0, 3
    for out, kernel in [layer for stack in stacks for layer in stack] + [(num_classes, 1)]:
        total += kernel * kernel * channels * out + out
        channels = out
    return total


PAPER_11 = [[(192, 5)], [(192, 1), (240, 3)], [(240, 1), (260, 2)], [(260, 1), (280, 2)], [(280, 1), (300, 2)],
            [(300, 1)]]


def test_elu11_parameter_count():
    assert conv_param_count(PAPER_11, 100) == 1_669_028
    for classes in (100, 10):
        model = create_model("elu11_paper", classes)
        assert sum(p.numel() for p in model.parameters()) == conv_param_count(PAPER_11, classes)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)


def test_elu11_layers_pooling_and_dropout():
    model = create_model("elu11_paper", 100)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 11 and [c.kernel_size[0] for c in convs] == [5, 1, 3, 1, 2, 1, 2, 1, 2, 1, 1]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 7
    assert model.dropout_rates() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0]
    assert sum(isinstance(m, nn.ELU) for m in model.features) == 10  # every conv but the output layer
    sizes, x = [], torch.zeros(1, 3, 32, 32)
    for m in model.features:
        x = m(x)
        if isinstance(m, nn.MaxPool2d):
            sizes.append(x.shape[-1])
    assert sizes == [20, 10, 5, 3, 2, 1, 1]  # 4 pixels of padding, "same" pooling: never below 1x1


def test_summary_prints_the_parameter_count(capsys):
    from cifarkit.cli import main

    assert main(["summary", "--model", "elu11_paper"]) == 0
    assert "Total params: 1,669,028" in capsys.readouterr().out


@pytest.mark.parametrize("name, param, points, expected", [
    ("elu", None, [-1.0, 0.0, 2.0], [math.exp(-1) - 1, 0.0, 2.0]),
    ("elu", 0.5, [-1.0], [0.5 * (math.exp(-1) - 1)]),
    ("relu", None, [-2.0, 0.0, 3.0], [0.0, 0.0, 3.0]),
    ("leaky_relu", None, [-2.0, 3.0], [-0.2, 3.0]),  # the paper's slope 0.1 by default
    ("leaky_relu", 0.3, [-2.0], [-0.6]),
    ("srelu", None, [-3.0, -1.0, -0.5, 2.0], [-1.0, -1.0, -0.5, 2.0]),  # max(-1, x): the shifted ReLU
    ("gelu", None, [1.0, -1.0], [0.8413447, -0.1586553]),
    ("silu", None, [1.0, -1.0], [1 / (1 + math.exp(-1)), -1 / (1 + math.exp(1))]),
])
def test_activation_values(name, param, points, expected):
    out = make_activation(name, param)(torch.tensor(points, dtype=torch.float64))
    assert out.tolist() == pytest.approx(expected, abs=1e-6)


def test_bad_activation_options_are_config_errors():
    from cifarkit.errors import ConfigError

    with pytest.raises(ConfigError, match="must be one of"):
        load_config("elu11-paper", ["model.kwargs.activation=tanh"])
    with pytest.raises(ConfigError, match="takes no parameter"):
        load_config("elu11-paper", ["model.kwargs.activation=relu", "model.kwargs.activation_param=0.2"])


@pytest.mark.parametrize("name", ["elu11_paper", "elu_net_paper", "elu_net_seed"])
def test_batchnorm_sits_between_each_conv_and_its_activation(name):
    model = create_model(name, 10, width=0.05, batchnorm=True, activation="relu")
    layers = list(model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    output_conv = convs[-1] if name == "elu11_paper" else None
    for i in convs:
        if i == output_conv:
            assert not isinstance(layers[i + 1], nn.BatchNorm2d)  # the output layer: logits, no BN
            continue
        assert isinstance(layers[i + 1], nn.BatchNorm2d) and layers[i + 1].num_features == layers[i].out_channels
        if isinstance(layers[i + 2], nn.ReLU):
            continue
        assert isinstance(layers[i + 2], (nn.Conv2d, nn.MaxPool2d))  # the seed net: activation only at stack ends
    assert not any(isinstance(m, nn.ELU) for m in layers)


@pytest.mark.parametrize("name", ["elu_net_seed", "elu_net_paper", "elu11_paper"])
def test_defaults_build_the_same_network_and_weights(name):
    torch.manual_seed(0)
    default = create_model(name, 100, width=0.1)
    torch.manual_seed(0)
    explicit = create_model(name, 100, width=0.1, activation="elu", activation_param=1.0, batchnorm=False)
    assert repr(default) == repr(explicit)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values(),
                                                 strict=True))
    # paired runs: another activation, or batch normalization, starts from the very same convolution weights
    torch.manual_seed(0)
    other = create_model(name, 100, width=0.1, activation="srelu", batchnorm=True)
    convs = [k for k in default.state_dict() if k.endswith("weight") and default.state_dict()[k].dim() == 4]
    other_convs = [k for k in other.state_dict() if k.endswith("weight") and other.state_dict()[k].dim() == 4]
    assert all(torch.equal(default.state_dict()[a], other.state_dict()[b])
               for a, b in zip(convs, other_convs, strict=True))


def test_elu11_recipe_follows_the_paper():
    from cifarkit.optim import build_optimizer
    from cifarkit.schedules import lr_at

    config = load_config("elu11-paper")
    assert (config.model.name, config.train.batch_size, config.train.steps) == ("elu11_paper", 100, 165_000)
    assert (config.preprocess.gcn, config.preprocess.normalize) == (True, "zca")
    assert (config.augment.pad, config.augment.flip, config.optim.momentum) == (4, True, 0.9)
    lrs = [lr_at(s, config.optim.lr, 165_000, config.schedule) for s in (0, 34_999, 35_000, 85_000, 135_000, 164_999)]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.0005, 0.00005, 0.00005])
    # weight decay 0.0005 in the PyTorch/Caffe sense (gradient += 0.0005 w) on every kernel, biases exempt:
    # half of the seed's Keras l2(0.0005), whose gradient is 0.001 w
    groups = {g["name"]: g for g in build_optimizer(create_model("elu11_paper", 100, width=0.1),
                                                    config.optim).param_groups}
    assert groups["first_kernel"]["weight_decay"] == groups["kernels"]["weight_decay"] == 0.0005
    assert groups["biases_and_norms"]["weight_decay"] == 0.0
    seed_groups = {g["name"]: g for g in build_optimizer(create_model("elu_net_seed", 100, width=0.05),
                                                         load_config("elu-seed").optim).param_groups}
    assert seed_groups["kernels"]["weight_decay"] == pytest.approx(2 * 0.0005)


def test_elu_paper_dropout_phases_follow_the_paper_text():
    """50k iterations of fine-tuning rates, then 40k at 1.5x, within 165k; the seed keeps its 85k/135k."""
    paper, seed = load_config("elu-paper"), load_config("elu-seed")
    assert [e["step"] for e in paper.schedule.dropout_events] == [75_000, 125_000]
    assert paper.train.steps - 125_000 == 40_000 and 125_000 - 75_000 == 50_000
    assert [e["step"] for e in seed.schedule.dropout_events] == [85_000, 135_000]


def test_paper_sweep_command_resolves_every_variant():
    from cifarkit.experiments.sweep import plan_sweep

    sweep = plan_sweep("elu11-paper", [], ["model.kwargs.activation=elu,relu,leaky_relu,srelu",
                                           "model.kwargs.batchnorm=false,true"], 10)
    assert len(sweep.variants) == 8 and sweep.seeds == tuple(range(10))
    assert sweep.configs[7].model.kwargs == {"activation": "srelu", "batchnorm": True}


def test_activation_probe_logs_means_to_metrics(tmp_path, fake_root):
    from cifarkit.train import train
    from tests.conftest import QUICK

    config = load_config("elu11-paper", [*[q for q in QUICK if not q.startswith(("model.", "preprocess."))],
                                         "model.kwargs={width=0.05}", "preprocess.normalize=meanstd",
                                         "data.dataset=cifar10", f"data.data_dir={json.dumps(str(fake_root))}",
                                         "data.val_per_class=10", "train.log_activations=true",
                                         "schedule.lr_factors=[]",
                                         f"train.out_dir={json.dumps(str(tmp_path))}"])
    train(config, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("activations/median_unit" in row for row in rows)
    layers = [k for k in rows[-1] if k.startswith("activations/layer") and not k.endswith("_mean")]
    assert len(layers) == 10  # every activation layer of the 11-layer network
    assert all(value >= -1.0 for row in rows for key, value in row.items() if key.startswith("activations/"))


def test_probe_measures_the_median_unit_mean():
    from cifarkit.train.probe import ActivationProbe

    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), ShiftedReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0, 3.0]).reshape(3, 1, 1, 1))
    images = torch.full((2, 1, 2, 2), 0.5)
    out = ActivationProbe(images).measure(model, torch.device("cpu"))
    assert out["activations/layer1"] == pytest.approx(0.5)  # unit means 0.5, -0.5, 1.5: median 0.5
    assert out["activations/layer1_mean"] == pytest.approx(0.5)
    assert out["activations/median_unit"] == pytest.approx(0.5)
