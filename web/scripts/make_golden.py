"""Write the golden vectors that keep the browser's preprocessing identical to `cifarkit predict`.

    python web/scripts/make_golden.py            # rewrites web/packages/classify/test/golden/

Each case is a PNG picture and the 32x32x3 uint8 pixels that cifarkit.images.load_image makes of it; the
TypeScript tests (web/packages/classify/test/preprocess.test.ts in Node.js, exactly; the page's end-to-end test in
Chromium, within 1/255) must reproduce them, and a Python test checks
that this file still matches what the Python side produces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cifarkit.images import load_image

GOLDEN = Path(__file__).resolve().parents[1] / "packages" / "classify" / "test" / "golden"


def cases() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:181, 0:243]
    photo = np.stack([(x * 255 // 242), (y * 255 // 180), ((x + y) * 3) % 256], -1).astype(np.uint8)
    photo = np.clip(photo.astype(int) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    alpha = np.dstack([photo[:96, :80], (np.arange(80)[None, :].repeat(96, 0) * 3).astype(np.uint8)])
    small = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    return {
        "photo-243x181": Image.fromarray(photo),
        "rgba-80x96": Image.fromarray(alpha, "RGBA"),
        "grey-64x40": Image.fromarray(photo[:40, :64, 1], "L"),
        "palette-50x50": Image.fromarray(photo[:50, :50]).convert("P"),
        "small-17x13": Image.fromarray(small),
        "exact-32x32": Image.fromarray(photo[100:132, 100:132]),
        # tall pictures: Pillow 13 runs the vertical pass first when the height shrinks by more than twice
        # as many pixels as the width (45x60, 33x64); the order changes the rounding
        "tall-45x60": Image.fromarray(photo[:60, :45]),
        "tall-33x64": Image.fromarray(photo[60:124, 30:63]),
    }


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    index = []
    for name, image in cases().items():
        path = GOLDEN / f"{name}.png"
        image.save(path)
        index.append({"file": path.name, "pixels": load_image(path).reshape(-1).tolist()})
    (GOLDEN / "golden.json").write_text(json.dumps(index) + "\n")
    print(f"wrote {len(index)} golden cases to {GOLDEN}")


if __name__ == "__main__":
    main()
