"""Classification metrics of an evaluation pass (top-1, top-5, loss); the run's log is cifarkit.runlog."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cifarkit.device import autocast
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
