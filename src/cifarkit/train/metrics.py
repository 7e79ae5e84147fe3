"""Classification metrics and the run's metric sinks (TensorBoard event files + a JSONL file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cifarkit.train.device import autocast
from cifarkit.tta import TTA_MODES, predict_logits, tta_mode  # noqa: F401  (re-exported)


class Accumulator:
    """Sums of loss and top-1/top-5 hits on the device; one host sync when read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        # loss*n, top1 hits, top5 hits, n -- all on the device, so adding never syncs
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    @property
    def count(self) -> int:
        return int(self.sums[3].item())

    def load(self, sums: torch.Tensor, count: int) -> None:
        """From a checkpoint (older ones stored the count apart from three sums)."""
        sums = sums.to(self.device, torch.float64)
        self.sums = sums if len(sums) == 4 else torch.cat([sums, sums.new_tensor([float(count)])])

    @torch.no_grad()
    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor,
            keep: torch.Tensor | None = None) -> None:
        """`keep`: a 0-dim bool tensor; where false (a skipped, non-finite step) nothing is added."""
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        n = labels.shape[0]
        loss = loss.detach().double()
        values = torch.stack([loss * n, hits[:, 0].sum().double(), hits.any(1).sum().double(),
                              loss.new_full((), float(n))])  # filled on the device: no host-to-device copy
        self.sums += values if keep is None else torch.where(keep, values, torch.zeros_like(values))

    def result(self) -> dict[str, float]:
        """Means over everything added since the last reset -- on all processes, when distributed."""
        from cifarkit.train.distributed import all_reduce_

        totals = all_reduce_(self.sums.clone())
        if totals[3] == 0:
            return {"loss": math.nan, "top1": math.nan, "top5": math.nan}
        loss, top1, top5 = (totals[:3] / totals[3]).tolist()
        return {"loss": loss, "top1": top1, "top5": top5}


@torch.no_grad()
def evaluate_batches(model, batches, device, amp_dtype=None, tta: bool | str = False) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy of `model` over (inputs, labels) batches, in eval mode.
    With `tta`, the logits are averaged over augmented views (see TTA_MODES)."""
    was_training = model.training
    model.eval()
    acc = Accumulator(device)
    for x, y in batches:
        with autocast(device, amp_dtype):
            logits = predict_logits(model, x, tta)
        acc.add(logits, y, F.cross_entropy(logits, y))
    model.train(was_training)
    return acc.result()


class MetricsLog:
    """Writes scalars to TensorBoard event files and one JSON object per logged step to metrics.jsonl."""

    def __init__(self, run_dir: Path, resume_after: int | None = None):
        """With `resume_after` (the checkpoint's step), lines and events logged after that step by the
        interrupted run are dropped, so the resumed run appends without duplicated steps."""
        from torch.utils.tensorboard import SummaryWriter

        from cifarkit.files import atomic_write_bytes

        self.path = run_dir / "metrics.jsonl"
        if resume_after is not None and self.path.exists():
            kept = [row for row in parse_metrics(self.path, warn=print) if row["step"] <= resume_after]
            atomic_write_bytes(self.path, "".join(json.dumps(row) + "\n" for row in kept).encode())
        purge = None if resume_after is None else resume_after + 1  # TensorBoard drops events from this step on
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self) -> None:
        self.writer.close()


MAX_METRICS_BYTES = 256 << 20  # a 165k-step run logging every 100 steps writes well under 1 MB


def read_metrics(run_dir: Path, warn=None) -> list[dict]:
    return parse_metrics(Path(run_dir) / "metrics.jsonl", warn)


def parse_metrics(path: Path, warn=None) -> list[dict]:
    """The rows of a metrics.jsonl: one JSON object with an integer "step" per line. A torn final line (what
    a full disk or a power cut leaves) is dropped with a warning; damage anywhere else is an OutputError."""
    from cifarkit.errors import OutputError
    from cifarkit.files import read_bounded

    lines = read_bounded(path, MAX_METRICS_BYTES, OutputError, "metrics file").decode("utf-8", "replace").split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise ValueError("not an object with an integer step")
        except (ValueError, RecursionError) as e:
            if all(not rest.strip() for rest in lines[number:]):  # the last line: torn by an interrupted write
                (warn or print)(f"warning: {path} ends in a torn line ({len(line)} characters); dropped it")
                break
            raise OutputError(f"{path} line {number} is not a metrics row ({e}); the file is damaged") from None
        rows.append(row)
    return rows
