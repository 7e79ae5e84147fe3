"""Which --fit should be the default? CIFAR-100 test pictures made into photo-shaped pictures two ways, each
scored with --fit squash and --fit crop by the shipped model.

    python benchmarks/fit_choice.py --data-dir DIR [--model NAME] [--images 10000]

- "padded": the picture is the object, centred in a wider (or taller) frame, as in a photo of one thing: it is
  enlarged 3x and the frame extended to the aspect ratio by mirroring its edges (no blank bars a network
  could learn to ignore). Crop recovers the object exactly; squash distorts it.
- "stretched": the whole scene is the picture, stretched to the aspect ratio, as in a wide photo whose subject
  fills it. Squash recovers it; crop cuts its sides.

Prints single-view top-1 for each aspect ratio (4:3, 16:9, 3:4), way and fit, and the mean over them, with the
CPU model and flags.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from cifarkit.data import load_dataset
from cifarkit.device import describe_cpu
from cifarkit.images import fit_and_resize
from cifarkit.inference import predict_arrays
from cifarkit.loading import load_model
from cifarkit.pretrained import DEFAULT_PRETRAINED

ASPECTS = {"4:3": (4, 3), "16:9": (16, 9), "3:4": (3, 4)}
SCALE = 3  # a 32x32 object becomes 96 pixels across: a small photo


def padded(image: np.ndarray, aspect: tuple[int, int]) -> Image.Image:
    side = 32 * SCALE
    big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))
    width = max(side, round(side * aspect[0] / aspect[1]))
    height = max(side, round(side * aspect[1] / aspect[0]))
    left, top = (width - side) // 2, (height - side) // 2
    frame = np.pad(big, ((top, height - side - top), (left, width - side - left), (0, 0)), mode="symmetric")
    return Image.fromarray(frame)


def stretched(image: np.ndarray, aspect: tuple[int, int]) -> Image.Image:
    side = 32 * SCALE
    width = max(side, round(side * aspect[0] / aspect[1]))
    height = max(side, round(side * aspect[1] / aspect[0]))
    return Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)


WAYS = {"padded": padded, "stretched": stretched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default=DEFAULT_PRETRAINED)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    cpu = describe_cpu()
    print(f"CPU: {cpu.get('cpu')} | flags: {', '.join(cpu.get('flags', []))} | torch {cpu.get('torch')}")
    trained = load_model(args.model)
    data = load_dataset("cifar100", args.data_dir, download=False)
    images, labels = data.test_images[: args.images], data.test_labels[: args.images]
    means: dict[str, list[float]] = {}
    print(f"{args.model}, {len(labels):,} CIFAR-100 test pictures, single view top-1")
    print("| aspect | way | squash | crop |\n| --- | --- | --- | --- |")
    for aspect_name, aspect in ASPECTS.items():
        for way_name, way in WAYS.items():
            row = {}
            for fit in ("squash", "crop"):
                pixels = np.stack([fit_and_resize(way(image, aspect), fit) for image in images])
                top1 = float((predict_arrays(trained, pixels, 1)[0][:, 0] == labels).mean())
                row[fit] = top1
                means.setdefault(f"{way_name} {fit}", []).append(top1)
            print(f"| {aspect_name} | {way_name} | {row['squash']:.2%} | {row['crop']:.2%} |", flush=True)
    for key, values in means.items():
        print(f"mean over aspects, {key}: {np.mean(values):.2%}")
    for fit in ("squash", "crop"):
        print(f"mean over aspects and ways, {fit}: {np.mean(means[f'padded {fit}'] + means[f'stretched {fit}']):.2%}")


if __name__ == "__main__":
    main()
