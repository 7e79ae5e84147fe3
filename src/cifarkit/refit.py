"""Fit a trained model's classifier again on its frozen features, with the plain cross-entropy of the true labels:
calibration for a network trained with label smoothing.

Why: label smoothing (and CutMix) train the last layer for a smoothed target, and leave scores that one temperature
cannot put right. resnetd-wide-cifar100's reliability diagram after its best temperature is S-shaped (accuracy
above confidence below 0.4, below it from 0.6 to 0.8), and no temperature brings its validation ECE under 0.020.
Its features are good; only the last layer learnt the smoothed target. Fitting that layer again on the training
split's features and their mirror images (cross-entropy, an L2 penalty, L-BFGS from the layer as trained) keeps
every weight before it: heads taught on the model's features and the outlier score's feature bank stay valid.
On that model, measured on its validation split: top-1 75.42% -> 75.52%, NLL after a temperature 0.979 -> 0.897,
ECE after the ECE's temperature 0.020 -> 0.011 (fitted and measured on halves of the split: 0.030 -> 0.020).

The L2 is chosen on the validation split, by a rule fixed before looking: among the candidates that keep the
validation top-1 at least the model's own, the lowest validation NLL after the NLL's temperature. The test set is
evaluated once, with the chosen layer. The result is a run folder (best.pt, results.json, refit.json) that every
command loads, calibrates (`cifarkit calibrate`) and exports like a trained run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.calibration import CalibrationError
from cifarkit.checkpoints import checkpoint_bytes
from cifarkit.data import load_dataset, split_for
from cifarkit.data.loader import to_device_images
from cifarkit.device import describe_cpu
from cifarkit.errors import CifarkitError
from cifarkit.features import head_parameter_names
from cifarkit.files import atomic_write_bytes, atomic_write_text, json_text

# L2 penalties tried (on the mean cross-entropy; features as the network gives them). resnetd-wide-cifar100's
# validation top-1 fell from 75.66% to 75.30% across them, its NLL after temperature was lowest at 1e-4.
DEFAULT_L2 = (1e-5, 3e-5, 1e-4, 3e-4)
CHUNK = 500  # pictures between progress reports


class RefitError(CifarkitError):
    """A model whose classifier cannot be fitted again (no features, not one linear layer, no validation split)."""


def classifier_names(model: torch.nn.Module) -> tuple[str, str | None]:
    """The names of the classifier's weight [classes, features] and bias (None where it has none): a model whose
    `classify` is one linear layer; anything else is refused."""
    names = sorted(head_parameter_names(model))
    params = dict(model.named_parameters())
    weights = [n for n in names if params[n].ndim == 2]
    biases = [n for n in names if params[n].ndim == 1]
    if len(weights) != 1 or len(biases) > 1 or len(names) != len(weights) + len(biases):
        raise RefitError(f"the classifier of {type(model).__name__} is not one linear layer ({', '.join(names)}); "
                         "only a linear classifier can be fitted again on the features")
    return weights[0], (biases[0] if biases else None)


def features_of(trained, images: np.ndarray, mirror: bool = False, progress: Callable[[int], None] | None = None):
    """TrainedModel.features (float32, on the CPU) of uint8 NHWC `images`, or of their mirror images, a chunk at a
    time so that long passes report progress."""
    pixels = to_device_images(images, "cpu")
    if mirror:
        pixels = pixels.flip(3)
    out = []
    for start in range(0, len(pixels), CHUNK):
        out.append(trained.features(pixels[start : start + CHUNK]))
        if progress:
            progress(min(start + CHUNK, len(pixels)))
    return torch.cat(out)


class _Classify(torch.nn.Module):
    """The model's `classify` as a module's forward, so that torch.func.functional_call can give it other weights
    (a classifier may scale or shift what its layer computes: airbench's divides by a constant)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classify(features)


def classify_with(model: torch.nn.Module, names: tuple[str, str | None], weight: torch.Tensor,
                  bias: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
    """The model's logits for `features` with (weight, bias) in place of its classifier's (differentiable)."""
    weight_name, bias_name = names
    replaced = {f"model.{weight_name}": weight, **({f"model.{bias_name}": bias} if bias_name else {})}
    return torch.func.functional_call(_Classify(model), replaced, (features,))


def fit_classifier(model: torch.nn.Module, names: tuple[str, str | None], features: torch.Tensor,
                   labels: torch.Tensor, l2: float, iterations: int = 300) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The classifier minimising mean cross-entropy + l2/2 * |weight|^2 on (features, labels), by L-BFGS from the
    layer as trained: a good start, and the fit is convex."""
    params = dict(model.named_parameters())
    x, y = features.float(), labels.long()
    w = params[names[0]].detach().float().clone().requires_grad_(True)
    b = None if names[1] is None else params[names[1]].detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w] if b is None else [w, b], lr=1, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(classify_with(model, names, w, b, x), y) + l2 / 2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), (None if b is None else b.detach())


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1, top-5, NLL, and the NLL and ECE after the NLL's temperature, of `logits` (float64 inside)."""
    from cifarkit.calibration import expected_calibration_error, fit_temperature, nll

    logits = logits.double()
    temperature = fit_temperature(logits, labels)
    top5 = logits.topk(5, 1).indices.eq(labels[:, None]).any(1)
    return {"top1": float((logits.argmax(1) == labels).double().mean()), "top5": float(top5.double().mean()),
            "loss": nll(logits, labels, 1.0), "temperature": temperature,
            "nll_calibrated": nll(logits, labels, temperature),
            "ece_calibrated": expected_calibration_error(logits, labels, temperature)}


def choose(candidates: list[dict], own_top1: float) -> dict:
    """The rule: among the fits whose validation top-1 is at least the model's own, the lowest validation NLL
    after temperature; where none keeps it, the highest top-1."""
    keeping = [c for c in candidates if c["val"]["top1"] >= own_top1]
    if keeping:
        return min(keeping, key=lambda c: c["val"]["nll_calibrated"])
    return max(candidates, key=lambda c: c["val"]["top1"])


def refit_head(source: str | Path | None, out_dir: str | Path, data_dir: str | None = None,
               l2s: tuple[float, ...] = DEFAULT_L2, mirror: bool = True, device: str = "cpu",
               log: Callable[[str], None] | None = None) -> dict:
    """Fit `source`'s classifier again (module docstring) and write the run folder `out_dir`: best.pt (the model
    with the chosen layer), refit.json (every candidate's validation figures) and results.json (the test set,
    once). Returns the results."""
    from cifarkit.loading import load_model

    log = log or _print_flushed
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise RefitError(f"{out} already holds files; choose a new --out folder")
    if not l2s or any(not (0 <= l2 < 10) for l2 in l2s):
        raise RefitError("--l2 takes penalties from 0 to 10, e.g. --l2 1e-5,1e-4")
    trained = load_model(source, device)
    names = classifier_names(trained.model)
    c = trained.data
    data = load_dataset(c.dataset, data_dir or c.data_dir, download=c.download)
    split = split_for(data, c)
    if len(split.val) == 0:
        raise RefitError("the model was trained without a validation split, so nothing can choose the L2 or "
                         "calibrate the result; refit a model trained with data.val_per_class > 0")
    started = time.perf_counter()
    progress = _progress_reporter(log, started)
    val_x = features_of(trained, data.train_images[split.val], progress=progress("the validation split",
                                                                                  len(split.val)))
    val_y = torch.from_numpy(data.train_labels[split.val]).long()
    x, y = _training_features(trained, data.train_images[split.train], data.train_labels[split.train], mirror,
                              progress)
    model = trained.model.cpu().float()  # the fits and their logits on the CPU, where the features are
    own, candidates = _fit_candidates(model, names, x, y, val_x, val_y, l2s, log)
    chosen = choose(candidates, own["top1"])
    log(f"chosen: L2 {chosen['l2']:g} (the lowest validation NLL after temperature among the fits that keep "
        f"validation top-1 >= {own['top1']:.4f})")
    seconds = time.perf_counter() - started

    # the test set, once, with the chosen layer; nothing is written before it, so an interrupted refit leaves no
    # half-made run folder
    test_x = features_of(trained, data.test_images, progress=progress("the test set", len(data.test_labels)))
    with torch.no_grad():
        test = _figures(scores(classify_with(model, names, chosen["weight"], chosen["bias"], test_x),
                               torch.from_numpy(data.test_labels).long()))
    _write_checkpoint(trained, model, names, chosen, out)

    refit = {"source": trained.name, "source_sha256": trained.sha256, "classifier": names[0],
             "l2": chosen["l2"], "mirror_images": mirror, "fitted_on": f"{len(y):,} features of the training split"
             + (" and their mirror images" if mirror else ""),
             "rule": "among the L2s that keep validation top-1 at least the model's own, the lowest validation NLL "
                     "after the NLL's temperature",
             "as_trained": own, "candidates": [{"l2": c["l2"], "val": c["val"]} for c in candidates],
             "seconds": seconds, "hardware": describe_cpu()}
    atomic_write_text(out / "refit.json", json_text(refit) + "\n")
    results = _results(trained, model, len(split.train), refit, chosen, test)
    atomic_write_text(out / "results.json", json_text(results) + "\n")
    log(f"done in {seconds:.0f}s: validation top-1 {own['top1']:.4f} -> {results['val']['top1']:.4f}, NLL after "
        f"temperature {own['nll_calibrated']:.4f} -> {chosen['val']['nll_calibrated']:.4f} | test top-1 "
        f"{test['top1']:.4f} (once) | {out} (`cifarkit calibrate {out}` fits its temperature)")
    return results


def _progress_reporter(log: Callable[[str], None], started: float):
    """progress(what, total) -> a callback that logs how many pictures' features are done, every 30 s and at the
    end."""
    def progress(what: str, total: int):
        last = [0.0]

        def report(done: int):
            if time.perf_counter() - last[0] > 30 or done == total:
                last[0] = time.perf_counter()
                log(f"features of {what}: {done:,}/{total:,} pictures ({time.perf_counter() - started:.0f}s)")
        return report

    return progress


def _training_features(trained, images: np.ndarray, labels: np.ndarray, mirror: bool, progress):
    """The features of the training split and, with `mirror`, of their mirror images (the augmentation every
    recipe trains with, at no cost but the pass), with their labels."""
    y = torch.from_numpy(labels).long()
    x = features_of(trained, images, progress=progress("the training split", len(images)))
    if mirror:
        x = torch.cat([x, features_of(trained, images, True, progress("their mirror images", len(images)))])
        y = torch.cat([y, y])
    return x, y


def _fit_candidates(model, names, x, y, val_x, val_y, l2s, log) -> tuple[dict, list[dict]]:
    """The validation figures of the classifier as trained, and of a fit at each L2 (those a temperature can
    calibrate)."""
    with torch.no_grad():
        own = scores(model.classify(val_x), val_y)
    log(_line("as trained", own))
    candidates = []
    for l2 in l2s:
        w, b = fit_classifier(model, names, x, y, l2)
        try:
            with torch.no_grad():
                figures = scores(classify_with(model, names, w, b, val_x), val_y)
        except CalibrationError as e:  # a penalty that flattened (or blew up) the scores: not a candidate
            log(f"L2 {l2:g}: left out ({e})")
            continue
        candidates.append({"l2": l2, "val": figures, "weight": w, "bias": b})
        log(_line(f"L2 {l2:g}", figures))
    if not candidates:
        raise RefitError(f"no L2 of {', '.join(f'{l2:g}' for l2 in l2s)} gave scores a temperature can calibrate; "
                         "try others with --l2")
    return own, candidates


def _write_checkpoint(trained, model, names, chosen: dict, out: Path) -> None:
    """out/best.pt: the model with the chosen classifier (no temperature yet: `cifarkit calibrate` fits it)."""
    weight_name, bias_name = names
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state[weight_name] = chosen["weight"].to(state[weight_name].dtype)
    if bias_name:
        state[bias_name] = chosen["bias"].to(state[bias_name].dtype)
    payload = {"config": trained.config, "model": state,
               "model_spec": {"name": trained.model_spec.name, "kwargs": dict(trained.model_spec.kwargs)},
               "preprocess": trained.preprocess.to_state(), "classes": list(trained.classes),
               "superclasses": list(trained.superclasses), "fine_to_coarse": trained.fine_to_coarse,
               "step": trained.step, "val": _figures(chosen["val"]), "temperature": 1.0, "outlier": None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "best.pt", checkpoint_bytes(payload))


def _figures(figures: dict) -> dict:
    return {key: figures[key] for key in ("loss", "top1", "top5")}


def _results(trained, model, train_images: int, refit: dict, chosen: dict, test: dict) -> dict:
    """results.json, as a training run writes it: the training figures of the model refitted (its card's, or
    its run's), the chosen layer's validation figures, the test set's, and the refit's record."""
    from cifarkit.loading import results_beside
    from cifarkit.pretrained import PRETRAINED, read_card

    shipped = trained.pretrained and trained.name in PRETRAINED  # by name, or the default (no source)
    base = read_card(trained.name)["training"] if shipped else results_beside(trained.checkpoint, RefitError)
    return {"recipe": trained.config.get("recipe"), "dataset": trained.data.dataset,
            "model": trained.model_spec.name, "parameters": sum(p.numel() for p in model.parameters()),
            "seed": base.get("seed"), "steps": trained.step, "epochs": base.get("epochs"),
            "device": base.get("device"), "torch": base.get("torch", torch.__version__),
            "train_seconds": base.get("train_seconds"), "wall_seconds": base.get("wall_seconds"),
            "train_images": train_images,
            "selection": f"{base.get('selection', 'the trained model')}; then its classifier fitted again "
                         f"without label smoothing (L2 {chosen['l2']:g}, chosen on the validation split)",
            "val": _figures(chosen["val"]), "test": test,
            "refit": {k: v for k, v in refit.items() if k != "candidates"}}


def _print_flushed(line: str) -> None:
    print(line, flush=True)  # progress reaches a log file or a pipe as it happens


def _line(what: str, figures: dict) -> str:
    return (f"{what}: validation top-1 {figures['top1']:.4f}, NLL {figures['loss']:.4f}; after temperature "
            f"{figures['temperature']:.3f}: NLL {figures['nll_calibrated']:.4f}, ECE {figures['ece_calibrated']:.4f}")
