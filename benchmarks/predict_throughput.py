"""Prediction throughput on the CPU: PyTorch eager vs the exported model in ONNX Runtime (float, and int8
when the dataset is at hand), side by side in one run.

    python benchmarks/predict_throughput.py [--model NAME|RUN_DIR|FILE.pt] [--data-dir DIR] [--batch-size 256]

All paths start from uint8 pixels and include all preprocessing; images are the dataset's test images when
a local copy is at hand, else random pixels. Prints median images/s over repeats, the ratios to PyTorch, and
the int8 model's test accuracy change.

It also prints the arithmetic that bounds the float paths: the network's multiply-adds per image (counted
from its convolutions and linear layers), the CPU's fp32 matrix-multiply rate measured with the same threads,
and so the most float images/s this CPU could give; each path's share of that ceiling is printed beside it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifarkit.export import PixelsToProbabilities, export_onnx, make_session, real_check_images
from cifarkit.loading import load_model
from cifarkit.train.projection import matmul_flops, multiply_adds_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a shipped model's name, a run directory or a checkpoint (default: the "
                                        "default shipped model)")
    parser.add_argument("--data-dir", help="the model's dataset (test images, and int8 calibration)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    trained = load_model(args.model)
    images = real_check_images(trained, args.images, args.data_dir)
    if images is None or len(images) < args.images:
        images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    module = PixelsToProbabilities(trained).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"onnxruntime": Path(tmp) / "model.onnx"}
        export_onnx(args.model, paths["onnxruntime"], check_images=images[:64])
        int8 = None
        try:
            paths["onnxruntime int8"] = Path(tmp) / "int8.onnx"
            int8 = export_onnx(args.model, paths["onnxruntime int8"], check_images=images[:64], quantize="int8",
                               data_dir=args.data_dir)["quantization"]
        except Exception as e:  # no dataset here: no calibration images, no int8 row
            paths.pop("onnxruntime int8")
            print(f"int8 skipped: {e}")
        sessions = {name: make_session(path) for name, path in paths.items()}

        def run_torch():
            with torch.inference_mode():
                for start in range(0, len(images), args.batch_size):
                    module(torch.from_numpy(images[start : start + args.batch_size]))

        def runner(session):
            def run():
                for start in range(0, len(images), args.batch_size):
                    session.run(None, {"pixels": images[start : start + args.batch_size]})
            return run

        results = {}
        for name, fn in (("pytorch", run_torch), *((n, runner(s)) for n, s in sessions.items())):
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            results[name] = len(images) / statistics.median(times)
    print(f"model {trained.name} ({trained.model_spec.name}) | {len(images)} images, batch {args.batch_size} | "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads) | onnxruntime {ort.__version__}")
    macs = multiply_adds_per_image(copy.deepcopy(trained.model).float().eval(), torch.device("cpu"))
    peak = matmul_flops(torch.float32)
    ceiling = peak / (2 * macs)
    for name, speed in results.items():
        share = "" if "int8" in name else f" | {speed / ceiling:.0%} of the fp32 ceiling"
        print(f"{name:<17} {speed:10.1f} images/s (median of {args.repeats}) | "
              f"{speed / results['pytorch']:.2f}x PyTorch eager{share}")
    print(f"network: {macs / 1e6:.1f} M multiply-adds per image | fp32 matrix product on this CPU: {peak / 1e9:.0f} "
          f"GFLOP/s | fp32 ceiling: {ceiling:.0f} images/s = {ceiling / results['pytorch']:.2f}x PyTorch eager")
    if int8:
        print(f"int8 test top1 {int8['test_top1_int8']:.4f} vs float {int8['test_top1_float']:.4f} "
              f"({100 * int8['change']:+.2f} points, {int8['test_images']} test images)")


if __name__ == "__main__":
    main()
