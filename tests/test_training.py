"""The shared training loop: it maximises, records, schedules, and stops on divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lincollapse.training import Recorder, TrainingDivergedError, maximise

TARGET = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def quadratic(w):
    return lambda: -((w - TARGET) ** 2).sum()


@pytest.mark.parametrize(("optimiser", "steps", "lr"), [("lbfgs", 20, 1.0), ("adam", 2000, 0.05)])
def test_reaches_the_maximiser_of_a_concave_quadratic(optimiser, steps, lr):
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    history = maximise(quadratic(w), [w], steps=steps, optimiser=optimiser, lr=lr)
    np.testing.assert_allclose(w.detach().numpy(), TARGET.numpy(), atol=1e-6)
    assert history.values[0] == pytest.approx(-14.0) and history.final == pytest.approx(
        0, abs=1e-10
    )


def test_records_every_k_steps_and_calls_on_record_without_gradients():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    seen = []
    history = maximise(
        quadratic(w),
        [w],
        steps=10,
        lr=0.1,
        record_every=4,
        on_record=lambda step: seen.append((step, torch.is_grad_enabled())),
    )
    assert list(history.steps) == [0, 4, 8, 10]
    assert seen == [(0, False), (4, False), (8, False), (10, False)]
    assert np.all(np.diff(history.values) > 0)


def test_learning_rate_schedule_is_applied():
    # With lr * schedule = 0 after step 1, Adam moves once and then stays put.
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    maximise(quadratic(w), [w], steps=50, lr=0.1, lr_schedule=lambda s: 1.0 if s == 1 else 0.0)
    np.testing.assert_allclose(w.detach().numpy(), 0.1 * np.sign(TARGET.numpy()), atol=1e-12)
    with pytest.raises(ValueError, match="Adam only"):
        maximise(quadratic(w), [w], steps=1, optimiser="lbfgs", lr_schedule=lambda s: 1.0)


def test_vector_objective_records_each_run_and_divergence_names_it():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    history = maximise(lambda: -((w - 1) ** 2), [w], steps=3, lr=0.1)
    assert history.values.shape == (4, 2)
    bad = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def diverging():
        return torch.stack([-(bad[0] ** 2), torch.log(bad[1] - 1.0)])

    with pytest.raises(TrainingDivergedError, match="'sigma2=0.1'.*lower the learning rate"):
        maximise(diverging, [bad], steps=2, run_names=["sigma2=1", "sigma2=0.1"])


def test_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="choose one of adam, lbfgs"):
        maximise(lambda: -(w**2).sum(), [w], steps=1, optimiser="sgd")
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        maximise(lambda: -(w**2).sum(), [w], steps=-1)


def test_training_in_chunks_equals_one_call():
    """start_step/optimiser_state: chunks take exactly the steps and records of one call."""
    target = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)

    def setup():
        w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        return w, (lambda: -((w - target) ** 2).sum() + 0.1 * torch.sin(5 * w).sum())

    w_once, objective = setup()
    once = maximise(objective, [w_once], steps=30)
    w_chunks, objective = setup()
    state: dict = {}
    parts = [
        maximise(objective, [w_chunks], steps=end, start_step=start, optimiser_state=state)
        for start, end in ((0, 10), (10, 20), (20, 30))
    ]
    assert torch.equal(w_once, w_chunks)
    np.testing.assert_array_equal(once.steps, np.concatenate([p.steps for p in parts]))
    np.testing.assert_array_equal(once.values, np.concatenate([p.values for p in parts]))
    assert state["state"][0]["step"] == 30
    with pytest.raises(ValueError, match="start_step"):
        maximise(objective, [w_chunks], steps=5, start_step=6)


def test_recorder_keeps_one_measurement_per_record():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    recorder = Recorder(lambda step: {"step": step, "w": w.detach().numpy().copy()})
    objective = lambda: -(w - 1.0).square().sum()  # noqa: E731
    history = maximise(objective, [w], steps=6, lr=0.1, record_every=2, on_record=recorder)
    np.testing.assert_array_equal(recorder.array("step"), history.steps)
    assert recorder.stack("w").shape == (history.steps.size, 2)
    np.testing.assert_array_equal(recorder.stack("w")[0], [0.0, 0.0])  # before the first step
    assert recorder.stack("w")[-1, 0] > 0.5  # moved towards the maximum at 1
