"""The converged σ² study: data split, pixel scale, plateau rule, resumable training, shipping."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from lincollapse.data import load_mnist, logit_pixels
from lincollapse.experiments import deep_study as study
from lincollapse.experiments import deep_study_figures as figures
from lincollapse.experiments import deep_study_shipping as shipping
from lincollapse.results_cache import ReferenceResultError, config_key


def test_logit_pixels_against_the_formula():
    pixels = np.array([[0.0, 1.0, 128 / 255], [3 / 255, 0.0, 1.0]])
    noise = np.random.default_rng(3).random(pixels.shape)
    y = 1e-6 + (1 - 2e-6) * (np.array([[0, 255, 128], [3, 0, 255]]) + noise) / 256
    np.testing.assert_allclose(logit_pixels(pixels, seed=3), np.log(y / (1 - y)), rtol=1e-12)
    assert logit_pixels(np.zeros((2, 3))).max() < np.log(1 / 256 / (1 - 1 / 256)) + 1e-9
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logit_pixels(np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="offset"):
        logit_pixels(np.zeros((2, 2)), offset=0.6)


def test_split_keeps_the_book_images_and_holds_out_others():
    train, test, ident = study.study_data("unit", 1000)
    np.testing.assert_array_equal(train, load_mnist(1000, seed=0).images)
    bigger, test_again, _ = study.study_data("unit", 2000)
    np.testing.assert_array_equal(bigger[:1000], train)
    np.testing.assert_array_equal(test_again, test)  # every size is tested on the same images
    rows = {row.tobytes() for row in bigger}
    assert not any(row.tobytes() in rows for row in test)  # held out: never trained on
    assert test.shape == (study.N_TEST, 784) and ident.startswith("unit:1000+1000:")
    with pytest.raises(ValueError, match="n_train"):
        study.study_data("unit", 4500)


def test_linear_count_on_each_pixel_scale():
    eigenvalues = np.linalg.eigvalsh(np.cov(study.study_data("unit", 1000)[0].T, bias=True))
    for sigma2 in (1.0, 0.1, 0.01):
        expected = max(0, 200 - int(np.count_nonzero(eigenvalues > sigma2))) / 200
        assert study.linear_count(sigma2) == pytest.approx(expected)
    assert study.linear_count(1.0, "logit") == 0.0 < study.linear_count(10.0, "logit")


def test_linear_optimum_thresholds_against_the_eigendecomposition():
    """The linear VAE's optimum measured by the (ε, δ) metric, against a closed form written from
    the eigenvectors: μ_j(x) = u_jᵀ(x − x̄) √(λ_j − σ²)/λ_j, s_j² = σ²/λ_j, and the metric's
    order statistic of the per-image KL, which is increasing in (u_jᵀ(x − x̄))²."""
    train = np.asarray(study.study_data("unit", 1000)[0], dtype=np.float64)
    centred = train - train.mean(0)
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / train.shape[0])
    eigenvalues, vectors = eigenvalues[::-1][:200], vectors[:, ::-1][:, :200]
    k = int(np.ceil((1 - study.DELTA) * train.shape[0]))  # ⌈(1 − δ) n⌉-th smallest
    for sigma2 in (0.1, 0.03):
        y2 = np.sort((centred @ vectors) ** 2, axis=0)[k - 1]
        s2 = np.minimum(sigma2 / eigenvalues, 1.0)
        expected = 0.5 * ((1 - s2) / eigenvalues * y2 + s2 - 1 - np.log(s2))
        got = study.linear_optimum_thresholds(sigma2)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
        # at ε → 0 it is the linear count; a larger ε can only add latents
        fraction = figures.collapsed_fraction_from_thresholds(got, [1e-12, 1.0])
        assert fraction[0] == pytest.approx(study.linear_count(sigma2))
        assert fraction[1] >= fraction[0]


def test_plateau_rule():
    steps = np.arange(0, 10_001, 100)
    rising = np.clip(steps / 10_000, 0, 0.8)[:, None]
    assert study.plateau(steps, rising) == (False, pytest.approx(0.2))  # 0.6 → 0.8
    flat = np.where(steps < 3000, steps / 3000, 1.0)[:, None]
    converged, moved = study.plateau(steps, flat)
    assert converged and moved == 0.0
    short = steps[steps <= 5000]
    assert not study.plateau(short, np.ones((short.size, 1)))[0]  # fewer than MIN_STEPS


def test_run_spec_validation_and_labels():
    with pytest.raises(ValueError, match="sigma2"):
        study.RunSpec(0.0)
    with pytest.raises(ValueError, match="pixels"):
        study.RunSpec(1.0, pixels="bytes")
    assert study.RunSpec(0.1, True, "logit", seed=1).label == "σ²=0.1 learned logit pixels seed 1"
    keys = [config_key(s.key()) for g in study.GROUPS.values() for s in g]
    assert len(keys) == len(set(keys))  # every run of the study is distinct


def test_chunked_resumable_training_equals_one_run(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "CHUNK", 10)
    spec = study.RunSpec(0.1, learned=True)
    once, info = study.train_run(spec, max_steps=30, dtype=torch.float64, record_every=10)
    checkpoint = tmp_path / "run.pt"
    study.train_run(spec, max_steps=20, dtype=torch.float64, record_every=10, checkpoint=checkpoint)
    resumed, info2 = study.train_run(
        spec, max_steps=30, dtype=torch.float64, record_every=10, checkpoint=checkpoint
    )
    assert info["steps"] == info2["steps"] == 30
    for name in once:
        np.testing.assert_array_equal(once[name], resumed[name], err_msg=name)
    assert once["sigma2"][-1] != pytest.approx(0.1)  # learned
    assert once["thresholds_test"].shape == (4, 200)


def test_a_continuation_resumes_its_capped_run(tmp_path, monkeypatch):
    """The "extended" group continues a run from its final state: the continued run's records
    equal those of one uninterrupted run of the longer length, and the capped run is kept.
    Step counts are scaled down by 1000 (20,000 → 20, 50,000 → 50)."""
    monkeypatch.setattr(study, "store_dir", lambda: tmp_path)
    monkeypatch.setattr(shipping, "reference_path", lambda group: tmp_path / group)  # unshipped
    monkeypatch.setattr(study, "CHUNK", 10)
    monkeypatch.setattr(study, "run_probe", lambda spec: {})
    original = study.train_run
    small = {"record_every": 10, "dtype": torch.float64, "stop_at_plateau": False}

    def scaled(spec, *, max_steps, **kw):
        return original(spec, max_steps=max_steps // 1000, **(kw | small))

    monkeypatch.setattr(study, "train_run", scaled)
    base = study.RunSpec(0.001)
    extended = dataclasses.replace(base, max_steps=study.EXTENDED_MAX_STEPS)
    assert extended.base == base and extended.label.endswith("to 50,000 steps")
    assert config_key(base.key()) != config_key(extended.key())
    monkeypatch.setattr(study, "GROUPS", {"baseline": [base], "extended": [extended]})
    lines = []
    study.train_queue(["baseline", "extended"], log=lines.append)
    once, _ = original(base, max_steps=50, **small)
    continued, _ = study.finished(extended)
    capped, _ = study.finished(base)
    for name in once:
        np.testing.assert_array_equal(continued[name], once[name], err_msg=name)
    np.testing.assert_array_equal(capped["elbo"], once["elbo"][:3])  # steps 0, 10, 20
    assert study.load_model(base) is not None and study.load_model(extended) is not None
    # without the capped run's final state (a new machine) the continuation replays from step 0
    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "new")
    study.train_queue(["extended"], log=lines.append)
    assert "from step 0" in lines[-2] and study.finished(base) is None
    replayed, _ = study.finished(extended)
    for name in once:
        np.testing.assert_array_equal(replayed[name], once[name], err_msg=name)
    with pytest.raises(ValueError, match="max_steps"):
        study.RunSpec(0.1, max_steps=30_000)


def _scaled_stages(tmp_path, monkeypatch):
    """The study scaled down for a test: nothing shipped, chunks of 10 steps, stages capped at
    20, 50 and 100 steps, the plateau rule made to hold at step 10, records every 10 steps in
    float64, a probe that only names σ²."""
    monkeypatch.setattr(shipping, "reference_path", lambda group: tmp_path / group)
    steps = (("CHUNK", 10), ("MAX_STEPS", 20), ("EXTENDED_MAX_STEPS", 50))
    for name, value in steps + (("FURTHER_MAX_STEPS", 100),):
        monkeypatch.setattr(study, name, value)
    for name, value in (("MIN_STEPS", 10), ("WINDOW", 10), ("PLATEAU_TOLERANCE", 1.0)):
        monkeypatch.setattr(study, name, value)
    monkeypatch.setattr(study, "run_probe", lambda spec: {"x": np.array([spec.sigma2])})
    original = study.train_run

    def small(spec, **kw):
        return original(spec, **(kw | {"record_every": 10, "dtype": torch.float64}))

    monkeypatch.setattr(study, "train_run", small)


def test_a_continuation_replayed_from_step_0_records_its_capped_run(tmp_path, monkeypatch):
    """Where neither the capped run nor its state is here, the continuation replays it from
    step 0 and stores the capped run at the chunk end where it would have stopped: the same
    records, wall-time bookkeeping and final weights as the capped run trained alone. Steps are
    scaled (cap 20, continuation 50, chunks of 10) and the rule made to hold at step 10."""
    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "continued")
    _scaled_stages(tmp_path, monkeypatch)
    base = study.RunSpec(0.001, max_steps=20)
    extended = dataclasses.replace(base, max_steps=50)
    monkeypatch.setattr(study, "GROUPS", {"baseline": [base], "extended": [extended]})
    lines = []
    study.train_queue(["extended"], log=lines.append)
    assert any("recorded within σ²=0.001 fixed seed 0 to 50 steps" in line for line in lines)
    captured, meta = study.finished(base)
    assert meta["info"]["steps"] == 10 and meta["info"]["converged"]
    assert captured["probe_x"].tolist() == [0.001]
    assert study.finished(extended)[1]["info"]["steps"] == 50
    recorded = torch.load(study._model_path(base), weights_only=False)["model"]

    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "alone")
    study.train_queue(["baseline"], log=lines.append)
    alone, alone_meta = study.finished(base)
    assert alone_meta["info"]["steps"] == 10
    assert captured.keys() == alone.keys()
    for name in alone:
        np.testing.assert_array_equal(captured[name], alone[name], err_msg=name)
    trained = torch.load(study._model_path(base), weights_only=False)["model"]
    assert trained.keys() == recorded.keys()
    for name, weights in trained.items():
        assert weights.dtype == torch.float64
        torch.testing.assert_close(recorded[name], weights, rtol=0, atol=0, msg=name)
    # the capped run's stop read from records: the rule first holds at the first chunk end
    assert study.capped_stop(alone["steps"], alone["thresholds"]) == 10


def test_a_further_continuation_starts_where_the_continuation_ended(tmp_path, monkeypatch):
    """Three stages (cap 20, continuation 50, further 100; chunks of 10; the rule made to hold at
    step 10). Replayed from step 0 on an empty store, the further continuation stores both
    earlier stages on the way; trained stage by stage, each starts from the previous one's final
    state, and the three runs equal the replay's bitwise."""
    _scaled_stages(tmp_path, monkeypatch)
    base = study.RunSpec(0.001, max_steps=20)
    extended = dataclasses.replace(base, max_steps=50)
    further = dataclasses.replace(base, max_steps=100)
    assert further.earlier == [base, extended] and further.previous == extended
    assert extended.previous == base and further.label.endswith("to 100 steps")
    assert config_key(further.key()) != config_key(extended.key())
    with pytest.raises(ValueError, match="not a continuation"):
        _ = base.previous
    groups = {"baseline": [base], "extended": [extended], "further": [further]}
    monkeypatch.setattr(study, "GROUPS", groups)

    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "replay")
    lines = []
    study.train_queue(["further"], log=lines.append)
    assert any("from step 0" in line for line in lines)
    replay = {spec: study.finished(spec) for spec in (base, extended, further)}
    assert [replay[s][1]["info"]["steps"] for s in (base, extended, further)] == [10, 50, 100]
    assert replay[extended][1]["info"]["recorded_within"] == further.label
    assert replay[extended][0]["steps"][-1] == 50

    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "staged")
    lines = []
    study.train_queue(["baseline", "extended", "further"], log=lines.append)
    assert not any("from step 0" in line for line in lines)
    for spec in (base, extended, further):
        staged, _ = study.finished(spec)
        assert staged.keys() == replay[spec][0].keys()
        for name in staged:
            np.testing.assert_array_equal(staged[name], replay[spec][0][name], err_msg=name)


def test_the_further_group_is_the_continuations_that_did_not_converge():
    """The runs continued to 100,000 steps are exactly the shipped continuations that did not
    meet the plateau rule at 50,000 (a continuation shipped later must be sorted here too)."""
    shipped = shipping.shipped_runs("extended")
    further = {spec.previous for spec in study.GROUPS["further"]}
    assert shipped, "the continuations are shipped"
    for spec, run in shipped.items():
        assert (spec in further) == (not run["converged"]), spec.label
    assert all(spec.max_steps == study.FURTHER_MAX_STEPS for spec in study.GROUPS["further"])


def test_extensions_replace_runs_and_lengthen_the_records():
    runs = [{"sigma2": 0.01}, {"sigma2": 0.001}]
    group = _fake_group("baseline", runs, [0.9, 0.3], converged=False)
    longer = _fake_group("extended", [{"sigma2": 0.001}], [0.6], k=101)
    merged = shipping.with_extensions(group, longer)
    a = merged.arrays
    assert a["steps"].size == 101 and a["fraction"].shape == (2, 101, len(study.EPSILONS))
    assert a["steps_done"].tolist() == [6000, 10_000]
    assert a["fraction"][1, 100, 0] == 0.6 and np.isnan(a["fraction"][0, 61:]).all()
    assert a["fraction"][0, 60, 0] == 0.9  # the run without a continuation is unchanged
    np.testing.assert_allclose(merged.final_fraction(0.01), [0.9, 0.6])
    assert (
        "continued to 10,000 steps" in merged.provenance and "σ²=0.001 seed 0" in merged.provenance
    )
    # the continuation's first 6,000 steps are not the run's records: the provenance says how far
    assert "differ from the run's records by up to 0 nats in the ELBO and 0.3" in merged.provenance
    same = _fake_group("extended", [{"sigma2": 0.001}], [0.3], k=101)
    assert "6,000 steps reproduce the run's records bitwise" in (
        shipping.with_extensions(group, same).provenance
    )
    unplanned = _fake_group("baseline", [{"sigma2": 0.01}], [0.9])
    assert shipping.with_extensions(unplanned, None) is unplanned  # nothing to continue
    other = _fake_group("extended", [{"sigma2": 0.001, "seed": 1}], [0.6], k=101)
    waiting = shipping.with_extensions(group, other)  # another seed: nothing to replace
    assert waiting.arrays["steps"].size == 61 and "awaiting" in waiting.provenance


def test_study_trajectories_follow_each_run_and_name_the_capped_ones(monkeypatch):
    from matplotlib.figure import Figure

    from lincollapse.plotting.deep import plot_study_trajectories

    fixed = [{"sigma2": s} for s in (1.0, 0.1)]
    learned = [{"sigma2": 0.001, "learned": True}]
    groups = {
        "baseline": _fake_group("baseline", fixed, [0.97, 0.95]),
        "learned": _fake_group("learned", learned, [0.5], converged=False, k=201),
    }
    monkeypatch.setattr(figures, "load_group", lambda name: groups.get(name))
    runs = figures.study_trajectories()
    assert runs.fraction.shape == (3, 201, 2) and runs.steps[-1] == 20_000
    assert runs.sigma2.tolist() == [1.0, 0.1, 0.001] and runs.learned.tolist() == [0, 0, 1]
    assert np.isnan(runs.fraction[0, 61:]).all() and runs.fraction[2, 200, 0] == 0.5
    assert runs.sentence() == (
        "2 of the 3 grid runs available met the plateau rule, after 6,000 steps; "
        "not converged (still moving at their cap, or awaiting their continuation): σ² = 0.001 "
        "learned (20,000 steps)."
    )
    fig = plot_study_trajectories(runs)
    assert isinstance(fig, Figure) and len(fig.axes[1].lines) == 2  # the line and its end
    # at its cap, the ε = 0.1 count has stopped while the ε = 0.01 one jitters, or drifts
    at_001 = groups["learned"].arrays["fraction"][0, :, study.EPSILONS.index(0.01)]
    at_001[:] = np.where(np.arange(201) % 2 == 0, 0.40, 0.55)
    jitter = figures.study_trajectories().sentence()
    assert jitter.endswith(
        "At its cap, σ² = 0.001 learned has stopped at ε = 0.1 (0.500, moved 0.000 over its "
        "last 4,000 steps) but not at ε = 0.01, where its fraction jumps by up to 0.150 from one "
        "record to the next (latents whose KL sits near 0.01 nats cross the threshold back and "
        "forth)."
    )
    at_001[:] = 0.4 + 0.0005 * np.arange(201)  # 0.02 over the last 40 records
    assert "where it still drifts (0.020 over the same steps)." in (
        figures.study_trajectories().sentence()
    )


def test_continuation_findings_say_when_collapse_began_past_the_capped_run(monkeypatch):
    capped = _fake_group("baseline", [{"sigma2": 0.001}], [0.0])  # 6,000 steps, nothing collapsed
    longer = _fake_group("extended", [{"sigma2": 0.001}], [0.0], k=501)
    path = np.zeros(501)
    path[0], path[150:] = 0.9, 0.5  # at initialisation every KL is below ε; onset at 15,000
    longer.arrays["fraction"][0] = path[:, None]
    groups = {"baseline": capped, "extended": longer}
    monkeypatch.setattr(figures, "load_group", lambda name: groups.get(name))
    assert figures.continuation_findings().endswith(
        "σ²=0.001 fixed seed 0: its 6,000-step run reported 0.000; collapse began at step "
        "15,000, and at 50,000 steps it is 0.500."
    )
    # continued further: the onset is read from the longest run, each stage's end is named
    further = _fake_group("further", [{"sigma2": 0.001}], [0.7], k=1001)
    further.arrays["fraction"][0, :501] = path[:, None]
    groups["further"] = further
    assert figures.continuation_findings().endswith(
        "collapse began at step 15,000, and at 50,000 steps it is 0.500 and at 100,000 steps "
        "it is 0.700."
    )
    # and it lengthens the run it continues, marked converged or not by its own records
    merged = shipping.with_extensions(shipping.with_extensions(capped, longer), further, "further")
    assert merged.arrays["steps_done"].tolist() == [100_000]
    assert "continued to 100,000 steps" in merged.provenance
    groups.pop("further")
    path[1:] = 0.0
    longer.arrays["fraction"][0] = path[:, None]
    assert "no collapse began by step 50,000" in figures.continuation_findings()
    groups.pop("extended")
    assert figures.continuation_findings() == "No continuation is available yet."


def test_final_fraction_is_the_mean_of_the_last_thousand_steps():
    group = _fake_group("baseline", [{"sigma2": 0.001}, {"sigma2": 0.01}], [0.0, 0.5])
    jitter = np.where(np.arange(61) % 2 == 0, 0.30, 0.40)  # record-to-record jitter
    group.arrays["fraction"][0, :, :] = jitter[:, None]
    group.arrays["fraction"][0, :50, :] = 0.0  # before the last 1000 steps: not counted
    # records 50..60 (steps 5000..6000): six at 0.30, five at 0.40
    expected = (6 * 0.30 + 5 * 0.40) / 11
    assert shipping.FINAL_WINDOW == 1000
    np.testing.assert_allclose(group.final_fraction(0.01), [expected, 0.5])


def test_continued_runs_are_those_with_small_noise_against_the_largest_eigenvalue():
    for pixels, largest in study.CONTINUE_AT_OR_BELOW.items():
        lambda_1 = study.linear_count_eigenvalues(pixels, study.BOOK_N)[0]
        used = {spec.sigma2 for g in study.GROUPS.values() for spec in g if spec.pixels == pixels}
        below = [s for s in used if s / lambda_1 <= study.CONTINUE_BELOW]
        assert max(below) == largest
    continued = {
        (s.sigma2, s.pixels, s.learned, s.n_train, s.seed) for s in study.GROUPS["extended"]
    }
    for name, specs in study.GROUPS.items():
        for spec in specs if name not in study.CONTINUATIONS else ():
            lambda_1 = study.linear_count_eigenvalues(spec.pixels, spec.n_train)[0]
            small = spec.sigma2 / lambda_1 <= study.CONTINUE_BELOW
            key = (spec.sigma2, spec.pixels, spec.learned, spec.n_train, spec.seed)
            assert (key in continued) == small, spec.label


def test_a_run_awaiting_its_continuation_is_not_converged():
    runs = [{"sigma2": 0.01}, {"sigma2": 0.001}]
    group = _fake_group("baseline", runs, [0.9, 0.0], converged=True)
    marked = shipping.with_extensions(group, None)
    assert marked.arrays["converged"].tolist() == [True, False]
    assert group.arrays["converged"].tolist() == [True, True]  # the group itself is untouched
    assert marked.provenance.endswith("awaiting their continuation: σ²=0.001 seed 0")


def test_initialisation_is_pytorch_linear_default():
    """Ours draws weights and biases from U(±1/√fan_in), nn.Linear's default distribution."""
    from lincollapse.deep_vae import _initial_weights  # noqa: PLC2701 - the function under test

    fan_in, fan_out = 400, 300
    arch = study.Architecture(fan_in, fan_out // 2, (), ())
    weight, bias = _initial_weights(arch, seed=0)[0]
    torch.manual_seed(0)  # the layer draws from the global generator: the same draw every run
    layer = torch.nn.Linear(fan_in, fan_out)  # its own reset_parameters, PyTorch's default
    for ours, theirs in ((weight, layer.weight), (bias, layer.bias)):
        bound = 1 / np.sqrt(fan_in)
        assert ours.abs().max() <= bound and theirs.abs().max() <= bound
        assert ours.abs().max() > 0.98 * bound and theirs.abs().max() > 0.9 * bound
        # same uniform distribution: matching variance bound²/3 (to sampling error)
        assert float(ours.var()) == pytest.approx(bound**2 / 3, rel=0.1)
        assert float(theirs.detach().var()) == pytest.approx(bound**2 / 3, rel=0.1)


def _fake_group(name, settings, fractions, converged=True, k=61):
    """A StudyGroup with constant collapsed fraction per run (ε-independent), k records."""
    runs = len(settings)
    fraction = np.repeat(np.asarray(fractions, float)[:, None, None], k, axis=1)
    fraction = np.repeat(fraction, len(study.EPSILONS), axis=2)
    arrays = {
        "steps": np.arange(k) * study.RECORD_EVERY,
        "fraction": fraction,
        "fraction_test": fraction.copy(),
        "elbo": np.full((runs, k), 900.0),
        "elbo_test": np.full((runs, k), 880.0),
        "sigma2_path": np.array([[s["sigma2"]] * k for s in settings]),
        "sigma2": np.array([s["sigma2"] for s in settings]),
        "learned": np.array([s.get("learned", False) for s in settings]),
        "pixels": np.array([s.get("pixels", "unit") for s in settings]),
        "n_train": np.array([s.get("n_train", 1000) for s in settings]),
        "seed": np.array([s.get("seed", 0) for s in settings]),
        "steps_done": np.full(runs, (k - 1) * study.RECORD_EVERY),
        "converged": np.full(runs, converged),
        "movement": np.zeros(runs),
        "seconds": np.ones(runs),
    }
    return shipping.StudyGroup(name, arrays, "test")


def test_ablation_table_measures_the_change_against_the_linear_count(monkeypatch):
    base = [{"sigma2": s, "seed": seed} for seed in (0, 1) for s in (1.0, 0.1)]
    logit = [{"sigma2": s, "seed": seed, "pixels": "logit"} for seed in (0, 1) for s in (1.0, 0.1)]
    groups = {
        "baseline": _fake_group("baseline", base, [0.95, 0.90, 0.97, 0.92]),
        "logit": _fake_group("logit", logit, [0.10, 0.0, 0.10, 0.0]),
    }
    monkeypatch.setattr(figures, "load_group", lambda name: groups.get(name))
    monkeypatch.setattr(figures, "finished", lambda spec: None)
    table = figures.ablations()
    rows = {(r["setting"], r["sigma2"]): r for r in table.rows}
    count = study.linear_count(0.1)  # unit pixels, independent of the fake runs
    assert rows["baseline", 0.1]["fraction"] == pytest.approx(0.91)
    assert rows["baseline", 0.1]["spread"] == pytest.approx(0.02)
    assert rows["baseline", 0.1]["excess"] == pytest.approx(0.91 - count)
    assert rows["logit", 0.1]["linear"] == 0.0 and rows["logit", 0.1]["excess"] == 0.0
    assert rows["baseline", 1.0]["elbo_gap"] == pytest.approx(20.0)
    regimes = table.regimes()  # the logit count is 0 at σ² ≤ 1; the baseline's is partial there
    assert regimes["logit"]["none"] == (pytest.approx(0.05), [1.0, 0.1])
    assert regimes["baseline"]["partial"][0] == pytest.approx(
        np.mean([0.96 - study.linear_count(1.0), 0.91 - count])
    )
    findings = table.findings()
    assert "share no regime" in findings["decides"]
    assert findings["learned"] == "σ² learned, initialised at σ²: not run yet."
    assert "changes by +0.080, -0.250 at σ² = 1, 0.1" in findings["logit"]
    # the fake logit runs share σ² with the baseline but not σ²/λ₁ (λ₁ is 130 times larger)
    assert findings["matched_scale"].startswith("No run of logit pixels")
    assert "Not run yet" in table.table()
    # the threshold check compares with the linear optimum at every ε (the fakes are ε-flat)
    linear = figures.collapsed_fraction_from_thresholds(
        study.linear_optimum_thresholds(0.1), study.EPSILONS
    )
    np.testing.assert_allclose(rows["baseline", 0.1]["linear_by_epsilon"], linear)
    low = 0.91 - linear.max()
    assert f"{low:+.3f} to {0.91 - linear.min():+.3f} at σ² = 0.1" in findings["threshold"]
    assert findings["threshold"].endswith("does not explain the excess at σ² = 0.1.")  # not at 1
    assert table.threshold_table().count("\n") == 3  # header, rule, two σ²


def test_memorisation_sentence_sets_the_elbo_gap_beside_the_data_size(monkeypatch):
    base = [{"sigma2": s, "seed": seed} for seed in (0, 1) for s in (1.0, 0.1)]
    sized = [{"sigma2": s, "seed": seed, "n_train": 4000} for seed in (0, 1) for s in (1.0, 0.1)]
    bigger = _fake_group("data_size", sized, [0.95, 0.91, 0.97, 0.91])
    bigger.arrays["elbo_test"][:] = 895.0  # train − held-out gap 5 nats instead of 20
    groups = {
        "baseline": _fake_group("baseline", base, [0.95, 0.90, 0.97, 0.92]),
        "data_size": bigger,
    }
    groups["baseline"].arrays["fraction_test"][1] -= 0.01  # held-out lower at σ² = 0.1, seed 0
    monkeypatch.setattr(figures, "load_group", lambda name: groups.get(name))
    monkeypatch.setattr(figures, "finished", lambda spec: None)
    memo = figures.ablations().findings()["memorisation"]
    assert "by at most 0.005 (σ² = 0.1, lower on held-out images)" in memo
    assert "that gap goes 20 → 5 at σ² = 1, 20 → 5 at σ² = 0.1 nats per image" in memo
    # same fractions, so the excess moves only by the two data sets' linear counts
    moved = max(
        abs(study.linear_count(s) - study.linear_count(s, n_train=4000)) for s in (1.0, 0.1)
    )
    assert moved <= figures.AGREEMENT
    assert memo.endswith(
        f"changes by at most {moved:.3f}: the excess does not follow how much the decoder "
        "memorises."
    )
    groups["data_size"].arrays["converged"][:] = False
    assert "This is provisional: 2 of the rows" in figures.ablations().findings()["memorisation"]


def test_sigma2_study_places_runs_on_the_grid(monkeypatch):
    fixed = [{"sigma2": s} for s in (1.0, 0.1, 0.01, 0.001)]
    groups = {"baseline": _fake_group("baseline", fixed, [0.97, 0.95, 0.9, 0.85])}
    monkeypatch.setattr(figures, "load_group", lambda name: groups.get(name))
    monkeypatch.setattr(figures, "finished", lambda spec: None)
    result = figures.sigma2_study()
    grid = list(study.GRID)
    assert result.fixed[grid.index(0.1)] == pytest.approx(0.95)
    assert np.isnan(result.fixed[grid.index(30.0)]) and not result.complete
    findings = result.findings()
    assert "falls (or stays)" in findings["direction"] and "above it" in findings["distance"]
    assert findings["learned"].startswith("Not available")
    assert "not run yet" in result.table()
    groups["baseline"] = _fake_group("baseline", fixed, [0.5, 0.95, 0.9, 0.85])
    assert "does not fall monotonically" in figures.sigma2_study().findings()["direction"]
    groups["baseline"] = _fake_group("baseline", fixed, [0.97, 0.95, 0.9, 0.85], converged=False)
    assert (
        figures.sigma2_study()
        .findings()["direction"]
        .endswith(
            "The runs at σ² = 1 (6,000 steps), 0.1 (6,000 steps), 0.01 (6,000 steps), 0.001 "
            "(6,000 steps) are not converged (still moving at the cap, or awaiting a "
            "continuation): their values are means over their last 1,000 steps, not plateaus."
        )
    )
    total = sum(len(v) for k, v in study.GROUPS.items() if k not in study.CONTINUATIONS)
    assert figures.study_progress() == (
        f"4 of the {total} runs of that study are trained so far (the tables below name the "
        "ones still missing); 4 of them are not converged (still moving at their cap, or awaiting "
        "their continuation), and are marked so."
    )
    # the chapter's "they took … to … minutes": every loaded run's training time
    groups["baseline"].arrays["seconds"] = np.array([600.0, 1800.0, 4800.0, 900.0])
    learned = [{"sigma2": 1.0, "learned": True}]
    groups["learned"] = _fake_group("learned", learned, [0.96])
    groups["learned"].arrays["seconds"] = np.array([300.0])
    glued = figures.sigma2_study().glue_values()
    assert (glued["study_minutes_min"], glued["study_minutes_max"]) == (5.0, 80.0)


def test_shipped_traversal_is_current_and_decodes_like_the_model():
    from lincollapse.references import load_shipped, verify_behaviour

    stem = shipping.traversal_path()
    arrays, _ = load_shipped(stem, None)
    verify_behaviour(stem, lambda: study.run_probe(shipping.TRAVERSAL_RUN))
    assert stem.with_suffix(".npz").stat().st_size < 1e6
    result = figures.latent_traversal()
    # an independent decoder: the package's model with the shipped weights loaded
    model = study.GaussianVAE(study.ARCH, 0.1, device="cpu")
    with torch.no_grad():
        for index, layer in enumerate(model.decoder):
            layer.weight.copy_(torch.tensor(arrays[f"decoder_weight_{index}"].astype(np.float32)))
            layer.bias.copy_(torch.tensor(arrays[f"decoder_bias_{index}"].astype(np.float32)))
        code = torch.tensor(arrays["start_code"], dtype=torch.float32).repeat(7, 1)
        code[:, result.latents[0]] = torch.tensor(result.values, dtype=torch.float32)
        expected = model.decode(code).double().numpy().reshape(7, 28, 28)
    np.testing.assert_allclose(result.images[0], expected, atol=1e-5)
    assert result.collapsed.tolist() == [False, False, True]
    assert result.change[0] > 100 * result.change[-1]


@pytest.mark.parametrize("group", sorted(study.GROUPS))
def test_shipped_study_groups_are_current(group):
    """Each shipped group: valid, its runs are the group's, and the code replays their probes."""
    from lincollapse.references import load_shipped, verify_behaviour

    stem = shipping.reference_path(group)
    if not stem.with_suffix(".npz").is_file():
        pytest.skip(f"group {group} is not shipped yet")
    arrays, meta = load_shipped(stem, None)
    specs = shipping._shipped_specs(group, meta)  # noqa: SLF001 - what the loader checks
    verify_behaviour(stem, shipping.group_probe(group, specs))
    assert stem.with_suffix(".npz").stat().st_size < 1e6
    assert arrays["sigma2"].tolist() == [spec.sigma2 for spec in specs]
    done = arrays["steps_done"]
    assert ((done >= study.MIN_STEPS) | ~arrays["converged"]).all()
    cap = {"extended": study.EXTENDED_MAX_STEPS, "further": study.FURTHER_MAX_STEPS}
    assert (done <= cap.get(group, study.MAX_STEPS)).all()
    rows = [shipping._shipped_row(arrays, r) for r in range(done.size)]  # noqa: SLF001
    for name, values in shipping._stack_rows(rows).items():  # noqa: SLF001 - kept when reshipped
        np.testing.assert_array_equal(values, arrays[name], err_msg=name)
        assert values.dtype == arrays[name].dtype, name


def test_plateau_rule_is_not_fooled_by_float_noise():
    steps = np.arange(0, 8001, 100)
    fraction = np.where(steps < 5000, 0.925, 0.935)[:, None]  # 0.935 − 0.925 > 0.01 in floats
    assert 0.935 - 0.925 > study.PLATEAU_TOLERANCE
    assert study.plateau(steps, fraction) == (True, 0.01)


def test_status_applies_the_plateau_rule_to_the_records_not_the_stored_flag(monkeypatch):
    """A run stored with converged=False whose records meet the rule as it is now (movement
    exactly at the tolerance) is reported converged, as shipping reports it; and a run whose
    records still move is reported not converged whatever its stored flag says."""
    from lincollapse.experiments import deep_study

    steps = np.arange(0, deep_study.MIN_STEPS + deep_study.WINDOW + 1, 1000)
    q = 200
    # thresholds (k, q): latent i collapsed at ε when its threshold < ε
    flat = np.full((steps.size, q), 1.0)
    flat[:, :100] = 1e-4  # half collapsed at both ε, all along
    moving = flat.copy()
    moving[-1, 100:150] = 1e-4  # 50 more latents collapse at the last record: moved 0.25
    edge = flat.copy()
    edge[-1, 100:102] = 1e-4  # 2 of 200 more: moved exactly 0.01, the tolerance
    runs = {
        "edge": ({"steps": steps, "thresholds": edge}, {"info": {"converged": False}}),
        "moving": ({"steps": steps, "thresholds": moving}, {"info": {"converged": True}}),
    }
    specs = {"g": [types.SimpleNamespace(label=name, name=name) for name in runs]}
    monkeypatch.setattr(deep_study, "GROUPS", specs)
    monkeypatch.setattr(deep_study, "finished", lambda spec: runs[spec.name])
    lines = []
    deep_study.status(log=lines.append)
    assert "converged=True (moved 0.010)" in lines[0]
    assert "converged=False (moved 0.250)" in lines[1]


def _fake_run(spec, k=12, seed=0):
    """A finished run as the local store holds it, with its probe."""
    rng = np.random.default_rng(seed)
    arrays = {
        "steps": np.arange(k) * study.RECORD_EVERY,
        "thresholds": rng.exponential(0.05, (k, 200)),
        "thresholds_test": rng.exponential(0.05, (k, 200)),
        "elbo": rng.normal(900.0, 1.0, k),
        "elbo_test": rng.normal(880.0, 1.0, k),
        "sigma2": np.full(k, spec.sigma2),
        "kl_mean": rng.exponential(0.05, (k, 200)),
        "probe_x": np.array([spec.sigma2]),
    }
    return arrays, {"info": {"seconds": 60.0 * (seed + 1), "threads": 1}}


def test_shipping_keeps_the_runs_shipped_from_other_machines(tmp_path, monkeypatch):
    """A new machine finishes one run of a group: shipping adds it and keeps the runs shipped
    before, bitwise; a run whose probe the code no longer reproduces is not kept."""
    specs = [study.RunSpec(1.0), study.RunSpec(0.1), study.RunSpec(0.01)]
    monkeypatch.setattr(shipping, "GROUPS", {"baseline": specs})
    monkeypatch.setattr(shipping, "reference_path", lambda group: tmp_path / f"study_{group}")
    monkeypatch.setattr(shipping, "run_probe", lambda spec: {"x": np.array([spec.sigma2])})
    local = {specs[0]: _fake_run(specs[0], k=12, seed=0), specs[2]: _fake_run(specs[2], 30, 2)}
    monkeypatch.setattr(shipping, "finished", lambda spec: local.get(spec))
    monkeypatch.setattr(shipping, "machine_description", lambda: "CPU one")
    shipping.ship_group("baseline", "first machine")
    first = shipping.load_group("baseline")
    assert first.missing == (specs[1].label,) and first.arrays["steps"].size == 30

    local = {specs[1]: _fake_run(specs[1], k=20, seed=1)}  # a new machine: one run, another
    # the run records the machine it trained on, and its store entry the time it finished
    local[specs[1]][1]["info"]["machine"] = "CPU two"
    local[specs[1]][1]["created"] = "2026-11-29T23:59:58+00:00"
    monkeypatch.setattr(shipping, "machine_description", lambda: "CPU that ships")
    stem = shipping.ship_group("baseline", "second machine")
    info = json_info(stem)  # where each run was trained, not only where the group was shipped
    assert info["machine"] == "CPU one (2 runs), CPU two (1 run)"
    assert info["runs"][specs[1].label]["date"] == "2026-11-29"
    assert [info["runs"][spec.label]["machine"] for spec in specs] == [
        "CPU one",
        "CPU two",
        "CPU one",
    ]
    both = shipping.load_group("baseline")
    assert both.missing == () and both.arrays["sigma2"].tolist() == [1.0, 0.1, 0.01]
    assert both.provenance.startswith("finished runs in the local results cache: σ²=0.1")
    assert both.arrays["steps_done"].tolist() == [1100, 1900, 2900]
    assert both.arrays["seconds"].tolist() == [60.0, 120.0, 180.0]
    for name, values in first.arrays.items():  # the kept runs are the shipped ones, bitwise
        if name != "steps":
            np.testing.assert_array_equal(both.arrays[name][[0, 2]], values, err_msg=name)
    np.testing.assert_array_equal(  # the new run is what the local store holds
        both.arrays["elbo"][1, :20], local[specs[1]][0]["elbo"]
    )
    assert np.isnan(both.arrays["elbo"][1, 20:]).all()

    local = {}
    shipped = shipping.load_group("baseline")  # nothing local: the shipped group as it is
    assert "second machine" in shipped.provenance and shipped.missing == ()
    assert json_info(stem)["seconds"] == 360.0
    monkeypatch.setattr(shipping, "run_probe", lambda spec: {"x": np.array([spec.sigma2 * 2])})
    with pytest.raises(ReferenceResultError, match="stale.*retrain the runs σ²=1 fixed seed 0"):
        shipping.ship_group("baseline", "changed code")  # the shipped runs are stale
    local = {specs[1]: _fake_run(specs[1], k=20, seed=1)}
    with pytest.raises(ReferenceResultError, match="behaves differently"):
        shipping.ship_group("baseline", "changed code")  # and so is the local one


def json_info(stem):
    import json

    return json.loads(stem.with_suffix(".json").read_text())["info"]


def test_training_skips_the_shipped_runs_unless_they_are_stale(tmp_path, monkeypatch):
    """``study train`` on a new machine trains what is neither finished here nor shipped; a
    shipped group whose probe no longer replays is trained again; ``status`` names the shipped."""
    specs = [study.RunSpec(1.0), study.RunSpec(0.1), study.RunSpec(0.01)]
    monkeypatch.setattr(shipping, "GROUPS", {"baseline": specs})
    monkeypatch.setattr(study, "GROUPS", {"baseline": specs})
    monkeypatch.setattr(shipping, "reference_path", lambda group: tmp_path / f"study_{group}")
    monkeypatch.setattr(shipping, "run_probe", lambda spec: {"x": np.array([spec.sigma2])})
    local = {specs[0]: _fake_run(specs[0]), specs[2]: _fake_run(specs[2], seed=2)}
    monkeypatch.setattr(shipping, "finished", lambda spec: local.get(spec))
    shipping.ship_group("baseline", "another machine")
    monkeypatch.setattr(study, "finished", lambda spec: None)  # this machine: nothing finished
    monkeypatch.setattr(study, "store_dir", lambda: tmp_path / "store")
    reached, lines = [], []
    monkeypatch.setattr(study, "_try_lock", lambda spec: reached.append(spec))  # None: skipped
    study.train_queue(["baseline"], log=lines.append)
    assert reached == [specs[1]] and "2 run(s) shipped and current" in lines[0]
    study.status(log=lines.append)
    assert "shipped: 1100 steps" in lines[-3] and "waiting" in lines[-2]
    monkeypatch.setattr(shipping, "run_probe", lambda spec: {"x": np.array([spec.sigma2 * 2])})
    reached.clear()
    study.train_queue(["baseline"], log=lines.append)
    assert reached == specs and "stale" in lines[-1]


def test_learned_sentence_splits_the_starts_by_where_they_end():
    grid = np.array([30.0, 1.0, 0.1, 0.01, 0.001, 1e-4])
    finals = np.array([0.02, 0.012, 0.007, 0.004, 0.0033, 0.0038])
    nan = np.full(grid.size, np.nan)
    result = figures.SigmaStudy(
        sigma2=grid, fixed=nan, learned=np.full(grid.size, 0.9),
        fixed_converged=np.zeros(grid.size, bool), learned_converged=np.ones(grid.size, bool),
        fixed_steps=nan, learned_steps=nan, learned_final_sigma2=finals, linear=nan,
        linear_learned=nan, reproduction_fixed=nan, reproduction_learned=nan,
        sigma2_line=grid, linear_line=nan, provenance={}, run_seconds=np.zeros(0),
    )  # fmt: skip
    band, above = result.learned_band()
    # 0.0033 … 0.004 lie within a factor 2; adding 0.007 would make it 2.12
    assert band.tolist() == [False, False, False, True, True, True]
    assert above.tolist() == [True, True, True, False, False, False]
    sentence = result.findings()["learned"]
    assert "Started at or below 0.01 (3 starts spanning a factor 100)" in sentence
    assert "narrow band, 0.0033 to 0.004;" in sentence
    assert "started higher (0.1 to 30), it ends higher, 0.007 to 0.02, the higher" in sentence
    # every start ending within a factor 2: no dependence on the start
    flat = dataclasses.replace(result, learned_final_sigma2=np.linspace(0.004, 0.006, grid.size))
    assert flat.findings()["learned"].endswith("does not depend on where it starts.")


def test_unconverged_runs_say_at_which_threshold_they_still_move(monkeypatch):
    """Two runs at their cap: one jitters only at ε = 0.01 around a rising mean, one still moves
    at ε = 0.1; a third awaits its continuation and is not judged."""
    settings = [{"sigma2": 1.0}, {"sigma2": 0.1}, {"sigma2": 0.001}]
    group = _fake_group("baseline", settings, [0.5, 0.5, 0.5], converged=False, k=201)
    fraction = group.arrays["fraction"]  # (runs, records, ε), constant 0.5
    jitter = np.where(np.arange(201) % 2, 0.1, -0.1)  # ±20 latents from one record to the next
    fraction[0, :, 0] += jitter + np.linspace(0.0, 0.04, 201)  # and a rise of 0.04 in all
    fraction[1, -10:, 2] += 0.05  # 10 latents more at ε = 0.1 near the end
    group.arrays["steps_done"][:] = 20_000
    monkeypatch.setattr(figures, "load_group", lambda name: group if name == "baseline" else None)
    monkeypatch.setattr(figures, "finished", lambda spec: None)
    result = figures.unconverged_runs()
    rows = {row["label"]: row for row in result.rows}
    first = rows["σ²=1 fixed seed 0"]
    assert not first["awaiting"] and first["moved"][0] == pytest.approx(0.2 + 0.04 * 0.2, abs=1e-3)
    np.testing.assert_array_equal(first["moved"][1:], 0.0)
    # the last 1,000 steps' mean against the first 1,000 of the window (steps 16,000–20,000)
    assert first["drift"] == pytest.approx(0.04 * 3000 / 20_000, abs=2e-3)
    assert rows["σ²=0.1 fixed seed 0"]["moved"][2] == pytest.approx(0.05)
    assert rows["σ²=0.001 fixed seed 0"]["awaiting"]  # to be continued: not judged
    sentence = result.sentence()
    assert sentence.startswith("3 of the runs did not meet the rule (1 of them awaiting")
    assert "Of the 2 that ran to their cap, 1 moved by more than 0.01 only at ε = 0.01" in sentence
    assert "(σ²=1 fixed seed 0: drift +0.006)" in sentence
    table = result.table()
    assert (
        "| σ²=0.001 fixed seed 0 | 20,000 | — |" in table and "awaiting its continuation" in table
    )


def test_learned_runs_are_compared_with_fixed_ones_where_they_start_and_end():
    grid = np.array([1.0, 0.1, 0.01, 0.001])
    fixed = np.array([0.9, 0.8, 0.6, 0.2])
    learned = np.array([0.85, 0.75, 0.5, 0.3])
    finals = np.array([0.1, 0.01, np.sqrt(0.001 * 0.01), 0.01])  # two fell, one rose
    nan = np.full(grid.size, np.nan)
    result = figures.SigmaStudy(
        sigma2=grid, fixed=fixed, learned=learned,
        fixed_converged=np.ones(grid.size, bool), learned_converged=np.ones(grid.size, bool),
        fixed_steps=nan, learned_steps=nan, learned_final_sigma2=finals, linear=nan,
        linear_learned=nan, reproduction_fixed=nan, reproduction_learned=nan,
        sigma2_line=grid, linear_line=nan, provenance={}, run_seconds=np.zeros(0),
    )  # fmt: skip
    # halfway in log σ² between 0.01 and 0.001: halfway between 0.6 and 0.2
    np.testing.assert_allclose(result.fixed_at(finals), [0.8, 0.6, 0.4, 0.6])
    assert np.isnan(result.fixed_at(np.array([10.0, 1e-5]))).all()
    sentence = result.findings()["learned_vs_fixed"]
    # at the start: −0.05, −0.05, −0.1, +0.1; at the end: +0.05, +0.15, +0.1, −0.3
    assert "collapses -0.100 to +0.100 more at the σ² where it starts" in sentence
    assert "-0.300 to +0.150 more at the σ² where it ends" in sentence
    assert sentence.endswith(
        "the 3 runs whose σ² fell collapse +0.050 to +0.150 more, the 1 whose σ² rose -0.300 to "
        "-0.300: the sign follows the way σ² travelled."
    )
