"""Models: registry, the ELU networks' parameter counts and layer shapes against the seed's Keras summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cifarkit.errors import ConfigError
from cifarkit.models import create_model, format_summary, keras_summary, list_models
from cifarkit.models.elu_net import SameConv2d

SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_c1779b047faf3f81.txt"

# The seed tutorial's printed `model.summary()`: (Keras type, output shape, parameters), line by line.
SEED_SUMMARY = [
    ("ZeroPadding2D", (40, 40, 3), 0), ("Conv2D", (40, 40, 384), 10752), ("Activation", (40, 40, 384), 0),
    ("MaxPooling2D", (20, 20, 384), 0), ("Dropout", (20, 20, 384), 0),
    ("Conv2D", (20, 20, 384), 147840), ("Conv2D", (20, 20, 384), 590208), ("Conv2D", (20, 20, 640), 983680),
    ("Conv2D", (20, 20, 640), 1639040), ("Activation", (20, 20, 640), 0), ("MaxPooling2D", (10, 10, 640), 0),
    ("Dropout", (10, 10, 640), 0),
    ("Conv2D", (10, 10, 640), 3687040), ("Conv2D", (10, 10, 768), 1966848), ("Conv2D", (10, 10, 768), 2360064),
    ("Conv2D", (10, 10, 768), 2360064), ("Activation", (10, 10, 768), 0), ("MaxPooling2D", (5, 5, 768), 0),
    ("Dropout", (5, 5, 768), 0),
    ("Conv2D", (5, 5, 768), 590592), ("Conv2D", (5, 5, 896), 2753408), ("Conv2D", (5, 5, 896), 3212160),
    ("Activation", (5, 5, 896), 0), ("MaxPooling2D", (3, 3, 896), 0), ("Dropout", (3, 3, 896), 0),
    ("Conv2D", (3, 3, 896), 7226240), ("Conv2D", (3, 3, 1024), 3671040), ("Conv2D", (3, 3, 1024), 4195328),
    ("Activation", (3, 3, 1024), 0), ("MaxPooling2D", (2, 2, 1024), 0), ("Dropout", (2, 2, 1024), 0),
    ("Conv2D", (2, 2, 1024), 1049600), ("Conv2D", (2, 2, 1152), 4719744), ("Activation", (2, 2, 1152), 0),
    ("MaxPooling2D", (1, 1, 1152), 0), ("Dropout", (1, 1, 1152), 0),
    ("Conv2D", (1, 1, 1152), 1328256), ("Activation", (1, 1, 1152), 0), ("MaxPooling2D", (1, 1, 1152), 0),
    ("Dropout", (1, 1, 1152), 0),
    ("Flatten", (1152,), 0), ("Dense", (100,), 115300), ("Activation", (100,), 0),
]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    assert count(create_model("elu_net_seed", 100)) == 42_607_204
    assert count(create_model("elu_net_paper", 100)) == 39_330_404


def test_seed_summary_matches_line_by_line():
    rows = keras_summary(create_model("elu_net_seed", 100))
    assert [(r.layer_type, r.output_shape[1:], r.params) for r in rows] == SEED_SUMMARY
    assert "Total params: 42,607,204" in format_summary(rows)


@pytest.mark.skipif(not SEED_DOC.exists(), reason="the seed document is not beside the project")
def test_embedded_summary_is_the_seed_documents():
    """The expected rows above are the seed's own printout, re-read from the document itself."""
    found = re.findall(r"\(None, ([\d, ]+)\)\s+(\d+)", SEED_DOC.read_text())
    parsed = [(tuple(int(d) for d in shape.split(",")), int(params)) for shape, params in found]
    assert parsed == [(shape, params) for _, shape, params in SEED_SUMMARY]


def test_paper_variant_has_elu_after_every_conv_and_1x1_stack3():
    model = create_model("elu_net_paper", 100)
    layers = list(model.features)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert all(isinstance(layers[i + 1], nn.ELU) for i in convs)
    assert [layers[i].kernel_size for i in convs][5] == (1, 1)  # stack 3's first convolution
    assert len(convs) == 18


@pytest.mark.parametrize("size,expected", [(40, 20), (5, 3), (3, 2), (1, 1), (2, 1)])
def test_same_max_pooling_rounds_odd_sizes_up(size, expected):
    assert nn.MaxPool2d(2, 2, ceil_mode=True)(torch.randn(1, 1, size, size)).shape[-1] == expected


def test_same_padding_of_even_kernels_is_bottom_right():
    conv = SameConv2d(1, 1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 2, 2] = 1.0  # bottom-right pixel: only the windows starting at (1..2, 1..2) see it
    out = conv(x)[0, 0]
    assert out.shape == (3, 3) and out[2, 2] == 1 and out[1, 1] == 1 and out[0, 0] == 0


def test_keras_initialisation():
    model = create_model("elu_net_seed", 10, width=0.1)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_registry():
    assert {"elu_net_seed", "elu_net_paper"} <= set(list_models())
    assert list_models("elu_*") == ["elu_net_paper", "elu_net_seed"]
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ConfigError, match="has no option .colour. .model.kwargs.; its options: dropout, width"):
        create_model("elu_net_seed", 100, colour="blue")


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name):
    model = create_model(name, 10, width=0.05) if name.startswith("elu") else create_model(name, 10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# every net x activation x batch norm in NCHW, and each net in NHWC (the memory format the recipes train in)
FAST_PATH_CASES = [(name, activation, batchnorm, False) for name in ("elu11_paper", "elu_net_seed", "elu_net_paper")
                   for activation in ("elu", "relu", "leaky_relu", "srelu") for batchnorm in (False, True)]
FAST_PATH_CASES += [(name, "elu", batchnorm, True) for name in ("elu11_paper", "elu_net_seed", "elu_net_paper")
                    for batchnorm in (False, True)]


@pytest.mark.parametrize(("name", "activation", "batchnorm", "channels_last"), FAST_PATH_CASES)
def test_the_fast_forward_pass_computes_the_layer_by_layer_network(name, activation, batchnorm, channels_last):
    """EluNet.forward (odd kernels padded by the convolution, pooling before a monotone activation) against
    the network as first written (reference_forward): equal outputs and gradients, training mode (dropout
    included: the same random masks), in either memory format."""
    import copy

    from cifarkit.models.elu_net import reference_forward

    torch.manual_seed(0)
    fast = create_model(name, 100, width=0.1, activation=activation, batchnorm=batchnorm)
    reference = copy.deepcopy(fast)
    x = torch.randn(6, 3, 32, 32)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outputs = []
    for forward in (fast, lambda batch: reference_forward(reference, batch)):
        torch.manual_seed(1)
        out = forward(x)
        (out.square().sum() + out[:, 0].sum()).backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    # Gradients agree to float rounding: the two run different convolution kernels (own padding against a
    # padded copy), which sum in another order. Scaled by the largest gradient, because a convolution bias
    # followed by batch normalization has a true gradient of zero and only rounding noise to compare.
    scale = max(p.grad.abs().max() for p in reference.parameters())
    for (key, a), b in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * float(scale), msg=key)


def test_pooling_runs_first_only_for_activations_that_commute_with_max_and_no_one_watches():
    from cifarkit.models.activations import commutes_with_max

    assert commutes_with_max("elu") and commutes_with_max("relu") and commutes_with_max("leaky_relu", 0.1)
    assert not commutes_with_max("srelu") and not commutes_with_max("gelu") and not commutes_with_max("elu", -1)
    net = create_model("elu11_paper", 100, width=0.1)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
             for m in net.modules() if isinstance(m, nn.ELU)]
    net(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert seen[0] == 40  # a watched activation sees the full 40x40 map, not the pooled 20x20 one
