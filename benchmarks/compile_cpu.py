"""Does torch.compile pay for itself in a training budget? Eager vs compiled training steps, one run.

    python benchmarks/compile_cpu.py [--recipe fast10-cpu] [--steps 30] [--budget-seconds 600] [--device auto]

Times full training steps (resident batch, forward under the recipe's autocast, loss, backward, SGD step) of
the recipe's network, eager and then compiled; the compiled model's first steps (where compilation happens)
are timed apart. Prints both medians, the speed-up, the compile time, and whether compiling wins within the
budget: budget / eager_step  vs  (budget - compile_time) / compiled_step steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cifarkit.config import load_config
from cifarkit.device import choose_autocast, resolve_device, synchronize
from cifarkit.models import create_model
from cifarkit.optim import build_optimizer


def step_times(model, optimizer, x, y, device, dtype, steps: int, smoothing: float) -> list[float]:
    times = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast10-cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budget-seconds", type=float, default=600)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    config = load_config(args.recipe)
    device = resolve_device(args.device)
    dtype, why = choose_autocast(config.train.amp, device)
    batch = config.train.batch_size
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if config.model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def fresh():
        torch.manual_seed(0)
        model = create_model(config.model.name, 10, **config.model.kwargs).to(device)
        if config.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, build_optimizer(model, config.optim)

    model, optimizer = fresh()
    step_times(model, optimizer, x, y, device, dtype, 3, config.optim.label_smoothing)  # warm-up
    eager = statistics.median(step_times(model, optimizer, x, y, device, dtype, args.steps,
                                         config.optim.label_smoothing))
    model, optimizer = fresh()
    compiled_model = torch.compile(model)
    started = time.perf_counter()
    step_times(compiled_model, optimizer, x, y, device, dtype, 2, config.optim.label_smoothing)
    compile_seconds = time.perf_counter() - started
    compiled = statistics.median(step_times(compiled_model, optimizer, x, y, device, dtype, args.steps,
                                            config.optim.label_smoothing))
    eager_steps = args.budget_seconds / eager
    compiled_steps = max(0.0, args.budget_seconds - compile_seconds) / compiled
    print(f"{args.recipe} ({config.model.name}, batch {batch}) on {device} | torch {torch.__version__} | "
          f"autocast {why}")
    print(f"eager    {eager * 1000:8.1f} ms/step | {batch / eager:7.0f} images/s")
    print(f"compiled {compiled * 1000:8.1f} ms/step | {batch / compiled:7.0f} images/s | first 2 steps (compile) "
          f"{compile_seconds:.1f}s")
    print(f"speed-up {eager / compiled:.2f}x | in {args.budget_seconds:.0f}s: eager {eager_steps:.0f} steps, compiled "
          f"{compiled_steps:.0f} steps -> {'compile' if compiled_steps > eager_steps else 'eager'} wins")


if __name__ == "__main__":
    main()
