"""Load a trained model for use, from wherever it is: `load_model(source)` is the one way.

A source is a shipped model's name (`cifarkit models`; None: the default one), a run folder (its best
checkpoint, else its last), or a checkpoint file; an ONNX export is refused with where to use it (the TypeScript
library and the page read those). A path that exists wins over a shipped name. Every source gives the same
`TrainedModel` (cifarkit.inference), built from the same `ModelBundle`, and a run's `calibration.json` (written by
`cifarkit calibrate` for exactly that checkpoint) supplies the temperature and outlier threshold a run's own
checkpoint lacks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cifarkit.bundle import ModelBundle
from cifarkit.checkpoints import file_sha256, load_checkpoint, resolve_checkpoint
from cifarkit.errors import CheckpointError
from cifarkit.files import read_json
from cifarkit.inference import TrainedModel, trained_model_from_bundle
from cifarkit.pretrained import DEFAULT_PRETRAINED, PRETRAINED, PretrainedError, shipped_bundle

CALIBRATION_FILE = "calibration.json"  # written by `cifarkit calibrate` beside the checkpoint it fitted
MAX_CALIBRATION_BYTES = 4 << 20  # a temperature and an outlier record, its kNN bank (1.4 MB in base64) included
MAX_RESULTS_BYTES = 16 << 20  # a run's results.json: figures, a few KB


def load_model(source: str | Path | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """What `--model` names: a shipped model (None: the default one), a run directory or a checkpoint file."""
    if source is None:
        return load_pretrained(DEFAULT_PRETRAINED, device)
    if not Path(source).exists():
        if str(source) in PRETRAINED:
            return load_pretrained(str(source), device)
        raise CheckpointError(f"{source} is neither a shipped model ({', '.join(PRETRAINED)}; see `cifarkit models`) "
                              "nor an existing run directory or checkpoint file")
    return load_trained_model(source, device)


def load_pretrained(name: str = DEFAULT_PRETRAINED, device: str | torch.device = "cpu") -> TrainedModel:
    """The shipped model `name` (its files sha256-verified), as the same `TrainedModel` a checkpoint gives."""
    bundle, path, sha256 = shipped_bundle(name)
    try:
        return trained_model_from_bundle(bundle, path, sha256, device, name=name)
    except CheckpointError as e:
        raise PretrainedError(f"pretrained model {name!r} does not load: {e}") from None


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A run folder's model (its best checkpoint, else its last) or a checkpoint file's, with the calibration
    fitted for exactly that checkpoint where there is one."""
    checkpoint = resolve_checkpoint(path)
    bundle = ModelBundle.from_state(load_checkpoint(checkpoint), checkpoint)
    sha256 = file_sha256(checkpoint)
    trained = trained_model_from_bundle(bundle, checkpoint, sha256, device)
    if (calibration := run_calibration(checkpoint, sha256)) is not None:
        trained.temperature, trained.outlier = calibration["temperature"], calibration["outlier"]
    return trained


def run_calibration(checkpoint: Path, sha256: str) -> dict | None:
    """What `cifarkit calibrate` fitted for exactly this checkpoint (its sha256), from the run folder's
    calibration.json: {"temperature": float, "outlier": record or None}; None when there is none, or it was
    fitted for another checkpoint of the run."""
    from cifarkit.outlier import record_problem

    for folder in (checkpoint.parent, checkpoint.parent.parent):  # RUN/best.pt, RUN/checkpoints/step-N.pt
        path = folder / CALIBRATION_FILE
        if path.is_file():
            try:
                record = read_json(path, MAX_CALIBRATION_BYTES, CheckpointError, "calibration file")
            except CheckpointError:
                return None
            temperature = record.get("temperature") if isinstance(record, dict) else None
            if (record.get("checkpoint_sha256") == sha256 and isinstance(temperature, (int, float))
                    and not isinstance(temperature, bool) and 0.05 <= temperature <= 20):
                outlier = record.get("outlier")
                return {"temperature": float(temperature),
                        "outlier": outlier if record_problem(outlier) is None else None}
            return None
    return None


def results_beside(checkpoint: Path, error: type[Exception] = CheckpointError) -> dict:
    """The results.json of the run folder a checkpoint file lies in (what the run measured: its training time,
    validation and test figures), or {} where there is none; a malformed one is `error`."""
    path = checkpoint.parent / "results.json"
    if not path.exists():
        return {}
    results = read_json(path, MAX_RESULTS_BYTES, error, "the run's results")
    return results if isinstance(results, dict) else {}
