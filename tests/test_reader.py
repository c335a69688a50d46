"""The reader preset: the book's configurations, shipped results read instead of training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lincollapse.experiments import load_all
from lincollapse.presets import ENV_VAR, current_preset, preset_banner
from lincollapse.reader import (
    READER_DIR,
    SHIP_COMMAND,
    book_config,
    reader_store,
    rerun_figures,
    result_arrays,
    result_from_arrays,
    shipped_or_compute,
)


def test_unset_preset_is_reader_and_make_targets_set_theirs(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert current_preset() == "reader"
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "LINCOLLAPSE_PRESET=$${LINCOLLAPSE_PRESET:-book}" in makefile
    assert "LINCOLLAPSE_PRESET=fast $(BIN)/python -m pytest" in makefile


def test_reader_config_is_the_book_config_field_for_field():
    for spec in load_all().values():
        if spec.config is None:
            continue
        reader, book = spec.config.for_preset("reader"), spec.config.for_preset("book")
        assert dataclasses.replace(reader, preset="book") == book, spec.name
        if "reader" not in spec.config.OVERRIDES:
            assert reader == book  # same cache keys: the reader computes exactly what book does


def test_result_arrays_round_trip():
    from lincollapse.experiments.stochastic_elbo import (
        StochasticELBOConfig,
        StochasticELBOResult,
        stochastic_vs_analytic,
    )

    config = StochasticELBOConfig.for_preset(
        "fast",
        seeds=(0, 1),
        steps=20,
        record_every=10,
        gradient_checkpoints=(0, 20),
        gradient_samples=4,
    )
    result = stochastic_vs_analytic(config)
    back = result_from_arrays(StochasticELBOResult, result_arrays(result), config=config)
    assert back.optimum == result.optimum and isinstance(back.optimum, float)
    assert set(back.elbo) == {"analytic", "sample"}
    for key in result.elbo:
        np.testing.assert_array_equal(back.elbo[key], result.elbo[key])
    np.testing.assert_array_equal(back.gradient.noise_norm, result.gradient.noise_norm)
    assert back.gradient.samples == 4
    assert back.table() == result.table()


def test_reader_figures_are_rerun_on_request():
    names = {spec.name for spec in rerun_figures("deep_vae")}
    assert {"collapse-vs-eps-fixed", "collapse-vs-eps-learned"} <= names
    assert not rerun_figures("ppca")  # the reader computes that chapter as the book does


def test_banner_says_preset_cost_and_how_to_change():
    text = preset_banner("reader", chapter="deep_vae")
    assert text.startswith("Preset: reader")
    assert "With the book preset: 9 min measured on 2 CPU core(s)" in text
    assert f"%env {ENV_VAR}=book" in text
    assert preset_banner("book") == preset_banner("book").splitlines()[0]  # one line


@pytest.mark.slow
def test_shipped_reader_results_are_current():
    """Fails when a results/reader/ entry is missing or stale: regenerate it then."""
    from lincollapse.deep_runs import MissingRunsError, computing_fingerprint, load_or_train
    from lincollapse.experiments import linear_decoder_encoders as lde
    from lincollapse.experiments import stochastic_elbo as se
    from lincollapse.experiments.deep import DeepVAEConfig
    from lincollapse.results_cache import source_fingerprint

    config = DeepVAEConfig.for_preset("reader")
    try:
        runs, _ = load_or_train(
            config,
            config.runs(),
            cache=reader_store(computing_fingerprint()),
            train_missing=False,
        )
    except MissingRunsError as error:
        pytest.fail(f"deep grid runs missing or stale in {READER_DIR}: {error}; {SHIP_COMMAND}")
    assert runs.steps[-1] == config.steps
    from lincollapse.experiments import beta, linear_vae

    result_types = {
        beta.MnistLinearBetaConfig: beta.MnistLinearBetaResult,
        se.StochasticELBOConfig: se.StochasticELBOResult,
        lde.EncoderComparisonConfig: lde.EncoderComparisonResult,
        linear_vae.LikelihoodVsLatentSizeConfig: linear_vae.TrainedLatentSizes,
        linear_vae.GramMatricesConfig: linear_vae.TrainedGramRun,
    }

    for config_type, modules in (
        (beta.MnistLinearBetaConfig, beta.LINEAR_BETA_MODULES),
        (se.StochasticELBOConfig, se.COMPUTING_MODULES),
        (lde.EncoderComparisonConfig, lde.COMPUTING_MODULES),
        (linear_vae.LikelihoodVsLatentSizeConfig, linear_vae.COMPUTING_MODULES),
        (linear_vae.GramMatricesConfig, linear_vae.COMPUTING_MODULES),
    ):
        store = reader_store(source_fingerprint(modules))
        reader = config_type.for_preset("reader")
        assert store.load(book_config(reader).as_dict()) is not None, (
            f"{config_type.__name__}: {SHIP_COMMAND}"
        )

        def never(config):
            raise AssertionError("the reader preset computed instead of reading")

        result, provenance = shipped_or_compute(reader, never, result_types[config_type], modules)
        assert "shipped in results/reader/" in provenance and result is not None


def test_annealing_reader_runs_are_the_long_runs_first_steps():
    from lincollapse.experiments.kl_annealing_runs import (
        AnnealingConfig,
        annealing_reference_path,
        book_runs_from_long,
    )

    config = AnnealingConfig.for_preset("reader")
    runs, provenance = book_runs_from_long(config)
    assert runs is not None, provenance
    with np.load(f"{annealing_reference_path('book')}.npz", allow_pickle=False) as raw:
        long = {k: raw[k] for k in ("steps", "thresholds", "warmup", "optimal", "seed")}
    row = int(np.flatnonzero(long["steps"] == config.steps)[0])
    assert runs.steps[-1] == config.steps and runs.steps.size == row + 1
    for r, spec in enumerate(runs.specs):
        column = np.flatnonzero(
            (long["warmup"] == spec.warmup)
            & (long["optimal"] == (spec.noise == "optimal"))
            & (long["seed"] == spec.seed)
        )
        assert column.size == 1
        np.testing.assert_array_equal(runs.thresholds[-1, r], long["thresholds"][row, column[0]])


def test_refingerprint_rekeys_entries_with_their_arrays_unchanged(tmp_path, monkeypatch):
    import lincollapse.reader as reader
    from lincollapse.results_cache import CacheWarning, ResultsCache

    monkeypatch.setattr(reader, "READER_DIR", tmp_path)
    arrays = {"elbo": np.array([-1.5, np.nan, 2.0**-40]), "steps": np.arange(4)}
    config = {"experiment": "Example", "n": 3}
    path = ResultsCache(tmp_path, fingerprint="old-code").save(config, arrays, {"seconds": 9})
    new = reader.current_fingerprints()["linear_beta"]
    with pytest.warns(CacheWarning, match="stale"):
        assert reader.reader_store(new).load(config) is None  # stale under the current code

    with pytest.raises(ValueError, match="does not name"):
        reader.refingerprint({"other": "linear_beta"}, "checked")
    with pytest.raises(ValueError, match="unknown kind"):
        reader.refingerprint({"old-code": "nonsense"}, "checked")

    assert reader.refingerprint({"old-code": "linear_beta"}, "checked bitwise") == [path]
    loaded, meta = reader.reader_store(new).load(config)
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()
    assert meta["fingerprint"] == new and meta["info"]["seconds"] == 9
    assert meta["info"]["refingerprinted"] == "checked bitwise" and meta["info"]["created"]


def test_refingerprint_refuses_an_entry_that_does_not_validate(tmp_path, monkeypatch):
    import lincollapse.reader as reader
    from lincollapse.results_cache import ResultsCache

    monkeypatch.setattr(reader, "READER_DIR", tmp_path)
    path = ResultsCache(tmp_path, fingerprint="old-code").save({"n": 1}, {"a": np.ones(2)})
    path.rename(tmp_path / "0123456789abcdef01234567.npz")  # under another configuration's key
    with pytest.raises(ValueError, match="does not validate"):
        reader.refingerprint({"old-code": "deep"}, "checked")
