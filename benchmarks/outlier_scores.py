"""Which outlier score should say "none of these"? The candidate scores of cifarkit.outlier for a CIFAR-100 model,
chosen on data the test sets never touch, then measured once on the test sets.

    python benchmarks/outlier_scores.py --data-dir C100 --ood-data-dir C10 [--model NAME] [--ood-choose 10000]

Choosing (OpenOOD's protocol, CIFAR-10 as the near out-of-distribution set; the two share no class): each score is
fitted on the model's training split, and compared by AUROC between the model's validation split (held-out training
pictures) and `--ood-choose` of CIFAR-10's *training* pictures, and by the share of each synthetic far set it still
calls `known` at the threshold that keeps 95% of the validation split known: the sets of Hendrycks et al. (Outlier
Exposure, ICLR 2019: Gaussian and Rademacher noise, blobs), flat colours and colour wheels, none of them a picture
of any class. The rule: of the scores within 0.02 AUROC of the best, the one that calls the smallest share of its
worst far set known (a score that is blind to CIFAR-10 is never chosen for its far sets; a score that calls every
noise picture a class is not chosen for a last hundredth of AUROC). Then, once: its AUROC and FPR at 95% TPR on the
CIFAR-100 test set against the CIFAR-10 test set. Prints a table per score, the choice, and the CPU model and flags.

    --cache FILE.npz keeps the features and logits, so a second run skips the network
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cifarkit.data import load_dataset
from cifarkit.data.split import split_for
from cifarkit.device import describe_cpu
from cifarkit.loading import load_model
from cifarkit.outlier import (
    COMBINED,
    SCORES,
    auroc,
    feature_pass,
    fit_combined,
    fit_knn,
    fpr_at_tpr,
    outlier_module,
    score,
    threshold_keeping,
)
from cifarkit.pretrained import DEFAULT_PRETRAINED

# the rule: of the scores within this AUROC of the best on CIFAR-10, the one that calls the smallest share of its
# worst synthetic far set `known` (then the better AUROC)
AUROC_GIVEN_UP = 0.02


def synthetic_outliers(count: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Outlier Exposure's synthetic sets (Gaussian noise, Rademacher noise, blobs), flat colours and colour wheels,
    uint8 NHWC."""
    rng = np.random.default_rng(seed)
    noise = rng.random((count, 32, 32)) > 0.5
    blurred = noise.astype(float)
    for axis in (1, 2):  # a 5-tap box blur each way, then a threshold: blobs of black and white
        blurred = sum(np.roll(blurred, shift, axis=axis) for shift in range(-2, 3)) / 5
    return {
        "Gaussian noise": np.clip(rng.normal(128, 64, (count, 32, 32, 3)), 0, 255).astype(np.uint8),
        "Rademacher noise": (rng.integers(0, 2, (count, 32, 32, 3)) * 255).astype(np.uint8),
        "blobs": np.repeat((blurred > 0.5)[..., None] * 255, 3, axis=-1).astype(np.uint8),
        "flat colours": np.broadcast_to(rng.integers(0, 256, (count, 1, 1, 3)), (count, 32, 32, 3)).astype(np.uint8),
        "colour wheels": colour_wheels(rng, count),
    }


def colour_wheels(rng: np.random.Generator, count: int) -> np.ndarray:
    """Hue by angle, saturation by radius (a colour picker's wheel), of random size, place and turn, on a random
    grey: a round, colourful thing that is none of the classes (at 32x32 it resembles an apple)."""
    y, x = np.mgrid[0:32, 0:32] + 0.5
    out = np.empty((count, 32, 32, 3), np.uint8)
    for n in range(count):
        cy, cx, radius = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(8, 16)
        r = np.hypot(y - cy, x - cx) / radius
        hue = (np.arctan2(y - cy, x - cx) / (2 * np.pi) + rng.uniform()) % 1
        sector, f = np.floor(hue * 6), hue * 6 - np.floor(hue * 6)
        s = np.clip(r, 0, 1)
        p, q, t = 1 - s, 1 - s * f, 1 - s * (1 - f)
        rgb = np.select([sector[..., None] == i for i in range(6)],
                        [np.stack(c, -1) for c in ((1 + 0 * s, t, p), (q, 1 + 0 * s, p), (p, 1 + 0 * s, t),
                                                   (p, q, 1 + 0 * s), (t, p, 1 + 0 * s), (1 + 0 * s, p, q))])
        background = rng.uniform(0, 1)
        out[n] = (255 * np.where((r <= 1)[..., None], rgb, background)).astype(np.uint8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the model's dataset (CIFAR-100)")
    parser.add_argument("--ood-data-dir", required=True, help="CIFAR-10, the out-of-distribution pictures")
    parser.add_argument("--model", default=DEFAULT_PRETRAINED)
    parser.add_argument("--ood-choose", type=int, default=10_000, help="CIFAR-10 training pictures to choose on")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--cache", type=Path, help="an .npz that keeps the features and logits between runs")
    args = parser.parse_args()
    cpu = describe_cpu()
    print(f"CPU: {cpu.get('cpu')} | flags: {', '.join(cpu.get('flags', []))} | torch {cpu.get('torch')}")

    trained = load_model(args.model, "cpu")
    data = load_dataset(trained.data.dataset, args.data_dir, download=False)
    ood = load_dataset("cifar10", args.ood_data_dir, download=False)
    split = split_for(data, trained.data)
    choose_ood = np.random.default_rng(0).permutation(len(ood.train_labels))[: args.ood_choose]
    sets = {"train split": data.train_images[split.train], "validation split": data.train_images[split.val],
            "CIFAR-10 train": ood.train_images[np.sort(choose_ood)], "CIFAR-100 test": data.test_images,
            "CIFAR-10 test": ood.test_images, **synthetic_outliers()}
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    arrays = {}
    kinds = ("features", "logits", "low_level")
    for name, images in sets.items():
        if f"{name}/features" in cached:
            arrays[name] = tuple(cached.get(f"{name}/{kind}") for kind in kinds)
            continue
        start = time.perf_counter()
        arrays[name] = feature_pass(trained, images)
        print(f"{name}: {len(images):,} pictures, features and logits in {time.perf_counter() - start:.0f}s",
              flush=True)
    if args.cache:
        np.savez(args.cache, **{f"{name}/{kind}": value for name, values in arrays.items()
                                for kind, value in zip(kinds, values, strict=True) if value is not None})
    far = list(synthetic_outliers())
    train_features, _, train_low_level = arrays["train split"]
    train_labels = data.train_labels[split.train]

    def scores(module, name: str) -> np.ndarray:
        features, logits, low_level = arrays[name]
        return score(module, features, logits, low_level=low_level)

    print(f"\nmodel {args.model}: chosen on the validation split ({len(split.val):,}) against "
          f"{len(choose_ood):,} CIFAR-10 training pictures")
    print(f"{'score':<16} {'AUROC':>7} {'FPR@95':>7}  known at the threshold: " + ", ".join(far))
    figures, modules = {}, {}
    val_features, val_logits, val_low_level = arrays["validation split"]
    fits = {**SCORES,
            "max_logit_or_knn": lambda *_: outlier_module(fit_combined(val_features, val_logits, train_features))}
    if train_low_level is not None:  # a network with low-level features: a kNN there, and the three together
        fits["low_level_knn"] = lambda *_: fit_knn(train_low_level, low_level=True)
        fits[COMBINED] = lambda *_: outlier_module(fit_combined(val_features, val_logits, train_features,
                                                                val_low_level=val_low_level,
                                                                train_low_level=train_low_level))
    for name, fit in fits.items():
        modules[name] = fit(train_features, train_labels, trained.temperature)
        inside = scores(modules[name], "validation split")
        outside = scores(modules[name], "CIFAR-10 train")
        threshold = threshold_keeping(inside)
        figures[name] = {"auroc": auroc(inside, outside), "fpr95": fpr_at_tpr(inside, outside),
                         "far_known": {k: float((scores(modules[name], k) <= threshold).mean()) for k in far}}
        print(f"{name:<16} {figures[name]['auroc']:>7.4f} {figures[name]['fpr95']:>7.4f}  "
              + ", ".join(f"{v:.0%}" for v in figures[name]["far_known"].values()))
    def worst_far(n: str) -> float:  # the largest share of one far set the score still calls known
        return max(figures[n]["far_known"].values())

    best = max(figure["auroc"] for figure in figures.values())
    near = [n for n in figures if figures[n]["auroc"] >= best - AUROC_GIVEN_UP]
    chosen = min(near, key=lambda n: (worst_far(n), -figures[n]["auroc"]))
    threshold = threshold_keeping(scores(modules[chosen], "validation split"))
    inside = scores(modules[chosen], "CIFAR-100 test")
    outside = scores(modules[chosen], "CIFAR-10 test")
    test = {"auroc": auroc(inside, outside), "fpr95": fpr_at_tpr(inside, outside),
            "known_in": float((inside <= threshold).mean()), "known_out": float((outside <= threshold).mean())}
    print(f"\nchosen: {chosen} (threshold {threshold:.6g}: 95% of the validation split known)")
    print(f"test, once: AUROC {test['auroc']:.4f}, FPR at 95% TPR {test['fpr95']:.4f}; at the threshold "
          f"{test['known_in']:.1%} of CIFAR-100 test known, {test['known_out']:.1%} of CIFAR-10 test")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "cpu": cpu.get("cpu"), "choose": figures, "chosen": chosen,
                       "threshold": threshold, "test": test}, f, indent=2)


if __name__ == "__main__":
    main()
