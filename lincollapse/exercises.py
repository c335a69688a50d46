"""Self-checks for the book's coding exercises.

Every coding exercise names the check that judges its answer. Call it on your numbers: a correct
answer prints a line starting with ✓ and returns ``True``; a wrong one raises
:class:`ExerciseCheckError` with a message that says *what* is wrong and where to look, without
giving the expected value away. The expected values are computed here from closed forms, with
the package's formulas (:mod:`lincollapse.gaussian`, :mod:`lincollapse.ppca`, …), on the book's
data (``load_mnist(1000, seed=0)``, pixels in [0, 1]); nothing is copied from a chapter's output.

==============================  ====================================
exercise                        check
==============================  ====================================
``ex-collapse-code``            :func:`check_collapse_code`
``ex-ppca-perturbation-code``   :func:`check_ppca_perturbation`
``ex-ppca-subset``              :func:`check_ppca_subset`
``ex-lvae-gap-code``            :func:`check_lvae_gap`
``ex-lvae-sigma-fixed``         :func:`check_fixed_sigma2_counts`
``ex-selbo-decay``              :func:`check_selbo_decay`
``ex-lde-amortisation``         :func:`check_lde_amortisation`
``ex-deep-logit-count``         :func:`check_logit_count`
``ex-deep-fast-code``           :func:`check_learned_sigma2_travel`
``ex-beta-linear-code``         :func:`check_beta_linear`
``ex-beyond-rate-code``         :func:`check_beyond_rates`
``ex-diagnosis-batch``          :func:`check_effective_sigma2`
``ex-diagnosis-beta-code``      :func:`check_beta_diagnosis`
==============================  ====================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from lincollapse import beta_elbo, collapse, data, gaussian, linear_beta_vae, linear_vae, ppca

__all__ = [
    "CHECKS",
    "ExerciseCheckError",
    "check_beta_diagnosis",
    "check_beta_linear",
    "check_beyond_rates",
    "check_collapse_code",
    "check_effective_sigma2",
    "check_fixed_sigma2_counts",
    "check_learned_sigma2_travel",
    "check_lde_amortisation",
    "check_logit_count",
    "check_lvae_gap",
    "check_ppca_perturbation",
    "check_ppca_subset",
    "check_selbo_decay",
]

D_MNIST = 784


class ExerciseCheckError(AssertionError):
    """An exercise's answer is wrong; the message says what to look at."""


def _fail(exercise: str, message: str) -> None:
    raise ExerciseCheckError(f"{exercise}: {message}")


def _passed(exercise: str, message: str) -> bool:
    print(f"✓ {exercise}: {message}")
    return True


def _number(value, exercise: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        _fail(exercise, f"{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        _fail(exercise, f"{name} must be finite, got {number!r}")
    return number


def _vector(values, exercise: str, name: str, size: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        _fail(exercise, f"{name} must be a sequence of numbers, got {values!r}")
    if size is not None and array.size != size:
        _fail(exercise, f"{name} needs {size} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        _fail(exercise, f"{name} contains a value that is not finite")
    return array


def _close(got: float, want: float, rtol: float, atol: float = 0.0) -> bool:
    return abs(got - want) <= atol + rtol * abs(want)


@functools.lru_cache(maxsize=2)
def _mnist_eigenvalues(n: int = 1000, seed: int = 0) -> np.ndarray:
    """Descending eigenvalues of the 1/N covariance of the book's images."""
    return data.covariance_eigenvalues(data.load_mnist(n, seed=seed).images)


# --------------------------------------------------------------------------------------------
# Posterior collapse
# --------------------------------------------------------------------------------------------


def check_collapse_code(kl_first_dimension: float, onset_second_dimension: float) -> bool:
    """``ex-collapse-code``: the exact KL of dimension 0, the ε above which dimension 1 collapses.

    Dimension 0 has m = 0 and s² = 0.9 at every point; dimension 1 has m ~ N(0, 0.3²), s² = 1,
    and is collapsed once ε exceeds the KL of 99 % of the points (δ = 0.01). The onset may come
    from a formula or from the 99th percentile of your sample (within 20 %).
    """
    name = "ex-collapse-code"
    kl = _number(kl_first_dimension, name, "kl_first_dimension")
    onset = _number(onset_second_dimension, name, "onset_second_dimension")
    exact = float(gaussian.kl_to_prior(0.0, 0.9))
    if not _close(kl, exact, rtol=1e-9, atol=1e-12):
        _fail(
            name,
            "the KL of dimension 0 is not the exact value; evaluate (collapse-kl-dim) "
            "with the mean and the variance of that dimension (it is the same at every "
            "point)",
        )
    z = NormalDist().inv_cdf(0.995)  # |m| below 0.3 z for 99 % of the points
    predicted = float(gaussian.kl_to_prior(0.3 * z, 1.0))
    if not _close(onset, predicted, rtol=0.2):
        _fail(
            name,
            "the onset for dimension 1 is off by more than 20 %; its KL is ½ m(x)², so "
            "find the value that 99 % of the points stay below (δ = 0.01), with "
            "m ~ N(0, 0.3²)",
        )
    return _passed(name, "the KL of dimension 0 and the onset of dimension 1 are right")


# --------------------------------------------------------------------------------------------
# Probabilistic PCA
# --------------------------------------------------------------------------------------------


def check_ppca_perturbation(ratios: Mapping[float, float]) -> bool:
    """``ex-ppca-perturbation-code``: exact / predicted change of the *average* log-likelihood.

    ``ratios`` maps each perturbation size h ∈ {1e-1, 1e-2, 1e-3} to the ratio of the exact
    change to the prediction (ppca-perturbation) for one image. The ratio must tend to one, with
    an error that shrinks like h².
    """
    name = "ex-ppca-perturbation-code"
    if not isinstance(ratios, Mapping):
        _fail(name, "pass a dict {h: exact change / predicted change}")
    sizes = (1e-1, 1e-2, 1e-3)
    found = {h: None for h in sizes}
    for key, value in ratios.items():
        for h in sizes:
            if _close(float(key), h, rtol=1e-9):
                found[h] = _number(value, name, f"ratio at h = {h:g}")
    missing = [f"{h:g}" for h, value in found.items() if value is None]
    if missing:
        _fail(name, f"no ratio for h = {', '.join(missing)}")
    errors = {h: abs(found[h] - 1.0) for h in sizes}
    if min(abs(r) for r in found.values()) < 0.5 or max(found.values()) > 2.0:
        _fail(
            name,
            "a ratio is far from one: compare the change of the *average* "
            "log-likelihood with the prediction for n = 1 (one image), "
            "not for N images",
        )
    if errors[1e-3] > 1e-3:
        _fail(
            name,
            "at h = 1e-3 the ratio should be within 1e-3 of one; check that the "
            "perturbed column lies along an unused eigenvector and that σ² is the same "
            "in both evaluations",
        )
    if not errors[1e-1] > errors[1e-2] > errors[1e-3] * 0.999:
        _fail(
            name,
            "the error of the prediction does not shrink with h; the neglected term is "
            "of order h⁴, so |ratio − 1| should fall with h",
        )
    return _passed(name, "the second-order prediction is confirmed and its error shrinks with h")


def check_ppca_subset(best_scoring_eigenvalue: float, maximum_log_likelihood: float) -> bool:
    """``ex-ppca-subset``: the kept eigenvalue that scores highest, and the true ℓ*(1).

    Eigenvalues (3, 2, 0.1), d = 3, q = 1; ``maximum_log_likelihood`` in nats per point.
    """
    name = "ex-ppca-subset"
    kept = _number(best_scoring_eigenvalue, name, "best_scoring_eigenvalue")
    value = _number(maximum_log_likelihood, name, "maximum_log_likelihood")
    eigenvalues = np.array([3.0, 2.0, 0.1])
    d, q = 3, 1

    def score(j: int) -> float:
        noise = float(np.delete(eigenvalues, j).mean())
        return -0.5 * (
            d * math.log(2 * math.pi) + math.log(eigenvalues[j]) + (d - q) * math.log(noise) + d
        )

    best = int(np.argmax([score(j) for j in range(d)]))
    if not _close(kept, eigenvalues[best], rtol=1e-9):
        _fail(
            name,
            "that is not the index set with the highest score; evaluate the score for "
            "each of the three choices of the kept eigenvalue",
        )
    truth = score(0)  # the only attainable choice whose noise stays below the kept eigenvalue
    if not _close(value, truth, rtol=1e-8, atol=1e-10):
        _fail(
            name,
            "the maximum log-likelihood is not ℓ*(1): only index sets whose kept "
            "eigenvalue exceeds the mean of the others give a real "
            "stationary point",
        )
    return _passed(name, "the shortcut's winner and the true maximum are right")


# --------------------------------------------------------------------------------------------
# The linear VAE
# --------------------------------------------------------------------------------------------


def check_lvae_gap(W: np.ndarray, sigma2: float, gap: float) -> bool:
    """``ex-lvae-gap-code``: the gap ℓ − L̄* (nats per image) of the decoder ``(W, sigma2)``."""
    name = "ex-lvae-gap-code"
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        _fail(name, f"W must be a (d, q) matrix, got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        _fail(name, "W contains a value that is not finite")
    noise = _number(sigma2, name, "sigma2")
    if noise <= 0:
        _fail(name, "sigma2 must be positive")
    value = _number(gap, name, "gap")
    truth = linear_vae.elbo_gap(W, noise)
    if value < -1e-9:
        _fail(name, "a gap ℓ − L̄* is never negative (Hadamard's inequality); check the sign")
    if not _close(value, truth, rtol=1e-6, atol=1e-9):
        _fail(
            name,
            "the gap does not match (lvae-elbo-gap) for this W and σ²; compute it both "
            "ways, in float64",
        )
    return _passed(name, "the gap agrees with (lvae-elbo-gap)")


def check_fixed_sigma2_counts(collapsed_at_sigma2_1: int, collapsed_at_q100: int) -> bool:
    """``ex-lvae-sigma-fixed``: collapsed columns for q = 50 at σ² = 1, and for q = 100 at
    σ² = σ²_MLE(50), on the book's 1000 images."""
    name = "ex-lvae-sigma-fixed"
    lam = _mnist_eigenvalues()
    first = ppca.collapsed_column_count(lam, 50, 1.0)
    second = ppca.collapsed_column_count(lam, 100, ppca.sigma2_mle(lam, 50))
    if int(collapsed_at_sigma2_1) != first:
        _fail(
            name,
            "the count at σ² = 1 and q = 50 is wrong; by (thm-lvae-global) it is the "
            "number of j ≤ q with λ_j ≤ σ²",
        )
    if int(collapsed_at_q100) != second:
        _fail(
            name,
            "the count at q = 100 is wrong; σ²_MLE(50) is the mean of all d − 50 "
            "discarded eigenvalues, zeros included",
        )
    return _passed(name, "both counts of collapsed columns are right")


# --------------------------------------------------------------------------------------------
# Training the linear VAE
# --------------------------------------------------------------------------------------------


def check_selbo_decay(constant_gap: float, decayed_gap: float, analytic_gap: float) -> bool:
    """``ex-selbo-decay``: final gaps ℓ*(q) − ELBO (nats per image) of the single-sample runs with a
    constant and with a decaying learning rate, and of the analytic run with the same seed.

    The comparison only means something once the constant-rate run has reached its noise floor,
    i.e. the analytic run ended much closer to the optimum (at most half its gap). Short runs
    (the ``fast`` preset) have not: the check then says so and returns ``False`` without judging.
    Otherwise the decay must lower the floor.
    """
    name = "ex-selbo-decay"
    constant = _number(constant_gap, name, "constant_gap")
    decayed = _number(decayed_gap, name, "decayed_gap")
    analytic = _number(analytic_gap, name, "analytic_gap")
    for label, value in (
        ("constant_gap", constant),
        ("decayed_gap", decayed),
        ("analytic_gap", analytic),
    ):
        if value < -1e-6:
            _fail(
                name,
                f"{label} is negative: no ELBO exceeds ℓ*(q); measure the gap as "
                "ℓ*(q) − ELBO with the analytic ELBO",
            )
    if not analytic <= 0.5 * constant:
        print(
            f"… {name}: inconclusive — the analytic run is about as far from the optimum as the "
            "single-sample one, so these runs stop before the noise floor; train longer "
            "(the book preset) to see what the decay does"
        )
        return False
    if not decayed < constant:
        _fail(
            name,
            "the decaying run should end closer to the optimum than the constant one; "
            "compare runs with the same seed and number of steps, and let the rate "
            "reach (nearly) zero at the end",
        )
    return _passed(name, "the decay lowers the floor: it is set by the learning rate")


def check_lde_amortisation(
    encoder_part: Mapping[str, float],
    decoder_part: Mapping[str, float],
    total_gap: Mapping[str, float],
) -> bool:
    """``ex-lde-amortisation``: per encoder family, L̄* − ELBO, ℓ*(q) − L̄* and ℓ*(q) − ELBO."""
    name = "ex-lde-amortisation"
    if not (
        isinstance(encoder_part, Mapping)
        and isinstance(decoder_part, Mapping)
        and isinstance(total_gap, Mapping)
    ):
        _fail(name, "pass three dicts keyed by encoder family")
    if not set(encoder_part) == set(decoder_part) == set(total_gap) or not encoder_part:
        _fail(name, "the three dicts must have the same encoder families as keys")
    for kind in encoder_part:
        enc = _number(encoder_part[kind], name, f"encoder part of {kind}")
        dec = _number(decoder_part[kind], name, f"decoder part of {kind}")
        total = _number(total_gap[kind], name, f"total gap of {kind}")
        if enc < -1e-6:
            _fail(
                name,
                f"the encoder part of {kind} is negative: the optimal linear encoder is "
                "the best encoder for a fixed decoder (thm-lde-best-encoder)",
            )
        if dec < -1e-6:
            _fail(name, f"the decoder part of {kind} is negative: no ELBO exceeds ℓ*(q)")
        if not _close(enc + dec, total, rtol=1e-6, atol=1e-6):
            _fail(
                name,
                f"for {kind} the two parts do not add up to the total gap; use the same "
                "trained ELBO and the same ℓ*(q) in all three",
            )
    return _passed(name, "both parts are non-negative and add up to each family's gap")


# --------------------------------------------------------------------------------------------
# Deep Gaussian VAEs
# --------------------------------------------------------------------------------------------


def check_logit_count(
    counts_unit: Sequence[float], counts_logit: Sequence[float], top_ratio: float
) -> bool:
    """``ex-deep-logit-count``: linear counts (fractions of q = 200) at σ² = 1, 0.1, 0.01 for
    pixels in [0, 1] and for logit pixels (α = 0.05), and λ₁(logit) / λ₁([0, 1])."""
    name = "ex-deep-logit-count"
    unit = _vector(counts_unit, name, "counts_unit", 3)
    logit = _vector(counts_logit, name, "counts_logit", 3)
    ratio = _number(top_ratio, name, "top_ratio")
    images = data.load_mnist(1000, seed=0).images
    y = 0.05 + 0.9 * images
    lam_unit = _mnist_eigenvalues()
    lam_logit = data.covariance_eigenvalues(np.log(y / (1.0 - y)))

    def count(lam: np.ndarray) -> np.ndarray:
        return collapse.linear_collapse_prediction(lam, np.array([1.0, 0.1, 0.01]), 200)

    if np.any(unit > 1) or np.any(logit > 1):
        _fail(name, "a linear count is a fraction of the q = 200 latents, at most 1")
    if not np.allclose(unit, count(lam_unit), atol=1e-9):
        _fail(
            name,
            "the counts for [0, 1] pixels are wrong: (deep-linear-count) with the "
            "eigenvalues of the 1/N covariance of the book's 1000 images",
        )
    if not np.allclose(logit, count(lam_logit), atol=1e-9):
        _fail(
            name,
            "the counts for logit pixels are wrong: transform each pixel with "
            "logit(α + (1 − 2α)x), α = 0.05, before taking the covariance",
        )
    if not _close(ratio, lam_logit[0] / lam_unit[0], rtol=1e-6):
        _fail(name, "the ratio of the largest eigenvalues is wrong")
    return _passed(
        name, "the linear counts on both pixel scales and the eigenvalue ratio are right"
    )


def check_learned_sigma2_travel(
    sigma2_init: Sequence[float], sigma2_final: Sequence[float], travel: float
) -> bool:
    """``ex-deep-fast-code``: initial and final learned σ² of each run and the schedule's travel
    Σ_t lr_t. No run can move log σ² by more than Adam's largest step (≈ 3.16 lr) per step."""
    name = "ex-deep-fast-code"
    start = _vector(sigma2_init, name, "sigma2_init")
    end = _vector(sigma2_final, name, "sigma2_final", start.size)
    distance = _number(travel, name, "travel")
    if np.any(start <= 0) or np.any(end <= 0):
        _fail(name, "σ² values must be positive")
    if distance <= 0:
        _fail(name, "the travel Σ_t lr_t of a schedule is positive")
    moved = np.abs(np.log(end / start))
    if np.any(moved > 3.2 * distance):
        _fail(
            name,
            "a run moved log σ² further than Adam can in this schedule; check that the "
            "travel sums the learning rate over all steps, schedule included, and that "
            "you compare log σ², not σ²",
        )
    return _passed(name, "the runs' travel in log σ² is within what the schedule allows")


# --------------------------------------------------------------------------------------------
# β and KL annealing
# --------------------------------------------------------------------------------------------


def check_beta_linear(
    weighted_squared_singular_values: Sequence[float],
    plain_squared_singular_values: Sequence[float],
    weighted_objective: float,
    plain_objective: float,
) -> bool:
    """``ex-beta-linear-code``: β = 4 at σ² = 1/2 and β = 1 at σ² = 2, q = 10, on the book's data.

    Squared singular values of both trained decoders (any order) and both objective values (nats
    per image). They must match max(0, λ_j − 2) and (beta-equivalence).
    """
    name = "ex-beta-linear-code"
    weighted = np.sort(_vector(weighted_squared_singular_values, name, "weighted", 10))[::-1]
    plain = np.sort(_vector(plain_squared_singular_values, name, "plain", 10))[::-1]
    value_weighted = _number(weighted_objective, name, "weighted_objective")
    value_plain = _number(plain_objective, name, "plain_objective")
    closed_form = linear_beta_vae.optimal_singular_values(_mnist_eigenvalues(), 10, 2.0) ** 2
    for label, values in (("β = 4, σ² = 1/2", weighted), ("β = 1, σ² = 2", plain)):
        if not np.allclose(values, closed_form, rtol=1e-3, atol=1e-3):
            _fail(
                name,
                f"the squared singular values of the {label} decoder do not match "
                "(beta-linear); train until the objective stops changing, on the book's "
                "1000 images in [0, 1]",
            )
    constant = beta_elbo.beta_elbo_constant(D_MNIST, sigma2=0.5, beta=4.0)
    if not _close(value_weighted, 4.0 * value_plain + constant, rtol=1e-5, atol=1e-3):
        _fail(
            name,
            "the objectives do not satisfy (beta-equivalence); the constant C depends "
            "on d, σ² and β",
        )
    return _passed(name, "both decoders sit on the closed form and the objectives agree")


# --------------------------------------------------------------------------------------------
# Beyond the paper
# --------------------------------------------------------------------------------------------


def check_beyond_rates(singular_values: Sequence[float], rates: Sequence[float]) -> bool:
    """``ex-beyond-rate-code``: λ = (6, 3, 3, 1, 0.5, 0.2), q = 4, σ² = 0.5, β = 3.

    Trained singular values ρ_j and per-latent KLs (nats), largest first or in any order.
    """
    name = "ex-beyond-rate-code"
    rho = np.sort(_vector(singular_values, name, "singular_values", 4))[::-1]
    kl = np.sort(_vector(rates, name, "rates", 4))[::-1]
    lam = np.array([6.0, 3.0, 3.0, 1.0, 0.5, 0.2])
    want_rho = linear_beta_vae.optimal_singular_values(lam, 4, sigma2=0.5, beta=3.0)
    want_kl = linear_beta_vae.optimal_rates(lam, 4, sigma2=0.5, beta=3.0)
    if not np.allclose(rho, want_rho, atol=1e-3):
        _fail(
            name,
            "the singular values do not match (beyond-beta-optimum); the water level is "
            "βσ², and the data's sample covariance must have exactly the "
            "chosen spectrum",
        )
    if not np.allclose(kl, want_kl, atol=1e-3):
        _fail(
            name,
            "the per-latent KLs do not match (beyond-beta-rate); average each latent's "
            "KL over the data",
        )
    return _passed(name, "singular values and rates follow reverse water-filling, tie included")


# --------------------------------------------------------------------------------------------
# Diagnosis
# --------------------------------------------------------------------------------------------


def check_effective_sigma2(sigma2_by_batch: Mapping[int, float]) -> bool:
    """``ex-diagnosis-batch``: effective σ² of ``mse_loss(sum) + kl.sum(1).mean()`` per batch."""
    name = "ex-diagnosis-batch"
    if not isinstance(sigma2_by_batch, Mapping) or not sigma2_by_batch:
        _fail(name, "pass a dict {batch size: effective σ²}")
    for n, value in sigma2_by_batch.items():
        size = int(n)
        if size < 1:
            _fail(name, f"batch sizes are positive, got {n!r}")
        got = _number(value, name, f"σ² for batch {size}")
        a, b = 1.0, 1.0 / size  # squared error summed over the batch, KL averaged over it
        if not _close(got, b / (2 * a), rtol=1e-9):
            _fail(
                name,
                f"the effective σ² for batch {size} is wrong; write the loss as "
                "a·Σ‖x − f‖² + b·Σ KL and use (beta-mse)",
            )
    return _passed(name, "the effective σ² of every batch size is right")


def check_beta_diagnosis(measured: int, count_effective: int, count_sigma2: int) -> bool:
    """``ex-diagnosis-beta-code``: β = 4, σ² = 1/8, q = 40 on the book's 1000 images.

    The measured number of collapsed latents, and the linear counts (numbers of latents, not
    fractions) at βσ² and at σ².
    """
    name = "ex-diagnosis-beta-code"
    lam = _mnist_eigenvalues()
    effective = ppca.collapsed_column_count(lam, 40, 4.0 / 8.0)
    plain = ppca.collapsed_column_count(lam, 40, 1.0 / 8.0)
    if int(count_effective) != effective:
        _fail(name, "the linear count at the effective noise is wrong; count j ≤ q with λ_j ≤ βσ²")
    if int(count_sigma2) != plain:
        _fail(name, "the linear count at σ² alone is wrong; count j ≤ q with λ_j ≤ σ²")
    if int(measured) != effective:
        _fail(
            name,
            "the measured count disagrees with the count at βσ²; train to convergence "
            "and count the latents whose average KL is below 10⁻³ nats",
        )
    return _passed(name, "the β-VAE collapses as the plain VAE at βσ² does, not as at σ²")


CHECKS = {
    "ex-collapse-code": check_collapse_code,
    "ex-ppca-perturbation-code": check_ppca_perturbation,
    "ex-ppca-subset": check_ppca_subset,
    "ex-lvae-gap-code": check_lvae_gap,
    "ex-lvae-sigma-fixed": check_fixed_sigma2_counts,
    "ex-selbo-decay": check_selbo_decay,
    "ex-lde-amortisation": check_lde_amortisation,
    "ex-deep-logit-count": check_logit_count,
    "ex-deep-fast-code": check_learned_sigma2_travel,
    "ex-beta-linear-code": check_beta_linear,
    "ex-beyond-rate-code": check_beyond_rates,
    "ex-diagnosis-batch": check_effective_sigma2,
    "ex-diagnosis-beta-code": check_beta_diagnosis,
}
"""Exercise label → its check."""
