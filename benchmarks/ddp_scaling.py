"""Scaling efficiency of data-parallel training: the same recipe and global batch on 1, 2, ... processes.

    python benchmarks/ddp_scaling.py --data-dir DIR [--procs 1 2] [--recipe fast10] [--steps 30]

Each configuration is launched with torchrun (gloo on the CPU, NCCL on GPUs) and its training images/s
(evaluation excluded, read from the run's results.json) is compared with one process:
efficiency = throughput(N) / (N * throughput(1)) when each process brings its own device (GPUs), and
throughput(N) / throughput(1) on a CPU, where the processes share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(procs: int, args, out: Path) -> dict:
    name = f"p{procs}"
    cli = ["-m", "cifarkit", "train", "--recipe", args.recipe, "--data-dir", args.data_dir, "--out-dir", str(out),
           "--run-name", name, "--device", args.device, "--steps", str(args.steps),
           "--set", f"train.batch_size={args.batch_size}", "--set", f"train.eval_every={args.steps}",
           "--set", "train.tta=false", *sum((["--set", s] for s in args.set), [])]
    command = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
                                 if procs > 1 else []), *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / name / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast10")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512, help="global batch (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: run(p, args, Path(tmp)) for p in args.procs}
    base = results[args.procs[0]]["images_per_second"]
    print(f"recipe {args.recipe} | global batch {args.batch_size} | {args.steps} steps | device {args.device} | "
          f"{os.cpu_count()} CPU cores")
    for procs, result in results.items():
        speed = result["images_per_second"]
        per_device = speed / (procs * base)
        print(f"{procs} process(es): {speed:8.1f} images/s | speed-up {speed / base:.2f}x | "
              f"efficiency per device {per_device:.2f} | test top1 {result['test']['top1']:.4f}")


if __name__ == "__main__":
    main()
