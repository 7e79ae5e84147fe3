"""`cifarkit export`: an ONNX model that takes raw pixels and returns probabilities, checked by ONNX Runtime.

The graph's input is uint8 RGB pixels, NHWC (batch, 32, 32, 3), with a dynamic batch size; all of the
checkpoint's preprocessing (scaling, GCN, ZCA or mean/std) is inside it, and it ends in a softmax. From the same
single pass it also outputs `features` (the penultimate layer, what a head for new classes is taught on) and,
for a model with an outlier record, `outlier_score` (cifarkit.outlier). Beside it, a
JSON file named after it (model.onnx -> model.json) records the classes, superclasses, the input spec,
the resize filter, the source checkpoint's hash and its validation/test accuracy. The export verifies
itself: ONNX Runtime must reproduce PyTorch's outputs within 1e-4 on real images, or nothing is left on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarkit.errors import CifarkitError, non_finite_model
from cifarkit.export_metadata import EXPORT_FORMAT, EXPORT_VERSION, export_schema, schema_problems
from cifarkit.files import (
    check_writable_folder,
    give_usual_permissions,
    json_text,
    read_json,
    remove_stale_work_folders,
    work_folder_prefix,
)
from cifarkit.images import SIZE
from cifarkit.inference import TrainedModel
from cifarkit.loading import load_model, results_beside

TOLERANCE = 1e-4


class ExportError(CifarkitError):
    """The exported graph could not be written or does not reproduce PyTorch's outputs."""


class InferenceGraph(nn.Module):
    """uint8 NHWC pixels -> Preprocess -> network -> logits / temperature -> softmax: the whole inference path
    in one graph, so every runtime (ONNX Runtime in Python, Node.js and browsers) gives calibrated scores; beside
    the probabilities, the features the logits came from and the outlier score, where the model has them."""

    def __init__(self, trained: TrainedModel):
        super().__init__()
        from cifarkit.models.protocol import HasFeatures
        from cifarkit.outlier import outlier_module

        self.preprocess, self.model, self.temperature = trained.preprocess, trained.model, trained.temperature
        self.with_features = isinstance(trained.model, HasFeatures)
        self.outlier = (outlier_module(trained.outlier, trained.temperature)
                        if self.with_features and trained.outlier is not None else None)
        # the low-level features, where the score reads them (HasLowLevelFeatures: from the same pass)
        self.with_low_level = self.outlier is not None and self.outlier.reads_low_level

    @property
    def output_names(self) -> list[str]:
        return ["probabilities"] + (["features"] if self.with_features else []) + \
            (["outlier_score"] if self.outlier is not None else [])

    def forward(self, pixels: torch.Tensor):
        x = self.preprocess(pixels.permute(0, 3, 1, 2).float())
        if not self.with_features:
            return self._softmax(self.model(x))
        low_level, features = self.model.embed_levels(x) if self.with_low_level else (None, self.model.embed(x))
        logits = self.model.classify(features)
        if self.outlier is None:
            return self._softmax(logits), features
        return self._softmax(logits), features, self.outlier(features, logits, low_level)

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits if self.temperature == 1.0 else logits / self.temperature).softmax(dim=1)

    @torch.no_grad()
    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        out = self(torch.from_numpy(pixels))
        out = out if isinstance(out, tuple) else (out,)
        return {name: value.numpy() for name, value in zip(self.output_names, out, strict=True)}


def _onnx_export(module: InferenceGraph, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates its passes and warns about optional packages (torchvision); keep the CLI quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["pixels"], output_names=module.output_names,
                          dynamic_shapes={"pixels": {0: batch}}, dynamo=True, external_data=False, verbose=False,
                          optimize=True)


def make_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on and one intra-op thread per core (the
    defaults leave some of both on the table for a network this small)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options.intra_op_num_threads = threads or cores
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path | str, pixels: np.ndarray, batch_size: int = 500, output: str = "probabilities") -> np.ndarray:
    return run_onnx_outputs(path, pixels, batch_size, [output])[output]


def run_onnx_outputs(path: Path | str, pixels: np.ndarray, batch_size: int = 500,
                     names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The exported graph's outputs by name (`names`, or every one), over `pixels` in batches."""
    session = make_session(path)
    names = names or [o.name for o in session.get_outputs()]
    parts = [session.run(names, {"pixels": pixels[i : i + batch_size]}) for i in range(0, len(pixels), batch_size)]
    return {name: np.concatenate([part[k] for part in parts]) for k, name in enumerate(names)}


def quantize_int8(fp32_path: Path, out_path: Path, calibration_pixels: np.ndarray, batch_size: int = 64) -> None:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations) calibrated on the given
    training images: the activation ranges are measured on them, never on test images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": calibration_pixels[i : i + batch_size]}
                                 for i in range(0, len(calibration_pixels), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    prepared = out_path.with_name(out_path.stem + ".prepared.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink(missing_ok=True)


def onnx_top1(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    return float((run_onnx(path, images).argmax(1) == labels).mean())


def real_check_images(trained: TrainedModel, count: int = 64, data_dir: str | None = None) -> np.ndarray | None:
    """The first test images of the checkpoint's dataset, if a local copy is at hand (never downloads)."""
    from cifarkit.data import load_dataset
    from cifarkit.errors import DatasetError

    c = trained.data
    try:
        return load_dataset(c.dataset, data_dir or c.data_dir, download=False).test_images[:count]
    except DatasetError:
        return None


def _dataset_for_int8(trained: TrainedModel, data_dir: str | None):
    from cifarkit.data import load_dataset
    from cifarkit.errors import DatasetError

    c = trained.data
    try:
        return load_dataset(c.dataset, data_dir or c.data_dir, download=False)
    except DatasetError as e:
        raise ExportError(f"int8 quantisation is calibrated on training images and measured on the test set, so it "
                          f"needs the {c.dataset} files here: pass --data-dir ({e})") from None


def store_fp16(fp32_path: Path, out_path: Path, min_elements: int = 16) -> None:
    """The same graph with its float weights stored in float16 and cast back to float32 where they are used:
    half the file, the arithmetic unchanged (float32 throughout). Weights too small to matter stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    casts, kept = [], []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or int(np.prod(tensor.dims)) < min_elements:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT,
                                      name=f"{tensor.name}__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.save(model, str(out_path))


def _quantize_int8(staged: Path, tmp: Path, dataset, calibration_images: int) -> Path:
    quantized = tmp / f"int8-{staged.name}"
    train_index = np.random.default_rng(0).permutation(len(dataset.train_labels))[:calibration_images]
    quantize_int8(staged, quantized, np.ascontiguousarray(dataset.train_images[train_index]))
    return quantized


def _store_fp16(staged: Path, tmp: Path, dataset, calibration_images: int) -> Path:
    halved = tmp / f"fp16-{staged.name}"
    store_fp16(staged, halved)
    return halved


# --quantize NAME -> (what it is, how it is made from the float32 export)
QUANTIZATIONS = {
    "int8": ("int8 static (QDQ; per-channel int8 weights, uint8 activations)", _quantize_int8),
    "fp16": ("float16 weights, float32 arithmetic (weights cast up where used)", _store_fp16),
}


def _check_overwritable_export(out: Path) -> None:
    """An export replaces only a previous export: OUT and its metadata file must be absent, or be a
    cifarkit-onnx metadata file and the model it names. A run's config.json (`--out RUN/config.onnx`), a
    picture or any other file is never overwritten."""
    metadata_path = out.with_suffix(".json")
    for path in (out, metadata_path):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ExportError(f"{path} exists and is not a regular file; name another .onnx file")
    if not out.exists() and not metadata_path.exists():
        return
    previous = None
    if metadata_path.is_file():
        try:
            previous = read_json(metadata_path, 16 << 20)
        except CifarkitError:
            previous = None
    is_export = isinstance(previous, dict) and previous.get("format") == EXPORT_FORMAT
    if not is_export or (out.exists() and previous.get("model_file") != out.name):
        clobbered = metadata_path if metadata_path.exists() and not is_export else out
        raise ExportError(f"{clobbered} exists and is not a cifarkit ONNX export beside {out.name}; it is never "
                          "overwritten: name another .onnx file")


def export_onnx(checkpoint: str | Path | None, out: str | Path, check_images: np.ndarray | None = None,
                quantize: str | None = None, data_dir: str | None = None, calibration_images: int = 512) -> dict:
    """Write OUT (.onnx) and its metadata beside it, named after it (model.onnx -> model.json, so two exports
    in one folder never share one metadata file); returns the metadata (with the measured parity).

    With `quantize="int8"`, OUT is the statically quantised model, calibrated on `calibration_images`
    training images; its test accuracy beside the float model's is measured and recorded (this needs the
    model's dataset on this machine)."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ExportError("export needs onnx, onnxscript and onnxruntime: pip install 'cifarkit[export]'") from None
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output file should end in .onnx")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; name the .onnx file to write")
    _check_overwritable_export(out)
    check_writable_folder(out.parent, "the ONNX model")  # before the export, not after it
    trained = load_model(checkpoint, "cpu")
    module = InferenceGraph(trained).eval()
    dataset = _dataset_for_int8(trained, data_dir) if quantize else None
    check_images, source = _check_images(trained, check_images, dataset, data_dir)

    remove_stale_work_folders(out.parent)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=work_folder_prefix("export")) as tmp:
        staged = Path(tmp) / out.name
        try:
            _onnx_export(module, torch.from_numpy(check_images[:2]), staged)
        except Exception as e:  # the exporter's own errors are long; keep the first line
            raise ExportError(f"ONNX export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        parity, outputs = _parity(module, trained, staged, check_images, source)
        metadata = _metadata(trained, module, parity, outputs)
        if quantize:
            staged = _quantized(metadata, quantize, staged, Path(tmp), dataset, calibration_images, check_images,
                                outputs["onnx"]["probabilities"])
        metadata["model_file"] = out.name
        metadata["model_sha256"] = hashlib.sha256(staged.read_bytes()).hexdigest()
        problems = schema_problems(metadata, export_schema())
        if problems:  # a bug here, never the user's: the published contract would be broken
            raise ExportError(f"the metadata does not follow export-metadata.schema.json: {problems[0]}")
        _publish(staged, metadata, out, Path(tmp))
    return metadata


def _check_images(trained: TrainedModel, given: np.ndarray | None, dataset, data_dir: str | None):
    """The pictures the parity check runs (given; else the test images: from the dataset int8 loaded already, else
    looked up; else random pixels) and what they are."""
    images = given
    if images is None:
        images = dataset.test_images[:64] if dataset is not None else real_check_images(trained, data_dir=data_dir)
    source = "test images" if images is not None else "random pixels (no local copy of the dataset)"
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    return np.ascontiguousarray(images, dtype=np.uint8), source


def _parity(module: InferenceGraph, trained: TrainedModel, staged: Path, check_images: np.ndarray,
            source: str) -> tuple[dict, dict]:
    """ONNX Runtime's outputs against PyTorch's on the check images: the parity record, and both outputs
    ({"torch": ..., "onnx": ...}); an ExportError for a non-finite output or a difference over TOLERANCE."""
    expected_outputs = module.outputs(check_images)
    got_outputs = run_onnx_outputs(staged, check_images)
    for outputs, who in ((expected_outputs, "PyTorch"), (got_outputs, "ONNX Runtime")):
        rows = np.isfinite(outputs["probabilities"]).all(axis=1)
        for name in ("features", "outlier_score"):
            if name in outputs:
                rows &= np.isfinite(outputs[name].reshape(len(rows), -1)).all(axis=1)
        bad = int((~rows).sum())
        if bad:  # NaN compares false with everything: "within nan" must not pass the parity check
            raise ExportError(f"{non_finite_model(f'model {trained.name}', bad, len(rows))} ({who}); "
                              "nothing was written")
    difference = float(np.abs(got_outputs["probabilities"] - expected_outputs["probabilities"]).max())
    # features and outlier scores are not bounded by 1 as probabilities are: held to the same tolerance
    # relative to their size; an outlier score that divides by a small spread magnifies the features' own
    # round-off by its error_scale, which the check allows for
    magnified = {"outlier_score": module.outlier.error_scale if module.outlier is not None else 1.0}
    relative = {name: float(np.abs(got_outputs[name] - expected_outputs[name]).max()
                            / max(1.0, float(np.abs(expected_outputs[name]).max())) / magnified.get(name, 1.0))
                for name in module.output_names[1:]}
    worst = max([difference, *relative.values()])
    if worst > TOLERANCE:
        raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's by {worst:.2e} "
                          f"(> {TOLERANCE:g}); nothing was written")
    parity = {"images": int(len(check_images)), "source": source, "max_abs_difference": difference,
              "tolerance": TOLERANCE, **{f"{name}_max_relative_difference": value for name, value in relative.items()}}
    return parity, {"torch": expected_outputs, "onnx": got_outputs}


def _metadata(trained: TrainedModel, module: InferenceGraph, parity: dict, outputs: dict) -> dict:
    """model.json's fields (export-metadata.schema.json) but for the model file's name and checksum."""
    if trained.pretrained:
        from cifarkit.pretrained import read_card

        results = read_card(trained.name)["metrics"]
    else:
        results = results_beside(trained.checkpoint, ExportError)
    metadata = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": trained.model_spec.name,
        "dataset": trained.data.dataset,
        "classes": trained.classes,
        "superclasses": trained.superclasses or None,
        "fine_to_coarse": trained.fine_to_coarse,
        "input": {"name": "pixels", "dtype": "uint8", "shape": ["batch", SIZE, SIZE, 3], "layout": "NHWC",
                  "channels": "RGB", "range": [0, 255],
                  "resize": "whole picture to 32x32, PIL bilinear (antialiased); EXIF orientation applied; "
                            "alpha composited onto white"},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(trained.classes)]},
        "preprocess": trained.preprocess.to_state()["config"],
        "temperature": trained.temperature,
        "source_checkpoint": trained.name if trained.pretrained else str(trained.checkpoint),
        "source_checkpoint_sha256": trained.sha256,
        "step": trained.step,
        "val": trained.val,
        "test": results.get("test"),
        "parity": parity,
    }
    if module.with_features:
        metadata["features"] = {"name": "features", "dtype": "float32",
                                "shape": ["batch", int(outputs["torch"]["features"].shape[1])],
                                "fingerprint": trained.feature_fingerprint}
    if module.outlier is not None:
        metadata["outlier"] = {"name": "outlier_score", "dtype": "float32", "shape": ["batch"],
                               "score": trained.outlier["score"], "threshold": trained.outlier["threshold"],
                               "known_rate": trained.outlier.get("known_rate")}
    return metadata


def _quantized(metadata: dict, quantize: str, staged: Path, folder: Path, dataset, calibration_images: int,
               check_images: np.ndarray, float_probabilities: np.ndarray) -> Path:
    """The quantised model beside the float one, its accuracy change recorded in `metadata`."""
    kind, make = QUANTIZATIONS[quantize]
    quantized = make(staged, folder, dataset, calibration_images)
    float_top1 = onnx_top1(staged, dataset.test_images, dataset.test_labels)
    quantized_top1 = onnx_top1(quantized, dataset.test_images, dataset.test_labels)
    metadata["quantization"] = {
        "kind": kind, "test_images": int(len(dataset.test_labels)),
        "test_top1_float": float_top1, f"test_top1_{quantize}": quantized_top1,
        "change": quantized_top1 - float_top1, "float_bytes": staged.stat().st_size,
        f"{quantize}_bytes": quantized.stat().st_size,
        "max_abs_difference_from_float": float(np.abs(run_onnx(quantized, check_images) - float_probabilities).max())}
    if quantize == "int8":
        metadata["quantization"]["calibration"] = f"{calibration_images} training images"
    return quantized


def _publish(staged: Path, metadata: dict, out: Path, folder: Path) -> None:
    """Both files are complete on disk (in the work folder, on the target's file system) before either replaces
    its old self: a full disk stops the export before anything is replaced, never between the two. Then two
    renames, which need no space; the model first, so that until the new metadata lands the pair is refused by
    its checksum rather than read half new."""
    staged_metadata = folder / "metadata.json"
    staged_metadata.write_bytes((json_text(metadata) + "\n").encode())
    for path in (staged, staged_metadata):
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        give_usual_permissions(path)
    os.replace(staged, out)
    os.replace(staged_metadata, out.with_suffix(".json"))
