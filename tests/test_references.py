"""Shipped references: behaviour probes decide staleness, not source text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lincollapse.references import (
    PROBE_RTOL,
    load_shipped,
    save_shipped,
    shipped_provenance,
    stamp_behaviour,
    verify_behaviour,
)
from lincollapse.results_cache import ReferenceResultError, save_reference

CONFIG = {"experiment": "toy", "steps": 3}
ARRAYS = {"steps": np.arange(3), "fraction": np.array([0.1, 0.5, 0.9])}


def probe(scale: float = 1.0):
    """A stand-in for a replay of a run's first steps."""
    return lambda: {"elbo": scale * np.array([-3.0, -2.0, -1.5]), "sigma2": np.ones(3)}


def test_round_trip_and_probe_hidden_from_readers(tmp_path):
    stem = tmp_path / "toy"
    save_shipped(stem, CONFIG, ARRAYS, probe(), {"command": "make toy", "seconds": 60.0})
    arrays, meta = load_shipped(stem, CONFIG)
    assert set(arrays) == set(ARRAYS)  # the probe arrays stay inside the reference
    assert meta["behaviour"]["rtol"] == PROBE_RTOL and "stamped" not in meta["behaviour"]
    assert verify_behaviour(stem, probe())["info"]["command"] == "make toy"
    assert "make toy" in shipped_provenance(stem, meta) and "1 min" in shipped_provenance(
        stem, meta
    )


def test_changed_behaviour_is_stale_and_round_off_is_not(tmp_path):
    stem = tmp_path / "toy"
    save_shipped(stem, CONFIG, ARRAYS, probe(), {"command": "make toy"})
    verify_behaviour(stem, probe(1.0 + 1e-12))  # round-off: current
    with pytest.raises(ReferenceResultError, match=r"stale.*'elbo'.*make toy"):
        verify_behaviour(stem, probe(1.001), command="make toy")


def test_probe_must_record_the_same_arrays(tmp_path):
    stem = tmp_path / "toy"
    save_shipped(stem, CONFIG, ARRAYS, probe(), {})
    with pytest.raises(ReferenceResultError, match="probe records"):
        verify_behaviour(stem, lambda: {"elbo": np.zeros(3)})


def test_reference_without_probe_is_stale_until_stamped(tmp_path):
    stem = tmp_path / "old"
    save_reference(stem, CONFIG, ARRAYS, "source-hash", {"command": "make old"})
    created = json.loads(stem.with_suffix(".json").read_text())["created"]
    with pytest.raises(ReferenceResultError, match="no behaviour probe"):
        verify_behaviour(stem, probe())
    stamp_behaviour(stem, probe())
    arrays, meta = load_shipped(stem, CONFIG)
    assert meta["created"] == created and meta["info"]["command"] == "make old"
    assert "stamped" in meta["behaviour"] and "probe was added" in shipped_provenance(stem, meta)
    np.testing.assert_array_equal(arrays["fraction"], ARRAYS["fraction"])
    verify_behaviour(stem, probe())
    # a tampered probe array is caught by the checksums
    with np.load(stem.with_suffix(".npz")) as archive:
        stored = {k: archive[k] for k in archive.files}
    stored["probe_elbo"] = stored["probe_elbo"] + 1
    np.savez(stem.with_suffix(".npz"), **stored)
    with pytest.raises(ReferenceResultError, match="checksum"):
        load_shipped(stem, CONFIG)
