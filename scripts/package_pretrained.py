"""Package a trained run as a shipped pretrained model (maintainers): weights, card, registry line, page ONNX.

    python scripts/package_pretrained.py RUN_DIR --name airbench-cifar10 --data-dir DIR \\
        --command "cifarkit train --recipe fast10 ..." [--provenance TEXT] [--web-model web/public/model]

1. Writes src/cifarkit/pretrained/NAME.safetensors (fp16) and NAME.json (the card) from RUN_DIR's last.pt
   (or best.pt when the run had a validation split), with machine-specific paths removed from the config.
2. Fits a temperature on the run's validation split (when it has one; cifarkit.calibration) and the outlier
   threshold (cifarkit.outlier: 95% of that split known), stores both in the card, and measures the *shipped*
   (fp16) weights, as users will load them: test top-1/top-5 single view, with flip and flip+translate TTA,
   and calibration (ECE), via `cifarkit evaluate`'s own code; the validation figures and
   training time come from the run. They go into the card.
3. Prints the registry line to paste into src/cifarkit/pretrained/__init__.py (both files' sha256).
4. Exports the shipped model to ONNX for the web page (verified against PyTorch by the export itself), with
   float16 weights where the float32 file would pass the 10 MB the page and the npm package may carry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from cifarkit.evaluate import CALIBRATION_TARGETS  # one spelling of the choices, the CLI's and this script's

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="")
    parser.add_argument("--data-dir", required=True, help="the dataset, to measure the shipped weights")
    parser.add_argument("--command", required=True, help="the exact command that trained the run")
    parser.add_argument("--provenance", default="", help="where the training data came from")
    parser.add_argument("--web-model", type=Path, default=ROOT / "web" / "public" / "model")
    parser.add_argument("--hardware", help="JSON describing the machine that trained the run (default: this one, "
                                           "as cifarkit.device.describe_cpu describes it)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="ship without a temperature (by default one is fitted on the validation split)")
    parser.add_argument("--calibrate-for", choices=CALIBRATION_TARGETS, default="auto",
                        help="fit the temperature for the validation NLL (the standard) or the validation ECE (what "
                             "the card reports; label smoothing can set the two apart); auto (default): the NLL's "
                             "unless it leaves the validation ECE over the card's 0.02, then the ECE's")
    args = parser.parse_args()

    from cifarkit.evaluate import evaluate_checkpoint
    from cifarkit.pretrained import PRETRAINED, PretrainedSpec, package_checkpoint, shipped_file

    results = json.loads((args.run_dir / "results.json").read_text())
    checkpoint = args.run_dir / ("last.pt" if results["val"] is None else "best.pt")
    folder = shipped_file("")
    training = {"steps": results["steps"], "epochs": results["epochs"], "train_images": results["train_images"],
                "selection": results["selection"], "train_seconds": results["train_seconds"],
                "wall_seconds": results["wall_seconds"], "device": results["device"], "torch": results["torch"],
                "seed": results["seed"], "command": args.command}
    if "refit" in results:  # a run of `cifarkit refit-head`: the classifier fitted again after training
        training["refit"] = results["refit"]
    from cifarkit.device import describe_cpu

    # the machine the run trained on: given, or this one (its CPU model, flags, torch and threads)
    training["hardware"] = json.loads(args.hardware) if args.hardware else describe_cpu()
    card_extra = {"description": args.description, "training": training,
                  "dataset": {"name": results["dataset"], "provenance": args.provenance},
                  "metrics": {"val": results["val"], "training_run_test": results["test"]}}

    def package(extra: dict) -> dict:
        card = package_checkpoint(checkpoint, folder, args.name, extra)
        _sanitise_card(folder / f"{args.name}.json")
        card_bytes = (folder / f"{args.name}.json").read_bytes()
        PRETRAINED[args.name] = PretrainedSpec(args.name, card["weights"]["sha256"],
                                               hashlib.sha256(card_bytes).hexdigest(), args.description)
        return card

    package(card_extra)  # a first card, so that the shipped weights can be loaded and measured
    if results["val"] is not None and not args.no_calibrate:
        card_extra["calibration"] = calibrate(args.name, args.data_dir, args.calibrate_for)
        package(card_extra)  # the shipped model now divides its logits by the fitted temperature
    metrics = dict(card_extra["metrics"])
    for tta, key in ((False, "test"), ("flip", "test_tta"), ("flip_translate", "test_tta_translate")):
        report = evaluate_checkpoint(args.name, "test", tta, Path(tempfile.mkdtemp()) / key, args.data_dir)
        metrics[key] = {"top1": report["top1"], "top5": report["top5"], "loss": report["loss"],
                        "ece": report["calibration"]["ece"]}
        if "superclass" in report:
            metrics[key]["superclass_top1"] = report["superclass"]["top1"]
        if key == "test" and "calibration" in card_extra:  # the test ECE the temperature changed, measured once
            metrics[key]["ece_uncalibrated"] = _test_ece_at(args.name, args.data_dir, 1.0)
        print(f"{key}: top1 {report['top1']:.4f} top5 {report['top5']:.4f} ECE {report['calibration']['ece']:.4f}")
    card = package({**card_extra, "metrics": metrics})
    spec = PRETRAINED[args.name]
    print("registry line:\n"
          f"register_pretrained(PretrainedSpec(\n    {args.name!r},\n    weights_sha256={spec.weights_sha256!r},\n"
          f"    card_sha256={spec.card_sha256!r},\n    description={args.description!r},\n))")

    from cifarkit.data import load_dataset
    from cifarkit.export import export_onnx, onnx_top1

    onnx = args.web_model / "model.onnx"
    metadata = export_onnx(args.name, onnx, data_dir=args.data_dir)
    dtype = "float32"
    if onnx.stat().st_size > WEB_MODEL_LIMIT:  # float16 weights (float32 arithmetic): half the file
        metadata = export_onnx(args.name, onnx, quantize="fp16", data_dir=args.data_dir)
        dtype = "float16 weights, float32 arithmetic"
    data = load_dataset(card["config"]["data"]["dataset"], args.data_dir, download=False)
    web = {"file": "web/public/model/model.onnx", "dtype": dtype, "bytes": onnx.stat().st_size,
           "sha256": metadata["model_sha256"], "parity": metadata["parity"]["max_abs_difference"],
           "test_top1": onnx_top1(onnx, data.test_images, data.test_labels)}
    if "quantization" in metadata:
        web["quantization"] = metadata["quantization"]
    if web["bytes"] > WEB_MODEL_LIMIT:
        raise SystemExit(f"the web model is {web['bytes'] / 2**20:.1f} MB, over the {WEB_MODEL_LIMIT / 2**20:.0f} MB a "
                         "browser or an npm install should download; export it with --quantize int8")
    card = package({**card_extra, "metrics": metrics, "web_model": web})
    spec = PRETRAINED[args.name]
    print(f"web model: {onnx} ({web['bytes'] / 2**20:.1f} MB), parity {web['parity']:.1e}, test top-1 "
          f"{web['test_top1']:.4f} (PyTorch, shipped weights: {metrics['test']['top1']:.4f}); weights "
          f"{card['weights']['bytes'] / 2**20:.1f} MB\nregistry line (final):\n"
          f"register_pretrained(PretrainedSpec(\n    {args.name!r},\n    weights_sha256={spec.weights_sha256!r},\n"
          f"    card_sha256={spec.card_sha256!r},\n    description={args.description!r},\n))")


WEB_MODEL_LIMIT = 10 * 2**20  # what the page and @cifarkit/classify ship


def _test_logits_and_labels(name: str, data_dir: str):
    """The shipped model's single-view logits (before any temperature) on the test set."""
    from cifarkit.evaluate import split_logits
    from cifarkit.loading import load_model

    return split_logits(load_model(name), "test", data_dir)


def _ece(logits, labels, temperature: float) -> float:
    from cifarkit.calibration import expected_calibration_error

    return expected_calibration_error(logits, labels, temperature)


def calibrate(name: str, data_dir: str, target: str = "nll") -> dict:
    """The library's calibration record (cifarkit.evaluate.calibrate_model: the temperature, its figures and the
    outlier threshold) of the shipped weights, fitted on the run's validation split, never the test set."""
    from cifarkit.evaluate import calibrate_model
    from cifarkit.loading import load_model

    fitted = calibrate_model(load_model(name), data_dir, target)
    print(f"temperature {fitted['temperature']:.4f} (validation ECE {fitted['val_ece']['before']:.4f} -> "
          f"{fitted['val_ece']['after']:.4f}); outlier score {fitted['outlier']['score']}, threshold "
          f"{fitted['outlier']['threshold']:.4f}")
    return fitted


def _test_ece_at(name: str, data_dir: str, temperature: float) -> float:
    return _ece(*_test_logits_and_labels(name, data_dir), temperature)


def _sanitise_card(path: Path) -> None:
    """No machine paths in a shipped card: the data location and run folder are the user's own."""
    card = json.loads(path.read_text())
    card["config"]["data"]["data_dir"] = None
    card["config"]["train"]["out_dir"] = "runs"
    card["config"]["train"]["run_name"] = None
    path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
