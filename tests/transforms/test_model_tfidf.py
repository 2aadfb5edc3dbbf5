"""The tfidf_linear family alone: the sparse TF-IDF input read from real gzipped TFRecords, the
linear model's shapes and description, and a few real fitting steps on separable rows."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from transforms.contracts import (
    LABEL_KEY,
    LABELS_KEY,
    TFIDF_IDS_KEY,
    TFIDF_WEIGHTS_KEY,
    TOKEN_IDS_KEY,
)
from transforms.model import (
    ARCHITECTURES,
    SEED,
    TFIDF_LINEAR,
    ModelSettings,
    build_architecture,
    build_tfidf_linear_model,
    choose_head,
    describe_model,
    layer_shapes,
)
from transforms.training_data import make_dataset, tfidf_matrix

LINEAR = ModelSettings(architecture=TFIDF_LINEAR)
SPEC = {
    TOKEN_IDS_KEY: tf.io.FixedLenFeature([4], tf.int64),
    TFIDF_IDS_KEY: tf.io.VarLenFeature(tf.int64),
    TFIDF_WEIGHTS_KEY: tf.io.VarLenFeature(tf.float32),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    LABELS_KEY: tf.io.FixedLenFeature([3], tf.float32),
}


def _write_examples(path: str, rows: list[dict]) -> None:
    """rows: {tfidf: {id: weight}, label: int, labels: [3 floats]} -> GZIP tf.Example records."""
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for row in rows:
            ids, weights = list(row["tfidf"]), list(row["tfidf"].values())
            feature = {
                TOKEN_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2, 0, 0])),
                TFIDF_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
                TFIDF_WEIGHTS_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=weights)),
                LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[row["label"]])),
                LABELS_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=row["labels"])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def _separable_rows(count: int, dim: int, seed: int = 0) -> list[dict]:
    """Class c's rows hold n-grams from ids [c*10, c*10+10) plus shared ids in [30, dim);
    multi-label rows add a second class's n-grams to every third row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = i % 3
        classes = {label} | ({(label + 1) % 3} if i % 3 == 0 else set())
        ids = {int(rng.integers(c * 10, c * 10 + 10)) for c in classes for _ in range(3)}
        ids |= {int(rng.integers(30, dim)) for _ in range(3)}
        weights = rng.uniform(0.5, 1.0, len(ids))
        weights /= np.linalg.norm(weights)
        ids = list(rng.permutation(sorted(ids)))  # the file order need not be sorted
        rows.append(
            {
                "tfidf": dict(zip(ids, weights.tolist())),
                "label": label,
                "labels": [float(c in classes) for c in range(3)],
            }
        )
    return rows


def _dense(matrix: tf.SparseTensor) -> np.ndarray:
    return tf.sparse.to_dense(matrix).numpy()


def test_tfidf_matrix_puts_each_weight_at_its_row_and_id_in_canonical_order():
    ids = tf.ragged.constant([[7, 2], [], [5]], dtype=tf.int64).to_sparse()
    weights = tf.ragged.constant([[0.6, 0.8], [], [1.0]], dtype=tf.float32).to_sparse()
    matrix = tfidf_matrix(ids, weights, 9)
    assert matrix.dense_shape.numpy().tolist() == [3, 9]
    assert matrix.indices.numpy().tolist() == [[0, 2], [0, 7], [2, 5]]  # reordered
    expected = np.zeros((3, 9), np.float32)
    expected[0, 7], expected[0, 2], expected[2, 5] = 0.6, 0.8, 1.0
    np.testing.assert_allclose(_dense(matrix), expected)
    ragged = tfidf_matrix(
        tf.ragged.constant([[7, 2], [], [5]], dtype=tf.int64),
        tf.ragged.constant([[0.6, 0.8], [], [1.0]]),
        9,
    )
    np.testing.assert_allclose(_dense(ragged), expected)


def test_dataset_reads_tfidf_ids_and_weights_as_one_sparse_matrix_per_batch(tmp_path):
    rows = _separable_rows(7, 40)
    _write_examples(str(tmp_path / "train-00000.tfrecord.gz"), rows[:4])
    _write_examples(str(tmp_path / "train-00001.tfrecord.gz"), rows[4:])
    pattern = os.path.join(tmp_path, "train-*.tfrecord.gz")

    batches = list(make_dataset(pattern, SPEC, LABEL_KEY, batch_size=3, tfidf_dim=40))
    assert all(isinstance(x, tf.SparseTensor) for x, _ in batches)
    assert [x.dense_shape.numpy().tolist() for x, _ in batches] == [[3, 40], [3, 40], [1, 40]]
    dense = np.concatenate([_dense(x) for x, _ in batches])
    for row, matrix_row in zip(rows, dense):
        expected = np.zeros(40, np.float32)
        for i, w in row["tfidf"].items():
            expected[i] = w
        np.testing.assert_allclose(matrix_row, expected, rtol=1e-6)
    assert np.concatenate([y.numpy() for _, y in batches]).tolist() == [r["label"] for r in rows]

    one_hot = next(iter(make_dataset(pattern, SPEC, LABEL_KEY, 2, one_hot_depth=3, tfidf_dim=40)))
    assert one_hot[1].numpy().tolist() == [[1, 0, 0], [0, 1, 0]]
    # Without tfidf_dim the seed's input is unchanged: token_ids int64[b, seq].
    ids, _ = next(iter(make_dataset(pattern, SPEC, LABEL_KEY, 2)))
    assert ids.dtype == tf.int64 and ids.numpy().tolist() == [[1, 2, 0, 0]] * 2


def test_linear_model_is_one_regularised_dense_head_over_the_sparse_input():
    model = build_tfidf_linear_model(1001, 20, LINEAR, choose_head(False))
    shapes = [(entry["class"], entry["output_shape"]) for entry in layer_shapes(model)]
    assert shapes == [("InputLayer", [None, 1001]), ("Dense", [None, 20])]
    assert model.inputs[0].sparse
    assert model.count_params() == 1001 * 20 + 20
    assert model.get_layer("head").kernel_regularizer.l2 == pytest.approx(LINEAR.l2)

    hidden = ModelSettings(architecture=TFIDF_LINEAR, hidden_units=16, dropout=0.3, l2=0.0)
    model = build_tfidf_linear_model(1001, 4, hidden, choose_head(True))
    shapes = [(entry["class"], entry["output_shape"]) for entry in layer_shapes(model)]
    assert shapes == [
        ("InputLayer", [None, 1001]),
        ("Dense", [None, 16]),
        ("Dropout", [None, 16]),
        ("Dense", [None, 4]),
    ]
    assert model.get_layer("hidden").kernel_regularizer is None  # --l2 0: no penalty
    assert keras.activations.serialize(model.get_layer("head").activation) == "sigmoid"


def test_build_architecture_picks_the_family_and_needs_its_sizes():
    head = choose_head(False)
    assert ARCHITECTURES == (SEED, TFIDF_LINEAR)
    seed = build_architecture(ModelSettings(), head, 5, sequence_length=12, id_vocabulary_size=30)
    assert [layer["class"] for layer in layer_shapes(seed)][1] == "Embedding"
    linear = build_architecture(LINEAR, head, 5, sequence_length=12, tfidf_dim=50)
    assert layer_shapes(linear)[-1]["output_shape"] == [None, 5]
    with pytest.raises(ValueError, match="needs the preprocess tfidf_dim"):
        build_architecture(LINEAR, head, 5, sequence_length=12, id_vocabulary_size=30)


def test_description_explains_the_linear_layers_and_the_head():
    head = choose_head(False)
    text = describe_model(build_tfidf_linear_model(1001, 20, LINEAR, head), head)
    assert text.splitlines()[0] == "architecture: tfidf_linear"
    assert "what it does to (batch, features)" in text
    assert "Input(sparse)" in text and "TF-IDF weights over 1001 n-gram ids" in text
    assert "a weighted sum of the row's TF-IDF weights (a linear model)" in text
    assert "L2 1e-06" in text and "(batch, 1001) -> (batch, 20)" in text
    assert "parameters: 20,040" in text and "head: softmax" in text

    hidden = ModelSettings(architecture=TFIDF_LINEAR, hidden_units=16)
    head = choose_head(True, threshold=0.3)
    text = describe_model(build_tfidf_linear_model(1001, 4, hidden, head), head)
    assert "16 relu units, each a weighted sum of the 1001 inputs" in text
    assert "Dropout(0.2)" in text and "decision threshold: 0.3" in text


@pytest.mark.parametrize("multi_label", [False, True])
def test_linear_model_fits_separable_rows_read_from_tfrecords(tmp_path, multi_label):
    _write_examples(str(tmp_path / "train-00000.tfrecord.gz"), _separable_rows(240, 60, seed=1))
    _write_examples(str(tmp_path / "eval-00000.tfrecord.gz"), _separable_rows(60, 60, seed=2))
    head = choose_head(multi_label)
    target = LABELS_KEY if multi_label else LABEL_KEY
    train = make_dataset(
        str(tmp_path / "train-*"), SPEC, target, 16, shuffle=True, seed=3, tfidf_dim=60
    )
    evaluate = make_dataset(str(tmp_path / "eval-*"), SPEC, target, 16, tfidf_dim=60)
    keras.utils.set_random_seed(0)
    model = build_tfidf_linear_model(60, 3, LINEAR, head)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=head.loss)
    model.fit(train, epochs=8, verbose=0)

    probabilities = model.predict(evaluate.map(lambda x, y: x), verbose=0)
    targets = np.concatenate([y.numpy() for _, y in evaluate])
    if multi_label:
        assert ((probabilities >= 0.5) == (targets == 1)).all(axis=1).mean() >= 0.9
    else:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        assert (probabilities.argmax(axis=1) == targets).mean() >= 0.95
