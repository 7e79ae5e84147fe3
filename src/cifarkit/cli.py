"""The `cifarkit` command: parses arguments and calls library functions; nothing else.

Errors of the project's own types are printed as one clear message (no traceback) with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cifarkit.errors import CifarkitError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["cifar100", "cifar10"], default="cifar100",
                   help="which dataset (default: %(default)s)")
    p.add_argument("--data-dir", metavar="PATH",
                   help="extracted dataset folder, a folder containing it, or the official .tar.gz "
                        "(default: $CIFARKIT_DATA_DIR, then the cache folder, then a download)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading when no copy is found")


def _load(args):
    from cifarkit.data import load_dataset

    return load_dataset(args.dataset, args.data_dir, download=not args.no_download)


@command
def cmd_download(args) -> int:
    from cifarkit.data import get_spec, locate

    located = locate(get_spec(args.dataset), args.data_dir, download_ok=True)
    print(f"{args.dataset}: {located.folder} ({located.how})")
    return 0


@command
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
        "classes": data.class_names,
    }
    if data.coarse_names:
        mapping = data.fine_to_coarse
        info["superclasses"] = {name: [data.class_names[f] for f in np.flatnonzero(mapping == c)]
                                for c, name in enumerate(data.coarse_names)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"dataset:  {info['dataset']}\nfound:    {info['found']}")
    for split in ("train", "test"):
        s = info[split]
        print(f"{split + ':':<9} {' x '.join(map(str, s['images']))} uint8, "
              f"{s['per_class']['min']}-{s['per_class']['max']} images per class")
    print(f"classes ({len(data.class_names)}): {', '.join(data.class_names)}")
    for name, members in info.get("superclasses", {}).items():
        print(f"  {name}: {', '.join(members)}")
    return 0


@command
def cmd_show(args) -> int:
    from cifarkit.plots import first_images_sheet, one_per_class_sheet

    data = _load(args)
    images, labels = (data.train_images, data.train_labels) if args.split == "train" else (
        data.test_images, data.test_labels)
    out = Path(args.out)
    grid = first_images_sheet(images, labels, data.class_names, args.count,
                              out / f"{args.dataset}-{args.split}-first{args.count}.png")
    sheet = one_per_class_sheet(images, labels, data.class_names, out / f"{args.dataset}-{args.split}-classes.png")
    print(f"wrote {grid}\nwrote {sheet}")
    return 0


def _config(args):
    from cifarkit.config import load_config

    overrides = list(args.set or [])
    for flag, key in (("device", "train.device"), ("out_dir", "train.out_dir"), ("data_dir", "data.data_dir"),
                      ("dataset", "data.dataset"), ("steps", "train.steps"), ("run_name", "train.run_name")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if getattr(args, "no_download", False):
        overrides.append("data.download=false")
    return load_config(args.recipe, overrides)


@command
def cmd_train(args) -> int:
    from cifarkit.train import train_seeds

    config = _config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    train_seeds(config)
    return 0


@command
def cmd_summary(args) -> int:
    from cifarkit.models import create_model, format_summary, keras_summary

    num_classes = {"cifar100": 100, "cifar10": 10}[args.dataset]
    print(format_summary(keras_summary(create_model(args.model, num_classes))))
    return 0


@command
def cmd_list(args) -> int:
    from cifarkit.config import list_recipes, load_config
    from cifarkit.models import list_models

    print("recipes:")
    for name in list_recipes():
        print(f"  {name:<12} {load_config(name).description}")
    print("models:\n  " + "\n  ".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarkit",
        description="Train, evaluate and use CIFAR-100 / CIFAR-10 image classifiers.",
        epilog="Run `cifarkit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download and verify the official archive into the cache",
                       description="Find the dataset (--data-dir, $CIFARKIT_DATA_DIR, the cache) or download "
                                   "the official archive, verify its md5 and extract it safely.")
    _data_args(p)

    p = sub.add_parser("info", help="shapes, images per class, class names, where the files were found")
    _data_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("show", help="PNG grid of the first N images and a one-per-class sheet",
                       description="Write two PNG files: the first N images with their class names (like the "
                                   "seed's 4x4 plot) and one image of every class.")
    _data_args(p)
    p.add_argument("-n", "--count", type=int, default=16, help="images in the first grid (default: %(default)s)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="default: %(default)s")
    p.add_argument("--out", default=".", help="folder for the PNG files (default: the current folder)")

    p = sub.add_parser("train", help="train a recipe; writes a run directory",
                       description="Train a recipe. The run directory holds config.json, TensorBoard events, "
                                   "metrics.jsonl, best.pt (by validation loss), last.pt and results.json "
                                   "(the test set, evaluated once at the end).")
    p.add_argument("--recipe", default="elu-seed", help="built-in recipe name or a .toml path "
                                                       "(default: %(default)s; `cifarkit list` shows all)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.steps=200 --set optim.lr=0.05 (repeatable)")
    p.add_argument("--dataset", choices=["cifar100", "cifar10"], help="override data.dataset")
    p.add_argument("--data-dir", metavar="PATH", help="override data.data_dir (folder or .tar.gz)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading the dataset")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--out-dir", help="parent folder of run directories (default: runs)")
    p.add_argument("--run-name", help="run directory name (default: RECIPE-DATE-TIME)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    p = sub.add_parser("summary", help="Keras-style layer summary of a registered model")
    p.add_argument("--model", default="elu_net_seed", help="model name (default: %(default)s)")
    p.add_argument("--dataset", choices=["cifar100", "cifar10"], default="cifar100")

    sub.add_parser("list", help="built-in recipes and registered models")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CifarkitError as e:
        print(f"cifarkit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cifarkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
