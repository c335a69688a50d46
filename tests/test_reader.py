"""The reader preset: the book's configurations, shipped results read instead of training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lincollapse.experiments import load_all
from lincollapse.presets import ENV_VAR, chapter_cost, current_preset, preset_banner
from lincollapse.reader import (
    SHIP_COMMAND,
    expected_entries,
    rerun_figures,
    result_arrays,
    result_from_arrays,
    shipped_or_compute,
    shipped_problems,
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
    assert f"With the book preset: {chapter_cost('deep_vae', 'book')}." in text
    assert "measured on 2 CPU core(s)" in chapter_cost("deep_vae", "book")
    assert f"%env {ENV_VAR}=book" in text
    assert preset_banner("book") == preset_banner("book").splitlines()[0]  # one line


@pytest.mark.slow
def test_shipped_reader_results_are_current():
    """Fails when a results/reader/ entry is missing, invalid or stale by its behaviour probe:
    reship it then (the message names the command)."""
    from lincollapse.experiments import beta, beyond_the_paper, linear_vae
    from lincollapse.experiments import linear_decoder_encoders as lde
    from lincollapse.experiments import stochastic_elbo as se

    assert shipped_problems() == {}
    for config_type, result_type in (
        (beyond_the_paper.SyntheticLinearBetaConfig, beyond_the_paper.SyntheticLinearBetaResult),
        (beta.MnistLinearBetaConfig, beta.MnistLinearBetaResult),
        (se.StochasticELBOConfig, se.StochasticELBOResult),
        (lde.EncoderComparisonConfig, lde.EncoderComparisonResult),
        (linear_vae.LikelihoodVsLatentSizeConfig, linear_vae.TrainedLatentSizes),
        (linear_vae.GramMatricesConfig, linear_vae.TrainedGramRun),
    ):

        def never(config):
            raise AssertionError("the reader preset computed instead of reading")

        reader = config_type.for_preset("reader")
        result, provenance = shipped_or_compute(reader, never, result_type)
        assert "shipped in results/reader/" in provenance and result is not None


def _moved(function):
    """``function`` as if its code had moved to another module: same behaviour."""

    def moved(*args, **kwargs):
        return function(*args, **kwargs)

    return moved


def _scaled(function, name, factor=1.001):
    """``function`` with its argument ``name`` (given or default) scaled by ``factor``, or with
    its value scaled when ``name`` is ``None``: a 0.1 % change of behaviour."""
    import inspect

    signature = inspect.signature(function)

    def changed(*args, **kwargs):
        if name is None:
            return function(*args, **kwargs) * factor
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        bound.arguments[name] *= factor
        return function(*bound.args, **bound.kwargs)

    return changed


@pytest.mark.slow
def test_a_code_move_keeps_every_shipped_result_current(monkeypatch):
    """Source text that changes (another fingerprint, functions living elsewhere) with the same
    behaviour leaves every entry current: nothing in results/reader/ is keyed on source text."""
    import lincollapse.results_cache as results_cache
    from lincollapse import deep_runs, deep_vae, linear_vae_training
    from lincollapse.experiments import beta, gap_curves, linear_vae

    monkeypatch.setattr(results_cache, "source_fingerprint", lambda *a, **k: "moved-code")
    monkeypatch.setattr(deep_runs, "computing_fingerprint", lambda: "moved-code")
    monkeypatch.setattr(gap_curves, "train_vae", _moved(gap_curves.train_vae))
    monkeypatch.setattr(linear_vae_training, "ascend_elbo", _moved(linear_vae_training.ascend_elbo))
    monkeypatch.setattr(deep_vae, "kl_from_logvar", _moved(deep_vae.kl_from_logvar))
    monkeypatch.setattr(beta, "train_linear_beta_vae", _moved(beta.train_linear_beta_vae))
    linear_vae._ascend.cache_clear()
    try:
        assert shipped_problems() == {}
    finally:
        linear_vae._ascend.cache_clear()


@pytest.mark.parametrize(
    "name, module, attribute, argument, what",
    [
        ("stochastic", "lincollapse.experiments.gap_curves", "train_vae", "lr", "lr"),
        ("gram", "lincollapse.linear_vae_training", "ascend_elbo", "init_scale", "init"),
        ("linear-beta", "lincollapse.experiments.beta", "train_linear_beta_vae", "sigma2", "σ²"),
        ("deep", "lincollapse.deep_vae", "kl_from_logvar", None, "KL term"),
    ],
)
def test_a_behaviour_change_makes_a_shipped_result_stale(
    monkeypatch, name, module, attribute, argument, what
):
    """A 0.1 % change of a learning rate, an initial scale, the noise or the KL term makes the
    entry stale (not used), with a message that names the array and the command to reship."""
    import importlib

    from lincollapse.experiments import linear_vae
    from lincollapse.results_cache import CacheWarning

    key, store = expected_entries(name)[0]
    owner = importlib.import_module(module)
    linear_vae._ascend.cache_clear()
    monkeypatch.setattr(owner, attribute, _scaled(getattr(owner, attribute), argument))
    try:
        with pytest.warns(CacheWarning, match="stale: the code now computes different") as caught:
            assert store.load(key) is None, what
    finally:
        linear_vae._ascend.cache_clear()
    assert any(f"{SHIP_COMMAND} {name}" in str(w.message) for w in caught)


def _toy_store(directory, scale=1.0):
    from lincollapse.reader import ShippedResults

    return ShippedResults("toy", lambda key: {"elbo": np.arange(3.0) * key["n"] * scale}, directory)


def test_probes_are_stored_with_the_entry_and_replayed_on_load(tmp_path):
    from lincollapse.results_cache import CacheWarning

    arrays = {"w": np.array([1.5, np.nan]), "steps": np.arange(4)}
    path = _toy_store(tmp_path).save({"n": 2}, arrays, {"seconds": 3})
    with np.load(path) as raw:
        np.testing.assert_array_equal(raw["probe_elbo"], [0.0, 2.0, 4.0])
    loaded, meta = _toy_store(tmp_path).load({"n": 2})
    assert set(loaded) == set(arrays) and meta["fingerprint"] == "behaviour-probe"
    # the same entry, read by code whose probe now differs by 1e-5 relative: stale
    with pytest.warns(CacheWarning, match=r"different 'elbo'.*reship it: .* ship toy"):
        assert _toy_store(tmp_path, scale=1 + 1e-5).load({"n": 2}) is None
    assert _toy_store(tmp_path, scale=1 + 1e-12).load({"n": 2}) is not None  # round-off passes


def test_a_corrupted_or_missing_probe_is_reported(tmp_path):
    import zipfile

    from lincollapse.results_cache import CacheWarning, ResultsCache

    store = _toy_store(tmp_path)
    # an entry whose probe array was edited (checksums renewed): stale by behaviour
    path = ResultsCache(tmp_path, "behaviour-probe").save(
        {"n": 2}, {"w": np.ones(2), "probe_elbo": np.array([0.0, 2.0, 4.001])}
    )
    with pytest.warns(CacheWarning, match="stale: the code now computes different 'elbo'"):
        assert store.load({"n": 2}) is None
    # an entry without a probe
    ResultsCache(tmp_path, "behaviour-probe").save({"n": 2}, {"w": np.ones(2)})
    with pytest.warns(CacheWarning, match="has no behaviour probe; reship it"):
        assert store.load({"n": 2}) is None
    # a probe array garbled on disk: its checksum fails
    store.save({"n": 2}, {"w": np.ones(2)})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    raw = bytearray(members["probe_elbo.npy"])
    raw[-1] ^= 0x01
    members["probe_elbo.npy"] = bytes(raw)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.warns(CacheWarning, match="checksum mismatch in array 'probe_elbo'"):
        assert store.load({"n": 2}) is None
    # an entry keyed by a source fingerprint (written before probes)
    ResultsCache(tmp_path, "0123456789abcdef").save({"n": 2}, {"w": np.ones(2)})
    with pytest.warns(CacheWarning, match="keyed by the source fingerprint 0123456789abcdef"):
        assert store.load({"n": 2}) is None


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


def _stamping_setup(tmp_path, monkeypatch):
    """``results/reader/`` in ``tmp_path`` holding one kind, ``toy``, of one entry."""
    import lincollapse.reader as reader

    monkeypatch.setattr(reader, "READER_DIR", tmp_path)
    monkeypatch.setattr(reader, "SHIPPED", ("toy",))
    monkeypatch.setattr(reader, "expected_entries", lambda name: [({"n": 2}, _toy_store(tmp_path))])
    return reader


def test_stamp_probes_converts_entries_keyed_by_source_text(tmp_path, monkeypatch):
    from lincollapse.results_cache import ResultsCache, source_fingerprint

    reader = _stamping_setup(tmp_path, monkeypatch)
    modules = ["lincollapse.collapse"]
    arrays = {"elbo": np.array([-1.5, np.nan, 2.0**-40]), "steps": np.arange(4)}
    legacy = ResultsCache(tmp_path, source_fingerprint(modules))
    path = legacy.save({"n": 2}, arrays, {"seconds": 9})
    created = legacy.load({"n": 2})[1]["created"]

    with pytest.raises(ValueError, match="unknown kind"):
        reader.stamp_probes({"nonsense": modules}, "checked")
    with pytest.raises(ValueError, match="does not validate under the source fingerprint"):
        reader.stamp_probes({"toy": ["lincollapse.gaussian"]}, "checked")  # other code
    (tmp_path / "0123456789abcdef01234567.npz").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="not an entry of any shipped kind"):
        reader.stamp_probes({"toy": modules}, "checked")
    (tmp_path / "0123456789abcdef01234567.npz").unlink()

    assert reader.stamp_probes({"toy": modules}, "stamped after a check") == [path]
    loaded, meta = _toy_store(tmp_path).load({"n": 2})
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()
    assert meta["info"] == {
        "seconds": 9,
        "created": created,
        "probe_stamped": "stamped after a check",
    }
    assert reader.stamp_probes({}, "again") == []  # current entries are left as they are
