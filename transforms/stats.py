"""The arithmetic of the Beam stages' stats.json (and preprocess's timings.json), on plain dicts.

`preprocess_stats` turns the merged per-batch counts of the preprocess graph (reader,
`ValidateAndSplit`, `SplitAndEncode`) into stats.json's figures; `score_stats` does the same for
the score graph's table summaries. Both are pure: they read no file and decide nothing. The job's
last step in each pipeline module gathers the inputs (side inputs, vocabulary files), refuses an
output whose rows do not add up, and writes the result.
"""

from __future__ import annotations

import numpy as np

from transforms.contracts import REASON_MODEL_CALL_FAILED, SPLITS
from transforms.drift import LENGTH_BIN_EDGES, bin_length_histogram
from transforms.tfrecords import length_quantiles


def preprocess_stats(
    counts: dict,
    *,
    sequence_length: int,
    vocab_size: int,
    num_classes: int,
    records_in_files: dict[str, int],
    dead_letters_in_files: int,
) -> dict:
    """stats.json of preprocess (docs/DESIGN.md, stage 1).

    `counts` is `tfrecords.merge_stats` over every statistics source: `rows_read`,
    `rows_written` {split: n}, `dead_lettered` {reason: n}, `labels` {split: {label: n}},
    `length_histogram` {tokens: rows} and `id_histogram` (rows of ids per id, an array).
    `records_in_files` (per split) and `dead_letters_in_files` are what the written files hold:
    `rows_accounted` is true only when they match the counts and read == written + dead.
    """
    written = {s: counts.get("rows_written", {}).get(s, 0) for s in SPLITS}
    dead = counts.get("dead_lettered", {})
    rows_read = counts.get("rows_read", 0)
    histogram = {int(k): v for k, v in counts.get("length_histogram", {}).items()}
    ids = counts.get("id_histogram", np.zeros(1, np.int64))
    window = int(ids[1:].sum())  # every id but padding, in the first sequence_length tokens
    oov = int(ids[vocab_size + 1 :].sum())
    return {
        "rows_read": rows_read,
        "rows_written": written,
        "rows_dead_lettered": sum(dead.values()),
        "dead_letter_reasons": dead,
        "rows_accounted": rows_read == sum(written.values()) + sum(dead.values())
        and {s: records_in_files.get(s, 0) for s in SPLITS} == written
        and dead_letters_in_files == sum(dead.values()),
        "label_counts": counts.get("labels", {}),
        "token_length_quantiles": length_quantiles(histogram),
        # Binned (transforms/drift.py), what train's training_profile.json compares against.
        "token_length_histogram": {
            "bin_edges": list(LENGTH_BIN_EDGES),
            "counts": bin_length_histogram(histogram),
        },
        "rows_truncated": sum(v for k, v in histogram.items() if k > sequence_length),
        "vocab_size": vocab_size,
        "oov_rate": oov / window if window else 0.0,
        "num_classes": num_classes,
    }


def preprocess_timings(rows_read: int, seconds: float) -> dict:
    """timings.json: the wall time and its rate (these vary run to run; stats.json does not)."""
    return {
        "seconds": round(seconds, 2),
        "docs_per_second": round(rows_read / seconds, 1) if seconds else None,
    }


def score_stats(header: dict, read: dict, scored: dict, dead: dict) -> dict:
    """stats.json of score (docs/DESIGN.md, stage 3): the run's settings (`header`) and the
    counts from `scoring.SummarizeTables` summaries ({"rows", "counts"}) of the tables read,
    scored (counts: predicted labels) and dead-lettered (counts: reasons)."""
    stats = dict(header)
    stats.update(
        rows_read=read["rows"],
        rows_scored=scored["rows"],
        rows_dead_lettered=dead["rows"],
        rows_failed_model_call=sum(
            n for reason, n in dead["counts"].items() if reason.startswith(REASON_MODEL_CALL_FAILED)
        ),
        label_counts=dict(sorted(scored["counts"].items())),
        dead_letter_reasons=dict(sorted(dead["counts"].items())),
    )
    return stats
