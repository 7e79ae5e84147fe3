"""Outlier scores: how unlike the model's training pictures a picture is (higher = less likely one of its classes).

On a picture of none of the classes a classifier's scores are confidently wrong; an outlier score with a threshold
lets every answer say "none of these". The candidates are the standard post-hoc ones (OpenOOD's protocol for a
CIFAR-100 model, CIFAR-10 as the near out-of-distribution set):

- `msp`: minus the largest (calibrated) probability (Hendrycks & Gimpel, 2017);
- `max_logit`: minus the largest logit (Hendrycks et al., 2022);
- `energy`: minus logsumexp of the logits (Liu et al., 2020);
- `mahalanobis`: the smallest Mahalanobis distance of the features to a class mean, with one covariance shared by
  the classes, fitted on the training split (Lee et al., 2018, without input perturbation);
- `knn`: minus the cosine similarity of the normalised features to their k-th nearest training picture (Sun et
  al., 2022), against a fixed sample of the training split small enough to ship inside the model.

Each is a torch module of (features, logits), so the ONNX export computes it in the graph and every runtime gives
the same score; which one a model uses is chosen on data (benchmarks/outlier_scores.py: `max_logit`, AUROC 0.776
on the validation split against CIFAR-10's training pictures, ahead of msp 0.766 and energy 0.767; the two
feature-space scores trailed at 0.59 and 0.42), and its threshold keeps 95% of the validation split's pictures
`known`. A model stores its choice as a small record, {"score", "threshold", "known_rate"} (beside its temperature:
`cifarkit calibrate` fits both), so only the scores that need no fitted statistics can be stored.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

KNOWN_RATE = 0.95  # the share of in-distribution validation pictures the threshold keeps `known`
KNN_BANK = 5000  # training pictures in the kNN score's bank (float16 in the web model: 2.6 MB for D = 256)
KNN_K = 5  # Sun et al. use k = 50 of 50,000; the same proportion of a 5,000-picture bank


class OutlierScore(nn.Module):
    """(features (N, D), logits (N, C)) -> (N,) outlier scores, higher = more unlike the training pictures."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MaxProbability(OutlierScore):
    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, features, logits):
        return -(logits / self.temperature).softmax(dim=1).amax(dim=1)


class MaxLogit(OutlierScore):
    def forward(self, features, logits):
        return -logits.amax(dim=1)


class Energy(OutlierScore):
    def forward(self, features, logits):
        return -torch.logsumexp(logits, dim=1)


class Mahalanobis(OutlierScore):
    """min over classes of (f - mu_c)^T P (f - mu_c), expanded as f^T P f - 2 mu_c^T P f + mu_c^T P mu_c: two
    matrix products, no per-class loop."""

    def __init__(self, means: torch.Tensor, precision: torch.Tensor):
        super().__init__()
        self.register_buffer("precision", precision.float())
        self.register_buffer("projected_means", (means @ precision).float())  # C x D
        self.register_buffer("mean_norms", ((means @ precision) * means).sum(1).float())  # C

    def forward(self, features, logits):
        quadratic = ((features @ self.precision) * features).sum(1, keepdim=True)
        distances = quadratic - 2 * features @ self.projected_means.T + self.mean_norms
        return distances.amin(dim=1)


class NearestNeighbour(OutlierScore):
    def __init__(self, bank: torch.Tensor, k: int = KNN_K):
        super().__init__()
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1))
        self.k = k

    def forward(self, features, logits):
        similarity = nn.functional.normalize(features, dim=1) @ self.bank.T
        return -similarity.topk(self.k, dim=1).values[:, -1]


def _fit_mahalanobis(features: np.ndarray, labels: np.ndarray, temperature: float) -> OutlierScore:
    x = torch.from_numpy(features).double()
    y = torch.from_numpy(labels).long()
    classes = int(y.max()) + 1
    means = torch.stack([x[y == c].mean(0) for c in range(classes)])
    centred = x - means[y]
    covariance = centred.T @ centred / len(x)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return Mahalanobis(means, precision)


def _fit_knn(features: np.ndarray, labels: np.ndarray, temperature: float) -> OutlierScore:
    sample = np.random.default_rng(0).permutation(len(features))[:KNN_BANK]
    return NearestNeighbour(torch.from_numpy(features[np.sort(sample)]))


# name -> fit(training-split features, their labels, the model's temperature) -> the score as a module
SCORES: dict[str, Callable[[np.ndarray, np.ndarray, float], OutlierScore]] = {
    "msp": lambda f, y, t: MaxProbability(t),
    "max_logit": lambda f, y, t: MaxLogit(),
    "energy": lambda f, y, t: Energy(),
    "mahalanobis": _fit_mahalanobis,
    "knn": _fit_knn,
}


DEFAULT_SCORE = "max_logit"
STORABLE_SCORES = ("msp", "max_logit", "energy")  # a record names them; the feature-space ones need statistics


def outlier_module(record: dict, temperature: float = 1.0) -> OutlierScore:
    return SCORES[record["score"]](np.empty(0), np.empty(0), temperature)


def record_problem(record) -> str | None:
    """Why `record` is not a usable outlier record (None: it is)."""
    if not isinstance(record, dict):
        return "the outlier record is not a JSON object"
    if record.get("score") not in STORABLE_SCORES:
        return f"its outlier score must be one of {', '.join(STORABLE_SCORES)}"
    threshold = record.get("threshold")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not np.isfinite(threshold):
        return "its outlier threshold is not a finite number"
    return None


def fit_record(logits: np.ndarray, temperature: float, score_name: str = DEFAULT_SCORE,
               rate: float = KNOWN_RATE) -> dict:
    """The record that calls `rate` of these (validation-split) pictures known."""
    if score_name not in STORABLE_SCORES:
        raise ValueError(f"score {score_name!r} cannot be stored; choose one of {', '.join(STORABLE_SCORES)}")
    logits = np.asarray(logits, dtype=np.float32)
    module = SCORES[score_name](np.empty(0), np.empty(0), temperature)
    values = score(module, np.zeros((len(logits), 0), np.float32), logits)
    return {"score": score_name, "threshold": threshold_keeping(values, rate), "known_rate": rate}


@torch.no_grad()
def score(module: OutlierScore, features: np.ndarray, logits: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    return np.concatenate([module(torch.from_numpy(features[i : i + batch_size]).float(),
                                  torch.from_numpy(logits[i : i + batch_size]).float()).numpy()
                           for i in range(0, len(features), batch_size)])


def threshold_keeping(in_scores: np.ndarray, rate: float = KNOWN_RATE) -> float:
    """The score below which `rate` of the in-distribution pictures fall (they are `known` when score <= it)."""
    return float(np.quantile(in_scores.astype(np.float64), rate))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """The probability that an outlier scores above an in-distribution picture (ties count half): Mann-Whitney."""
    scores = np.concatenate([in_scores, out_scores]).astype(np.float64)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2
    out_ranks = ranks[len(in_scores):].sum()
    n_in, n_out = len(in_scores), len(out_scores)
    return float((out_ranks - n_out * (n_out + 1) / 2) / (n_in * n_out))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, rate: float = KNOWN_RATE) -> float:
    """The share of outliers still called `known` at the threshold that keeps `rate` of the in-distribution ones."""
    return float((out_scores <= threshold_keeping(in_scores, rate)).mean())


def features_and_logits(trained, images_nhwc: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The features and raw logits (before the temperature) of uint8 NHWC pictures, float32 arrays."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
    features, logits = trained.features_and_logits(x, batch_size)
    return features.numpy(), logits.numpy()
