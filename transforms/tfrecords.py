"""Transformed record batches -> per-split serialized tf.Examples, and the stage's statistics.

`SplitAndEncode` takes tf.Transform's output batches (with the pass-through `split` column),
encodes each split's rows with tfx_bsl's `RecordBatchToExamples` (vectorised, in C++), and emits
one tagged output per split, ready for `WriteToTFRecord`. It also emits a small statistics dict
per batch (token lengths, OOV ids) that `MergeStats` folds with the reader's counts into the
numbers of stats.json. No file I/O here.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
from tfx_bsl.coders import example_coder

from transforms.contracts import NUM_TOKENS_KEY, SPLIT_KEY, SPLITS, TOKEN_IDS_KEY

STATS_TAG = "stats"


class SplitAndEncode(beam.DoFn):
    """(RecordBatch, passthrough) from TransformDataset -> TaggedOutput(split, example bytes)."""

    def process(self, element, vocab_size: int):
        batch = element[0] if isinstance(element, tuple) else element
        split = batch.column(SPLIT_KEY).flatten().to_numpy(zero_copy_only=False)
        features = batch.drop_columns([SPLIT_KEY])
        ids = features.column(TOKEN_IDS_KEY).flatten().to_numpy()
        lengths = features.column(NUM_TOKENS_KEY).flatten().to_numpy()
        nonpad = int(np.count_nonzero(ids))
        oov = int(np.count_nonzero(ids > vocab_size))
        values, counts = np.unique(lengths, return_counts=True)
        yield beam.pvalue.TaggedOutput(STATS_TAG, {
            "tokens_in_window": nonpad, "oov_in_window": oov,
            "length_histogram": dict(zip(values.tolist(), counts.tolist())),
            "rows_written": {s: int((split == s).sum()) for s in SPLITS}})
        for name in SPLITS:
            mask = split == name
            if mask.any():
                part = features.filter(pa.array(mask)) if not mask.all() else features
                for example in example_coder.RecordBatchToExamples(part):
                    yield beam.pvalue.TaggedOutput(name, example)


def merge_stats(parts) -> dict:
    """Sum nested dicts of counts (a CombineGlobally function: parts -> one dict)."""
    out: dict = {}

    def add(dst: dict, src: dict):
        for key, value in src.items():
            if isinstance(value, dict):
                add(dst.setdefault(key, {}), value)
            else:
                dst[key] = dst.get(key, 0) + value

    for part in parts:
        add(out, part)
    return out


def length_quantiles(histogram: dict, qs=(0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)) -> dict:
    """Exact quantiles of token counts from a {length: rows} histogram."""
    if not histogram:
        return {}
    lengths = np.array(sorted(int(k) for k in histogram))
    counts = np.array([histogram[k] if k in histogram else histogram[str(k)] for k in lengths])
    cum = np.cumsum(counts)
    total = cum[-1]
    return {f"p{int(q * 100)}": int(lengths[min(np.searchsorted(cum, q * total, side="left"),
                                                 len(lengths) - 1)]) for q in qs}
