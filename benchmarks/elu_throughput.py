"""Training throughput of the ELU networks on the available device, and the projected time of a full run.

    python benchmarks/elu_throughput.py [--device auto] [--steps 20] [--warmup 3] [--batch-size 100]

Times full training steps (augmented batch from the device loader, forward, loss, backward, SGD step) on
synthetic resident data, after synchronizing the device, and projects 165,000 iterations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarkit.config import load_config
from cifarkit.data.loader import DeviceLoader
from cifarkit.data.preprocess import Preprocess, PreprocessConfig
from cifarkit.models import create_model
from cifarkit.train.device import autocast, autocast_dtype, resolve_device, synchronize
from cifarkit.train.optim import build_optimizer


def measure(recipe: str, device, steps: int, warmup: int, batch_size: int, amp: str, width: float) -> list[float]:
    config = load_config(recipe)
    model = create_model(config.model.name, 100, width=width).to(device)
    optimizer = build_optimizer(model, config.optim)
    images = torch.randint(0, 256, (max(batch_size * 4, 1000), 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (images.shape[0],), device=device)
    # identity whitening: same cost as a fitted ZCA (a 3072x3072 matmul per batch)
    preprocess = Preprocess(PreprocessConfig(normalize="zca", gcn=True)).to(device)
    loader = DeviceLoader(images, labels, batch_size, preprocess, config.augment)
    dtype = autocast_dtype(amp, device)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        x, y = loader.next_batch()
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


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
