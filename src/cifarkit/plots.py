"""PNG figures: image grids of a dataset (`cifarkit show`), training curves, accuracy against training time.
Written atomically; no screen needed."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from cifarkit.files import atomic_write_bytes


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def image_grid(images: np.ndarray, titles: list[str], path: Path, columns: int | None = None,
               title: str | None = None) -> Path:
    """Save uint8 NHWC `images` as a grid, each with its title (label name) above it."""
    plt = pyplot()
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


# (panel title, metric keys drawn in it); a key absent from the metrics file is skipped.
CURVE_PANELS = (
    ("loss", ("train/loss", "val/loss")),
    ("top-1 accuracy", ("train/top1", "val/top1")),
    ("top-5 accuracy", ("train/top5", "val/top5")),
    ("learning rate", ("lr",)),
)


def training_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Training curves from RUN_DIR/metrics.jsonl: loss, top-1, top-5, learning rate, dropout rates."""
    from cifarkit.errors import CifarkitError
    from cifarkit.runlog import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise CifarkitError(f"{run_dir} has no metrics.jsonl; is it a cifarkit run directory?")
    rows = read_metrics(run_dir)
    if not rows:
        raise CifarkitError(f"{run_dir}/metrics.jsonl is empty: the run logged no step yet")
    dropout_keys = sorted({k for row in rows for k in row if k.startswith("dropout/")},
                          key=lambda k: int(k.removeprefix("dropout/stack") or 0))
    panels = [*CURVE_PANELS, *([("dropout rates", tuple(dropout_keys))] if dropout_keys else [])]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    steps = [row["step"] for row in rows]
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            values = [row.get(key) for row in rows]
            if any(v is not None for v in values):
                ax.plot(steps, values, label=key.split("/")[-1] if title == "dropout rates" else key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, out or run_dir / "curves.png")


def accuracy_against_time(series: dict[str, list[tuple[float, float, float]]],
                          points: dict[str, tuple[float, float]], path: Path, title: str) -> Path:
    """Test top-1 against training minutes: a line per budget-fitted recipe (minutes, mean top-1, std over
    seeds; error bars where there are several) and a marker per long run (minutes, top-1). Log-scale time,
    as the budgets double and triple."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for name, runs in series.items():
        minutes, top1, std = zip(*sorted(runs), strict=True)
        ax.errorbar(minutes, [100 * t for t in top1], yerr=[100 * s for s in std], marker="o", capsize=3,
                    label=name)
    for name, (minutes, top1) in points.items():
        ax.plot([minutes], [100 * top1], marker="*", markersize=12, linestyle="none", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training time on the CPU (minutes, log scale)")
    ax.set_ylabel("CIFAR-100 test top-1 (%, single view)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)
