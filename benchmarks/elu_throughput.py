"""Training throughput of the ELU networks on the available device, and the projected time of a full run.

    python benchmarks/elu_throughput.py [--device auto] [--steps 20] [--warmup 3] [--batch-size 100]

Times full training steps (augmented batch from the device loader, forward, loss, backward, SGD step) on
synthetic resident data, after synchronizing the device, and projects 165,000 iterations.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from cifarkit.config import load_config
from cifarkit.train.device import autocast_dtype, resolve_device
from cifarkit.train.projection import time_training_steps


def measure(recipe: str, device, steps: int, warmup: int, batch_size: int, amp: str, width: float) -> list[float]:
    """Seconds per full training step of `recipe` (the library's own timing, cifarkit.train.projection)."""
    config = load_config(recipe, [f"train.batch_size={batch_size}", f"train.amp={json.dumps(amp)}",
                                  f"model.kwargs.width={width}"])
    return time_training_steps(config, device, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0: the real nets)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"device: {name} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"batch {args.batch_size} | autocast {autocast_dtype(args.amp, device) or 'off'} | width {args.width}")
    results = {}
    for recipe in ("elu-seed", "elu-paper"):
        times = measure(recipe, device, args.steps, args.warmup, args.batch_size, args.amp, args.width)
        median = statistics.median(times)
        results[recipe] = median
        hours = 165_000 * median / 3600
        print(f"{recipe:<10} median step {median * 1000:8.1f} ms | {args.batch_size / median:8.1f} images/s | "
              f"165k iterations: {hours:7.1f} h ({args.steps} timed steps)")
    print(f"ratio elu-seed / elu-paper step time: {results['elu-seed'] / results['elu-paper']:.2f}")


if __name__ == "__main__":
    main()
