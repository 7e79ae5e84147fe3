"""`cifarkit evaluate`: an honest, complete report of a trained model on the validation or test split.

Top-1, top-5 and loss; per-class accuracy; for CIFAR-100 the superclass view (fine predictions mapped to
their superclass); the confusion matrix (CSV and PNG) and the most-confused pairs; a gallery of
misclassified images; calibration (expected calibration error, reliability diagram). Everything goes into
one JSON report together with the checkpoint's hash and config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from cifarkit.calibration import binned_ece as expected_calibration_error  # its name here since before
from cifarkit.data import load_dataset, split_for
from cifarkit.data.loader import to_device_images
from cifarkit.errors import ConfigError
from cifarkit.files import (
    atomic_write_bytes,
    check_replaceable_folder,
    check_writable_folder,
    json_text,
    make_staging_folder,
    replace_folder,
)
from cifarkit.inference import TrainedModel
from cifarkit.loading import load_model
from cifarkit.pretrained import PRETRAINED
from cifarkit.text import csv_text

SPLITS = ("val", "test")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def compute_report(probabilities: np.ndarray, labels: np.ndarray, classes: list[str],
                   fine_to_coarse: list[int] | None = None, superclasses: list[str] | None = None) -> dict:
    """Every figure of the report from the model's probabilities (N, C) and the true labels."""
    n, count = probabilities.shape
    predictions = probabilities.argmax(1)
    top5 = np.argsort(-probabilities, axis=1)[:, : min(5, count)]
    correct = predictions == labels
    loss = float(-np.log(np.clip(probabilities[np.arange(n), labels], 1e-12, None)).mean())
    matrix = confusion_matrix(labels, predictions, count)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0]
    confused = [{"true": classes[t], "predicted": classes[p], "count": int(off[t, p])}
                for t, p in pairs[:10] if off[t, p] > 0]
    ece, bins = expected_calibration_error(probabilities.max(1), correct)
    report = {
        "images": int(n),
        "top1": float(correct.mean()),
        "top5": float((top5 == labels[:, None]).any(1).mean()),
        "loss": loss,
        "per_class_accuracy": {name: float(a) for name, a in zip(classes, per_class, strict=True)},
        "most_confused": confused,
        "calibration": {"ece": ece, "bins": bins},
        "confusion_matrix": matrix.tolist(),
    }
    if fine_to_coarse is not None and superclasses:
        mapping = np.asarray(fine_to_coarse)
        true_coarse, predicted_coarse = mapping[labels], mapping[predictions]
        coarse_matrix = confusion_matrix(true_coarse, predicted_coarse, len(superclasses))
        report["superclass"] = {
            "top1": float((true_coarse == predicted_coarse).mean()),
            "per_class_accuracy": {name: float(a) for name, a in zip(
                superclasses, coarse_matrix.diagonal() / np.maximum(coarse_matrix.sum(1), 1), strict=True)},
        }
    return report


def confusion_png(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    from cifarkit.plots import pyplot, save_figure

    plt = pyplot()
    size = max(6, len(classes) * 0.16)
    fig, ax = plt.subplots(figsize=(size, size))
    normalized = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(normalized, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    fontsize = 8 if len(classes) <= 20 else 4
    ax.set_xticks(ticks, classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, classes, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    save_figure(fig, path)


def reliability_png(bins: list[dict], ece: float, path: Path) -> None:
    from cifarkit.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centers, [b["accuracy"] for b in bins], width=1 / 15, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend()
    save_figure(fig, path)


def write_confusion_csv(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    rows = [["true \\ predicted", *classes]]
    rows += [[name, *row.tolist()] for name, row in zip(classes, matrix, strict=True)]
    atomic_write_bytes(path, csv_text(rows).encode())


REPORT_KIND = "evaluation report"


def evaluate_checkpoint(checkpoint: str | Path | None, split: str = "test", tta: bool = False,
                        out_dir: str | Path | None = None, data_dir: str | None = None, device: str = "cpu",
                        gallery_size: int = 36) -> dict:
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {SPLITS}, got {split!r}")
    if out_dir is not None:
        check_replaceable_folder(Path(out_dir), REPORT_KIND)  # before the evaluation, not after it
    trained: TrainedModel = load_model(checkpoint, device)
    view = f"{split}{'-tta' if tta else ''}"
    # a run's report goes beside its checkpoint; a shipped model's into the current folder, never the package
    out = Path(out_dir) if out_dir else (Path(f"eval-{trained.name}-{view}") if trained.pretrained
                                         else trained.checkpoint.parent / f"eval-{view}")
    check_replaceable_folder(out, REPORT_KIND)
    check_writable_folder(out.parent, "the evaluation report")  # now, not after the whole evaluation
    c = trained.data
    data = load_dataset(c.dataset, data_dir or c.data_dir, download=c.download)
    if split == "test":
        images, labels = data.test_images, data.test_labels
    else:
        index = split_for(data, trained.data).val
        images, labels = data.train_images[index], data.train_labels[index]
    probabilities = trained.probabilities(to_device_images(images, device), tta=tta).numpy().astype(np.float64)
    report = compute_report(probabilities, labels, trained.classes, trained.fine_to_coarse, trained.superclasses)
    report = {"checkpoint": str(trained.checkpoint), "checkpoint_sha256": trained.sha256, "step": trained.step,
              "temperature": trained.temperature,
              "split": split, "tta": tta, **report, "config": trained.config}

    # every file is written into a staging folder beside OUT, which then replaces OUT as a whole
    staging = make_staging_folder(out.parent, out.name, REPORT_KIND)
    try:
        files = _write_report_files(report, probabilities, images, labels, trained, staging, gallery_size)
        replace_folder(staging, out, REPORT_KIND)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: the previous report stays as it was
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report["files"] = {name: str(out / name) for name in files}
    return report


def _write_report_files(report: dict, probabilities: np.ndarray, images: np.ndarray, labels: np.ndarray,
                        trained: TrainedModel, out: Path, gallery_size: int) -> list[str]:
    matrix = np.asarray(report["confusion_matrix"])
    write_confusion_csv(matrix, trained.classes, out / "confusion.csv")
    confusion_png(matrix, trained.classes, out / "confusion.png")
    reliability_png(report["calibration"]["bins"], report["calibration"]["ece"], out / "reliability.png")
    predictions = probabilities.argmax(1)
    wrong = np.flatnonzero(predictions != labels)[:gallery_size]
    if len(wrong):
        from cifarkit.plots import image_grid

        image_grid(images[wrong], [f"{trained.classes[labels[i]]}\n→ {trained.classes[predictions[i]]}"
                                   for i in wrong], out / "misclassified.png", columns=6,
                   title="misclassified: true → predicted")
    atomic_write_bytes(out / "report.json", (json_text(report) + "\n").encode())
    return [name for name in ("confusion.csv", "confusion.png", "reliability.png", "misclassified.png",
                              "report.json") if (out / name).exists()]


def split_logits(trained: TrainedModel, split: str, data_dir: str | None = None, device: str = "cpu"):
    """The model's single-view logits before any temperature (float64, on the CPU) and the labels, on its
    validation split (held-out training images) or the test set."""
    from cifarkit.tta import predict_logits

    c = trained.data
    data = load_dataset(c.dataset, data_dir or c.data_dir, download=c.download)
    if split == "val":
        index = split_for(data, c).val
        images, labels = data.train_images[index], data.train_labels[index]
    else:
        images, labels = data.test_images, data.test_labels
    pixels = to_device_images(images, device)
    with torch.no_grad():
        logits = torch.cat([predict_logits(trained.model, trained.preprocess(pixels[i : i + 500]), False)
                            for i in range(0, len(pixels), 500)]).double().cpu()
    return logits, torch.from_numpy(labels).long()


def _temperature_fits():
    """What a temperature can be fitted for (`cifarkit calibrate --for`), and how."""
    from cifarkit.calibration import fit_temperature, fit_temperature_for_ece

    return {"nll": fit_temperature, "ece": fit_temperature_for_ece}


# `--for auto`: the NLL's temperature (the standard, a proper scoring rule) unless it leaves the validation ECE
# above what a shipped model's card promises; then the ECE's. Label smoothing and CutMix can set the two fits
# apart (resnetd-cutmix-cifar100: the NLL's temperature left its validation ECE at 0.025).
ECE_PROMISE = 0.02
CALIBRATION_TARGETS = ("nll", "ece", "auto")


def calibration_record(logits: torch.Tensor, labels: torch.Tensor, target: str = "nll",
                       features: dict[str, np.ndarray] | None = None) -> dict:
    """What calibrating a model on its validation logits fits: the temperature for the NLL, the ECE or `auto`
    (ECE_PROMISE; the other fit's figures beside it), the validation NLL and ECE before and after, and the outlier
    record (cifarkit.outlier: 95% of the split known; the default score with `features` (outlier_features), else
    the max logit, which needs none). One record for `cifarkit calibrate` and for the packaging of shipped models.
    Refuses what cannot calibrate (no validation split, NaN...)."""
    from cifarkit.calibration import expected_calibration_error as ece
    from cifarkit.calibration import nll
    from cifarkit.outlier import fit_record

    fits = {key: fit(logits, labels) for key, fit in _temperature_fits().items()}
    fitted_for = f"the validation {target.upper()}"
    if target == "auto":
        nll_ece = ece(logits, labels, fits["nll"])
        target = "nll" if nll_ece <= ECE_PROMISE else "ece"
        fitted_for = (f"the validation NLL (auto: its validation ECE {nll_ece:.4f} is within {ECE_PROMISE})"
                      if target == "nll" else
                      f"the validation ECE (auto: the NLL's left the validation ECE at {nll_ece:.4f} > {ECE_PROMISE})")
    temperature = fits[target]
    return {"temperature": temperature, "fitted_for": fitted_for,
            "alternatives": {key: {"temperature": t, "val_nll": nll(logits, labels, t),
                                   "val_ece": ece(logits, labels, t)} for key, t in fits.items()},
            "fitted_on": f"the validation split ({len(labels)} held-out training images), single view; never the "
                         "test set",
            "val_nll": {"before": nll(logits, labels, 1.0), "after": nll(logits, labels, temperature)},
            "val_ece": {"before": ece(logits, labels, 1.0), "after": ece(logits, labels, temperature)},
            "outlier": fit_record(logits.float().numpy(), temperature, **({"score_name": "max_logit"}
                                                                        if features is None else features))}


def calibrate_model(trained: TrainedModel, data_dir: str | None = None, target: str = "nll") -> dict:
    """The calibration record of any trained model (calibration_record: its temperature and outlier threshold),
    fitted on its validation split, never the test set. It reads the dataset once: one pass over the validation
    split gives its features and logits together, a second the training split's features the default outlier
    score is measured against (a model without features gets the max logit score, which needs none)."""
    from cifarkit.features import HasFeatures

    if target not in CALIBRATION_TARGETS:
        raise ConfigError(f"--for must be one of {', '.join(CALIBRATION_TARGETS)}, got {target!r}")
    c = trained.data
    data = load_dataset(c.dataset, data_dir or c.data_dir, download=c.download)
    split = split_for(data, c)
    labels = torch.from_numpy(data.train_labels[split.val]).long()

    def pixels(index: np.ndarray) -> torch.Tensor:  # on the CPU: the model moves each batch to its device
        return to_device_images(data.train_images[index], "cpu")

    if not isinstance(trained.model, HasFeatures):
        return calibration_record(trained.logits(pixels(split.val)).double(), labels, target)
    val_features, logits, val_low_level = trained.feature_pass(pixels(split.val))
    train_features, _, train_low_level = trained.feature_pass(pixels(split.train))
    features = {"features": val_features.numpy(), "train_features": train_features.numpy()}
    if val_low_level is not None:  # a network with low-level features: the outlier score reads them too
        features.update(low_level=val_low_level.numpy(), train_low_level=train_low_level.numpy())
    return calibration_record(logits.double(), labels, target, features)


def calibrate_run(model: str | Path, data_dir: str | None = None, target: str = "nll", device: str = "cpu") -> dict:
    """Fit the temperature and outlier threshold of a run's best checkpoint (or of one checkpoint file) with
    calibrate_model, and write calibration.json beside it for exactly that checkpoint (its sha256): predict,
    evaluate and export then use both. Returns the record and the file written ("file")."""
    from cifarkit.loading import CALIBRATION_FILE

    if str(model) in PRETRAINED and not Path(model).exists():
        raise ConfigError(f"{model} is a shipped model, calibrated when it was packaged (`cifarkit models` shows "
                          "its figures); calibrate a run folder or a checkpoint file you trained")
    trained = load_model(model, device)
    record = {**calibrate_model(trained, data_dir, target), "checkpoint": trained.checkpoint.name,
              "checkpoint_sha256": trained.sha256}
    path = trained.checkpoint.parent / CALIBRATION_FILE
    atomic_write_bytes(path, (json_text(record) + "\n").encode())
    return {**record, "file": str(path)}
