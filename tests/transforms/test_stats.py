"""stats.json arithmetic on plain dicts: what the Beam stages' last steps write."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.contracts import (
    REASON_LABEL_MISSING,
    REASON_MODEL_CALL_FAILED,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NULL,
)
from transforms.stats import preprocess_stats, preprocess_timings, score_stats

# What tfrecords.merge_stats makes of a small job's per-batch dicts: 10 rows read, 7 written,
# 3 dead-lettered; token counts 2 (x3), 5 (x2), 9 (x2); ids 0 (padding) x6, vocabulary ids 1-3,
# OOV bucket 4 (vocab_size 3).
COUNTS = {
    "rows_read": 10,
    "rows_written": {"train": 5, "eval": 2},
    "dead_lettered": {REASON_TEXT_EMPTY: 2, REASON_LABEL_MISSING: 1},
    "labels": {"train": {"a": 3, "b": 2}, "eval": {"a": 2}},
    "length_histogram": {2: 3, 5: 2, 9: 2},
    "id_histogram": np.array([6, 10, 4, 2, 4]),
}


def stats_of(counts=COUNTS, in_files=None, dead_in_files=3, **kw):
    args = dict(sequence_length=4, vocab_size=3, num_classes=2)
    args.update(kw)
    return preprocess_stats(
        counts,
        records_in_files=in_files if in_files is not None else {"train": 5, "eval": 2},
        dead_letters_in_files=dead_in_files,
        **args,
    )


def test_preprocess_stats_account_for_every_row_read():
    stats = stats_of()
    assert stats["rows_read"] == 10
    assert stats["rows_written"] == {"train": 5, "eval": 2}
    assert stats["rows_dead_lettered"] == 3
    assert stats["dead_letter_reasons"] == {REASON_TEXT_EMPTY: 2, REASON_LABEL_MISSING: 1}
    assert stats["label_counts"] == {"train": {"a": 3, "b": 2}, "eval": {"a": 2}}
    assert stats["rows_accounted"] is True
    assert (stats["vocab_size"], stats["num_classes"]) == (3, 2)


@pytest.mark.parametrize(
    ("counts", "in_files", "dead_in_files"),
    [
        (dict(COUNTS, rows_read=11), None, 3),  # a row read is neither written nor dead
        (COUNTS, {"train": 4, "eval": 2}, 3),  # a TFRecord file lost a record
        (COUNTS, {"train": 2, "eval": 5}, 3),  # the totals agree, the splits do not
        (COUNTS, None, 2),  # a dead-letter file lost a record
    ],
)
def test_rows_are_not_accounted_when_counts_or_files_disagree(counts, in_files, dead_in_files):
    assert stats_of(counts, in_files, dead_in_files)["rows_accounted"] is False


def test_token_lengths_are_quantiles_before_truncation_and_rows_over_the_length_are_counted():
    stats = stats_of(sequence_length=4)
    quantiles = stats["token_length_quantiles"]
    assert (quantiles["p0"], quantiles["p25"], quantiles["p50"], quantiles["p100"]) == (2, 2, 5, 9)
    assert stats["rows_truncated"] == 4  # the rows of 5 and 9 tokens
    assert stats_of(sequence_length=9)["rows_truncated"] == 0


def test_oov_rate_is_oov_ids_over_non_padding_ids():
    # Non-padding ids: 10 + 4 + 2 + 4 = 20; ids above vocab_size (3) are OOV: 4.
    assert stats_of(vocab_size=3)["oov_rate"] == pytest.approx(4 / 20)
    assert stats_of(vocab_size=2)["oov_rate"] == pytest.approx(6 / 20)


def test_a_job_that_read_nothing_has_zero_counts_and_no_quantiles():
    stats = preprocess_stats(
        {},
        sequence_length=4,
        vocab_size=0,
        num_classes=0,
        records_in_files={},
        dead_letters_in_files=0,
    )
    assert stats["rows_read"] == 0 and stats["rows_written"] == {"train": 0, "eval": 0}
    assert stats["rows_accounted"] is True
    assert (stats["oov_rate"], stats["token_length_quantiles"], stats["rows_truncated"]) == (
        0.0,
        {},
        0,
    )


def test_preprocess_timings_round_and_survive_zero_seconds():
    assert preprocess_timings(1000, 4.0) == {"seconds": 4.0, "docs_per_second": 250.0}
    assert preprocess_timings(10, 3.14159) == {"seconds": 3.14, "docs_per_second": 3.2}
    assert preprocess_timings(10, 0.0) == {"seconds": 0.0, "docs_per_second": None}


def test_score_stats_keep_the_header_and_count_only_model_call_failures_as_failed():
    header = {"model_version": "v1", "batch_size": 8}
    failed = f"{REASON_MODEL_CALL_FAILED} (model_version v1): ValueError: x"
    stats = score_stats(
        header,
        read={"rows": 10, "counts": {}},
        scored={"rows": 6, "counts": {"pos": 4, "neg": 2}},
        dead={"rows": 4, "counts": {REASON_TEXT_NULL: 1, failed: 3}},
    )
    assert stats == {
        "model_version": "v1",
        "batch_size": 8,
        "rows_read": 10,
        "rows_scored": 6,
        "rows_dead_lettered": 4,
        "rows_failed_model_call": 3,
        "label_counts": {"neg": 2, "pos": 4},
        "dead_letter_reasons": {failed: 3, REASON_TEXT_NULL: 1},
    }
    assert list(stats["label_counts"]) == ["neg", "pos"]  # sorted, as written
    assert header == {"model_version": "v1", "batch_size": 8}  # not changed in place
