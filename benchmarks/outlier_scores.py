"""Which outlier score should say "none of these"? The candidate scores of cifarkit.outlier for a CIFAR-100 model,
chosen on data the test sets never touch, then measured once on the test sets.

    python benchmarks/outlier_scores.py --data-dir C100 --ood-data-dir C10 [--model NAME] [--ood-choose 10000]

Choosing (OpenOOD's protocol, CIFAR-10 as the near out-of-distribution set; the two share no class): each score
is fitted on the model's training split, and compared by AUROC between the model's validation split (held-out
training pictures) and `--ood-choose` of CIFAR-10's *training* pictures. The best one's threshold keeps 95% of
the validation split `known`. Then, once: its AUROC and FPR at 95% TPR on the CIFAR-100 test set against the
CIFAR-10 test set. Prints a table per score, the choice, and the CPU model and flags.

Beside the near out-of-distribution set, the synthetic far ones of Hendrycks et al. (Outlier Exposure, ICLR
2019): Gaussian and Rademacher noise and blobs, with flat colours: the share of each each score still calls
`known` at its threshold (they do not take part in the choice; they show what each score misses).

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
    features_and_logits,
    fit_combined,
    fpr_at_tpr,
    outlier_module,
    score,
    threshold_keeping,
)
from cifarkit.pretrained import DEFAULT_PRETRAINED

FAR_KNOWN_AT_MOST = 0.05  # a chosen score calls at most this share of each noise or blob set `known`


def synthetic_outliers(count: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Outlier Exposure's synthetic sets (Gaussian noise, Rademacher noise, blobs) and flat colours, uint8 NHWC."""
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
    }


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
    for name, images in sets.items():
        if f"{name}/features" in cached:
            arrays[name] = cached[f"{name}/features"], cached[f"{name}/logits"]
            continue
        start = time.perf_counter()
        arrays[name] = features_and_logits(trained, images)
        print(f"{name}: {len(images):,} pictures, features and logits in {time.perf_counter() - start:.0f}s",
              flush=True)
    if args.cache:
        np.savez(args.cache, **{f"{name}/{kind}": value for name, (f, lg) in arrays.items()
                                for kind, value in (("features", f), ("logits", lg))})
    far = list(synthetic_outliers())
    train_features, _ = arrays["train split"]
    train_labels = data.train_labels[split.train]

    print(f"\nmodel {args.model}: chosen on the validation split ({len(split.val):,}) against "
          f"{len(choose_ood):,} CIFAR-10 training pictures")
    print(f"{'score':<17} {'AUROC':>7} {'FPR@95':>7}  known at the threshold: " + ", ".join(far))
    figures, modules = {}, {}
    fits = {**SCORES, COMBINED: lambda *_: outlier_module(fit_combined(*arrays["validation split"], train_features))}
    for name, fit in fits.items():
        modules[name] = fit(train_features, train_labels, trained.temperature)
        inside = score(modules[name], *arrays["validation split"])
        outside = score(modules[name], *arrays["CIFAR-10 train"])
        threshold = threshold_keeping(inside)
        figures[name] = {"auroc": auroc(inside, outside), "fpr95": fpr_at_tpr(inside, outside),
                         "far_known": {k: float((score(modules[name], *arrays[k]) <= threshold).mean()) for k in far}}
        print(f"{name:<17} {figures[name]['auroc']:>7.4f} {figures[name]['fpr95']:>7.4f}  "
              + ", ".join(f"{v:.0%}" for v in figures[name]["far_known"].values()))
    noise = [k for k in far if k != "flat colours"]
    eligible = [n for n in figures if max(figures[n]["far_known"][k] for k in noise) <= FAR_KNOWN_AT_MOST]
    chosen = max(eligible or figures, key=lambda n: figures[n]["auroc"])
    threshold = threshold_keeping(score(modules[chosen], *arrays["validation split"]))
    inside = score(modules[chosen], *arrays["CIFAR-100 test"])
    outside = score(modules[chosen], *arrays["CIFAR-10 test"])
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
