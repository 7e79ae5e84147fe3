"""A run's metrics log: `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files.

Training writes it (MetricsLog); resume, `cifarkit report`, `cifarkit plot` and the benchmarks read it
(parse_metrics), so it sits below all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from cifarkit.errors import OutputError
from cifarkit.files import atomic_write_bytes, json_text, read_bounded


class MetricsLog:
    """Writes scalars to TensorBoard event files and one JSON object per logged step to metrics.jsonl."""

    def __init__(self, run_dir: Path, resume_after: int | None = None):
        """With `resume_after` (the checkpoint's step), lines and events logged after that step by the
        interrupted run are dropped, so the resumed run appends without duplicated steps."""
        from torch.utils.tensorboard import SummaryWriter  # imported when a run logs: it is slow to import

        self.path = run_dir / "metrics.jsonl"
        if resume_after is not None and self.path.exists():
            kept = [row for row in parse_metrics(self.path, warn=print) if row["step"] <= resume_after]
            atomic_write_bytes(self.path, "".join(json_text(row, indent=None) + "\n" for row in kept).encode())
        purge = None if resume_after is None else resume_after + 1  # TensorBoard drops events from this step on
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()
        with open(self.path, "a") as f:
            f.write(json_text({"step": step, **scalars}, indent=None) + "\n")

    def close(self) -> None:
        self.writer.close()


MAX_METRICS_BYTES = 256 << 20  # a 165k-step run logging every 100 steps writes well under 1 MB


def read_metrics(run_dir: Path, warn=None) -> list[dict]:
    return parse_metrics(Path(run_dir) / "metrics.jsonl", warn)


def parse_metrics(path: Path, warn=None) -> list[dict]:
    """The rows of a metrics.jsonl: one JSON object with an integer "step" per line. A torn final line (what
    a full disk or a power cut leaves) is dropped with a warning; damage anywhere else is an OutputError."""
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
