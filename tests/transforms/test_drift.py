"""transforms/drift.py on plain figures: bins, quantiles, PSI, the verdicts and their bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transforms import drift
from transforms.drift import (
    DRIFT,
    LENGTH_BIN_EDGES,
    OK,
    OOV_RATE,
    PREDICTED_CLASS,
    TOKEN_LENGTH,
    UNAVAILABLE,
    WARN,
)


def preprocess_stats(lengths, oov_rate=0.01, labels=None) -> dict:
    """The stats.json keys a training profile reads, for texts of these token lengths."""
    values, counts = np.unique(lengths, return_counts=True)
    exact = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return {
        "rows_written": {
            "train": int(len(lengths) * 0.8),
            "eval": len(lengths) - int(len(lengths) * 0.8),
        },
        "label_counts": {"train": labels or {"neg": 400, "pos": 400}, "eval": {"neg": 1}},
        "token_length_histogram": {
            "bin_edges": list(LENGTH_BIN_EDGES),
            "counts": drift.bin_length_histogram(exact),
        },
        "oov_rate": oov_rate,
    }


def scored(lengths, oov_tokens=0, classes=None) -> dict:
    tokens = {
        "rows": len(lengths),
        "length_counts": drift.length_histogram(np.asarray(lengths)),
        "window_tokens": int(np.minimum(lengths, 100).sum()),
        "oov_tokens": oov_tokens,
    }
    classes = classes or {"neg": len(lengths) // 2, "pos": len(lengths) - len(lengths) // 2}
    return drift.scoring_profile(tokens, len(lengths), classes, multi_label=False)


RNG = np.random.default_rng(0)
TRAIN_LENGTHS = RNG.integers(5, 40, size=1000)


def test_bins_hold_lengths_from_their_lower_edge_up_to_the_next():
    counts = drift.length_histogram(np.array([0, 1, 3, 4, 5, 6, 8191, 8192, 10**6]))
    assert len(counts) == len(LENGTH_BIN_EDGES)
    assert counts[:6].tolist() == [1, 1, 0, 1, 2, 1]  # 0 | 1 | 2 | 3 | 4-5 | 6-7
    assert counts[-2:].tolist() == [1, 2]  # 6144-8191 | 8192 and up
    exact = {0: 1, 1: 1, 3: 1, 4: 1, 5: 1, 6: 1, 8191: 1, 8192: 1, 10**6: 1}
    assert drift.bin_length_histogram(exact) == counts.tolist()
    assert drift.bin_length_histogram({str(k): v for k, v in exact.items()}) == counts.tolist()


def test_quantiles_interpolate_inside_a_bin_and_stop_at_the_open_last_one():
    counts = drift.length_histogram(np.arange(1, 1001))
    q = drift.histogram_quantiles(counts)
    assert set(q) == {"p50", "p90", "p99"}
    assert abs(q["p50"] - 500) < 20 and abs(q["p90"] - 900) < 40 and abs(q["p99"] - 990) < 40
    assert drift.histogram_quantiles(drift.length_histogram([9000] * 10))["p50"] == 8192
    assert drift.histogram_quantiles([0] * len(LENGTH_BIN_EDGES)) == {}


def test_psi_is_zero_for_identical_shares_and_large_for_disjoint_ones():
    assert drift.psi([10, 20, 30], [1, 2, 3]) == 0.0
    disjoint = drift.psi([100, 0], [0, 100])
    # 2 * (1 - eps) * ln(1 / eps) with eps = PSI_EPSILON
    assert disjoint == pytest.approx(2 * (1 - 1e-4) * np.log(1e4), rel=1e-5)
    assert drift.psi([0, 0], [1, 2]) is None
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])


def test_thresholds_decide_ok_warn_and_drift():
    assert drift._status(0.099, drift.PSI_WARN, drift.PSI_DRIFT, inclusive=True) == OK
    assert drift._status(0.1, drift.PSI_WARN, drift.PSI_DRIFT, inclusive=True) == WARN
    assert drift._status(0.25, drift.PSI_WARN, drift.PSI_DRIFT, inclusive=True) == DRIFT
    training = drift.training_profile(preprocess_stats(TRAIN_LENGTHS, oov_rate=0.01), False)
    for oov, status in ((0.02, OK), (0.04, WARN), (0.07, DRIFT)):
        lengths = TRAIN_LENGTHS[:500]
        window = int(lengths.sum())
        result = drift.compare(training, scored(lengths, oov_tokens=round(oov * window)))
        assert result["measures"][OOV_RATE]["status"] == status, oov


def test_a_sample_of_the_same_data_does_not_drift():
    training = drift.training_profile(preprocess_stats(TRAIN_LENGTHS), multi_label=False)
    result = drift.compare(training, scored(RNG.integers(5, 40, size=300), oov_tokens=30))
    assert result["available"] and not result["drifted"] and result["warnings"] == []
    statuses = {name: m["status"] for name, m in result["measures"].items()}
    assert statuses == {TOKEN_LENGTH: OK, PREDICTED_CLASS: OK, OOV_RATE: OK}


def test_longer_texts_and_another_class_mix_drift_with_one_warning_line_each():
    training = drift.training_profile(preprocess_stats(TRAIN_LENGTHS), multi_label=False)
    lengths = RNG.integers(200, 900, size=300)
    result = drift.compare(training, scored(lengths, classes={"neg": 290, "pos": 10}))
    assert result["drifted"]
    m = result["measures"][TOKEN_LENGTH]
    assert m["status"] == DRIFT and m["value"] > 1
    assert m["scored"]["quantiles"]["p50"] > 100 > m["training"]["quantiles"]["p50"]
    assert m["bin_edges"] == list(LENGTH_BIN_EDGES) and sum(m["scored"]["counts"]) == 300
    assert result["measures"][PREDICTED_CLASS]["status"] == DRIFT
    assert result["measures"][PREDICTED_CLASS]["scored"] == {"neg": 0.966667, "pos": 0.033333}
    assert len(result["warnings"]) == 2
    assert all("\n" not in w for w in result["warnings"])
    assert result["warnings"][0].startswith("token-length distribution: population stability")


def test_missing_token_figures_and_few_rows_are_unavailable_not_drift():
    training = drift.training_profile(preprocess_stats(TRAIN_LENGTHS), multi_label=False)
    no_tokens = drift.scoring_profile({}, 500, {"neg": 250, "pos": 250}, multi_label=False)
    result = drift.compare(training, no_tokens)
    assert result["unavailable"] == [OOV_RATE, TOKEN_LENGTH]
    assert "no token-length histogram" in result["measures"][TOKEN_LENGTH]["reason"]
    assert result["measures"][PREDICTED_CLASS]["status"] == OK and not result["drifted"]

    few = drift.compare(training, scored(np.array([500] * 10)))
    assert few["measures"][TOKEN_LENGTH]["status"] == UNAVAILABLE
    assert few["measures"][TOKEN_LENGTH]["value"] > 1  # reported all the same
    assert "fewer than 50 rows" in few["measures"][TOKEN_LENGTH]["reason"]

    old_stats = preprocess_stats(TRAIN_LENGTHS)
    del old_stats["token_length_histogram"]
    old = drift.training_profile(old_stats, multi_label=False)
    assert old["token_length_histogram"] is None and old["token_length_quantiles"] is None
    assert drift.compare(old, scored(TRAIN_LENGTHS))["unavailable"] == [TOKEN_LENGTH]
    assert drift.compare(None, no_tokens) == {
        "available": False,
        "reason": "the model directory has no training profile",
    }


def test_profiles_and_comparisons_serialize_to_the_same_bytes_every_time():
    def once():
        training = drift.training_profile(preprocess_stats(TRAIN_LENGTHS), multi_label=False)
        profile = scored(np.arange(3, 300), oov_tokens=123, classes={"pos": 7, "neg": 290})
        return json.dumps(
            {"t": training, "p": profile, "d": drift.compare(training, profile)}, sort_keys=True
        )

    first = once()
    assert first == once()
    assert "NaN" not in first and "Infinity" not in first
    assert json.loads(first)["p"]["oov_rate"] == round(
        123 / int(np.minimum(np.arange(3, 300), 100).sum()), 6
    )
