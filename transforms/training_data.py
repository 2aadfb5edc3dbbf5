"""tf.data input for training and evaluation: gzipped tf.Example TFRecords -> (token_ids, target).

This module owns the input pipeline only: file list, interleave, shuffle, batch, batched
`tf.io.parse_example`, prefetch. The caller hands it file patterns and the transformed feature
spec (from `TFTransformOutput.transformed_feature_spec()`); it resolves no directories and knows
nothing about models beyond the name of the target feature.
"""

from __future__ import annotations

import tensorflow as tf

from transforms.contracts import TOKEN_IDS_KEY


def make_dataset(
    file_pattern: str | list[str],
    feature_spec: dict,
    target_key: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    one_hot_depth: int | None = None,
) -> tf.data.Dataset:
    """Batches of (token_ids int64[b, seq], target) from GZIP TFRecords of tf.Example.

    `target_key` is `label` (int64 class index) or `labels` (float32 multi-hot). With
    `one_hot_depth`, an int64 class index becomes a float32 one-hot row (for the categorical and
    one-vs-rest losses). Without `shuffle` the order is the files' sorted order, row by row, so
    two passes line up (evaluation reads predictions and targets in separate passes).
    """
    spec = {TOKEN_IDS_KEY: feature_spec[TOKEN_IDS_KEY], target_key: feature_spec[target_key]}
    files = tf.data.Dataset.list_files(file_pattern, shuffle=shuffle, seed=seed)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=4 if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle or seed is not None,
    )
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        target = features[target_key]
        if one_hot_depth is not None:
            target = tf.one_hot(target, one_hot_depth, dtype=tf.float32)
        return features[TOKEN_IDS_KEY], target

    return (
        records.batch(batch_size)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
