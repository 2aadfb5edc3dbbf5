"""Drift between a model's training data and the data it scores: profiles, measures, verdicts.

A *profile* describes a body of text as the model saw it: rows, a histogram of token lengths over
the fixed bins `LENGTH_BIN_EDGES`, three quantiles interpolated from it, the OOV rate (OOV ids /
non-padding ids inside the `sequence_length` window, preprocess's definition) and the class
counts (training: the train split's labels; scoring: the predicted classes, every predicted class
counted in multi-label). `training_profile` builds one from preprocess's stats.json (train writes
it to the model directory as training_profile.json); `scoring_profile` from the score graph's
summed per-batch figures. `compare` holds a scoring profile against the training one with three
measures (population stability index of the token lengths and of the class mix, the OOV rate's
increase in points) and the thresholds below, and says ok / warn / drift per measure. This module
is pure numpy on plain dicts: it reads and writes nothing, logs nothing and decides no exit code
(pipeline/score.py does). Its floats are rounded (`DIGITS`) so stats.json keeps its bytes on a
rerun.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from transforms.contracts import TRAIN

# Lower edges of the token-length bins: bin i holds lengths in [edge_i, edge_i+1), the last bin
# every length from 8192 up. Single tokens up to 4, then half-octaves (x1.5, x1.33 alternately),
# so short texts are told apart and a doubling of the length always crosses at least two bins.
LENGTH_BIN_EDGES = (
    0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
    2048, 3072, 4096, 6144, 8192,
)  # fmt: skip
QUANTILES = (0.5, 0.9, 0.99)

# Population stability index, sum((q - p) * ln(q / p)) over bins or classes, p the training
# shares and q the scored ones. The usual reading: < 0.1 no shift, 0.1-0.25 a moderate shift,
# >= 0.25 a major one. A share of 0 is taken as PSI_EPSILON (without renormalising), so an empty
# bin adds a finite amount: a bin holding 1% on one side only adds about 0.046.
PSI_EPSILON = 1e-4
PSI_WARN = 0.1
PSI_DRIFT = 0.25
# Below this many rows on either side a PSI is mostly sampling noise: it is reported, but its
# status is "unavailable" (neither a warning nor drift).
PSI_MIN_ROWS = 50
# OOV rate: the scored rate minus the training rate, in absolute points (0.03 = 3 points more
# of the tokens the model saw are unknown to it). Strictly above these: warn, drift.
OOV_INCREASE_WARN = 0.02
OOV_INCREASE_DRIFT = 0.05

DIGITS = 6  # floats in profiles and comparisons
OK, WARN, DRIFT, UNAVAILABLE = "ok", "warn", "drift", "unavailable"
TOKEN_LENGTH, PREDICTED_CLASS, OOV_RATE = "token_length", "predicted_class", "oov_rate"


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def length_histogram(lengths: np.ndarray) -> np.ndarray:
    """Rows per `LENGTH_BIN_EDGES` bin of an array of token counts (int64[len(edges)])."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bins = np.searchsorted(LENGTH_BIN_EDGES, lengths, side="right") - 1
    return np.bincount(bins, minlength=len(LENGTH_BIN_EDGES)).astype(np.int64)


def bin_length_histogram(exact: Mapping) -> list[int]:
    """preprocess's exact {tokens: rows} histogram (int or str keys) -> rows per bin."""
    counts = np.zeros(len(LENGTH_BIN_EDGES), dtype=np.int64)
    if exact:
        lengths = np.array([int(k) for k in exact], dtype=np.int64)
        rows = np.array(list(exact.values()), dtype=np.int64)
        bins = np.searchsorted(LENGTH_BIN_EDGES, lengths, side="right") - 1
        np.add.at(counts, bins, rows)
    return counts.tolist()


def histogram_quantiles(counts, qs=QUANTILES) -> dict[str, float]:
    """Quantiles of token length from binned counts, interpolated linearly inside a bin
    ({"p50": ..}, to a tenth of a token); the open last bin gives its lower edge. {} for an
    empty histogram. Approximate by design: both profiles are binned the same way."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return {}
    cum = np.cumsum(counts)
    edges = np.array([*LENGTH_BIN_EDGES, LENGTH_BIN_EDGES[-1]], dtype=np.float64)
    out = {}
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(counts) - 1)
        before = cum[i] - counts[i]
        fraction = (target - before) / counts[i] if counts[i] else 0.0
        value = edges[i] + fraction * (edges[i + 1] - edges[i])
        out[f"p{round(q * 100)}"] = round(float(value), 1)  # tokens: a tenth is plenty
    return out


def psi(expected, actual) -> float | None:
    """Population stability index of two count vectors over the same bins (expected: the
    training side); None when either side counts nothing."""
    p, q = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"psi needs counts over the same bins, got {p.shape} and {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p = np.maximum(p / p.sum(), PSI_EPSILON)
    q = np.maximum(q / q.sum(), PSI_EPSILON)
    return _round(np.sum((q - p) * np.log(q / p)))


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: _round(v / total) if total else 0.0 for k, v in sorted(counts.items())}


def _profile(
    rows: int,
    multi_label: bool,
    class_counts: Mapping[str, int],
    length_counts,
    oov_rate: float | None,
) -> dict:
    histogram = None
    if length_counts is not None:
        histogram = {"bin_edges": list(LENGTH_BIN_EDGES), "counts": [int(c) for c in length_counts]}
    return {
        "rows": int(rows),
        "multi_label": bool(multi_label),
        "class_counts": {str(k): int(v) for k, v in sorted(class_counts.items())},
        "token_length_histogram": histogram,
        "token_length_quantiles": histogram_quantiles(length_counts)
        if length_counts is not None
        else None,
        "oov_rate": None if oov_rate is None else _round(oov_rate),
    }


def training_profile(stats: Mapping, multi_label: bool) -> dict:
    """The profile of a preprocess output, from its stats.json: token lengths and OOV rate over
    both splits (what the transform saw), class counts of the train split (what the model fitted).
    An output written before stats.json had `token_length_histogram` gives no lengths."""
    histogram = stats.get("token_length_histogram") or {}
    counts = histogram.get("counts")
    if counts is not None and list(histogram.get("bin_edges", [])) != list(LENGTH_BIN_EDGES):
        counts = None  # binned differently: not comparable
    return _profile(
        rows=sum((stats.get("rows_written") or {}).values()),
        multi_label=multi_label,
        class_counts=(stats.get("label_counts") or {}).get(TRAIN, {}),
        length_counts=counts,
        oov_rate=stats.get("oov_rate"),
    )


def scoring_profile(tokens: Mapping | None, rows: int, class_counts: Mapping, multi_label: bool):
    """The profile of scored rows: `tokens` is the sum of the scorer's per-batch figures
    ({"rows", "length_counts", "window_tokens", "oov_tokens"}; None or {} when the model's
    signature has no profile outputs), `class_counts` the predicted classes counted."""
    length_counts, oov_rate = None, None
    if tokens and tokens.get("rows"):
        length_counts = np.asarray(tokens["length_counts"], np.int64)
        length_counts = np.pad(length_counts, (0, len(LENGTH_BIN_EDGES) - len(length_counts)))
        window = int(tokens.get("window_tokens", 0))
        oov_rate = int(tokens.get("oov_tokens", 0)) / window if window else 0.0
    return _profile(rows, multi_label, class_counts, length_counts, oov_rate)


def _status(value: float, warn: float, drift: float, inclusive: bool) -> str:
    if (value >= drift) if inclusive else (value > drift):
        return DRIFT
    if (value >= warn) if inclusive else (value > warn):
        return WARN
    return OK


def _unavailable(measure: dict, reason: str) -> dict:
    return {**measure, "status": UNAVAILABLE, "reason": reason}


def _psi_measure(training_counts, scored_counts, training_rows: int, scored_rows: int) -> dict:
    value = psi(training_counts, scored_counts)
    measure = {
        "measure": "population stability index",
        "value": value,
        "warn_at": PSI_WARN,
        "drift_at": PSI_DRIFT,
    }
    if value is None:
        return _unavailable(measure, "one side has no rows")
    if min(training_rows, scored_rows) < PSI_MIN_ROWS:
        reason = (
            f"fewer than {PSI_MIN_ROWS} rows on one side (training {training_rows}, scored "
            f"{scored_rows}): too few for a PSI"
        )
        return _unavailable(measure, reason)
    return {**measure, "status": _status(value, PSI_WARN, PSI_DRIFT, inclusive=True)}


def _token_length(training: Mapping, scored: Mapping) -> dict:
    th, sh = training.get("token_length_histogram"), scored.get("token_length_histogram")
    measure = {
        "bin_edges": list(LENGTH_BIN_EDGES),
        "training": {
            "counts": th["counts"] if th else None,
            "quantiles": training.get("token_length_quantiles"),
        },
        "scored": {
            "counts": sh["counts"] if sh else None,
            "quantiles": scored.get("token_length_quantiles"),
        },
    }
    if not th or not sh:
        side = "training" if not th else "scoring"
        measure.update(measure="population stability index", value=None)
        reason = (
            f"the {side} profile has no token-length histogram (no rows, or a model or "
            "preprocess output from before textclf profiled token lengths)"
        )
        return _unavailable(measure, reason)
    rows = (sum(th["counts"]), sum(sh["counts"]))
    return {**measure, **_psi_measure(th["counts"], sh["counts"], *rows)}


def _predicted_class(training: Mapping, scored: Mapping) -> dict:
    tc, sc = training.get("class_counts") or {}, scored.get("class_counts") or {}
    names = sorted(set(tc) | set(sc))
    measure = {"training": _shares(tc), "scored": _shares(sc)}
    result = _psi_measure(
        [tc.get(n, 0) for n in names],
        [sc.get(n, 0) for n in names],
        sum(tc.values()),
        sum(sc.values()),
    )
    return {**measure, **result}


def _oov_rate(training: Mapping, scored: Mapping) -> dict:
    t, s = training.get("oov_rate"), scored.get("oov_rate")
    measure = {
        "measure": "increase in OOV rate (absolute)",
        "training": t,
        "scored": s,
        "warn_at": OOV_INCREASE_WARN,
        "drift_at": OOV_INCREASE_DRIFT,
    }
    if t is None or s is None:
        side = "training" if t is None else "scoring"
        return _unavailable(
            {**measure, "value": None},
            f"the {side} profile has no OOV rate (no rows, or a model exported before textclf "
            "profiled tokens)",
        )
    value = _round(s - t)
    status = _status(value, OOV_INCREASE_WARN, OOV_INCREASE_DRIFT, inclusive=False)
    return {**measure, "value": value, "status": status}


def _warning(name: str, m: dict) -> str:
    limit = m["drift_at"] if m["status"] == DRIFT else m["warn_at"]
    what = {
        TOKEN_LENGTH: "token-length distribution",
        PREDICTED_CLASS: "predicted-class distribution vs training labels",
        OOV_RATE: "OOV rate",
    }[name]
    line = f"{what}: {m['measure']} {m['value']:g} (status {m['status']}, limit {limit:g})"
    if name == TOKEN_LENGTH:
        tq, sq = m["training"]["quantiles"] or {}, m["scored"]["quantiles"] or {}
        line += f"; median tokens training {tq.get('p50')}, scored {sq.get('p50')}"
    elif name == OOV_RATE:
        line += f"; training {m['training']:.4f}, scored {m['scored']:.4f}"
    return line


def compare(training: Mapping | None, scored: Mapping) -> dict:
    """The scoring profile against the training one: per measure its figures, value,
    thresholds and status (ok, warn, drift or unavailable with a reason); `drifted` when any
    measure says drift; `warnings`, one line per measure at warn or drift; `unavailable`, the
    measures that could not be computed. No training profile: {"available": false, "reason"}."""
    if training is None:
        return {"available": False, "reason": "the model directory has no training profile"}
    measures = {
        TOKEN_LENGTH: _token_length(training, scored),
        PREDICTED_CLASS: _predicted_class(training, scored),
        OOV_RATE: _oov_rate(training, scored),
    }
    return {
        "available": True,
        "drifted": any(m["status"] == DRIFT for m in measures.values()),
        "measures": measures,
        "unavailable": sorted(n for n, m in measures.items() if m["status"] == UNAVAILABLE),
        "warnings": [_warning(n, m) for n, m in measures.items() if m["status"] in (WARN, DRIFT)],
    }
