"""Time to accuracy: run a cifarkit recipe for n seeds, and optionally a plain reference under the same rules.

    python benchmarks/time_to_accuracy.py --recipe fast10 --seeds 5 --data-dir DIR
    python benchmarks/time_to_accuracy.py --recipe fast10-cpu --budget-seconds 600 --reference --data-dir DIR

Prints test accuracy (single view, and flip TTA where the recipe reports it) as mean and standard deviation
over seeds, training wall time (device synchronized; evaluation passes excluded from images/s), images/s and
the device. With --reference it then trains the plain baseline that most CIFAR code uses -- the
pytorch-cifar100 ResNet-18 recipe: a standard DataLoader with per-image transforms (pad-4 random crop,
flip, normalize) in worker processes, fp32, SGD 0.1 / momentum 0.9 / weight decay 5e-4, batch 128 -- for
the same time budget on the same device and data split, and prints the ratios measured in this one run.
Results also go to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.config import load_config
from cifarkit.device import device_name_of, resolve_device, synchronize
from cifarkit.stats import mean_std_text
from cifarkit.train import train_seeds
from cifarkit.train.setup import prepare_data


class PerImageDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR dataset + RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor +
    Normalize do, one image at a time in Python (torchvision itself is not a dependency)."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, mean, std, train: bool):
        self.images, self.labels, self.train = images_nhwc, labels, train
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        if self.train:
            padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
            y, x = np.random.randint(0, 9, size=2)
            image = padded[y : y + 32, x : x + 32]
            if np.random.rand() < 0.5:
                image = image[:, ::-1]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
        return torch.from_numpy((chw - self.mean) / self.std), int(self.labels[i])


def run_reference(prepared, budget_seconds: float, device, workers: int, seed: int = 0) -> dict:
    from cifarkit.models import create_model

    torch.manual_seed(seed)
    np.random.seed(seed)
    data, split = prepared.data, prepared.split
    images = data.train_images[split.train]
    mean = images.reshape(-1, 3).mean(0) / 255
    std = images.reshape(-1, 3).std(0) / 255
    train_set = PerImageDataset(images, data.train_labels[split.train], mean, std, train=True)
    test_set = PerImageDataset(data.test_images, data.test_labels, mean, std, train=False)
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    model = create_model("resnet18", data.spec.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(loader)
    step, seen = 0, 0
    started = time.perf_counter()
    model.train()
    done = False
    while not done:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:  # pytorch-cifar100's warm-up over the first epoch
                group["lr"] = 0.1 * min(1.0, (step + 1) / steps_per_epoch)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step, seen = step + 1, seen + len(y)
            if time.perf_counter() - started > budget_seconds:
                done = True
                break
    synchronize(device)
    elapsed = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test_set, batch_size=500):
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return {"test_top1": correct / len(test_set), "steps": step, "epochs": seen / len(train_set),
            "train_seconds": elapsed, "images_per_second": seen / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast10")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget-seconds", type=float, help="fit the recipe (and the reference) to this budget")
    parser.add_argument("--reference", action="store_true", help="also train the plain ResNet-18 reference")
    parser.add_argument("--reference-workers", type=int, default=2)
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/time_to_accuracy")
    args = parser.parse_args()

    overrides = [f"train.seeds={args.seeds}", f"train.device={json.dumps(args.device)}",
                 f"train.out_dir={json.dumps(args.out)}", *args.set]
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    if args.budget_seconds:
        overrides.append(f"train.budget_seconds={args.budget_seconds}")
    config = load_config(args.recipe, overrides)
    device = resolve_device(args.device)
    print(f"device: {device_name_of(device)} | torch {torch.__version__} | threads {torch.get_num_threads()}",
          flush=True)
    summary = train_seeds(config)
    report = {"recipe": args.recipe, "device": device_name_of(device), "torch": torch.__version__,
              "seeds": args.seeds, "budget_seconds": args.budget_seconds, "cifarkit": summary}
    top1 = summary["test_top1"]
    line = f"{args.recipe}: test top1 {mean_std_text(top1)} over {args.seeds} seed(s)"
    for key, label in (("test_tta_top1", "flip TTA"), ("test_tta_translate_top1", "flip+translate TTA")):
        if key in summary:
            line += f" | {label} {mean_std_text(summary[key])}"
    line += (f" | {summary['train_seconds']['mean']:.1f}s training ({summary['wall_seconds']['mean']:.1f}s with "
             f"validation passes) per seed | {summary['images_per_second']['mean']:.0f} images/s")
    print(line, flush=True)

    if args.reference:
        budget = args.budget_seconds or summary["wall_seconds"]["mean"]
        prepared = prepare_data(config, device)
        reference = run_reference(prepared, budget, device, args.reference_workers)
        report["reference"] = reference
        print(f"reference (plain ResNet-18, per-image DataLoader, fp32): test top1 {reference['test_top1']:.4f} "
              f"after {reference['epochs']:.2f} epochs in {reference['train_seconds']:.1f}s | "
              f"{reference['images_per_second']:.0f} images/s", flush=True)
        print(f"ratios (cifarkit / reference): accuracy {top1['mean'] / reference['test_top1']:.2f}x | "
              f"throughput {summary['images_per_second']['mean'] / reference['images_per_second']:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.recipe}-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / f'{args.recipe}-report.json'}")


if __name__ == "__main__":
    main()
