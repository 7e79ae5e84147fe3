"""Prediction throughput on the CPU: PyTorch vs the exported model in ONNX Runtime, side by side in one run.

    python benchmarks/predict_throughput.py --checkpoint runs/RUN [--batch-size 256] [--repeats 5]

Both paths start from uint8 pixels and include all preprocessing; images are the dataset's test images when
a local copy is at hand, else random pixels. Prints median images/s over repeats and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifarkit.export import PixelsToProbabilities, export_onnx, real_check_images
from cifarkit.inference import load_trained_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    trained = load_trained_model(args.checkpoint)
    images = real_check_images(trained, args.images)
    if images is None or len(images) < args.images:
        images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    module = PixelsToProbabilities(trained).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(args.checkpoint, onnx_path, check_images=images[:64])
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

        def run_torch():
            with torch.inference_mode():
                for start in range(0, len(images), args.batch_size):
                    module(torch.from_numpy(images[start : start + args.batch_size]))

        def run_onnx():
            for start in range(0, len(images), args.batch_size):
                session.run(None, {"pixels": images[start : start + args.batch_size]})

        results = {}
        for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            results[name] = len(images) / statistics.median(times)
    print(f"model {trained.config.model.name} | {len(images)} images, batch {args.batch_size} | "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads) | onnxruntime {ort.__version__}")
    for name, speed in results.items():
        print(f"{name:<12} {speed:10.1f} images/s (median of {args.repeats})")
    print(f"ratio onnxruntime / pytorch: {results['onnxruntime'] / results['pytorch']:.2f}x")


if __name__ == "__main__":
    main()
