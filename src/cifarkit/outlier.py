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

- `either_of`: any of its parts says "outlier": the max logit, the kNN distance in the features, and, for a
  network with low-level features (models.protocol.HasLowLevelFeatures), the kNN distance in those. The logit
  scores are blind far from the training pictures (noise, blobs: the max logit calls them all `known`), the
  feature-space ones miss near outliers (CIFAR-10); so each kNN distance, with a threshold high enough (99.5% of
  the validation split) to cost the near-outlier AUROC little, rejects what lies far from every training picture
  at its level, and the max logit does the rest. The low-level part sees what the penultimate layer has
  abstracted away: a colour wheel lies among the training pictures in the features ("apple") and beyond every
  validation picture in the stem's. Each part is centred at its threshold and scaled by its interquartile range
  on the validation split, and the score is the largest: one number, known at <= 0. (`max_logit_or_knn`, the
  first two parts alone with the bank beside them, is how records were written before; they still load.)

Each is a torch module of (features, logits[, low-level features]), so the ONNX export computes it in the graph and
every runtime gives the same score; which one a model uses is chosen on data (benchmarks/outlier_scores.py; the
rule: the best AUROC between the validation split and CIFAR-10's training pictures among the scores that call at
most 5% of the noise and blob pictures `known`), and its threshold keeps 95% of the validation split's pictures
`known`. A model stores its choice as a record, {"score", "threshold", "known_rate", ...} beside its temperature
(`cifarkit calibrate` fits both); a score with fitted statistics (the kNN bank) carries them in the record, as
float16 in base64.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

KNOWN_RATE = 0.95  # the share of in-distribution validation pictures the threshold keeps `known`
KNN_BANK = 5000  # training pictures in the kNN score's bank (float16 in the web model: 2.6 MB for D = 256)
KNN_K = 5  # Sun et al. use k = 50 of 50,000; the same proportion of a 5,000-picture bank
# the kNN part of the stored score: a bank small enough for a model's record (1 MB as float16 for D = 256), its k
# in the same proportion, and the validation quantile it flags from (chosen in benchmarks/outlier_scores.py)
STORED_BANK, STORED_K, FEATURE_QUANTILE = 2000, 2, 0.995


class OutlierScore(nn.Module):
    """(features (N, D), logits (N, C), low-level features (N, E) or None) -> (N,) outlier scores, higher = more
    unlike the training pictures."""

    # how much the score magnifies a difference in its inputs (an export's parity check allows for it)
    error_scale = 1.0
    reads_low_level = False  # whether it needs the low-level features (HasLowLevelFeatures.embed_levels)

    def forward(self, features: torch.Tensor, logits: torch.Tensor,
                low_level: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class MaxProbability(OutlierScore):
    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, features, logits, low_level=None):
        return -(logits / self.temperature).softmax(dim=1).amax(dim=1)


class MaxLogit(OutlierScore):
    def forward(self, features, logits, low_level=None):
        return -logits.amax(dim=1)


class Energy(OutlierScore):
    def forward(self, features, logits, low_level=None):
        return -torch.logsumexp(logits, dim=1)


class Mahalanobis(OutlierScore):
    """min over classes of (f - mu_c)^T P (f - mu_c), expanded as f^T P f - 2 mu_c^T P f + mu_c^T P mu_c: two
    matrix products, no per-class loop."""

    def __init__(self, means: torch.Tensor, precision: torch.Tensor):
        super().__init__()
        self.register_buffer("precision", precision.float())
        self.register_buffer("projected_means", (means @ precision).float())  # C x D
        self.register_buffer("mean_norms", ((means @ precision) * means).sum(1).float())  # C

    def forward(self, features, logits, low_level=None):
        quadratic = ((features @ self.precision) * features).sum(1, keepdim=True)
        distances = quadratic - 2 * features @ self.projected_means.T + self.mean_norms
        return distances.amin(dim=1)


class NearestNeighbour(OutlierScore):
    """Minus the cosine similarity to the k-th nearest bank picture, in the features (or, `low_level`, in the
    low-level features)."""

    def __init__(self, bank: torch.Tensor, k: int = KNN_K, low_level: bool = False):
        super().__init__()
        self.register_buffer("bank", nn.functional.normalize(bank.float(), dim=1))
        self.k, self.reads_low_level = k, low_level

    def forward(self, features, logits, low_level=None):
        if self.reads_low_level and low_level is None:
            raise ValueError("this outlier score reads low-level features, which the model did not give")
        x = low_level if self.reads_low_level else features
        similarity = nn.functional.normalize(x, dim=1) @ self.bank.T
        return -similarity.topk(self.k, dim=1).values[:, -1]


class EitherOf(OutlierScore):
    """The larger of the parts' scores, each centred at its own threshold and divided by its spread: an outlier
    (> 0) when any part calls it one."""

    def __init__(self, parts: list[OutlierScore], centers: list[float], scales: list[float]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))
        self.error_scale = max(1.0, 1.0 / min(scales))  # a part divided by a small spread magnifies round-off
        self.reads_low_level = any(part.reads_low_level for part in parts)

    def forward(self, features, logits, low_level=None):
        scores = torch.stack([part(features, logits, low_level) for part in self.parts], dim=1)
        return ((scores - self.centers) / self.scales).amax(dim=1)


def _fit_mahalanobis(features: np.ndarray, labels: np.ndarray, temperature: float) -> OutlierScore:
    x = torch.from_numpy(features).double()
    y = torch.from_numpy(labels).long()
    classes = int(y.max()) + 1
    means = torch.stack([x[y == c].mean(0) for c in range(classes)])
    centred = x - means[y]
    covariance = centred.T @ centred / len(x)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return Mahalanobis(means, precision)


def bank_sample(train: np.ndarray, size: int) -> np.ndarray:
    """A fixed sample (seed 0, kept in the split's order) of `size` training pictures' features: a kNN bank."""
    return np.asarray(train)[np.sort(np.random.default_rng(0).permutation(len(train))[:size])]


def fit_knn(train: np.ndarray, low_level: bool = False) -> NearestNeighbour:
    """The kNN score against KNN_BANK training pictures, in the features (or the low-level features)."""
    return NearestNeighbour(torch.from_numpy(bank_sample(train, KNN_BANK)), KNN_K, low_level)


# name -> fit(training-split features, their labels, the model's temperature) -> the score as a module
SCORES: dict[str, Callable[[np.ndarray, np.ndarray, float], OutlierScore]] = {
    "msp": lambda f, y, t: MaxProbability(t),
    "max_logit": lambda f, y, t: MaxLogit(),
    "energy": lambda f, y, t: Energy(),
    "mahalanobis": _fit_mahalanobis,
    "knn": lambda f, y, t: fit_knn(f),
}


COMBINED = "either_of"
EARLIER_COMBINED = "max_logit_or_knn"  # records written before: the max logit and the features' kNN, bank beside
DEFAULT_SCORE = COMBINED
# the feature-space ones alone need whole banks
STORABLE_SCORES = ("msp", "max_logit", "energy", COMBINED, EARLIER_COMBINED)
# the parts an `either_of` record may name: part record -> its score (a kNN part carries its own bank)
PARTS: dict[str, Callable[[dict], OutlierScore]] = {
    "max_logit": lambda part: MaxLogit(),
    "knn": lambda part: NearestNeighbour(torch.from_numpy(_decode(part["bank"])), part["k"]),
    "low_level_knn": lambda part: NearestNeighbour(torch.from_numpy(_decode(part["bank"])), part["k"], low_level=True),
}


def _encode(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "float16_base64": base64.b64encode(array.astype("<f2").tobytes()).decode()}


def _decode(stored) -> np.ndarray | None:
    """The array of `_encode`, or None when `stored` is not one."""
    if not isinstance(stored, dict) or not isinstance(stored.get("float16_base64"), str):
        return None
    shape = stored.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and 0 < n < 1 << 16
                                                                   for n in shape)):
        return None
    try:
        raw = base64.b64decode(stored["float16_base64"], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 2 * shape[0] * shape[1]:
        return None
    array = np.frombuffer(raw, dtype="<f2").reshape(shape).astype(np.float32)
    return array if np.isfinite(array).all() else None


def _parts(record: dict) -> list:
    """The parts of a combined record, an earlier one's bank moved into its kNN part (as `either_of` keeps it)."""
    parts = record.get("parts")
    if record.get("score") == EARLIER_COMBINED and isinstance(parts, list) and len(parts) == 2 and all(
            isinstance(p, dict) for p in parts):
        return [parts[0], {**parts[1], "bank": record.get("bank")}]
    return parts


def outlier_module(record: dict, temperature: float = 1.0) -> OutlierScore:
    """The score a (checked: record_problem) record names, its statistics loaded."""
    if record["score"] not in (COMBINED, EARLIER_COMBINED):
        return SCORES[record["score"]](np.empty(0), np.empty(0), temperature)
    parts = _parts(record)
    return EitherOf([PARTS[part["score"]](part) for part in parts], [part["center"] for part in parts],
                    [part["scale"] for part in parts])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _combined_problem(record: dict) -> str | None:
    parts = _parts(record)
    if not (isinstance(parts, list) and 1 <= len(parts) <= len(PARTS) and all(isinstance(p, dict) for p in parts)):
        return f"its combined outlier score needs 1 to {len(PARTS)} parts"
    if record["score"] == EARLIER_COMBINED and [p.get("score") for p in parts] != ["max_logit", "knn"]:
        return f"its {EARLIER_COMBINED} parts must be the max logit and the kNN"
    if not all(p.get("score") in PARTS for p in parts):
        return f"its outlier parts must each be one of {', '.join(PARTS)}"
    if not all(_finite(p.get("center")) and _finite(p.get("scale")) and p["scale"] > 0 for p in parts):
        return "its outlier parts need a finite center and a positive scale"
    for part in parts:
        if part["score"] == "max_logit":
            continue
        bank, k = _decode(part.get("bank")), part.get("k")
        if bank is None:
            return "its outlier bank is not a finite float16 array"
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= len(bank)):
            return "its outlier k is not a count of bank pictures"
    return None


def record_problem(record) -> str | None:
    """Why `record` is not a usable outlier record (None: it is)."""
    if not isinstance(record, dict):
        return "the outlier record is not a JSON object"
    if record.get("score") not in STORABLE_SCORES:
        return f"its outlier score must be one of {', '.join(STORABLE_SCORES)}"
    if not _finite(record.get("threshold")):
        return "its outlier threshold is not a finite number"
    return _combined_problem(record) if record["score"] in (COMBINED, EARLIER_COMBINED) else None


def _spread(values: np.ndarray) -> float:
    """The interquartile range (a floor keeps a degenerate split from dividing by zero)."""
    low, high = np.quantile(values.astype(np.float64), [0.25, 0.75])
    return float(max(high - low, 1e-6))


def _knn_part(name: str, val: np.ndarray, train: np.ndarray, score_of) -> tuple[dict, np.ndarray]:
    """A kNN part (on the features or the low-level ones) flagging beyond FEATURE_QUANTILE of the validation
    split, its bank a fixed sample of the training split as stored (float16); and the split's scores."""
    bank = bank_sample(np.asarray(train, dtype=np.float32), STORED_BANK).astype("<f2").astype(np.float32)
    values = score_of(NearestNeighbour(torch.from_numpy(bank), STORED_K, low_level=name == "low_level_knn"))
    center = float(np.quantile(values.astype(np.float64), FEATURE_QUANTILE))
    return ({"score": name, "k": STORED_K, "quantile": FEATURE_QUANTILE, "center": center,
             "scale": _spread(values), "bank": _encode(bank)}, values)


def fit_combined(val_features: np.ndarray, val_logits: np.ndarray, train_features: np.ndarray,
                 rate: float = KNOWN_RATE, val_low_level: np.ndarray | None = None,
                 train_low_level: np.ndarray | None = None) -> dict:
    """The `either_of` record: a kNN part in the features (and, given them, one in the low-level features), each
    flagging beyond FEATURE_QUANTILE of the validation split, and the max logit's threshold set so that `rate` of
    the split is known in all."""
    def score_of(module):
        return score(module, val_features, val_logits, low_level=val_low_level)

    knn_parts = [_knn_part("knn", val_features, train_features, score_of)]
    if val_low_level is not None and train_low_level is not None:
        knn_parts.append(_knn_part("low_level_knn", val_low_level, train_low_level, score_of))
    logit_scores = score_of(MaxLogit())
    inside = np.logical_and.reduce([values <= part["center"] for part, values in knn_parts])
    logit_center = float(np.quantile(logit_scores[inside].astype(np.float64), min(1.0, rate / inside.mean())))
    return {"score": COMBINED, "threshold": 0.0, "known_rate": rate,
            "parts": [{"score": "max_logit", "center": logit_center, "scale": _spread(logit_scores)},
                      *(part for part, _ in knn_parts)]}


def fit_record(logits: np.ndarray, temperature: float, score_name: str = DEFAULT_SCORE,
               rate: float = KNOWN_RATE, features: np.ndarray | None = None,
               train_features: np.ndarray | None = None, low_level: np.ndarray | None = None,
               train_low_level: np.ndarray | None = None) -> dict:
    """The record that calls `rate` of these (validation-split) pictures known; the combined score also needs
    their features and the training split's (and takes their low-level features, where the model has them)."""
    if score_name not in STORABLE_SCORES or score_name == EARLIER_COMBINED:
        raise ValueError(f"score {score_name!r} cannot be stored; choose one of {', '.join(STORABLE_SCORES)}")
    logits = np.asarray(logits, dtype=np.float32)
    if score_name == COMBINED:
        if features is None or train_features is None:
            raise ValueError(f"score {COMBINED!r} is fitted on features: pass features and train_features")
        return fit_combined(np.asarray(features, np.float32), logits, train_features, rate,
                            None if low_level is None else np.asarray(low_level, np.float32), train_low_level)
    module = SCORES[score_name](np.empty(0), np.empty(0), temperature)
    values = score(module, np.zeros((len(logits), 0), np.float32), logits)
    return {"score": score_name, "threshold": threshold_keeping(values, rate), "known_rate": rate}


@torch.no_grad()
def score(module: OutlierScore, features: np.ndarray, logits: np.ndarray, batch_size: int = 2000,
          low_level: np.ndarray | None = None) -> np.ndarray:
    def part(array, i):
        return None if array is None else torch.from_numpy(array[i : i + batch_size]).float()

    return np.concatenate([module(part(features, i), part(logits, i), part(low_level, i)).numpy()
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


def feature_pass(trained, images_nhwc: np.ndarray, batch_size: int = 500):
    """The features, raw logits (before the temperature) and low-level features (None for a network without them)
    of uint8 NHWC pictures, float32 arrays: what the outlier scores read."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
    features, logits, low_level = trained.feature_pass(x, batch_size)
    return features.numpy(), logits.numpy(), None if low_level is None else low_level.numpy()
