"""How well does teaching work? The shipped CIFAR-100 model taught CIFAR-10's classes from its features, with
10, 100, ... training pictures per class, measured on CIFAR-10's 10,000 test pictures; in Python, in Node.js
and in Chromium (@cifarkit/classify's fitHead, on the same features; Chromium through playwright-core, with
--chromium), beside scikit-learn's LogisticRegression on the same standardised features as a reference.

    python benchmarks/teach_cifar10.py --data-dir CIFAR10_DIR [--per-class 10 100 1000 all] [--model NAME]
                                       [--cache FILE.npz]

The features come from the Python model (the same single pass the export outputs), so the three fits see the
same numbers and differ only in how they fit. Prints accuracy and the time to teach per row, and the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifarkit.data import load_dataset
from cifarkit.device import describe_cpu
from cifarkit.loading import load_model
from cifarkit.outlier import feature_pass
from cifarkit.pretrained import DEFAULT_PRETRAINED
from cifarkit.teach import fit_head, head_probabilities

TEACH_JS = Path(__file__).resolve().parents[1] / "web" / "packages" / "classify" / "dist" / "teach.js"

NODE_SCRIPT = """
import {fitHead, headProbabilities} from %s;
import {readFileSync} from 'node:fs';
const {train, labels, test} = JSON.parse(readFileSync(process.argv[1], 'utf8'));
const start = performance.now();
const head = fitHead(train, labels, 'ab'.repeat(32));
const seconds = (performance.now() - start) / 1000;
const predicted = test.map((row) => { const p = headProbabilities(head, row); let b = 0;
  for (let i = 1; i < p.length; i++) if (p[i] > p[b]) b = i; return head.labels[b]; });
console.log(JSON.stringify({seconds, predicted, regularization: head.regularization}));
"""


def picks(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """The first `per_class` training pictures of each class (all of them for None), in the dataset's order."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="CIFAR-10")
    parser.add_argument("--model", default=DEFAULT_PRETRAINED)
    parser.add_argument("--per-class", nargs="+", default=["10", "100", "1000"])
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--chromium", action="store_true", help="also fit in Chromium (web/e2e/teach-bench.mjs)")
    parser.add_argument("--no-node", action="store_true",
                        help="leave out the Node.js fit (its column says 'not run')")
    args = parser.parse_args()
    cpu = describe_cpu()
    print(f"CPU: {cpu.get('cpu')} | flags: {', '.join(cpu.get('flags', []))} | torch {cpu.get('torch')}")
    trained = load_model(args.model, "cpu")
    data = load_dataset("cifar10", args.data_dir, download=False)
    sizes = [None if s == "all" else int(s) for s in args.per_class]
    needed = np.unique(np.concatenate([picks(data.train_labels, s) for s in sizes]))
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    if "train" in cached and set(needed) <= set(cached["train_index"].tolist()):
        index, train_features, test_features = cached["train_index"], cached["train"], cached["test"]
    else:
        start = time.perf_counter()
        index = needed
        train_features = feature_pass(trained, data.train_images[index])[0]
        test_features = feature_pass(trained, data.test_images)[0]
        print(f"features of {len(index):,} training and {len(test_features):,} test pictures in "
              f"{time.perf_counter() - start:.0f}s")
        if args.cache:
            np.savez(args.cache, train_index=index, train=train_features, test=test_features)
    position = {int(i): k for k, i in enumerate(index.tolist())}
    names = data.classes
    truth = np.array([names[c] for c in data.test_labels])
    print(f"\nmodel {args.model} taught CIFAR-10's 10 classes; accuracy on the 10,000 test pictures")
    print(f"{'per class':>9} | {'Python':>7} {'time':>6} | {'Node.js':>7} {'time':>6} | {'sklearn':>7} {'time':>6}"
          + (f" | {'Chromium':>8} {'time':>6}" if args.chromium else ""))
    for size in sizes:
        chosen = picks(data.train_labels, size)
        features = train_features[[position[int(i)] for i in chosen]]
        labels = [names[c] for c in data.train_labels[chosen]]
        start = time.perf_counter()
        head = fit_head(features, labels, trained.feature_fingerprint)
        python_seconds = time.perf_counter() - start
        python = np.array(head["labels"])[head_probabilities(head, test_features).argmax(1)]
        node, node_seconds = (np.array([None] * len(truth)), float("nan")) if args.no_node else \
            _node(features, labels, test_features)
        reference, reference_seconds = _sklearn(features, labels, test_features, head["regularization"])
        row = [(python == truth).mean(), python_seconds, (node == truth).mean(), node_seconds,
               (reference == truth).mean(), reference_seconds]
        line = (f"{size or 'all':>9} | {row[0]:>7.2%} {row[1]:>5.1f}s | {row[2]:>7.2%} {row[3]:>5.1f}s | "
                f"{row[4]:>7.2%} {row[5]:>5.1f}s")
        if args.chromium:
            chromium, chromium_seconds = _chromium(features, labels, test_features)
            line += f" | {(chromium == truth).mean():>8.2%} {chromium_seconds:>5.1f}s"
        print(line, flush=True)


def _node(features, labels, test_features):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.json"
        path.write_text(json.dumps({"train": features.tolist(), "labels": labels, "test": test_features.tolist()}))
        result = subprocess.run(["node", "--input-type=module", "-e", NODE_SCRIPT % json.dumps(TEACH_JS.as_uri()),
                                 str(path)], capture_output=True, text=True, check=True)
    out = json.loads(result.stdout)
    return np.array(out["predicted"]), out["seconds"]


def _chromium(features, labels, test_features):
    web = Path(__file__).resolve().parents[1] / "web"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.ascontiguousarray(features, dtype=np.float32).tofile(folder / "train.f32")
        np.ascontiguousarray(test_features, dtype=np.float32).tofile(folder / "test.f32")
        (folder / "meta.json").write_text(json.dumps({"labels": labels, "d": int(features.shape[1])}))
        result = subprocess.run(["node", "e2e/teach-bench.mjs", str(folder)], cwd=web, capture_output=True, text=True,
                                check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return np.array(out["predicted"]), out["seconds"]


def _sklearn(features, labels, test_features, regularization):
    """LogisticRegression (lbfgs, multinomial, balanced) on the same standardisation, at the same penalty:
    sklearn's C is 1 / (regularization * n) for a mean loss plus regularization/2 |W|^2."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = features.mean(0), np.maximum(features.std(0), 1e-6)
    start = time.perf_counter()
    model = LogisticRegression(C=1.0 / ((regularization or 1e-2) * len(labels)), max_iter=5000,
                               class_weight="balanced")
    model.fit((features - mean) / scale, labels)
    seconds = time.perf_counter() - start
    return model.predict((test_features - mean) / scale), seconds


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
