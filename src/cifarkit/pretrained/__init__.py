"""Pretrained models that ship with cifarkit: a registry, like timm's `pretrained=True`.

    import cifarkit
    model = cifarkit.load_pretrained()                # the default model, or load_pretrained("NAME")
    model.predict(["cat.jpg", pil_image, uint8_array])  # ranked [{"label", "score"}, ...] per picture

Each model is two files in this package: `NAME.safetensors` (fp16 weights, plus the fitted preprocessing
tensors in fp32) and `NAME.json`, its card (the training config, class names, how it was trained and
measured, where its data came from). Their sha256 digests are pinned in the registry below, so a damaged
or altered file is refused when it is loaded. `package_checkpoint` makes both files from a training
checkpoint; `cifarkit models` lists what ships. This module reads the shipped files; cifarkit.loading makes a
model of them (`load_model`, `load_pretrained`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cifarkit.bundle import ModelBundle
from cifarkit.checkpoints import current_names
from cifarkit.errors import CheckpointError, CifarkitError
from cifarkit.files import json_text, read_bounded


class PretrainedError(CifarkitError):
    """An unknown pretrained model name, or a shipped file that is missing or damaged."""


@dataclass(frozen=True)
class PretrainedSpec:
    name: str
    weights_sha256: str
    card_sha256: str
    description: str

    @property
    def weights_file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def card_file(self) -> str:
        return f"{self.name}.json"


PRETRAINED: dict[str, PretrainedSpec] = {}
DEFAULT_PRETRAINED = "resnetd-wide-gpu-refit-cifar100"


def register_pretrained(spec: PretrainedSpec) -> PretrainedSpec:
    if spec.name in PRETRAINED:
        raise ValueError(f"pretrained model {spec.name!r} registered twice")
    PRETRAINED[spec.name] = spec
    return spec


def shipped_file(name: str) -> Path:
    return Path(str(resources.files("cifarkit.pretrained").joinpath(name)))


def _spec(name: str) -> PretrainedSpec:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise PretrainedError(f"unknown pretrained model {name!r}; shipped models: "
                              f"{', '.join(PRETRAINED) or 'none'} (see `cifarkit models`)") from None


MAX_SHIPPED_BYTES = 256 << 20  # a shipped model and its card are a few MB


def _verified_bytes(path: Path, expected: str, what: str) -> bytes:
    try:
        data = read_bounded(path, MAX_SHIPPED_BYTES, PretrainedError, what)
    except PretrainedError as e:
        raise PretrainedError(f"{e}; reinstall cifarkit (or restore the file)") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise PretrainedError(f"{what} {path} is damaged or altered: its sha256 is {digest[:16]}..., expected "
                              f"{expected[:16]}...; reinstall cifarkit (or restore the file)")
    return data


def read_card(name: str) -> dict:
    """The shipped model's verified card, its fields under today's names (a card packaged before the one
    vocabulary spells two of them otherwise: cifarkit.checkpoints.current_names)."""
    spec = _spec(name)
    return current_names(json.loads(_verified_bytes(shipped_file(spec.card_file), spec.card_sha256, "model card")))


def shipped_bundle(name: str) -> tuple[ModelBundle, Path, str]:
    """The shipped model `name` as a model bundle, its files sha256-verified: (bundle, weights file, its sha256).
    cifarkit.loading.load_pretrained makes it a model."""
    from safetensors.torch import load as load_safetensors

    spec = _spec(name)
    card = read_card(name)
    path = shipped_file(spec.weights_file)
    tensors = load_safetensors(_verified_bytes(path, spec.weights_sha256, "weights file"))
    model_state = {k.removeprefix("model."): v.float() if v.is_floating_point() else v
                   for k, v in tensors.items() if k.startswith("model.")}
    preprocess_tensors = {k.removeprefix("preprocess."): v for k, v in tensors.items() if k.startswith("preprocess.")}
    fields = {key: card[key] for key in ("config", "model_spec", "classes", "superclasses", "fine_to_coarse")
              if key in card}  # the bundle's own fields, under its own names
    try:
        bundle = ModelBundle.from_state({
            **fields, "model": model_state,
            "preprocess": {"config": card["preprocess"], "tensors": preprocess_tensors},
            "step": card["training"]["steps"], "val": card["metrics"].get("val") or {},
            "temperature": (card.get("calibration") or {}).get("temperature", 1.0),
            "outlier": (card.get("calibration") or {}).get("outlier"),
        }, path)
    except (CheckpointError, KeyError, TypeError, AttributeError) as e:
        raise PretrainedError(f"pretrained model {name!r} does not load: {e}") from None
    return bundle, path, spec.weights_sha256


def list_pretrained() -> list[dict]:
    """Name, dataset, accuracy and size of every shipped model (from their verified cards)."""
    rows = []
    for name, spec in PRETRAINED.items():
        card = read_card(name)
        rows.append({"name": name, "description": spec.description, "dataset": card["dataset"]["name"],
                     "parameters": card["parameters"], "test_top1": card["metrics"]["test"]["top1"],
                     "test_top1_tta": card["metrics"].get("test_tta_translate", {}).get("top1"),
                     "megabytes": shipped_file(spec.weights_file).stat().st_size / 2**20,
                     "default": name == DEFAULT_PRETRAINED})
    return rows


def package_checkpoint(checkpoint: str | Path, out_dir: str | Path, name: str, card_extra: dict) -> dict:
    """Write NAME.safetensors (fp16 weights, fp32 preprocessing) and NAME.json (the card) from a training
    checkpoint; returns the card with both files' sha256. `card_extra` adds what the checkpoint cannot know
    (measured metrics, the command, the data's provenance)."""
    from safetensors.torch import save as save_safetensors

    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.files import atomic_write_bytes

    bundle = ModelBundle.from_state(load_checkpoint(checkpoint), checkpoint)
    tensors = {f"model.{k}": (v.half() if v.is_floating_point() else v).contiguous() for k, v in bundle.model.items()}
    tensors.update({f"preprocess.{k}": v.contiguous() for k, v in bundle.preprocess["tensors"].items()})
    # one metadata entry: safetensors keeps metadata in a hash map, so two entries come out in either order and
    # the file's bytes (and its pinned sha256) would differ between two packagings of the same weights
    weights = save_safetensors(tensors, metadata={"format": f"cifarkit-pretrained:{name}"})
    card = {
        "name": name, "format": "cifarkit-pretrained", "config": bundle.config,
        "model_spec": bundle.model_spec, "classes": bundle.classes, "superclasses": bundle.superclasses,
        "fine_to_coarse": bundle.fine_to_coarse, "preprocess": bundle.preprocess["config"],
        "parameters": int(sum(v.numel() for k, v in bundle.model.items()
                              if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
        "weights": {"file": f"{name}.safetensors", "dtype": "float16", "sha256": hashlib.sha256(weights).hexdigest(),
                    "bytes": len(weights)},
        **card_extra,
    }
    out = Path(out_dir)
    atomic_write_bytes(out / f"{name}.safetensors", weights)
    card_bytes = (json_text(card) + "\n").encode()
    atomic_write_bytes(out / f"{name}.json", card_bytes)
    return {**card, "card_sha256": hashlib.sha256(card_bytes).hexdigest()}


# The shipped models (their cards: docs/using-the-model.md). A new one: scripts/package_pretrained.py, then
# register it here; the default is DEFAULT_PRETRAINED.
register_pretrained(PretrainedSpec(
    "airbench-cifar10",
    weights_sha256="abce24f6996622adc9373a88c44e2b2a3ab04d3a7614a106ab9ce5309fdb18c0",
    card_sha256="7313843373ae3651e032ed4fe3b68f8b55675788fd851a8ddf56176d1790ecf0",
    description="airbench94's network and recipe (fast10), CIFAR-10, 30 CPU-minutes",
))
register_pretrained(PretrainedSpec(
    "airbench-cifar100",
    weights_sha256="96e2e53b7d605a21551fc5a3400a54329f1f175926abdbbe7623fd4e71b688a1",
    card_sha256="e97a07e7454fedebf470bf514d013f927b918ebae9a2a8e1d92231506e46d80b",
    description="cifarkit's fast100-cpu-30 (airbench-style net, widths 48/192/192), CIFAR-100, 30 CPU-minutes",
))
register_pretrained(PretrainedSpec(
    "resnetd-cifar100",
    weights_sha256="914b116980354ff04c67682a98bffc0ed176ee03c41188e82e1661a847539f5e",
    card_sha256="7bbb269789ed286c5a3a1e43e3b1d6ec229bfbab0c63cb7c7aa501c5345abc78",
    description="the CIFAR-100 speedrun record's recipe (ResNet-D, Muon, lookahead, WSD, progressive resizing) for "
                "30 epochs: long100-cpu, about 2 CPU-hours",
))
register_pretrained(PretrainedSpec(
    "resnetd-cutmix-cifar100",
    weights_sha256="f819fccdfc2262a0b86d436697417fbc0cc54e99a2a38c51da4066e7853fe2fe",
    card_sha256="c8f044835192048b8573bdd22279e33cc214414ca842583920ea09e57f3b41d1",
    description="the CIFAR-100 speedrun record's recipe (ResNet-D, Muon, lookahead, WSD, progressive resizing) with "
                "CutMix on half the batches for 80 epochs: long100-cutmix, about 7 CPU-hours",
))
register_pretrained(PretrainedSpec(
    "resnetd-wide-cifar100",
    weights_sha256="35e7e10c2faff2ae7667a8fdbf616f2cda8bf9e84dfe419acea9aa07dc208f60",
    card_sha256="973585c8c1b265c17fdd4db1253cd6a4725d9b67b0d19af69a73fe575b5a9698",
    description="the CIFAR-100 speedrun record's recipe (ResNet-D, Muon, lookahead, WSD, progressive resizing) at "
                "widths 80/160/320 with CutMix on half the batches for 100 epochs: long100-wide, about 5 CPU-hours "
                "alone",
))
register_pretrained(PretrainedSpec(
    "resnetd-wide-gpu-refit-cifar100",
    weights_sha256="6d8a8ab85b052c4f3dd7e42f48056d8a5fe8a855de25f8a70ca3f5c4cbd18d0a",
    card_sha256="6f11d2502e7476dcf2c9da5da55595023d530f0886415956ae0c5a63e345b69e",
    description="long100-wide trained again with seed 1 on one NVIDIA H200 (133 s), its classifier fitted again "
                "without label smoothing on its frozen features (cifarkit refit-head): 76.16% single view, "
                "scores a temperature calibrates",
))
register_pretrained(PretrainedSpec(
    "resnetd-wide-refit-cifar100",
    weights_sha256="fcc60069da15d935cf412f0ee159e39c2a6e7816f77a28262dbbeb5ea7dc6518",
    card_sha256="a26dd0d924301185d13294b592d5407d3507407aa744300112acddf944952a4b",
    description="resnetd-wide-cifar100 with its classifier fitted again on its features without label smoothing "
                "(cifarkit refit-head): the same features, scores a temperature calibrates",
))
