"""A Keras-style model summary (layer name, output shape in NHWC, parameter count), built on torchinfo.

torchinfo walks the model with a real forward pass and records each leaf layer's output size and parameter
count; this module only renames the rows the way Keras names them, so the printout can be compared line by
line with the `model.summary()` of the seed tutorial.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torchinfo
from torch import nn

# torch layer type -> (Keras layer name prefix, Keras class name); first isinstance match wins.
KERAS_NAMES: tuple[tuple[type[nn.Module], str, str], ...] = (
    (nn.ZeroPad2d, "zero_padding2d", "ZeroPadding2D"),
    (nn.Conv2d, "conv2d", "Conv2D"),
    (nn.ELU, "activation", "Activation"),
    (nn.ReLU, "activation", "Activation"),
    (nn.GELU, "activation", "Activation"),
    (nn.Softmax, "activation", "Activation"),
    (nn.MaxPool2d, "max_pooling2d", "MaxPooling2D"),
    (nn.AdaptiveAvgPool2d, "global_average_pooling2d", "GlobalAveragePooling2D"),
    (nn.BatchNorm2d, "batch_normalization", "BatchNormalization"),
    (nn.Dropout, "dropout", "Dropout"),
    (nn.Flatten, "flatten", "Flatten"),
    (nn.Linear, "dense", "Dense"),
)


@dataclass(frozen=True)
class SummaryRow:
    name: str  # conv2d_1
    layer_type: str  # Conv2D
    output_shape: tuple[int | None, ...]  # (None, 40, 40, 384)
    params: int


def _keras_type(module: nn.Module) -> tuple[str, str]:
    for torch_type, prefix, keras_type in KERAS_NAMES:
        if isinstance(module, torch_type):
            return prefix, keras_type
    name = type(module).__name__
    return name.lower(), name


def keras_summary(model: nn.Module, input_size=(1, 3, 32, 32), softmax_row: bool = True) -> list[SummaryRow]:
    """Rows for every leaf layer that runs in a forward pass, plus (by default) the softmax that the loss
    applies, which Keras models carry as their last layer."""
    stats = torchinfo.summary(model, input_size=input_size, verbose=0, depth=100, device="cpu")
    counters: Counter[str] = Counter()
    rows = []
    last_shape: tuple[int | None, ...] = ()
    for info in stats.summary_list:
        if not info.is_leaf_layer or not info.executed:
            continue
        prefix, keras_type = _keras_type(info.module)
        counters[prefix] += 1
        shape = list(info.output_size)[1:]
        if len(shape) == 3:  # NCHW -> NHWC, the order Keras prints
            shape = [shape[1], shape[2], shape[0]]
        last_shape = (None, *shape)
        rows.append(SummaryRow(f"{prefix}_{counters[prefix]}", keras_type, last_shape, info.num_params))
    if softmax_row:
        counters["activation"] += 1
        rows.append(SummaryRow(f"activation_{counters['activation']}", "Activation", last_shape, 0))
    return rows


def format_summary(rows: list[SummaryRow]) -> str:
    width = 65
    lines = [f"{'Layer (type)':<29}{'Output Shape':<26}Param #", "=" * width]
    for i, row in enumerate(rows):
        shape = "(" + ", ".join("None" if d is None else str(d) for d in row.output_shape) + ")"
        label = f"{row.name} ({row.layer_type})"[:28]  # Keras cuts long names the same way
        lines.append(f"{label:<29}{shape:<26}{row.params}")
        lines.append("=" * width if i == len(rows) - 1 else "_" * width)
    total = sum(r.params for r in rows)
    lines += [f"Total params: {total:,}", f"Trainable params: {total:,}", "Non-trainable params: 0", "_" * width]
    return "\n".join(lines)
