"""Does averaging the weights of models of one run (a model soup, or SWA over checkpoints) beat the models alone?
Validation figures only: this chooses, and the test set is left for the model chosen.

    python benchmarks/weight_averages.py --data-dir DIR MODEL[,MODEL...] [MODEL[,MODEL...] ...] [--bn-images 10000]

Each argument is one candidate: a model (a shipped name, a run folder or a checkpoint, as `cifarkit predict` takes)
or several joined by commas, whose weights are averaged uniformly (integer buffers are the first one's). All must
be the same network trained on the same split. With `--bn-images N` each candidate is measured twice: with the
BatchNorm statistics as averaged, and with them computed again on N pictures of the training split (no
augmentation, a cumulative average): an average of weights does not have the statistics of its own activations.
Prints validation top-1 and loss per candidate (bf16 autocast where the CPU has it, as a run's validation pass),
and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from cifarkit.data import load_dataset
from cifarkit.data.loader import eval_batches, to_device_images
from cifarkit.data.split import split_differences, split_for
from cifarkit.device import autocast, choose_autocast, describe_cpu, resolve_device
from cifarkit.errors import CifarkitError
from cifarkit.loading import load_model
from cifarkit.train.metrics import evaluate_batches


def averaged(sources: list[str], device: torch.device):
    """The first source's TrainedModel carrying the uniform average of all the sources' weights."""
    models = [load_model(source, device) for source in sources]
    first = models[0]
    for other in models[1:]:
        if other.model_spec != first.model_spec or split_differences(first.data, other.data):
            raise CifarkitError(f"{other.name} is not the network {first.name} is, trained on its split: "
                                "average models of one network and one split")
    states = [m.model.state_dict() for m in models]
    first.model.load_state_dict({key: sum(s[key].float() for s in states) / len(states)
                                 if value.is_floating_point() else value for key, value in states[0].items()})
    return first


@torch.no_grad()
def recompute_batchnorm(trained, batches, device, amp_dtype) -> None:
    """BatchNorm statistics of the model's own activations on `batches` (a cumulative average, no augmentation)."""
    norms = [m for m in trained.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    trained.model.train()
    for x, _ in batches:
        with autocast(device, amp_dtype):
            trained.model(x)
    trained.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", metavar="MODEL[,MODEL...]")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bn-images", type=int, default=0, help="also recompute BatchNorm statistics on N pictures")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp_dtype, amp_reason = choose_autocast("auto", device)
    print(json.dumps(describe_cpu()), f"autocast: {amp_reason}", flush=True)
    data = None
    for candidate in args.candidates:
        trained = averaged(candidate.split(","), device)
        data = data or load_dataset(trained.data.dataset, args.data_dir, download=False)
        measure(candidate, trained, data, args.bn_images, device, amp_dtype)


def pictures(trained, data, index, device):
    """The training-set pictures at `index` as (input, label) batches, in order, without augmentation."""
    return eval_batches(to_device_images(data.train_images[index], device),
                        torch.from_numpy(data.train_labels[index]).long().to(device), 500, trained.preprocess)


def measure(candidate: str, trained, data, bn_images: int, device, amp_dtype) -> None:
    """Prints the validation figures of `trained` as averaged, then (with `bn_images`) of the same weights with their
    BatchNorm statistics computed again."""
    split = split_for(data, trained.data)
    for recompute in (False, True) if bn_images else (False,):
        started = time.perf_counter()
        if recompute:
            pick = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(0))[:bn_images]
            recompute_batchnorm(trained, pictures(trained, data, split.train[pick.numpy()], device), device, amp_dtype)
        val = evaluate_batches(trained.model, pictures(trained, data, split.val, device), device, amp_dtype)
        print(f"{candidate} | BatchNorm {'recomputed' if recompute else 'as averaged'} | validation top-1 "
              f"{val['top1']:.2%} loss {val['loss']:.4f} | {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except CifarkitError as e:
        sys.exit(f"weight_averages: error: {e}")
