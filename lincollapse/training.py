"""One training loop for every experiment in the book.

:func:`maximise` takes a function returning the objective to *maximise* (an ELBO, in nats per
image) and the parameters to optimise. The objective may be a scalar or a vector of shape
(R,) holding R independent runs trained together (a batched model): their sum is
differentiated, and each run's value is recorded. A non-finite objective stops training with
:class:`TrainingDivergedError` naming the run. Progress bars are shown only on an
interactive terminal or notebook and never under CI.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lincollapse import validation

OPTIMISERS = ("adam", "lbfgs")
_LINE_SEARCH_EVALUATIONS = 25  # torch's strong-Wolfe max_ls, per L-BFGS iteration


class TrainingDivergedError(FloatingPointError):
    """The objective became NaN or infinite."""


@dataclasses.dataclass
class History:
    """What a training run recorded.

    Attributes
    ----------
    steps : ndarray of shape (k,)
        Optimiser steps at which the objective was recorded (0 = before training).
    values : ndarray of shape (k,) or (k, R)
        Objective (to maximise) at those steps; one column per run when batched.
    seconds : float
        Wall time of the loop.
    evaluations : int
        Objective evaluations (L-BFGS evaluates several times per step).
    """

    steps: np.ndarray
    values: np.ndarray
    seconds: float
    evaluations: int

    @property
    def final(self) -> np.ndarray | float:
        """Objective after the last step."""
        last = self.values[-1]
        return float(last) if np.ndim(last) == 0 else last


def progress_enabled() -> bool:
    """Progress bars only for a person watching: not under CI, not into a pipe or log file."""
    if os.environ.get("CI") or os.environ.get("LINCOLLAPSE_QUIET"):
        return False
    if "ipykernel" in sys.modules:
        return True
    return sys.stderr.isatty()


class Recorder:
    """What a trainer measures at every record of :func:`maximise` (its ``on_record``).

    ``measure(step)`` returns a dict of named measurements (arrays or numbers); the recorder
    keeps one dict per record and hands them back stacked, :meth:`stack`, or as one array,
    :meth:`array`.
    """

    def __init__(self, measure: Callable[[int], dict[str, Any]]) -> None:
        self.measure = measure
        self.records: list[dict[str, Any]] = []

    def __call__(self, step: int) -> None:
        self.records.append(self.measure(step))

    def stack(self, name: str) -> np.ndarray:
        """``name`` of every record, stacked along a new first axis."""
        return np.stack([record[name] for record in self.records])

    def array(self, name: str, dtype: Any = None) -> np.ndarray:
        """``name`` of every record (numbers) as one array."""
        return np.asarray([record[name] for record in self.records], dtype=dtype)


def maximise(
    objective: Callable[[], torch.Tensor],
    parameters: Iterable[torch.nn.Parameter],
    *,
    steps: int,
    optimiser: str = "adam",
    lr: float = 1e-3,
    record_every: int = 1,
    name: str = "run",
    run_names: Sequence[str] | None = None,
    tolerance: float | None = None,
    progress: bool | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    on_record: Callable[[int], None] | None = None,
    start_step: int = 0,
    optimiser_state: dict | None = None,
) -> History:
    """Maximise ``objective()`` over ``parameters`` for ``steps`` optimiser steps.

    Parameters
    ----------
    objective : callable () -> Tensor of shape () or (R,)
        Value to maximise, recomputed from the current parameters at each call.
    parameters : iterable of Parameter
        What the optimiser updates.
    steps : int
        Optimiser steps (for L-BFGS, iterations of ``torch.optim.LBFGS``; it may stop earlier
        when its own gradient or change tolerances are met).
    optimiser : {"adam", "lbfgs"}
        Adam (the paper's) or full-batch L-BFGS with strong-Wolfe line search (deterministic
        objectives only).
    lr : float
        Adam's learning rate (ignored by L-BFGS, whose line search chooses steps).
    record_every : int
        Record the objective every this many steps (and always at the last one).
    name, run_names : str, sequence of str
        Used in progress bars and in the divergence error (``run_names[r]`` for run r).
    tolerance : float, optional
        Stop early when a full ``record_every`` window improves the summed objective by
        less than this (L-BFGS also stops when its own tolerances are met).
    progress : bool, optional
        Force the progress bar on or off (default: :func:`progress_enabled`).
    lr_schedule : callable (step) -> float, optional
        Adam only: the learning rate of step ``step`` (1-based) is ``lr * lr_schedule(step)``.
    on_record : callable (step) -> None, optional
        Called with the step number right after each recorded evaluation (step 0 included),
        under ``torch.no_grad()``, so that callers can record more than the objective.
    start_step, optimiser_state : int, dict, optional
        Adam only: continue a run that has taken ``start_step`` steps, from the optimiser state
        ``optimiser_state`` (``Optimizer.state_dict()``; empty at the start), to step ``steps``.
        The state is updated in place at the end, so that training in chunks takes exactly the
        steps, records and updates of one call; the step-0 record is made only from step 0.
    """
    validation.check_steps(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step must be in [0, steps], got {start_step} (steps={steps})")
    if (start_step or optimiser_state is not None) and optimiser != "adam":
        raise ValueError("start_step and optimiser_state apply to Adam only")
    if optimiser not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {optimiser!r}; choose one of {', '.join(OPTIMISERS)}")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    parameters = [p for p in parameters if p.requires_grad]
    evaluations = 0

    def evaluate() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        value = objective()
        _check_finite(value, name, run_names)
        return value

    if lr_schedule is not None and optimiser != "adam":
        raise ValueError("lr_schedule applies to Adam only; L-BFGS chooses its own step sizes")
    if optimiser == "adam":
        optim = torch.optim.Adam(parameters, lr=lr)
        if optimiser_state:
            optim.load_state_dict(optimiser_state)
    else:
        # One optimiser.step() runs a whole recording window of iterations: each call
        # re-evaluates its starting point, so one iteration per call would cost an extra
        # evaluation per step. max_eval must leave room for the strong-Wolfe line search
        # (torch's default, max_iter * 5 // 4, starves it and freezes training).
        optim = torch.optim.LBFGS(
            parameters,
            lr=1.0,
            max_iter=record_every,
            max_eval=record_every * _LINE_SEARCH_EVALUATIONS,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
        )

    def closure() -> torch.Tensor:
        optim.zero_grad(set_to_none=True)
        value = evaluate()
        loss = -value.sum()
        loss.backward()
        return loss

    recorded_steps: list[int] = []
    recorded_values: list = []
    if start_step == 0:
        with torch.no_grad():
            recorded_steps, recorded_values = [0], [_detach(evaluate())]
            if on_record is not None:
                on_record(0)
    show = progress_enabled() if progress is None else progress
    bar = _progress_bar(steps - start_step, name, show)
    start = time.perf_counter()
    step = start_step
    while step < steps:
        if optimiser == "adam":
            step += 1
            if lr_schedule is not None:
                for group in optim.param_groups:
                    group["lr"] = lr * float(lr_schedule(step))
            closure()
            optim.step()
            taken = 1
        else:
            window = min(record_every - step % record_every, steps - step)
            for group in optim.param_groups:
                group["max_iter"] = window
                group["max_eval"] = window * _LINE_SEARCH_EVALUATIONS
            before = _lbfgs_iterations(optim)
            optim.step(closure)
            taken = _lbfgs_iterations(optim) - before
            step += taken
        bar.update(taken)
        converged = optimiser == "lbfgs" and taken < window
        if step % record_every == 0 or step == steps or converged:
            with torch.no_grad():
                value = _detach(evaluate())
                if on_record is not None:
                    on_record(step)
            previous = recorded_values[-1] if recorded_values else None
            recorded_steps.append(step)
            recorded_values.append(value)
            bar.set_postfix_str(f"objective {np.sum(value):.4f}", refresh=False)
            if (
                tolerance is not None
                and previous is not None
                and abs(np.sum(value) - np.sum(previous)) < tolerance
            ):
                break
        if converged:  # L-BFGS met its own tolerances before the window ended
            break
    seconds = time.perf_counter() - start
    bar.close()
    if optimiser_state is not None:
        optimiser_state.clear()
        optimiser_state.update(optim.state_dict())
    return History(
        steps=np.asarray(recorded_steps),
        values=np.asarray(recorded_values),
        seconds=seconds,
        evaluations=evaluations,
    )


def _lbfgs_iterations(optim: torch.optim.LBFGS) -> int:
    state = optim.state[optim.param_groups[0]["params"][0]]
    return int(state.get("n_iter", 0))


def _detach(value: torch.Tensor) -> np.ndarray | float:
    array = value.detach().cpu().double().numpy()
    return float(array) if array.ndim == 0 else array


def _check_finite(value: torch.Tensor, name: str, run_names: Sequence[str] | None) -> None:
    finite = torch.isfinite(value.detach())
    if bool(finite.all()):
        return
    bad = [int(i) for i in torch.nonzero(~finite.reshape(-1)).flatten()]
    if value.ndim == 0:
        where = f"run {name!r}"
    else:
        labels = [run_names[i] if run_names else f"{name}[{i}]" for i in bad]
        where = f"run(s) {', '.join(map(repr, labels))} of {name!r}"
    raise TrainingDivergedError(
        f"training diverged: the objective of {where} is {value.detach().reshape(-1)[bad[0]]}. "
        "Fix: lower the learning rate, raise the observation noise, or check the data for "
        "outliers"
    )


def _progress_bar(total: int, name: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, leave=False, mininterval=0.5, disable=not show)


def seconds_per_step(history: History) -> float:
    """Mean wall time of one optimiser step."""
    n = int(history.steps[-1]) if history.steps.size else 0
    return history.seconds / n if n else math.nan


def concatenate_histories(histories: list[History]) -> History:
    """One :class:`History` of runs made one after another (steps continue, times add up)."""
    if not histories:
        return History(np.zeros(1, dtype=int), np.full(1, np.nan), 0.0, 0)
    steps, values, offset = [histories[0].steps[:1]], [histories[0].values[:1]], 0
    for history in histories:
        steps.append(history.steps[1:] + offset)
        values.append(history.values[1:])
        offset += int(history.steps[-1])
    return History(
        steps=np.concatenate(steps),
        values=np.concatenate(values),
        seconds=sum(h.seconds for h in histories),
        evaluations=sum(h.evaluations for h in histories),
    )
