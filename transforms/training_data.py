"""tf.data input for training and evaluation: gzipped tf.Example TFRecords -> (features, target).

This module owns the input pipeline only: file list, interleave, shuffle, batch, batched
`tf.io.parse_example`, prefetch, and the one definition of the linear family's input (`tfidf_matrix`:
the TF-IDF ids and weights as a sparse [batch, tfidf_dim] matrix, which the serving signature builds
the same way from the transform layer's outputs). The caller hands it file patterns and the
transformed feature spec (from `TFTransformOutput.transformed_feature_spec()`); it resolves no
directories and knows nothing about models beyond the name of the target feature and, for the
TF-IDF input, its width.
"""

from __future__ import annotations

import tensorflow as tf

from transforms.contracts import TFIDF_IDS_KEY, TFIDF_WEIGHTS_KEY, TOKEN_IDS_KEY


def tfidf_matrix(ids, weights, tfidf_dim: int) -> tf.SparseTensor:
    """float32[batch, tfidf_dim] with each row's TF-IDF weight at its n-gram ids.

    `ids` and `weights` are the aligned ragged features as parsed (VarLen) or as the transform
    layer returns them: SparseTensors (or RaggedTensors) [batch, n] whose entry (row, k) is the
    row's k-th n-gram.
    Entry (row, id) of the result is that n-gram's weight; the rows' ids are distinct (preprocess
    writes each n-gram once), and the entries are put in canonical row-major order, which the
    sparse matmul expects.
    """
    if isinstance(ids, tf.RaggedTensor):  # a transform graph may hand ragged outputs instead
        ids, weights = ids.to_sparse(), weights.to_sparse()
    rows = ids.indices[:, 0]
    matrix = tf.SparseTensor(
        indices=tf.stack([rows, tf.cast(ids.values, tf.int64)], axis=1),
        values=tf.cast(weights.values, tf.float32),
        dense_shape=tf.stack([ids.dense_shape[0], tf.constant(tfidf_dim, tf.int64)]),
    )
    return tf.sparse.reorder(matrix)


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
    tfidf_dim: int | None = None,
) -> tf.data.Dataset:
    """Batches of (features, target) from GZIP TFRecords of tf.Example.

    The features are token_ids int64[b, seq] (the seed's input), or with `tfidf_dim` the sparse
    TF-IDF matrix float32[b, tfidf_dim] of `tfidf_matrix` (the linear family's input).
    `target_key` is `label` (int64 class index) or `labels` (float32 multi-hot). With
    `one_hot_depth`, an int64 class index becomes a float32 one-hot row (for the categorical and
    one-vs-rest losses). Without `shuffle` the order is the files' sorted order, row by row, so
    two passes line up (evaluation reads predictions and targets in separate passes).
    """
    inputs = (TFIDF_IDS_KEY, TFIDF_WEIGHTS_KEY) if tfidf_dim else (TOKEN_IDS_KEY,)
    spec = {key: feature_spec[key] for key in (*inputs, target_key)}
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
        if tfidf_dim:
            tfidf = tfidf_matrix(features[TFIDF_IDS_KEY], features[TFIDF_WEIGHTS_KEY], tfidf_dim)
            return tfidf, target
        return features[TOKEN_IDS_KEY], target

    return (
        records.batch(batch_size)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
