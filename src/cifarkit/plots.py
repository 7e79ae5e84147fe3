"""PNG figures: image grids of a dataset (`cifarkit show`). Written atomically; no screen needed."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from cifarkit.train.checkpoint import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def image_grid(images: np.ndarray, titles: list[str], path: Path, columns: int | None = None,
               title: str | None = None) -> Path:
    """Save uint8 NHWC `images` as a grid, each with its title (label name) above it."""
    plt = _pyplot()
    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def first_images_sheet(images: np.ndarray, labels: np.ndarray, names: list[str], count: int, path: Path) -> Path:
    count = min(count, len(images))
    return image_grid(images[:count], [names[i] for i in labels[:count]], path)


def one_per_class_sheet(images: np.ndarray, labels: np.ndarray, names: list[str], path: Path) -> Path:
    """The first training image of every class, in class order."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(len(names)) if (labels == c).any()]
    return image_grid(images[first], [names[labels[i]] for i in first], path,
                      columns=10 if len(first) > 10 else len(first))
