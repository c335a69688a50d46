"""The exercise checks accept the solutions' answers and reject wrong ones.

Each answer is computed here the way the solution computes it (or by an independent route:
torch.distributions, a dense log-determinant, the package's own functions where the check uses
numpy); each wrong answer is a mistake a student is likely to make. The last tests hold the book
to its exercise conventions: every exercise is tagged, every coding exercise names its check.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lincollapse import exercises as ex
from lincollapse import linear_beta_vae, linear_vae, ppca
from lincollapse.beta_elbo import loss_effective_sigma2
from lincollapse.collapse import linear_collapse_prediction
from lincollapse.data import covariance_eigenvalues, load_mnist

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture(scope="module")
def images():
    return load_mnist(1000, seed=0).images


@pytest.fixture(scope="module")
def spectrum(images):
    return ppca.data_spectrum(images)


def test_collapse_code():
    zero = torch.zeros((), dtype=torch.float64)
    q0 = torch.distributions.Normal(zero, zero + math.sqrt(0.9))
    prior = torch.distributions.Normal(zero, zero + 1.0)
    kl = float(torch.distributions.kl_divergence(q0, prior))
    rng = np.random.default_rng(1)
    onset = float(np.quantile(0.5 * (0.3 * rng.normal(size=500)) ** 2, 0.99))
    assert ex.check_collapse_code(kl, onset)
    with pytest.raises(ex.ExerciseCheckError, match="KL of dimension 0"):
        ex.check_collapse_code(0.5 * (0.9 - 1 + math.log(0.9)), onset)  # sign of the log
    with pytest.raises(ex.ExerciseCheckError, match="onset"):
        ex.check_collapse_code(kl, 0.09)  # the variance of m, not the KL's 99th percentile


def _average_log_likelihood(x, W, sigma2):
    """Dense pPCA log-likelihood per image: −½[d log 2π + log|C| + tr(C⁻¹S)]."""
    d = x.shape[1]
    centred = x - x.mean(axis=0)
    S = centred.T @ centred / x.shape[0]
    C = W @ W.T + sigma2 * np.eye(d)
    _, logdet = np.linalg.slogdet(C)
    return -0.5 * (d * math.log(2 * math.pi) + logdet + np.trace(np.linalg.solve(C, S)))


def test_ppca_perturbation(images, spectrum):
    lam = spectrum.eigenvalues
    sigma2 = float(lam[10])
    W = spectrum.eigenvectors[:, :10] * np.sqrt(np.clip(lam[:10] - sigma2, 0, None))
    W[:, -1] = 0.0
    u = spectrum.eigenvectors[:, 9]
    base = _average_log_likelihood(images, W, sigma2)
    ratios, totals = {}, {}
    for h in (1e-1, 1e-2, 1e-3):
        moved = W.copy()
        moved[:, -1] = h * u
        predicted = 0.5 * h**2 * (lam[9] - sigma2) / sigma2**2
        ratios[h] = (_average_log_likelihood(images, moved, sigma2) - base) / predicted
        totals[h] = ratios[h] / images.shape[0]  # compared with the change of the *total*
    assert ex.check_ppca_perturbation(ratios)
    with pytest.raises(ex.ExerciseCheckError, match="far from one"):
        ex.check_ppca_perturbation(totals)
    with pytest.raises(ex.ExerciseCheckError, match="no ratio"):
        ex.check_ppca_perturbation({0.1: ratios[0.1]})


def test_ppca_subset():
    spectrum = ppca.spectrum_from_covariance(np.diag([3.0, 2.0, 0.1]))
    assert ex.check_ppca_subset(0.1, ppca.max_log_likelihood(spectrum, 1))
    with pytest.raises(ex.ExerciseCheckError, match="highest score"):
        ex.check_ppca_subset(3.0, ppca.max_log_likelihood(spectrum, 1))
    with pytest.raises(ex.ExerciseCheckError, match="not ℓ\\*\\(1\\)"):
        ex.check_ppca_subset(
            0.1, -0.5 * (3 * math.log(2 * math.pi) + math.log(0.1) + 2 * math.log(2.5) + 3)
        )


def test_lvae_gap(images):
    fit = ppca.fit(images, q=20)
    R, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(20, 20)))
    W = fit.W @ R
    gap = ppca.average_log_likelihood(images, W, fit.sigma2) - linear_vae.optimal_encoder_elbo(
        images, W, fit.sigma2
    )
    assert ex.check_lvae_gap(W, fit.sigma2, gap)
    assert ex.check_lvae_gap(fit.W, fit.sigma2, 0.0)  # R = I: zero gap
    with pytest.raises(ex.ExerciseCheckError, match="does not match"):
        ex.check_lvae_gap(W, fit.sigma2, 2 * gap)  # without the ½
    with pytest.raises(ex.ExerciseCheckError, match="never negative"):
        ex.check_lvae_gap(W, fit.sigma2, -gap)


def test_fixed_sigma2_counts(spectrum):
    lam = spectrum.eigenvalues
    first = ppca.collapsed_column_count(lam, 50, 1.0)
    second = ppca.collapsed_column_count(lam, 100, ppca.sigma2_mle(lam, 50))
    assert ex.check_fixed_sigma2_counts(first, second)
    with pytest.raises(ex.ExerciseCheckError, match="q = 100"):
        ex.check_fixed_sigma2_counts(first, 50)  # "the directions beyond q = 50 switch off"
    with pytest.raises(ex.ExerciseCheckError, match="σ² = 1"):
        ex.check_fixed_sigma2_counts(50 - first, second)  # active instead of collapsed


def test_selbo_decay(capsys):
    assert ex.check_selbo_decay(0.8, 0.05, 0.01)
    with pytest.raises(ex.ExerciseCheckError, match="closer to the optimum"):
        ex.check_selbo_decay(0.05, 0.8, 0.01)
    with pytest.raises(ex.ExerciseCheckError, match="negative"):
        ex.check_selbo_decay(0.8, -0.5, 0.01)
    # Runs stopped long before the floor (the fast preset): no verdict either way.
    assert ex.check_selbo_decay(570.8, 637.1, 570.6) is False
    assert "inconclusive" in capsys.readouterr().out


def test_lde_amortisation():
    encoder = {"linear": 0.0, "mlp": 0.3}
    decoder = {"linear": 0.02, "mlp": 0.1}
    total = {"linear": 0.02, "mlp": 0.4}
    assert ex.check_lde_amortisation(encoder, decoder, total)
    with pytest.raises(ex.ExerciseCheckError, match="add up"):
        ex.check_lde_amortisation(encoder, decoder, {"linear": 0.02, "mlp": 0.3})
    with pytest.raises(ex.ExerciseCheckError, match="encoder part of mlp is negative"):
        ex.check_lde_amortisation(
            {"linear": 0.0, "mlp": -0.3}, decoder, {"linear": 0.02, "mlp": -0.2}
        )


def test_logit_count(images):
    sigma2 = np.array([1.0, 0.1, 0.01])
    unit = covariance_eigenvalues(images)
    y = 0.05 + 0.9 * images
    logit = covariance_eigenvalues(np.log(y) - np.log1p(-y))
    counts_unit = linear_collapse_prediction(unit, sigma2, 200)
    counts_logit = linear_collapse_prediction(logit, sigma2, 200)
    assert ex.check_logit_count(counts_unit, counts_logit, logit[0] / unit[0])
    with pytest.raises(ex.ExerciseCheckError, match="logit pixels"):
        ex.check_logit_count(counts_unit, counts_unit, logit[0] / unit[0])
    with pytest.raises(ex.ExerciseCheckError, match="ratio"):
        ex.check_logit_count(counts_unit, counts_logit, unit[0] / logit[0])


def test_learned_sigma2_travel():
    assert ex.check_learned_sigma2_travel([1.0, 0.01], [0.3, 0.02], 2.0)
    with pytest.raises(ex.ExerciseCheckError, match="further"):
        ex.check_learned_sigma2_travel([1.0, 0.01], [1e-6, 0.02], 2.0)
    with pytest.raises(ex.ExerciseCheckError, match="positive"):
        ex.check_learned_sigma2_travel([1.0], [0.5], 0.0)


def test_beta_linear(spectrum):
    weighted = linear_beta_vae.train_linear_beta_vae(
        spectrum, 10, 0.5, 4.0, encoder="optimal", steps=200
    )
    plain = linear_beta_vae.train_linear_beta_vae(
        spectrum, 10, 2.0, 1.0, encoder="optimal", steps=200
    )
    answer = (weighted.squared_singular_values, plain.squared_singular_values)
    assert ex.check_beta_linear(*answer, weighted.objective, plain.objective)
    with pytest.raises(ex.ExerciseCheckError, match="beta-equivalence"):
        ex.check_beta_linear(*answer, weighted.objective, weighted.objective)
    with pytest.raises(ex.ExerciseCheckError, match="squared singular values"):
        ex.check_beta_linear(np.sqrt(answer[0]), answer[1], weighted.objective, plain.objective)


def test_beyond_rates():
    eigenvalues = np.array([6.0, 3.0, 3.0, 1.0, 0.5, 0.2])
    x, _ = linear_beta_vae.synthetic_data(eigenvalues, 400, seed=1)
    spectrum = ppca.data_spectrum(x)
    run = linear_beta_vae.train_linear_beta_vae(
        spectrum, 4, 0.5, 3.0, encoder="learned", steps=800, seed=1
    )
    assert ex.check_beyond_rates(run.singular_values, run.rates)
    without_beta = np.where(eigenvalues[:4] > 0.5, 0.5 * np.log(eigenvalues[:4] / 0.5), 0.0)
    with pytest.raises(ex.ExerciseCheckError, match="KLs"):
        ex.check_beyond_rates(run.singular_values, without_beta)
    with pytest.raises(ex.ExerciseCheckError, match="singular values"):
        ex.check_beyond_rates(run.singular_values**2, run.rates)


def test_effective_sigma2():
    answer = {
        n: loss_effective_sigma2(784, mse_reduction="sum", kl_reduction="batchmean", batch_size=n)
        for n in (2, 16, 128)
    }
    assert ex.check_effective_sigma2(answer)
    with pytest.raises(ex.ExerciseCheckError, match="batch 16"):
        ex.check_effective_sigma2({2: 0.25, 16: 1 / 16})


def test_beta_diagnosis(spectrum):
    fit = linear_beta_vae.train_linear_beta_vae(
        spectrum, 40, 1 / 8, 4.0, encoder="optimal", steps=100
    )
    measured = int(np.sum(fit.rates < 1e-3))
    effective = round(float(linear_collapse_prediction(spectrum.eigenvalues, 0.5, 40)) * 40)
    plain = round(float(linear_collapse_prediction(spectrum.eigenvalues, 1 / 8, 40)) * 40)
    assert effective != plain
    assert ex.check_beta_diagnosis(measured, effective, plain)
    with pytest.raises(ex.ExerciseCheckError, match="σ² alone"):
        ex.check_beta_diagnosis(measured, effective, effective)
    with pytest.raises(ex.ExerciseCheckError, match="measured"):
        ex.check_beta_diagnosis(plain, effective, plain)


def test_a_wrong_type_gets_a_clear_message():
    with pytest.raises(ex.ExerciseCheckError, match="must be a number"):
        ex.check_collapse_code("about 0.003", 0.3)


# ---------------------------------------------------------------------------------------------
# The book's exercises
# ---------------------------------------------------------------------------------------------

EXERCISE = re.compile(
    r"`{3,4}\{exercise(?:-start)?\}[^\n]*\n:label: (\S+)\n(?:`{4}\n)?(.*?)\n`{3,4}", re.S
)
TAGS = ("Warm-up", "Derivation", "Coding", "Open")


def _exercises():
    for path in sorted(BOOK.glob("*.md")):
        for match in EXERCISE.finditer(path.read_text(encoding="utf-8")):
            yield path.stem, match.group(1), " ".join(match.group(2).split())


# What each kind of exercise must state, so that a student can check an answer without the
# solution: what a correct result looks like (a number or a property, and where one exists a
# numerical check with named functions, "*Check numerically:*"), or for an open question what a
# good answer contains.
STATED_CHECK = {
    "Warm-up": "*A correct result",
    "Derivation": "*A correct result",
    "Coding": "*A correct result",
    "Open": "*A good answer",
}
PACKAGE_NAME = re.compile(r"`(lincollapse(?:\.\w+)+)")


def exercise_problems(label: str, body: str) -> list[str]:
    """What an exercise's text lacks: its tag, its stated check, and for coding exercises the
    functions it needs and the check function that judges the answer."""
    tag = re.match(r"\*(" + "|".join(TAGS) + r")\.\*", body)
    if not tag:
        return [f"{label} does not start with a tag *{'/'.join(TAGS)}.*"]
    problems = []
    marker = STATED_CHECK[tag.group(1)]
    statement = body.split(marker, 1)[1] if marker in body else ""
    if len(statement.split()) < 8:
        problems.append(
            f"{label} ({tag.group(1)}) does not say what a correct answer looks like: add a "
            f"paragraph starting with {marker}…* that states a number or a property"
        )
    if tag.group(1) == "Coding":
        if label not in ex.CHECKS:
            problems.append(
                f"{label} is a coding exercise without a check in lincollapse.exercises"
            )
        if "*Needs*" not in body or "*Check*" not in body:
            problems.append(f"{label} is a coding exercise without *Needs* and *Check*")
    return problems


def _resolve(dotted: str):
    """The object a dotted name such as ``lincollapse.ppca.fit`` refers to (AttributeError or
    ImportError when there is none)."""
    parts = dotted.split(".")
    for stop in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:stop]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[stop:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def test_the_exercise_conventions_catch_what_is_missing():
    good = "*Derivation.* Show that x. *A correct result:* the value is one at every point x."
    assert exercise_problems("ex-a", good) == []
    assert (
        "does not start with a tag" in exercise_problems("ex-a", good.replace("*Der", "*Ther"))[0]
    )
    bare = "*Derivation.* Show that x, and compare with the figure."
    assert "what a correct answer looks like" in exercise_problems("ex-a", bare)[0]
    marker_only = "*Derivation.* Show that x. *A correct result:* see above."
    assert "what a correct answer looks like" in exercise_problems("ex-a", marker_only)[0]
    open_question = "*Open.* Why? *A correct result:* the value is one at every point x."
    assert "*A good answer" in exercise_problems("ex-a", open_question)[0]
    coding = good.replace("*Derivation.*", "*Coding.*")
    assert len(exercise_problems("ex-not-in-checks", coding)) == 2
    with pytest.raises(AttributeError):
        _resolve("lincollapse.ppca.no_such_function")
    assert _resolve("lincollapse.ppca.DataSpectrum.numerical_rank")


def test_every_exercise_has_a_tag_and_a_stated_check():
    found = list(_exercises())
    assert len(found) > 30
    problems = [
        f"{chapter}: {p}" for chapter, label, body in found for p in exercise_problems(label, body)
    ]
    assert not problems, "\n".join(problems)


def test_every_package_name_an_exercise_gives_exists():
    names = {name for _, _, body in _exercises() for name in PACKAGE_NAME.findall(body)}
    assert len(names) > 40
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"exercises name functions that do not exist: {missing}"


def test_every_coding_exercise_names_its_check():
    found = {label: (chapter, body) for chapter, label, body in _exercises()}
    for label, check in ex.CHECKS.items():
        assert label in found, f"{check.__name__} checks {label}, which is not in the book"
        body = found[label][1]
        assert f"lincollapse.exercises.{check.__name__}" in body, f"{label} does not name its check"
