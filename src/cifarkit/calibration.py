"""Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017):
one scalar T divides the logits so that the softmax's confidence matches the accuracy. The ranking, and so
every accuracy figure, is unchanged; only the scores move.

T is fitted on held-out *training* images (the validation split), never on the test set, by minimising the
mean negative log-likelihood. The NLL of softmax(beta * z) is convex in beta = 1/T (a log-sum-exp minus a
linear term), so a golden-section search over beta finds the minimum without an optimizer's state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.errors import CifarkitError

# T within [0.05, 20]: beyond that the model is broken, not miscalibrated
BETA_RANGE = (1 / 20, 1 / 0.05)
MIN_IMAGES = 100  # fewer held-out images cannot pin one scalar down (one image: any T that ranks it right)


class CalibrationError(CifarkitError):
    """Logits and labels that cannot calibrate a model (too few, not finite, or a fit that ends at a bound)."""


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 80) -> float:
    """The temperature minimising the mean NLL of softmax(logits / T) on (logits, labels). Refuses (a
    CalibrationError) what cannot calibrate: fewer than MIN_IMAGES images, logits that are not finite, labels
    that are not class indices, or a minimum at a bound of [0.05, 20] (a broken model, not a miscalibrated
    one), instead of returning a bound that would pass for a temperature."""
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise CalibrationError(f"calibration needs logits [N, classes] and N labels; got {tuple(logits.shape)} "
                               f"and {tuple(labels.shape)}")
    if len(labels) < MIN_IMAGES:
        raise CalibrationError(f"calibration needs at least {MIN_IMAGES} held-out images; got {len(labels)}. "
                               "Keep a validation split (data.val_per_class) to calibrate on")
    if not bool(torch.isfinite(logits).all()):
        raise CalibrationError("the model's outputs are not finite numbers (NaN or infinity): it cannot be "
                               "calibrated (a run that diverged?)")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise CalibrationError(f"labels must be class indices 0..{logits.shape[1] - 1}")
    logits, labels = logits.double(), labels.long()
    low, high = BETA_RANGE
    ratio = (math.sqrt(5) - 1) / 2

    def loss(beta: float) -> float:
        return float(F.cross_entropy(logits * beta, labels))

    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    beta = (a + b) / 2
    if not low * 1.001 < beta < high * 0.999:
        raise CalibrationError(f"the best temperature lies at the bound of [0.05, 20] ({1 / beta:.3g}): the "
                               "model's scores do not behave like a classifier's on these images; not calibrated")
    return 1 / beta


def binned_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, list]:
    """ECE with equal-width confidence bins, and the per-bin table for a reliability diagram: the one
    implementation (`cifarkit evaluate` reports it, the ECE fit minimises it)."""
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            accuracy, mean_confidence = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += inside.mean() * abs(accuracy - mean_confidence)
            table.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                          "accuracy": accuracy, "confidence": mean_confidence})
    return float(ece), table


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                               bins: int = 15) -> float:
    """ECE of softmax(logits / T), in float64 (as `cifarkit evaluate` reports it for the model's scores)."""
    confidence, predicted = (logits.double() / temperature).softmax(1).max(1)
    return binned_ece(confidence.numpy(), (predicted == labels).numpy(), bins)[0]


def fit_temperature_for_ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15, points: int = 400) -> float:
    """The temperature with the lowest ECE on (logits, labels): a search over [0.05, 20] on a log scale. The NLL
    fit (`fit_temperature`) is the standard; a model trained with label smoothing can be left overconfident
    or underconfident by it in ECE's terms (its NLL optimum and its ECE optimum differ), and this fits what the
    card reports instead. Same refusals as `fit_temperature`."""
    nll_temperature = fit_temperature(logits, labels)  # its checks; and a candidate
    logits, labels = logits.double(), labels.long()

    def ece(t: float) -> float:
        return expected_calibration_error(logits, labels, t, bins)

    grid = torch.logspace(math.log10(1 / BETA_RANGE[1]), math.log10(1 / BETA_RANGE[0]), points).tolist()
    best = min([*grid, nll_temperature], key=ece)
    step = (grid[1] / grid[0]) ** 2  # then finely around the best point (ECE is piecewise, not smooth)
    fine = torch.logspace(math.log10(best / step), math.log10(best * step), points).tolist()
    return min([best, *fine], key=ece)
