"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy (in percent) on task ``j``'s test set after training task ``i``.
Entries with ``j > i`` (tasks not seen yet) may be NaN; no metric reads them. Every number the
suite reports is computed here from ``R`` (and, for sample-weighted step accuracies, the number
of test clips of each task), so that every table can be regenerated from the run directory.

Several papers use the word "forgetting" for different quantities; each function below names its
definition, and :data:`DEFINITIONS` is written next to every reported number.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFINITIONS = {
    "avg_acc": "Average accuracy after the last task: mean over tasks j of R[T-1][j] "
    "(CIGN Sec. 4.1, following L2P/DualPrompt).",
    "forgetting": "Forgetting, max-before-last minus last: mean over tasks j < T-1 of "
    "max_{j<=i<T-1} R[i][j] - R[T-1][j]; the maximum excludes the last step, so a task that improved "
    "at the last step counts negative (Chaudhry et al., ECCV 2018 'forgetting measure'; the column "
    "of the suite's CIGN tables, CIGN Sec. 4.1 names no formula).",
    "forgetting_l2p": "Forgetting as the L2P/DualPrompt release computes it: mean over tasks j < T-1 of "
    "max_{j<=i<=T-1} R[i][j] - R[T-1][j]; the maximum includes the last step, so every task's "
    "forgetting is >= 0 (google-research/l2p train_continual.py, 'forgetting' of acc_matrix).",
    "step_acc": "Step accuracy at step i: accuracy over the test clips of all classes seen so far, "
    "i.e. R[i][0..i] weighted by each task's number of test clips (AV-CIL code).",
    "mean_inc_acc": "Mean incremental accuracy: mean over steps of step_acc (AV-CIL's reported 'mean accuracy').",
    "avcil_forgetting": "AV-CIL forgetting: at step k>=1, mean over old tasks i<k of "
    "best_i - R[k][i], best_i being the best accuracy on task i over earlier steps, updated after "
    "each step (so it can be negative); reported as the mean over steps 1..T-1 (AV-CIL code).",
    "forgetting_first_last": "Forgetting, first-minus-last: mean over tasks j < T-1 of "
    "R[j][j] - R[T-1][j] (Avalanche's ExperienceForgetting averaged).",
    "bwt": "Backward transfer: mean over tasks j < T-1 of R[T-1][j] - R[j][j] "
    "(Lopez-Paz & Ranzato 2017; equals -forgetting_first_last).",
    "unlearned_tasks": "Tasks the run did not learn (1-based): R[j][j], the accuracy on task j right after "
    "training it, is within 5 points of chance, 100 / classes per task. Its forgetting and "
    "average accuracy say nothing about retention (avcl-bench's own check).",
}

#: points above chance below which a task counts as not learned (:func:`unlearned_tasks`)
UNLEARNED_MARGIN = 5.0


def _as_matrix(R) -> np.ndarray:
    m = np.asarray(R, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"accuracy matrix must be square T x T, got shape {m.shape}")
    if m.shape[0] == 0:
        raise ValueError("accuracy matrix is empty")
    return m


def average_accuracy(R) -> float:
    """Mean over all tasks of the accuracy after the last task (L2P / CIGN)."""
    m = _as_matrix(R)
    return float(np.mean(m[-1, :]))


def _max_minus_last(R, include_last: bool) -> float:
    """mean_j<T-1 [max_i R[i][j] - R[T-1][j]], the maximum over rows j <= i < T-1, or j <= i <= T-1
    with ``include_last`` (a task cannot be forgotten before it is learnt). 0.0 for a single task."""
    m = _as_matrix(R)
    T = m.shape[0]
    if T == 1:
        return 0.0
    end = T if include_last else T - 1
    return float(np.mean([np.max(m[j:end, j]) - m[T - 1, j] for j in range(T - 1)]))


def forgetting_max(R) -> float:
    """Forgetting, max-before-last minus last (Chaudhry et al., ECCV 2018):
    mean_j<T-1 [max_{j<=i<T-1} R[i][j] - R[T-1][j]]; can be negative (``forgetting``)."""
    return _max_minus_last(R, include_last=False)


def forgetting_l2p(R) -> float:
    """Forgetting as the L2P release computes it (google-research/l2p train_continual.py: the row
    maximum of its acc_matrix includes the current step): mean_j<T-1 [max_{j<=i<=T-1} R[i][j] -
    R[T-1][j]]; every term is >= 0 (``forgetting_l2p``)."""
    return _max_minus_last(R, include_last=True)


def forgetting_first_last(R) -> float:
    """First-minus-last forgetting (Avalanche): mean_j<T-1 [R[j][j] - R[T-1][j]]."""
    m = _as_matrix(R)
    T = m.shape[0]
    if T == 1:
        return 0.0
    return float(np.mean([m[j, j] - m[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R) -> float:
    """BWT (Lopez-Paz & Ranzato): mean_j<T-1 [R[T-1][j] - R[j][j]]."""
    return -forgetting_first_last(R)


def step_accuracies(R, task_sizes: Sequence[int] | None = None) -> list[float]:
    """Accuracy over all seen test clips after each step (AV-CIL's per-step accuracy).

    With ``task_sizes`` (number of test clips per task) the tasks are weighted by their clip
    counts, which equals the accuracy over the pooled test clips; without it, tasks weigh equally.
    """
    m = _as_matrix(R)
    T = m.shape[0]
    w = np.ones(T) if task_sizes is None else np.asarray(task_sizes, dtype=float)
    if w.shape != (T,):
        raise ValueError(f"task_sizes must have {T} entries, got {w.shape}")
    return [float(np.sum(m[i, : i + 1] * w[: i + 1]) / np.sum(w[: i + 1])) for i in range(T)]


def mean_incremental_accuracy(R, task_sizes: Sequence[int] | None = None) -> float:
    """Mean over steps of the step accuracy (AV-CIL's 'mean accuracy')."""
    return float(np.mean(step_accuracies(R, task_sizes)))


def avcil_forgetting_per_step(R) -> list[float]:
    """AV-CIL's forgetting at each step k >= 1, as its code computes it.

    best[i] starts as R[i][i]; at step k the forgetting is mean_{i<k} (best[i] - R[k][i]), and only
    then is best[i] updated with R[k][i]. Values may be negative.
    """
    m = _as_matrix(R)
    T = m.shape[0]
    best = {}
    out = []
    for k in range(T):
        if k >= 1:
            out.append(float(np.mean([best[i] - m[k, i] for i in range(k)])))
        for i in range(k + 1):
            best[i] = max(best.get(i, -np.inf), m[k, i])
    return out


def avcil_forgetting(R) -> float:
    """Mean over steps 1..T-1 of :func:`avcil_forgetting_per_step` (0.0 for one task)."""
    per_step = avcil_forgetting_per_step(R)
    return float(np.mean(per_step)) if per_step else 0.0


def unlearned_tasks(R, classes_per_task: int, margin: float = UNLEARNED_MARGIN) -> list[int]:
    """1-based tasks j with R[j][j] <= 100 / classes_per_task + margin: not learned (a task at chance
    right after its training cannot be forgotten, so forgetting alone would flatter the run)."""
    m = _as_matrix(R)
    chance = 100.0 / max(1, int(classes_per_task))
    return [j + 1 for j in range(m.shape[0]) if not np.isnan(m[j, j]) and m[j, j] <= chance + margin]


def all_metrics(R, task_sizes: Sequence[int] | None = None, classes_per_task: int | None = None) -> dict:
    """Every metric of this module for one accuracy matrix, keyed as in :data:`DEFINITIONS`
    (``unlearned_tasks`` only when ``classes_per_task`` is known)."""
    extra = {} if classes_per_task is None else {"unlearned_tasks": unlearned_tasks(R, classes_per_task)}
    return extra | {
        "avg_acc": average_accuracy(R),
        "forgetting": forgetting_max(R),
        "forgetting_l2p": forgetting_l2p(R),
        "step_acc": step_accuracies(R, task_sizes),
        "mean_inc_acc": mean_incremental_accuracy(R, task_sizes),
        "avcil_forgetting": avcil_forgetting(R),
        "forgetting_first_last": forgetting_first_last(R),
        "bwt": backward_transfer(R),
    }
