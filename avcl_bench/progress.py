"""Training progress: per-experience and per-epoch bars, and a duration estimate from timed steps.

The strategy base calls a :class:`TrainingProgress` from Avalanche's training hooks (no loop of its
own). On a GPU the loss is summed on the device and read (one sync) only when the bar's loss is
refreshed, at most once a second, and at the end of each epoch. Nothing here draws random numbers
or runs a step, so a run's results do not depend on whether progress is shown.
"""

from __future__ import annotations

import math
import sys
import time

#: training steps timed for the duration estimate, after a first (warm-up) step
TIMED_STEPS = 5
#: seconds between two reads of the running loss (each read waits for the device)
LOSS_REFRESH_S = 1.0


def planned_steps(strategy, train_experiences) -> int:
    """Training steps of the experiences still to train (an approximation: the new data of each
    experience, plus the exemplars a concatenated replay memory would hold then, in batches of the
    training batch size, times the epochs; stages after training and early stopping are not counted)."""
    from .strategies.memory import ExemplarMemory

    batch = strategy.train_mb_size
    cpt = strategy.classes_per_task
    total = 0
    for exp in train_experiences:
        rows = len(exp.dataset)
        old_classes = exp.current_experience * cpt
        for part in strategy.parts.values():
            if isinstance(part, ExemplarMemory) and part.replay == "concat" and old_classes:
                rows += old_classes * min(part.quota(old_classes), rows // max(1, cpt))
        if strategy.whole_batches_only:
            steps = max(1, rows // min(batch, rows))
        else:
            steps = math.ceil(rows / batch)
        total += steps * strategy.train_epochs
    return total


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


class TrainingProgress:
    """Bars on stderr: one per experience (epochs, last epoch's loss and validation accuracy) and
    one per epoch (steps, running mean of the loss); elapsed time and ETA are tqdm's. After the
    first :data:`TIMED_STEPS` + 1 steps it prints one estimate of the whole training's duration
    (``total_steps`` from :func:`planned_steps`)."""

    def __init__(self, total_steps: int, num_tasks: int, device=None, file=None):
        self.total_steps = total_steps
        self.num_tasks = num_tasks
        self.cuda = device is not None and getattr(device, "type", str(device)) == "cuda"
        self.file = file if file is not None else sys.stderr
        self.task_bar = None
        self.epoch_bar = None
        self._estimated = False
        self._steps_seen = 0  # since the run started, for the estimate
        self._first_step_end = None
        self._first_epoch_start = None
        self._last_step_end = None

    # ---- experiences and epochs -------------------------------------------------------------
    def start_experience(self, task_id: int, epochs: int) -> None:
        from tqdm import tqdm

        self.close()
        self.task_bar = tqdm(
            total=epochs, desc=f"task {task_id + 1}/{self.num_tasks}", unit="epoch", file=self.file, dynamic_ncols=True
        )

    def start_epoch(self, epoch: int, epochs: int, steps: int | None) -> None:
        from tqdm import tqdm

        if self.epoch_bar is not None:
            self.epoch_bar.close()
        self.epoch_bar = tqdm(
            total=steps, desc=f"  epoch {epoch}/{epochs}", unit="step", leave=False, file=self.file, dynamic_ncols=True
        )
        self._loss_sum, self._loss_n, self._last_read = None, 0, time.monotonic()
        if self._first_epoch_start is None:
            self._first_epoch_start = time.monotonic()

    def step(self, loss) -> None:
        """One training step ended with ``loss`` (a tensor, possibly on the device: not read here
        unless the bar's loss is due)."""
        value = loss.detach().float()
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_n += 1
        self._steps_seen += 1
        if self.epoch_bar is not None:
            self.epoch_bar.update(1)
            if time.monotonic() - self._last_read >= LOSS_REFRESH_S:
                self.epoch_bar.set_postfix(loss=f"{self.mean_loss():.4f}")
                self._last_read = time.monotonic()
        if not self._estimated:
            if self._steps_seen == 1:
                self._first_step_end = self._now()
            elif self._steps_seen == 1 + TIMED_STEPS:
                self._estimate(self._now())
            # without a sync (a GPU may still be running it): only for an epoch shorter than the
            # timed steps, which ends before them
            self._last_step_end = time.monotonic()

    def end_epoch(self, val_acc: float | None = None) -> None:
        if not self._estimated:  # an epoch shorter than the timed steps: estimate from what ran
            self._estimate(self._last_step_end)
        postfix = {}
        if self._loss_n:
            postfix["loss"] = f"{self.mean_loss():.4f}"
        if val_acc is not None:
            postfix["val acc"] = f"{val_acc:.1f}%"
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None
        if self.task_bar is not None:
            self.task_bar.set_postfix(postfix, refresh=False)
            self.task_bar.update(1)

    def close(self) -> None:
        for bar in (self.epoch_bar, self.task_bar):
            if bar is not None:
                bar.close()
        self.epoch_bar = self.task_bar = None

    # ---- internals --------------------------------------------------------------------------
    def mean_loss(self) -> float:
        return float(self._loss_sum) / max(1, self._loss_n)

    def _now(self) -> float:
        if self.cuda:  # two syncs per run: the timed steps must have run, not just been queued
            import torch

            torch.cuda.synchronize()
        return time.monotonic()

    def _estimate(self, last_step_end: float | None) -> None:
        """Print the estimate from the steps after the first (warm-up) one, which ended at
        ``last_step_end``."""
        if self._steps_seen == 0:  # an epoch without steps: estimate in a later one
            return
        self._estimated = True
        timed = self._steps_seen - 1
        if timed < 1:  # a single step: its time includes the warm-up, the best there is
            per_step = self._first_step_end - self._first_epoch_start
        else:
            per_step = (last_step_end - self._first_step_end) / timed
        self.write(
            f"[avcl-bench] estimated duration: {format_duration(per_step * self.total_steps)} "
            f"({per_step:.3g} s/step x {self.total_steps} steps; training steps only, an approximation)"
        )

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=self.file)
