"""The training loop: a `Trainer` (`train_step`, `validate_and_save`, `fit`) and `train(config)`. What a run
is built from lives in cifarkit.train.setup, its clock in .clock, its checkpoints in .checkpoint, the test
pass and seed summaries in .results, `resume(run_dir)` in .resuming.

One direction: data -> Preprocess (fitted on the training split) -> device loader -> model -> loss ->
optimizer. Schedules are pure functions of the step. Model selection uses the validation split only; the
test set is evaluated once, at the end, with the checkpoint that validation picked.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import torch

from cifarkit.bundle import ModelBundle, model_spec_of
from cifarkit.config import Config
from cifarkit.data.loader import DeviceLoader, eval_batches, resize_for_step
from cifarkit.data.mixing import accuracy_labels, mixing_at, training_loss
from cifarkit.device import autocast, synchronize
from cifarkit.files import atomic_write_text, json_text
from cifarkit.models.protocol import FreezesParameters
from cifarkit.optim import set_lr, set_muon_momentum
from cifarkit.runlog import MetricsLog
from cifarkit.schedules import dropout_at, lr_at
from cifarkit.train import distributed
from cifarkit.train.checkpoint import CheckpointCadence, CheckpointStore
from cifarkit.train.clock import PROJECTION_STEPS, RunClock, projection_line
from cifarkit.train.guard import UpdateGuard
from cifarkit.train.metrics import Accumulator, evaluate_batches
from cifarkit.train.probe import PROBE_IMAGES, ActivationProbe
from cifarkit.train.results import SELECTIONS, test_once
from cifarkit.train.setup import (
    PreparedData,
    RunClaim,
    check_disk_space,
    make_run_dir,
    plan_steps,
    prepare_data,
    print_line,
    progress_bar,
    rng_state,
    set_rng_state,
    set_up_process,
    set_up_run,
    with_progress,
)
from cifarkit.train.starting import starting_weights
from cifarkit.train.stopping import StopRequests, TrainingInterrupted, TrainingStopped


class Trainer:
    """One training run: its parts (`self.run`, built once) and its running state; `fit` trains it."""

    def __init__(self, config: Config, log: Callable[[str], None] = print_line, prepared: PreparedData | None = None,
                 run_dir: Path | None = None, resume_from: dict | None = None,
                 on_validation: Callable[[int, dict], None] | None = None):
        t = self.t = config.train
        self.config = config
        # called with (step, validation metrics) after every validation pass and its checkpoint; it may raise
        # to stop the run there (a tuner's pruner does)
        self.on_validation = on_validation
        dist, device, amp = set_up_process(config)
        self.log = log = log if dist.is_main else (lambda _: None)  # one voice: rank 0's
        # the data first: nothing is written before the config is valid and the data is found
        prepared = prepared or prepare_data(config, device, log)
        DeviceLoader.check_batch(t.batch_size, len(prepared.train_y), dist.world_size)
        # a resumed run's weights are its checkpoint's; a fresh one's source is checked before a folder is made
        weights = starting_weights(config, prepared.preprocess.to_state(), log) if resume_from is None else None
        if dist.is_main:
            run_dir = run_dir or make_run_dir(config)
            self.claim = RunClaim(run_dir)  # one process trains a run at a time (released at the end of fit)
            atomic_write_text(run_dir / "config.json", json_text(config.to_dict()) + "\n")
        self.run_dir = Path(distributed.broadcast_object(str(run_dir)))
        self.run = run = set_up_run(config, dist, device, amp, prepared, weights)
        log(f"run: {self.run_dir} | device: {device} | autocast: {run.amp_reason}"
            + (f" | {dist.world_size} processes" if dist.enabled else ""))
        self.store = CheckpointStore(self.run_dir, t.keep_checkpoints)
        if dist.is_main:
            check_disk_space(self.run_dir, run.model, t.keep_checkpoints)
        self.freezes = isinstance(run.model, FreezesParameters)  # once: the step asks every time
        self.guard = UpdateGuard(self._protected_tensors, device)
        self.seen_nonfinite = 0  # non-finite steps the guard has undone and this run has acted on
        self.train_acc = Accumulator(device)
        self.step, self.total_steps = 0, plan_steps(t, len(run.loader))
        self.best_score, self.best_step, self.skipped_steps = float("inf"), -1, 0  # lower is better
        self.selection = SELECTIONS[t.select]
        self.lr, self.wall_seconds, self.wall_before = config.optim.lr, 0.0, 0.0
        self.clock = RunClock(0.0, t.budget, t.eval_every)
        if resume_from is not None:
            self._restore(resume_from)
        self.metrics = (MetricsLog(self.run_dir, resume_after=self.step if resume_from is not None else None)
                        if dist.is_main else None)
        self.probe = self._activation_probe() if t.log_activations else None
        log(f"model: {config.model.name} ({run.n_params:,} parameters) | "
            + (f"{t.budget:g}s budget" if t.budget else f"{self.total_steps} steps")
            + f" of batch {t.batch_size} ({len(run.loader)} steps per epoch)"
            + (f" | resumed at step {self.step}" if resume_from is not None else ""))

    def _activation_probe(self) -> ActivationProbe:
        """A fixed batch: the first validation images, or the first training images without a validation split."""
        p = self.run.prepared
        source = p.val_x if len(p.val_x) else p.train_x
        return ActivationProbe(p.preprocess(source[:PROBE_IMAGES]))

    def _activation_scalars(self) -> dict[str, float]:
        return self.probe.measure(self.eval_model(), self.run.device, self.run.amp_dtype) if self.probe else {}

    # -- state ------------------------------------------------------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.run.averager.average if self.run.averager is not None else self.run.model

    def payload(self, val: dict | None) -> dict:
        """A checkpoint: the model bundle (what using the model needs) and what resuming needs besides."""
        run, data = self.run, self.run.prepared.data
        config = self.config.to_dict()
        bundle = ModelBundle(
            config=config, model_spec=model_spec_of(config), step=self.step,
            model=self.eval_model().state_dict(),  # the weights that are validated and used afterwards
            preprocess=run.prepared.preprocess.to_state(), classes=data.classes,
            superclasses=data.superclasses,
            fine_to_coarse=None if data.fine_to_coarse is None else data.fine_to_coarse.tolist(), val=val or {})
        return {
            **bundle.to_state(),
            "val": val,  # None before any validation pass (the bundle reads it as {})
            "total_steps": self.total_steps,
            "train_model": run.model.state_dict() if run.averager is not None else None,
            "optimizer": run.optimizer.state_dict(),
            "loader": run.loader.state_dict(),
            "train_accumulator": {"sums": self.train_acc.sums.cpu(), "count": self.train_acc.count},
            "rng": rng_state(),
            "best_score": self.best_score,  # by train.select
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.clock.train_seconds,
            "budget_spent_seconds": self.clock.planner.used(),  # wall-clock, validation passes included
            "wall_seconds": self.wall_before + self.clock.elapsed(),  # the loop's, across resumes
        }

    def _restore(self, state: dict) -> None:
        run = self.run
        run.model.load_state_dict(state["train_model"] if state.get("train_model") is not None else state["model"])
        if run.averager is not None:
            run.averager.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.loader.load_state_dict(state["loader"])
        self.train_acc.load(state["train_accumulator"]["sums"], state["train_accumulator"]["count"])
        self.step, self.total_steps = state["step"], state["total_steps"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.skipped_steps = state["skipped_steps"]
        self.wall_before = state.get("wall_seconds", state["train_seconds"])  # older checkpoints: training time
        # a budget run goes on planning against what is left of its budget (older checkpoints, which did not
        # record it, count their training time); an epoch- or step-based run keeps its length
        self.clock = RunClock(state["train_seconds"], self.t.budget, self.t.eval_every,
                              budget_spent=state.get("budget_spent_seconds", state["train_seconds"]),
                              first_step=self.step)
        set_rng_state(state["rng"])
        if run.dist.rank:  # a checkpoint holds rank 0's generators; the others derive theirs
            torch.manual_seed(self.t.seed + 1000 * run.dist.rank + self.step)

    # -- the loop ---------------------------------------------------------------------------------------------
    def train_step(self) -> None:
        config, step, run = self.config, self.step, self.run
        lr = lr_at(step, run.base_lr, self.total_steps, config.schedule)
        set_lr(run.optimizer, lr)
        set_muon_momentum(run.optimizer, step, self.total_steps, config.optim)
        if run.initial_dropout:
            run.model.set_dropout_rates(dropout_at(step, run.initial_dropout, config.schedule.dropout_events))
        x, y = run.loader.next_batch(mix=mixing_at(step, self.total_steps, config.augment.mix,
                                                   config.augment.mix_fraction))
        x = resize_for_step(x, step, self.total_steps, config.augment)
        if config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.guard.snapshot()  # before the forward pass, which updates BatchNorm statistics
        with autocast(run.device, run.amp_dtype):
            logits = run.forward(x)
        loss = training_loss(logits.float(), y, config.optim.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in self.frozen_parameters(step):
            param.grad = None  # SGD skips a parameter without a gradient: no update, no decay, no momentum
        run.optimizer.step()
        if run.averager is not None:
            run.averager.update(run.model, step, self.total_steps)
        finite = self._step_was_finite(loss)
        self.guard.settle(finite, step)  # a non-finite step is undone, on the device
        self.train_acc.add(logits.float(), accuracy_labels(y), loss, keep=finite)
        self.step += 1
        self.lr = lr
        if run.device.type != "cuda":  # reading the flag costs nothing here: act on it at once, as always
            self.check_nonfinite()

    def _step_was_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """A 0-dim device flag: the loss, and the weights the step produced, are finite on every process."""
        with torch.no_grad():
            weights = torch.stack([p.isfinite().all() for p in self.run.model.parameters()]).all()
            return distributed.all_reduce_((torch.isfinite(loss) & weights).to(torch.int32), op=distributed.MIN).bool()

    def check_nonfinite(self) -> None:
        """Act on the steps the guard undid since the last check: stop (saving the good state) or count them."""
        bad, first = self.guard.read()
        if bad == self.seen_nonfinite:
            return
        new, self.seen_nonfinite = bad - self.seen_nonfinite, bad
        if not self.t.skip_nonfinite:
            raise self._stop_on_nonfinite(first)
        self.skipped_steps += new
        self.log(f"warning: non-finite loss at step {first + 1}; {new} step(s) skipped ({self.skipped_steps} so far)")

    def _models(self) -> list[torch.nn.Module]:
        return [self.run.model] + ([self.run.averager.average] if self.run.averager is not None else [])

    def _protected_tensors(self) -> list[torch.Tensor]:
        """Every tensor a training step may change (what the guard restores after a non-finite step)."""
        model, optimizer = self.run.model, self.run.optimizer
        tensors = [p for p in model.parameters() if p.requires_grad] + list(model.buffers())
        tensors += [s["momentum_buffer"] for s in optimizer.state.values() if s.get("momentum_buffer") is not None]
        for average in self._models()[1:]:
            tensors += list(average.parameters()) + list(average.buffers())
        return tensors

    def weights_are_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for m in self._models() for p in m.parameters())

    def _stop_on_nonfinite(self, step: int) -> TrainingStopped:
        """The bad update was undone. If the weights are finite they are saved as the last good state; should they
        not be (they cannot, unless a checkpoint was loaded so), nothing is saved and the newest file is named."""
        advice = (f"Lower optim.lr, or resume and skip such steps with: cifarkit train --resume {self.run_dir} "
                  "--set train.skip_nonfinite=true")
        what = f"the training loss (or the weights it would give) is not finite at step {step + 1}"
        if self.weights_are_finite():
            path = self.save(check=False)
            return TrainingStopped(f"{what}; stopped without applying that update. The last good state is saved in "
                                   f"{path}. {advice}")
        earlier = self.store.step_files()
        where = f"the newest checkpoint, {earlier[0]}, predates them" if earlier else "no checkpoint was written yet"
        return TrainingStopped(f"{what} and the weights are no longer finite; nothing was saved ({where}). {advice}")

    def frozen_parameters(self, step: int) -> list[torch.nn.Parameter]:
        """The model's parameters frozen at this step's epoch (e.g. airbench's whitening bias after 3 epochs)."""
        return self.run.model.frozen_parameters(step // len(self.run.loader)) if self.freezes else []

    def evaluate(self, x, y, tta: bool | str = False, what: str | None = None) -> dict:
        """Each rank evaluates its share of the split; the sums are all-reduced. With `what`, a long pass (the
        test set, its TTA views) shows its progress under that name."""
        run = self.run
        shard = slice(run.dist.rank, None, run.dist.world_size)
        batches = eval_batches(x[shard], y[shard], self.t.eval_batch_size, run.prepared.preprocess)
        if what is not None:
            batches = with_progress(batches, len(x[shard]), what, self.log, run.dist.is_main)
        return evaluate_batches(self.eval_model(), batches, run.device, run.amp_dtype, tta=tta)

    @property
    def has_validation(self) -> bool:
        """False with data.val_per_class = 0: every training image trains, and the last weights are kept."""
        return len(self.run.prepared.val_y) > 0

    def validate_and_save(self, bar) -> None:
        self.check_nonfinite()
        train_metrics = self.train_acc.result()
        self.train_acc.reset()
        scalars = {f"train/{k}": v for k, v in train_metrics.items()}
        val = self.evaluate(self.run.prepared.val_x, self.run.prepared.val_y) if self.has_validation else None
        scalars.update({f"val/{k}": v for k, v in (val or {}).items()})
        scalars["lr"] = self.lr
        scalars.update(self._activation_scalars())
        for i, rate in enumerate(self.run.model.dropout_rates() if val and self.run.initial_dropout else []):
            scalars[f"dropout/stack{i + 1}"] = rate
        if self.metrics is not None:
            self.metrics.log(self.step, scalars)
        is_best = val is not None and self.selection.score(val) < self.best_score
        if is_best:
            self.best_score, self.best_step = self.selection.score(val), self.step
        self.save(val, best=is_best)
        line = (f"step {self.step}/{self.total_steps} | train loss {train_metrics['loss']:.4f} top1 "
                f"{train_metrics['top1']:.4f} | "
                + (f"val loss {val['loss']:.4f} top1 {val['top1']:.4f} top5 {val['top5']:.4f}" if val
                   else "no validation split")
                + f" | lr {self.lr:.3g}" + (" | best" if is_best else ""))
        bar.write(line) if not bar.disable else self.log(line)
        if val is not None and self.on_validation is not None:
            self.on_validation(self.step, val)

    def save(self, val: dict | None = None, best: bool = False, check: bool = True) -> Path:
        """Rank 0 writes; every rank returns the path. Pending non-finite steps are acted on first."""
        if check:
            self.check_nonfinite()
        self.clock.bank()
        path = self.store.folder / f"step-{self.step:08d}.pt"
        if self.run.dist.is_main:
            path = self.store.save(self.payload(val), self.step, best=best)
        return path

    def fit(self, evaluate_test: bool = True) -> dict:
        """Train to the end; then the test set once (`evaluate_test=False`: never, as when tuning)."""
        try:
            return self._fit(evaluate_test)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise TrainingStopped(
                f"{e.strerror} writing {e.filename or 'the run'} at step {self.step}; the checkpoints written "
                f"before are kept. Free some space, then continue with: cifarkit train --resume {self.run_dir}"
            ) from None
        finally:
            if getattr(self, "claim", None) is not None:  # rank 0 holds the run's claim
                self.claim.release()

    def _fit(self, evaluate_test: bool) -> dict:
        t, device = self.t, self.run.device
        bar = progress_bar(None if t.budget else self.total_steps, self.step, self.run.dist.is_main, self.log)
        clock = self.clock
        clock.start()
        cadence = CheckpointCadence(t.checkpoint_every, t.checkpoint_minutes)
        self.run.train_module.train()
        first_step = self.step
        with StopRequests() as stop:
            while self.step < self.total_steps:
                # 1. one optimizer step
                self.train_step()
                bar.update(1)
                # 2. the run's length: projected once, or planned to fit the budget
                if self.step == first_step + PROJECTION_STEPS and clock.budget is None:
                    self.log(projection_line(self.total_steps - self.step, clock.elapsed() / PROJECTION_STEPS,
                                             device, self.config.data.dataset, str(self.run_dir),
                                             self.t.checkpoint_minutes))
                if clock.budget is not None:
                    synchronize(device)
                    self.total_steps = clock.plan(self.step, self.total_steps, just_evaluated=False)
                # 3. validation (and its checkpoint), or a checkpoint on the cadence
                if self.step % t.eval_every == 0 or self.step == self.total_steps:
                    synchronize(device)
                    with clock.validation_pass():
                        self.validate_and_save(bar)
                    if self.step < self.total_steps:
                        self.total_steps = clock.plan(self.step, self.total_steps, just_evaluated=True)
                    cadence.saved()
                elif cadence.due(self.step):
                    self.save()
                    cadence.saved()
                # 4. a stop signal on any process: save and say how to resume
                if distributed.agree(stop.signal_name is not None, device):
                    bar.close()
                    self.save()
                    raise TrainingInterrupted(
                        f"{stop.signal_name or 'a stop signal'} received: stopped after step {self.step} and saved a "
                        f"checkpoint. Resume with: cifarkit train --resume {self.run_dir}")
        synchronize(device)
        self.check_nonfinite()
        self.wall_seconds = self.wall_before + clock.elapsed()
        bar.close()
        if self.metrics is not None:
            self.metrics.close()
        distributed.barrier()  # best.pt is on disk for every rank
        return test_once(self, evaluate_test)


def train(config: Config, log: Callable[[str], None] = print_line, prepared: PreparedData | None = None,
          on_validation: Callable[[int, dict], None] | None = None, evaluate_test: bool = True) -> dict:
    """Run `config` to the end; returns the results that are also written to RUN_DIR/results.json."""
    return Trainer(config, log, prepared, on_validation=on_validation).fit(evaluate_test)
