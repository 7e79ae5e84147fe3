"""Training throughput of the ELU networks, today's implementation against the network as first written,
in one run on one machine; and the projected time of a full run.

    python benchmarks/elu_throughput.py [--recipes elu11-paper,elu-seed,elu-paper] [--steps 10] [--warmup 2]
                                        [--batch-size 100] [--device auto] [--amp auto] [--width 1.0]

For each recipe, full training steps (augmented batch from the device loader, forward under the recipe's
autocast, loss, backward, optimizer step) on synthetic resident data, timed after synchronising the device:
- before: the layer-by-layer network (`cifarkit.models.elu_net.reference_forward`: an explicit "same" F.pad
  before every convolution, activation then pooling) in NCHW, as the recipes ran it before;
- after: `EluNet.forward` in the recipe's memory format (channels_last): odd kernels padded by the
  convolution itself, max-pooling before a monotone activation (tests/test_models.py checks that both
  compute the same outputs and gradients).
The two alternate step by step (before, after, before, ...), so that a machine that slows down or speeds up
during the run moves both alike. Prints the medians, images per second, the speed-up, the fraction of this
CPU's measured matmul rate (bf16 where the step runs in bf16) the step reaches, and 165k-iteration
projections here and on one H200 (at the rate cifarkit.train.projection states).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from cifarkit.config import load_config
from cifarkit.device import autocast_dtype, describe_cpu, resolve_device
from cifarkit.models import create_model
from cifarkit.models.elu_net import reference_forward
from cifarkit.train.projection import Projection, matmul_flops, multiply_adds_per_image, training_step


class LayerByLayer(nn.Module):
    """An EluNet run as first written (same parameters, the reference forward pass)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return reference_forward(self.net, x)

    # the recipe's dropout schedule reaches the wrapped network, as the Trainer's step sets it on the real one
    def dropout_rates(self) -> list[float]:
        return self.net.dropout_rates()

    def set_dropout_rates(self, rates) -> None:
        self.net.set_dropout_rates(rates)


def measure(recipe: str, device, steps: int, warmup: int, batch_size: int, amp: str, width: float) -> list[float]:
    """Seconds per full training step of `recipe` as cifarkit trains it (the GPU suite's figure)."""
    config = load_config(recipe, [f"train.batch_size={batch_size}", f"train.amp={json.dumps(amp)}",
                                  f"model.kwargs.width={width}"])
    step = training_step(config, device)
    return [step() for _ in range(warmup + steps)][warmup:]


def alternate(config, before_config, device, steps: int, warmup: int, num_classes: int):
    """Median seconds per step of (before, after), timed in alternation, one step of each at a time."""
    before_step = training_step(before_config, device,
                                LayerByLayer(create_model(config.model.name, num_classes, **config.model.kwargs)))
    after_step = training_step(config, device)
    for _ in range(warmup):
        before_step(), after_step()
    times = [(before_step(), after_step()) for _ in range(steps)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="elu11-paper,elu-seed,elu-paper")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0: the real nets)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = autocast_dtype(args.amp, device)
    if device.type == "cuda":
        name, flags = torch.cuda.get_device_name(device), []
    else:
        cpu = describe_cpu()
        name, flags = cpu["cpu"], cpu["flags"]
    print(f"device: {name} | flags: {', '.join(flags) or 'none'} | torch {torch.__version__} | threads "
          f"{torch.get_num_threads()} | batch {args.batch_size} | autocast {dtype or 'off'} | width {args.width}")
    peak = matmul_flops(dtype or torch.float32) if device.type == "cpu" else None
    if peak:
        print(f"matmul rate here ({dtype or torch.float32}, 2048x2048): {peak / 1e9:.0f} GFLOP/s")
    rows = {}
    for recipe in args.recipes.split(","):
        overrides = [f"train.batch_size={args.batch_size}", f"train.amp={json.dumps(args.amp)}",
                     f"model.kwargs.width={args.width}"]
        config = load_config(recipe, overrides)
        before_config = load_config(recipe, [*overrides, "model.channels_last=false"])
        classes = 100
        before, after = alternate(config, before_config, device, args.steps, args.warmup, classes)
        macs = multiply_adds_per_image(create_model(config.model.name, classes, **config.model.kwargs), device)
        flops_per_step = 6 * macs * args.batch_size  # forward + backward = 3 forward passes, 2 FLOP per MAC
        row = {"before_ms": before * 1000, "after_ms": after * 1000, "speedup": before / after,
               "before_images_per_second": args.batch_size / before, "after_images_per_second": args.batch_size / after,
               "macs_per_image": macs}
        line = (f"{recipe:<12} before {before * 1000:8.1f} ms ({args.batch_size / before:6.1f} img/s) | after "
                f"{after * 1000:8.1f} ms ({args.batch_size / after:6.1f} img/s) | speed-up {before / after:4.2f}x")
        if peak:
            row["before_matmul_fraction"] = flops_per_step / before / peak
            row["after_matmul_fraction"] = flops_per_step / after / peak
            line += (f" | of the matmul rate: {row['before_matmul_fraction']:.0%} -> "
                     f"{row['after_matmul_fraction']:.0%}")
        steps = config.train.steps
        projection = Projection(recipe, steps, args.batch_size, after, name, macs)
        row["hours_here"], row["h200_hours"] = projection.hours_here, projection.h200_hours
        print(line)
        print(f"{'':<12} {steps:,} iterations: {projection.hours_here:,.1f} h here (after), "
              f"{projection.h200_hours * 60:.0f} min on one H200 at the stated rate")
        rows[recipe] = row
    if args.out:
        from pathlib import Path

        from cifarkit.files import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"device": name, "flags": flags, "torch": torch.__version__,
                                                      "threads": torch.get_num_threads(),
                                                      "batch_size": args.batch_size, "width": args.width,
                                                      "autocast": str(dtype), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
