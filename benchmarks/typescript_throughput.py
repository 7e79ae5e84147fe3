"""Classification throughput of the TypeScript library in Node.js beside the Python ONNX Runtime path, on the
same shipped model, the same real test images and this machine, in one run.

    python benchmarks/typescript_throughput.py [--data-dir DIR] [--images 2560] [--batch-size 256]

Two paths each: from prepared 32x32 pixels (ONNX Runtime alone: onnxruntime-node vs onnxruntime in Python),
and from encoded PNG files in memory (decode with sharp vs Pillow, Pillow-exact resize, then the model).
Needs the built library (cd web && npm ci && npm run build). Prints medians over repeats and the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cifarkit.export import make_session, real_check_images
from cifarkit.images import as_model_pixels
from cifarkit.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "web" / "packages" / "classify"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="CIFAR-10 (the shipped model's dataset): real test images")
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not (PACKAGE / "dist" / "node.js").is_file():
        raise SystemExit("build the library first: cd web && npm ci && npm run build")
    trained = load_model(None)
    images = real_check_images(trained, args.images, args.data_dir)
    source = "real test images"
    if images is None or len(images) < args.images:
        images, source = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8), "random"
    session = make_session(PACKAGE / "model" / "model.onnx")
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())

    def python_pixels():
        for start in range(0, len(images), args.batch_size):
            session.run(None, {"pixels": images[start : start + args.batch_size]})

    def python_png():
        for start in range(0, len(pngs), args.batch_size):
            chunk = pngs[start : start + args.batch_size]
            batch = np.stack([as_model_pixels(Image.open(io.BytesIO(data))) for data in chunk])
            session.run(None, {"pixels": batch})

    python = {"pixels_per_second": len(images) / median_seconds(python_pixels, args.repeats),
              "png_per_second": len(pngs) / median_seconds(python_png, args.repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pixels.bin").write_bytes(images.tobytes())
        folder = Path(tmp) / "png"
        folder.mkdir()
        for i, data in enumerate(pngs):
            (folder / f"{i:05d}.png").write_bytes(data)
        out = subprocess.run(["node", "bench/throughput.mjs", str(Path(tmp) / "pixels.bin"), str(folder),
                              str(args.batch_size), str(args.repeats)], cwd=PACKAGE, capture_output=True, text=True,
                             check=True)
    node = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"shipped model, {len(images)} {source}, batch {args.batch_size}, median of {args.repeats} | node "
          f"{node['node']}")
    for key, label in (("pixels_per_second", "from prepared pixels"), ("png_per_second", "from PNG bytes")):
        print(f"{label:<21} Node.js {node[key]:9.1f} images/s | Python {python[key]:9.1f} images/s | "
              f"Node/Python {node[key] / python[key]:.2f}x")


if __name__ == "__main__":
    main()
