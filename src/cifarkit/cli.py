"""The `cifarkit` command: parses arguments and calls library functions; nothing else.

Errors of the project's own types are printed as one clear message (no traceback) with exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cifarkit.data.specs import DATASETS
from cifarkit.errors import CifarkitError
from cifarkit.files import json_text
from cifarkit.text import printable

# command name -> its handler, and -> the function that adds its subparser and arguments (defined beside it)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
PARSERS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(arguments: Callable[[argparse._SubParsersAction], None]):
    """Register `cmd_NAME` as `cifarkit NAME`, with `arguments(sub)` adding its subparser (in --help, commands
    are listed in the order they are registered)."""
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        name = fn.__name__.removeprefix("cmd_").replace("_", "-")
        COMMANDS[name], PARSERS[name] = fn, arguments
        return fn

    return register


DATASET_CHOICES = list(DATASETS)  # every dataset the registry knows


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="cifar100",
                   help="which dataset (default: %(default)s)")
    p.add_argument("--data-dir", metavar="PATH",
                   help="extracted dataset folder, a folder containing it, or the official .tar.gz "
                        "(default: $CIFARKIT_DATA_DIR, then the cache folder, then a download)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading when no copy is found")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _is_checkpoint(text: str) -> bool:
    path = Path(text)
    return (path.suffix == ".pt" and path.is_file()) or (path.is_dir() and any(
        (path / name).exists() for name in ("best.pt", "last.pt")))


def _model_arg(args) -> str | None:
    """--model, or the older positional checkpoint; None: the default pretrained model."""
    if args.model is not None and args.checkpoint is not None:
        raise CifarkitError("give the model once: either --model or the positional checkpoint")
    return args.model if args.model is not None else args.checkpoint


def _add_model_option(p: argparse.ArgumentParser, positional: bool = True) -> None:
    help_text = "a shipped model's name (see `cifarkit models`), a run directory or a checkpoint file (default: " \
                "the default shipped model)"
    if positional:
        p.add_argument("checkpoint", nargs="?", metavar="RUN_OR_CHECKPOINT", help=help_text)
    p.add_argument("--model", metavar="NAME|RUN_DIR|FILE.pt", help=help_text)


def _load(args):
    from cifarkit.data import load_dataset

    return load_dataset(args.dataset, args.data_dir, download=not args.no_download)


def _download_arguments(sub) -> None:
    p = sub.add_parser("download", help="download and verify the official archive into the cache",
                       description="Find the dataset (--data-dir, $CIFARKIT_DATA_DIR, the cache) or download "
                                   "the official archive, verify its md5 and extract it safely.")
    _data_args(p)


@command(_download_arguments)
def cmd_download(args) -> int:
    from cifarkit.data import get_spec, locate

    located = locate(get_spec(args.dataset), args.data_dir, download_ok=True)
    print(f"{args.dataset}: {located.folder} ({located.how})")
    return 0


def _info_arguments(sub) -> None:
    p = sub.add_parser("info", help="shapes, images per class, class names, where the files were found")
    _data_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


@command(_info_arguments)
def cmd_info(args) -> int:
    import numpy as np

    data = _load(args)
    per_class = np.bincount(data.train_labels, minlength=data.spec.num_classes)
    per_class_test = np.bincount(data.test_labels, minlength=data.spec.num_classes)
    info = {
        "dataset": data.spec.name,
        "found": f"{data.source} ({data.source_description})",
        "train": {"images": list(data.train_images.shape), "dtype": str(data.train_images.dtype),
                  "per_class": {"min": int(per_class.min()), "max": int(per_class.max())}},
        "test": {"images": list(data.test_images.shape),
                 "per_class": {"min": int(per_class_test.min()), "max": int(per_class_test.max())}},
        "classes": data.classes,
    }
    if data.superclasses:
        mapping = data.fine_to_coarse
        info["superclasses"] = {name: [data.classes[f] for f in np.flatnonzero(mapping == c)]
                                for c, name in enumerate(data.superclasses)}
    if args.json:
        print(json_text(info))
        return 0
    print(f"dataset:  {info['dataset']}\nfound:    {info['found']}")
    for split in ("train", "test"):
        s = info[split]
        print(f"{split + ':':<9} {' x '.join(map(str, s['images']))} uint8, "
              f"{s['per_class']['min']}-{s['per_class']['max']} images per class")
    # names come from the dataset's files: escaped, so that none can forge a line or retitle the terminal
    print(f"classes ({len(data.classes)}): {', '.join(map(printable, data.classes))}")
    for name, members in info.get("superclasses", {}).items():
        print(f"  {printable(name)}: {', '.join(map(printable, members))}")
    return 0


def _show_arguments(sub) -> None:
    p = sub.add_parser("show", help="PNG grid of the first N images and a one-per-class sheet",
                       description="Write two PNG files: the first N images with their class names (like the "
                                   "seed's 4x4 plot) and one image of every class.")
    _data_args(p)
    p.add_argument("-n", "--count", type=int, default=16, help="images in the first grid (default: %(default)s)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="default: %(default)s")
    p.add_argument("--out", default=".", help="folder for the PNG files (default: the current folder)")


@command(_show_arguments)
def cmd_show(args) -> int:
    from cifarkit.plots import first_images_sheet, one_per_class_sheet

    data = _load(args)
    images, labels = (data.train_images, data.train_labels) if args.split == "train" else (
        data.test_images, data.test_labels)
    out = Path(args.out)
    grid = first_images_sheet(images, labels, data.classes, args.count,
                              out / f"{args.dataset}-{args.split}-first{args.count}.png")
    sheet = one_per_class_sheet(images, labels, data.classes, out / f"{args.dataset}-{args.split}-classes.png")
    print(f"wrote {grid}\nwrote {sheet}")
    return 0


# the one table of flags that stand for a setting (args attribute -> the setting)
FLAG_SETTINGS = {"device": "train.device", "out_dir": "train.out_dir", "data_dir": "data.data_dir",
                 "dataset": "data.dataset", "steps": "train.steps", "run_name": "train.run_name",
                 "budget_seconds": "train.budget_seconds"}
# the experiment commands' --out-dir is the experiment folder's parent, not a run's: they take only these
EXPERIMENT_FLAGS = ("budget_seconds", "device", "data_dir")


def _overrides(args, flags=tuple(FLAG_SETTINGS)) -> list[str]:
    """`--set` values, then the `flags` that stand for settings (a flag the command lacks counts as unset)."""
    overrides = list(args.set or [])
    for flag in flags:
        key = FLAG_SETTINGS[flag]
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if getattr(args, "steps", None) is not None:
        overrides.append("train.epochs=0")  # --steps counts steps, whatever epochs the recipe names
    if getattr(args, "no_download", False):
        overrides.append("data.download=false")
    return overrides


def _config(args):
    from cifarkit.config import DEFAULT_RECIPE, load_config

    return load_config(args.recipe or DEFAULT_RECIPE, _overrides(args))


def _projection(config) -> str:
    """`config`'s projected run time on its device, from a few of its own training steps timed here."""
    from cifarkit.device import resolve_device
    from cifarkit.train.projection import describe, project

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)  # progress on stderr: stdout holds the projection itself

    device = resolve_device(config.train.device)
    log(f"timing {config.recipe}'s training step on {device} (2 warm-up steps, then 5 timed ones)")
    return describe(project(config, device, log=log))


def _train_arguments(sub) -> None:
    p = sub.add_parser("train", help="train a recipe; writes a run directory",
                       description="Train a recipe. The run directory holds config.json, TensorBoard events, "
                                   "metrics.jsonl, best.pt (by validation loss, or top-1: train.select), last.pt "
                                   "and results.json (the test set, evaluated once at the end).")
    p.add_argument("--recipe", help="built-in recipe name or a .toml path "
                                    "(default: elu-seed; `cifarkit list` shows all)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=200 --set optim.lr=0.05 (repeatable)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, help="override data.dataset")
    p.add_argument("--data-dir", metavar="PATH", help="override data.data_dir (folder or .tar.gz)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading the dataset")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=int, help="train this many steps (overrides train.steps and train.epochs)")
    p.add_argument("--out-dir", help="parent folder of run directories (default: runs)")
    p.add_argument("--run-name", help="run directory name (default: RECIPE-DATE-TIME)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--project", action="store_true",
                   help="time a few training steps here and print the projected time of the whole recipe; no run")
    p.add_argument("--then-project", metavar="RECIPE",
                   help="after training, print RECIPE's projected time on this machine (as --project does)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its newest intact checkpoint (model, optimizer, "
                        "schedules, data order, random generators); --set may change values, e.g. "
                        "train.skip_nonfinite=true")


@command(_train_arguments)
def cmd_train(args) -> int:
    from cifarkit.train import distributed, resume, train_seeds

    try:
        if args.resume:
            from cifarkit.config import RESUMABLE_SETTINGS

            # a flag for a setting that may not change on resume, and the flags that start or describe a run
            fixed = [flag for flag, key in FLAG_SETTINGS.items() if key not in RESUMABLE_SETTINGS]
            given = [flag for flag in ("recipe", *fixed, "print_config", "project", "then_project")
                     if getattr(args, flag, None) not in (None, False)]
            ignored = [f"--{flag.replace('_', '-')}" for flag in given]
            if ignored:
                allowed = [f"--{flag.replace('_', '-')}" for flag, key in FLAG_SETTINGS.items()
                           if key in RESUMABLE_SETTINGS and hasattr(args, flag)]
                raise CifarkitError(f"{ignored[0]} cannot be used with --resume: a resumed run keeps its own settings "
                                    f"(only {', '.join(allowed)}, --no-download and --set of "
                                    f"{', '.join(RESUMABLE_SETTINGS)})")
            resume(args.resume, _overrides(args))
            return 0
        config = _config(args)
        if args.print_config:
            print(json_text(config.to_dict()))
            return 0
        if args.project:
            print(_projection(config))
            return 0
        target = None
        if args.then_project:  # checked now, not after the training it follows
            from cifarkit.config import load_config

            target = load_config(args.then_project, [f"train.device={json.dumps(config.train.device)}",
                                                     f"data.dataset={json.dumps(config.data.dataset)}"])
        train_seeds(config)
        if target is not None:
            print(f"\nnext: the seed's full recipe, `cifarkit train --recipe {args.then_project}`, measured here:\n"
                  + _projection(target))
        return 0
    finally:
        distributed.cleanup()


def _summary_arguments(sub) -> None:
    p = sub.add_parser("summary", help="Keras-style layer summary of a registered model")
    p.add_argument("--model", default="elu_net_seed", help="model name (default: %(default)s)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="cifar100")


@command(_summary_arguments)
def cmd_summary(args) -> int:
    from cifarkit.data import get_spec
    from cifarkit.models import create_model, format_summary, keras_summary

    num_classes = get_spec(args.dataset).num_classes
    print(format_summary(keras_summary(create_model(args.model, num_classes))))
    return 0


def _list_arguments(sub) -> None:
    sub.add_parser("list", help="built-in recipes and registered models")


@command(_list_arguments)
def cmd_list(args) -> int:
    from cifarkit.config import list_recipes, load_config
    from cifarkit.models import list_models

    print("recipes:")
    for name in list_recipes():
        print(f"  {name:<12} {load_config(name).description}")
    print("models:\n  " + "\n  ".join(list_models()))
    return 0


def _evaluate_arguments(sub) -> None:
    p = sub.add_parser("evaluate", help="full report of a checkpoint on the validation or test split",
                       description="Top-1/top-5/loss, per-class and superclass accuracy, confusion matrix (CSV, "
                                   "PNG) and most-confused pairs, misclassified gallery, calibration (ECE, "
                                   "reliability diagram); all in report.json with the checkpoint's hash.")
    _add_model_option(p)
    p.add_argument("--split", choices=["val", "test"], default="test", help="default: %(default)s")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval-SPLIT[-tta])")
    p.add_argument("--data-dir", metavar="PATH", help="where the dataset is (default: as in training)")
    p.add_argument("--device", default="cpu", help="default: %(default)s")


@command(_evaluate_arguments)
def cmd_evaluate(args) -> int:
    from cifarkit.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(_model_arg(args), args.split, args.tta, args.out, args.data_dir, args.device)
    view = "flip TTA" if args.tta else "single view"
    print(f"{report['split']} ({report['images']} images, {view}): top1 {report['top1']:.4f} | "
          f"top5 {report['top5']:.4f} | loss {report['loss']:.4f} | ECE {report['calibration']['ece']:.4f}")
    if "superclass" in report:
        print(f"superclass top1 (fine predictions mapped to superclasses): {report['superclass']['top1']:.4f}")
    worst = sorted(report["per_class_accuracy"].items(), key=lambda item: item[1])[:5]
    print("weakest classes: " + ", ".join(f"{printable(name)} {acc:.2f}" for name, acc in worst))
    if report["most_confused"]:
        print("most confused: " + ", ".join(f"{printable(p['true'])} -> {printable(p['predicted'])} ({p['count']})"
                                            for p in report["most_confused"][:5]))
    for path in report["files"].values():
        print(f"wrote {path}")
    return 0


def _calibrate_arguments(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a trained model's temperature on its validation split (calibrated "
                                         "scores) and its outlier threshold",
                       description="Fit one temperature that divides the logits of a run's best checkpoint (or of "
                                   "a checkpoint file), on its validation split (never the test set), and write "
                                   "calibration.json beside the checkpoint; predict, evaluate and export then give "
                                   "calibrated scores. The ranking, and so every accuracy, is unchanged. Beside it, "
                                   "the outlier score that says \"none of these\" (95% of the split known; fitted "
                                   "on the training split's features too, so it reads the whole training split "
                                   "once). Shipped models come calibrated.")
    p.add_argument("checkpoint", nargs="?", metavar="RUN_OR_CHECKPOINT", help="a run directory or a checkpoint file")
    p.add_argument("--model", metavar="RUN_DIR|FILE.pt", help="the same, as the other commands spell it")
    p.add_argument("--for", dest="target", choices=["nll", "ece", "auto"], default="nll",
                   help="fit for the validation NLL (the standard) or its ECE; auto: the NLL's unless its "
                        "validation ECE is over 0.02, then the ECE's; default: %(default)s")
    p.add_argument("--data-dir", metavar="PATH", help="where the dataset is (default: as in training)")
    p.add_argument("--device", default="cpu", help="default: %(default)s")


@command(_calibrate_arguments)
def cmd_calibrate(args) -> int:
    from cifarkit.evaluate import calibrate_run

    model = _model_arg(args)
    if model is None:
        raise CifarkitError("name the model to calibrate: cifarkit calibrate RUN_DIR (or --model RUN_DIR|FILE.pt)")
    record = calibrate_run(model, args.data_dir, args.target, args.device)
    print(f"temperature {record['temperature']:.4f}, fitted for {record['fitted_for']} on {record['fitted_on']}: "
          f"validation ECE {record['val_ece']['before']:.4f} -> {record['val_ece']['after']:.4f}, NLL "
          f"{record['val_nll']['before']:.4f} -> {record['val_nll']['after']:.4f} | outlier score "
          f"{record['outlier']['score']} ({record['outlier']['known_rate']:.0%} of the split known) | "
          f"wrote {record['file']}")
    return 0


def _refit_head_arguments(sub) -> None:
    p = sub.add_parser("refit-head", help="fit a model's classifier again without label smoothing (calibration)",
                       description="Fit the model's last layer again on its frozen features of the training split "
                                   "(and their mirror images) with the plain cross-entropy of the true labels: a "
                                   "network trained with label smoothing then gets scores a temperature can "
                                   "calibrate. The L2 is chosen on the validation split, the test set evaluated "
                                   "once; writes a run folder that every command loads. Then `cifarkit calibrate "
                                   "OUT` fits its temperature.")
    _add_model_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the new run folder (must not hold files)")
    p.add_argument("--l2", metavar="LIST", help="L2 penalties to choose from, comma-separated (default: "
                                                "1e-5,3e-5,1e-4,3e-4)")
    p.add_argument("--no-mirror", action="store_true", help="fit on the training pictures only, not their mirror "
                                                            "images too (half the feature passes)")
    p.add_argument("--data-dir", metavar="PATH", help="where the dataset is (default: as in training)")
    p.add_argument("--device", default="cpu", help="default: %(default)s")


@command(_refit_head_arguments)
def cmd_refit_head(args) -> int:
    from cifarkit.refit import DEFAULT_L2, RefitError, refit_head

    l2s = DEFAULT_L2
    if args.l2 is not None:
        try:
            l2s = tuple(float(part) for part in args.l2.split(","))
        except ValueError:
            raise RefitError(f"--l2 takes numbers separated by commas, e.g. 1e-5,1e-4; got {args.l2!r}") from None
    refit_head(_model_arg(args), args.out, args.data_dir, l2s, not args.no_mirror, args.device)
    return 0


def _predict_arguments(sub) -> None:
    from cifarkit.predict import FORMATS

    p = sub.add_parser("predict", help="classify image files with a checkpoint",
                       description="Classify pictures of any common format and size (resized to 32x32). A file "
                                   "that cannot be read gets an error line; the others are still classified; "
                                   "the exit status is 1 if any file failed.")
    _add_model_option(p, positional=False)
    p.add_argument("files", nargs="+", metavar="FILES_OR_DIRS",
                   help="image files or folders of images (a checkpoint or run directory first still names the "
                        "model, as in earlier versions)")
    p.add_argument("-k", "--top-k", type=_positive_int, default=5,
                   help="classes to show per image (default: %(default)s)")
    p.add_argument("--format", choices=list(FORMATS), default="table", help="default: %(default)s")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image")
    _add_fit_option(p)
    p.add_argument("--device", default="cpu", help="default: %(default)s")
    p.add_argument("--head", metavar="HEAD.json", help="classify into the classes of a head taught on the model's "
                                                       "features (`cifarkit teach`) instead of the model's own")


@command(_predict_arguments)
def cmd_predict(args) -> int:
    from cifarkit.predict import iter_predictions, stream_lines

    files = list(args.files)
    model = args.model
    if model is None and len(files) > 1 and _is_checkpoint(files[0]):  # the older form: predict CHECKPOINT FILES
        model = files.pop(0)
    seen = []  # (had an error) per result, counted as they stream past

    def counted(results):
        for r in results:
            seen.append(r.error is not None)
            yield r

    results = counted(iter_predictions(model, files, args.top_k, args.tta, args.device, fit=args.fit,
                                       head=args.head))
    first = next(results, None)
    if first is None:
        print("cifarkit predict: error: no image files found in the given folders", file=sys.stderr)
        return 1
    for line in stream_lines(itertools.chain([first], results), args.format):  # each result reaches a pipe now
        if line:
            print(line, flush=True)
    failed = sum(seen)
    if failed:
        print(f"cifarkit predict: {failed} of {len(seen)} files could not be classified", file=sys.stderr)
    return 1 if failed else 0


def _add_fit_option(p: argparse.ArgumentParser) -> None:
    from cifarkit.images import DEFAULT_FIT, FITS

    p.add_argument("--fit", choices=list(FITS), default=DEFAULT_FIT,
                   help="how a picture becomes square before it is shrunk to 32x32: squash the whole picture (its "
                        "shape distorted) or keep its centre square (its edges lost); default: %(default)s")


def _teach_arguments(sub) -> None:
    p = sub.add_parser("teach", help="teach the model new classes from a folder of pictures (a head on its features)",
                       description="Fit a classifier for your own classes on the model's frozen features: DIR holds "
                                   "one sub-folder of pictures per class (the ImageFolder layout). Writes a head "
                                   "file that `cifarkit predict --head`, @cifarkit/classify and the page use. "
                                   "Files that are not pictures are skipped with a line each.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--out", required=True, metavar="HEAD.json")
    _add_model_option(p, positional=False)
    _add_fit_option(p)


@command(_teach_arguments)
def cmd_teach(args) -> int:
    from cifarkit.teach import teach_folder

    teach_folder(args.folder, args.out, args.model, args.fit)
    return 0


def _export_arguments(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (pixels in, probabilities out), verified",
                       description="Write an ONNX model taking uint8 RGB NHWC 32x32 pixels (dynamic batch) with "
                                   "all preprocessing inside and probabilities out, plus its metadata named after "
                                   "it (model.onnx -> model.json); ONNX Runtime must match PyTorch within 1e-4 "
                                   "or nothing is written.")
    _add_model_option(p)
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the model")
    p.add_argument("--quantize", choices=["int8", "fp16"],
                   help="int8: a statically quantised model (calibrated on training images); fp16: float16 "
                        "weights, float32 arithmetic (half the file). The test accuracy change is measured and "
                        "printed (needs the dataset here)")
    p.add_argument("--data-dir", metavar="PATH", help="where the model's dataset is (for --quantize)")


@command(_export_arguments)
def cmd_export(args) -> int:
    from cifarkit.export import export_onnx

    metadata = export_onnx(_model_arg(args), args.onnx, quantize=args.quantize, data_dir=args.data_dir)
    print(f"wrote {args.onnx} and {Path(args.onnx).with_suffix('.json')} | ONNX Runtime matches PyTorch "
          f"within {metadata['parity']['max_abs_difference']:.1e} on {metadata['parity']['images']} "
          f"{metadata['parity']['source']}")
    if "quantization" in metadata:
        q, kind = metadata["quantization"], args.quantize
        print(f"{kind}: test top1 {q[f'test_top1_{kind}']:.4f} vs {q['test_top1_float']:.4f} in float "
              f"({100 * q['change']:+.2f} points) on {q['test_images']} test images | "
              f"{q[f'{kind}_bytes'] / 2**20:.1f} MB vs {q['float_bytes'] / 2**20:.1f} MB")
    return 0


def _models_arguments(sub) -> None:
    p = sub.add_parser("models", help="the pretrained models that ship with cifarkit (accuracy, size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(_models_arguments)
def cmd_models(args) -> int:
    from cifarkit.pretrained import list_pretrained

    rows = list_pretrained()
    if args.json:
        print(json_text(rows))
        return 0
    width = max(len("name"), *(len(r["name"]) + 2 for r in rows))  # room for the default's " *"
    print(f"{'name':<{width}} {'dataset':<9} {'params':>10} {'test top1':>9} {'with TTA':>8} {'size':>8}")
    for r in rows:
        tta = f"{r['test_top1_tta']:.2%}" if r["test_top1_tta"] is not None else "-"
        print(f"{r['name'] + (' *' if r['default'] else ''):<{width}} {r['dataset']:<9} {r['parameters']:>10,} "
              f"{r['test_top1']:>9.2%} {tta:>8} {r['megabytes']:>6.1f}MB")
    print("* the default model of predict, evaluate, export and serve-web")
    return 0


def _plot_arguments(sub) -> None:
    p = sub.add_parser("plot", help="training curves (PNG) of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")


@command(_plot_arguments)
def cmd_plot(args) -> int:
    from cifarkit.plots import training_curves

    print(f"wrote {training_curves(Path(args.run_dir), Path(args.out) if args.out else None)}")
    return 0


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="built-in recipe name or a .toml path (default: elu-seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a recipe value for every trial "
                                                                       "(repeatable)")
    p.add_argument("--budget-seconds", type=float, metavar="S", help="fit every trial to S seconds of training")
    p.add_argument("--device", help="this worker's device: auto, cpu, cuda:N (one worker per GPU), mps")
    p.add_argument("--data-dir", metavar="PATH", help="where the dataset is (this worker's copy)")
    p.add_argument("--out-dir", default="runs", help="parent of the experiment folder (default: %(default)s)")
    p.add_argument("--name", help="experiment (and study) name (default: RECIPE-KIND-HASH of the settings, so "
                                  "the same command continues the same experiment)")
    p.add_argument("--storage", metavar="URL", help="study database: sqlite:///FILE or postgresql://USER:PASS@"
                                                    "HOST/DB shared by many machines (default: SQLite in the "
                                                    "experiment folder)")


def _sweep_arguments(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of settings x paired seeds, on an Optuna study (resumable, "
                                     "many workers)",
                       description="Train every --vary combination with --seeds paired seeds (seed i is the same "
                                   "for every variant). Stop it any way and run the same command again: finished "
                                   "trials are kept and a stopped one continues from its checkpoint. Several "
                                   "workers (processes, or machines with --storage postgresql://...) share the "
                                   "work and never run a trial twice.")
    _experiment_args(p)
    p.add_argument("--vary", action="append", metavar="KEY=V1,V2,...",
                   help="a setting and its values (TOML, as in --set; '|' may separate values); repeatable: the "
                        "grid is the product")
    p.add_argument("--seeds", type=int, default=3, help="paired seeds per variant (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="check everything and list the variants; run nothing")
    p.add_argument("--max-cells", type=_positive_int, default=10_000,
                   help="refuse a sweep of more variants x seeds than this (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true",
                   help="queue again the cells whose trials failed (give it to one worker only)")


@command(_sweep_arguments)
def cmd_sweep(args) -> int:
    from cifarkit.config import DEFAULT_RECIPE
    from cifarkit.experiments.report import report_sweep
    from cifarkit.experiments.sweep import plan_sweep, run_sweep

    sets = _overrides(args, EXPERIMENT_FLAGS)
    sweep = plan_sweep(args.recipe or DEFAULT_RECIPE, sets, args.vary or [], args.seeds, args.out_dir, args.name,
                       args.storage, args.max_cells)
    if args.dry_run:
        for variant in sweep.variants:
            print(f"{variant.name}: {printable(variant.label)}", flush=True)
        seeds = f"{sweep.seeds[0]}..{sweep.seeds[-1]}" if len(sweep.seeds) > 3 else ", ".join(map(str, sweep.seeds))
        print(f"{len(sweep.variants)} variants x {len(sweep.seeds)} seeds ({seeds}) -> {sweep.folder}")
        return 0
    counts = run_sweep(sweep, retry=args.retry_failed)
    report = report_sweep(sweep.folder)
    print(report["markdown"], end="")
    print(f"this worker: {counts['done']} trial(s) done, {counts['failed']} failed | report: {sweep.folder}/report")
    if counts["failed_cells"]:
        print(f"cifarkit sweep: {counts['failed_cells']} cell(s) of this sweep failed (now or in an earlier run) and "
              "are missing from the report; rerun with --retry-failed to try them again", file=sys.stderr)
    return 1 if counts["failed"] or counts["failed_cells"] else 0


def _tune_arguments(sub) -> None:
    p = sub.add_parser("tune", help="tune a recipe with Optuna (TPE sampler, median pruner on validation loss)",
                       description="Search --space with Optuna's TPE sampler; trials are pruned when their "
                                   "validation loss (or error, --metric) falls behind the median. The test split is "
                                   "never looked at (except once with --test-best). The best values are written as a "
                                   "recipe that extends --recipe.")
    _experiment_args(p)
    p.add_argument("--space", action="append", metavar="KEY=RANGE",
                   help="KEY=LOW:HIGH (uniform; integers if both are), KEY=log:LOW:HIGH or KEY=a|b|c; repeatable")
    p.add_argument("--trials", type=int, default=20, help="finished trials in the study (default: %(default)s)")
    p.add_argument("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default: %(default)s)")
    p.add_argument("--metric", choices=["loss", "error"], default="loss",
                   help="the validation metric the pruner sees and the objective minimises: loss, or error "
                        "(1 - top-1; label smoothing raises the loss of equally accurate models) (default: "
                        "%(default)s)")
    p.add_argument("--test-best", action="store_true",
                   help="at the end, evaluate the best trial's checkpoint on the test split (once)")


@command(_tune_arguments)
def cmd_tune(args) -> int:
    from cifarkit.config import DEFAULT_RECIPE
    from cifarkit.experiments.tune import plan_tuning, run_tuning, test_best, tuning_plots

    sets = _overrides(args, EXPERIMENT_FLAGS)
    tuning = plan_tuning(args.recipe or DEFAULT_RECIPE, sets, args.space or [], args.trials, args.out_dir, args.name,
                         args.storage, args.sampler_seed, args.metric)
    best = run_tuning(tuning)
    print(f"best: trial {best['trial']} | val {tuning.metric} {best['value']:.4f} | val top1 {best['val_top1']:.4f} | "
          f"{', '.join(best['values'])}\nwrote {best['recipe_file']} (train it: cifarkit train --recipe "
          f"{best['recipe_file']})")
    for path in tuning_plots(tuning.folder, args.storage).values():
        print(f"wrote {path}")
    if args.test_best:
        report = test_best(best, args.data_dir, args.device or "cpu")
        print(f"test (once, the best trial's selected checkpoint): top1 {report['top1']:.4f} | loss "
              f"{report['loss']:.4f}")
    return 0


def _report_arguments(sub) -> None:
    p = sub.add_parser("report", help="statistics, paired tests and plots of a sweep (or a tuning's plots)",
                       description="Per variant: n, mean ± std and 95%% t-interval of test and validation top-1 "
                                   "and loss; Wilcoxon signed-rank and paired t-tests against the first variant; "
                                   "where several settings vary, the paired effect of each with the others held "
                                   "fixed; with train.log_activations, the median unit activation per layer. Writes "
                                   "FOLDER/report/summary.{md,csv,json}, curves.png, finals.png and, with "
                                   "activations logged, activations.png and activation-layers.png.")
    p.add_argument("folder", metavar="SWEEP_OR_TUNE_DIR")
    p.add_argument("--storage", metavar="URL", help="the study's URL, if it has a password (tuning plots)")


@command(_report_arguments)
def cmd_report(args) -> int:
    folder = Path(args.folder)
    if (folder / "tune.json").is_file():
        from cifarkit.experiments.tune import tuning_plots

        for path in tuning_plots(folder, args.storage).values():
            print(f"wrote {path}")
        return 0
    from cifarkit.experiments.report import report_sweep

    report = report_sweep(folder)
    print(report["markdown"], end="")
    for path in report["files"].values():
        print(f"wrote {path}")
    return 0


def _serve_web_arguments(sub) -> None:
    p = sub.add_parser("serve-web", help="serve the browser page with an exported model on this machine",
                       description="Serve web/dist (build it with `npm run build` in web/) with an exported "
                                   "model and sample test images, at http://127.0.0.1:PORT/.")
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="from `cifarkit export` (its .json metadata beside it); default: the shipped model that "
                        "the built page includes")
    p.add_argument("--web-dir", default="web/dist", help="the built page (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0 picks a free port")
    p.add_argument("--samples", type=int, default=24, help="sample test images in the gallery (default: %(default)s)")
    p.add_argument("--data-dir", metavar="PATH", help="where the model's dataset is, for the sample gallery")


@command(_serve_web_arguments)
def cmd_serve_web(args) -> int:
    from cifarkit.serve import WebServer, is_loopback

    onnx = Path(args.onnx) if args.onnx else None
    with WebServer(onnx, Path(args.web_dir), args.host, args.port, args.samples, args.data_dir) as web:
        host, port = web.address
        try:
            if not is_loopback(args.host):
                print(f"warning: listening on {args.host}, not only this machine: anyone who can reach port {port} "
                      "can use the page and download the model", file=sys.stderr, flush=True)
            model = args.onnx or "the model the page ships"
            print(f"serving the page on http://{host}:{port}/ with {model} (Ctrl-C stops)", flush=True)
            web.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal stop
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarkit",
        description="Train, evaluate and use CIFAR-100 / CIFAR-10 image classifiers.",
        epilog="Run `cifarkit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add_parser in PARSERS.values():
        add_parser(sub)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so temporary files and folders are removed


# The storage failing under a command (a full disk, a quota, a read-only mount): a one-line error, never a
# traceback from wherever the write happened to be.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except CifarkitError as e:
        print(f"cifarkit {args.command}: {getattr(e, 'label', 'error')}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except BrokenPipeError:
        # the reader went away (`cifarkit predict ... | head -1`): stop quietly, as command-line tools do; the
        # rest of the output goes nowhere instead of raising again when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a pipe's writer
    except KeyboardInterrupt:
        print(f"cifarkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"cifarkit {args.command}: error: {e.strerror or e}{where}; free some space (or choose another place) "
              "and run the command again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
