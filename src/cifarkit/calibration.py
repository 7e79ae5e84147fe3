"""Temperature scaling (Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017):
one scalar T divides the logits so that the softmax's confidence matches the accuracy. The ranking, and so
every accuracy figure, is unchanged; only the scores move.

T is fitted on held-out *training* images (the validation split), never on the test set, by minimising the
mean negative log-likelihood. The NLL of softmax(beta * z) is convex in beta = 1/T (a log-sum-exp minus a
linear term), so a golden-section search over beta finds the minimum without an optimizer's state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# T within [0.05, 20]: beyond that the model is broken, not miscalibrated
BETA_RANGE = (1 / 20, 1 / 0.05)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 80) -> float:
    """The temperature minimising the mean NLL of softmax(logits / T) on (logits, labels)."""
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
    return 1 / ((a + b) / 2)
