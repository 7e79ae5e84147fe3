"""Time reading a whole extracted dataset into uint8 arrays (restricted unpickling + validation + NHWC).

    python benchmarks/data_loading.py --dataset cifar10 --data-dir DIR [--repeats 5]

Prints the median and min over repeats (the first read may include the OS page cache filling).
"""

from __future__ import annotations

import argparse
import statistics
import time

from cifarkit.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar100", choices=["cifar100", "cifar10"])
    parser.add_argument("--data-dir")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        data = load_dataset(args.dataset, args.data_dir, download=False)
        times.append(time.perf_counter() - started)
    n = len(data.train_images) + len(data.test_images)
    print(f"{args.dataset}: {n} images from {data.source}")
    print(f"load seconds: median {statistics.median(times):.3f}, min {min(times):.3f} over {args.repeats} runs "
          f"({', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
