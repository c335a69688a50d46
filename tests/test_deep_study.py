"""The converged σ² study: data split, pixel scale, plateau rule, resumable training, shipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lincollapse.data import load_mnist, logit_pixels
from lincollapse.experiments import deep_study as study
from lincollapse.results_cache import config_key


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
    resumed, info2 = study.train_run(spec, max_steps=30, dtype=torch.float64, record_every=10,
                                     checkpoint=checkpoint)  # fmt: skip
    assert info["steps"] == info2["steps"] == 30
    for name in once:
        np.testing.assert_array_equal(once[name], resumed[name], err_msg=name)
    assert once["sigma2"][-1] != pytest.approx(0.1)  # learned
    assert once["thresholds_test"].shape == (4, 200)
