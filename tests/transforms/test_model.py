"""The model's head/loss rules, its shapes and their description, the serving outputs, the
numpy metrics and the tf.data input, each alone on small in-memory data."""

import os

import numpy as np
import pytest
import tensorflow as tf

from transforms.contracts import LABEL_KEY, LABELS_KEY, OUT_LABEL, OUT_LABELS, TOKEN_IDS_KEY
from transforms.evaluation import multi_label_metrics, roc_auc, single_label_metrics
from transforms.model import (
    BINARY,
    CATEGORICAL,
    SIGMOID,
    SOFTMAX,
    SPARSE_CATEGORICAL,
    ModelSettings,
    RefusedPairing,
    build_model,
    choose_head,
    describe_model,
    layer_shapes,
    serving_outputs,
)
from transforms.training_data import make_dataset


def test_single_label_data_gets_softmax_and_sparse_categorical_crossentropy():
    head = choose_head(multi_label=False)
    assert (head.activation, head.loss, head.multi_label) == (SOFTMAX, SPARSE_CATEGORICAL, False)
    assert "sums to one" in head.reason


def test_multi_label_data_gets_sigmoid_and_binary_crossentropy_with_threshold():
    head = choose_head(multi_label=True, threshold=0.3)
    assert (head.activation, head.loss, head.threshold) == (SIGMOID, BINARY, 0.3)
    assert "several classes" in head.reason


@pytest.mark.parametrize("loss", [CATEGORICAL, SPARSE_CATEGORICAL])
@pytest.mark.parametrize("multi_label", [False, True])
def test_sigmoid_with_categorical_crossentropy_is_refused(loss, multi_label):
    with pytest.raises(RefusedPairing, match="do not sum to one"):
        choose_head(multi_label, activation=SIGMOID, loss=loss)


def test_softmax_on_multi_label_data_is_refused_because_classes_co_occur():
    with pytest.raises(RefusedPairing, match="co-occur"):
        choose_head(multi_label=True, activation=SOFTMAX)


def test_softmax_with_binary_crossentropy_is_refused():
    with pytest.raises(RefusedPairing, match="independent"):
        choose_head(multi_label=False, activation=SOFTMAX, loss=BINARY)


def test_overrides_that_make_sense_are_allowed():
    one_vs_rest = choose_head(multi_label=False, activation=SIGMOID)
    assert (one_vs_rest.loss, one_vs_rest.one_hot_targets) == (BINARY, True)
    categorical = choose_head(multi_label=False, loss=CATEGORICAL)
    assert (categorical.activation, categorical.one_hot_targets) == (SOFTMAX, True)


def test_a_threshold_outside_zero_one_is_refused():
    with pytest.raises(RefusedPairing, match="between 0 and 1"):
        choose_head(multi_label=True, threshold=1.0)


def _shapes(model):
    return {entry["class"]: entry["output_shape"] for entry in layer_shapes(model)}


def test_seed_architecture_shapes_follow_the_sizes():
    model = build_model(100, 20_002, 20, ModelSettings(), choose_head(False))
    shapes = _shapes(model)
    assert shapes["Embedding"] == [None, 100, 300]
    assert shapes["Conv1D"] == [None, 100, 100]
    assert shapes["MaxPooling1D"] == [None, 25, 100]
    assert shapes["LSTM"] == [None, 25, 100]
    assert shapes["GlobalMaxPooling1D"] == [None, 100]
    assert shapes["Dense"] == [None, 20]

    small = ModelSettings(embedding_dim=8, filters=6, kernel_size=3, pool_size=2, lstm_units=5)
    shapes = _shapes(build_model(30, 50, 4, small, choose_head(True)))
    assert shapes["Conv1D"] == [None, 30, 6]
    assert shapes["LSTM"] == [None, 15, 5]
    assert shapes["Dense"] == [None, 4]


def test_description_explains_each_layer_and_the_head():
    head = choose_head(False)
    text = describe_model(build_model(100, 20_002, 20, ModelSettings(), head), head)
    assert "MaxPooling1D(4)" in text and "100 steps -> 25" in text
    assert "return_sequences=True keeps one output per step: (batch, 25, 100)" in text
    assert "largest value over time" in text and "-> (batch, 100)" in text
    assert "head: softmax, loss: sparse_categorical_crossentropy" in text
    assert "why: single-label data" in text

    head = choose_head(True, threshold=0.4)
    small = ModelSettings(embedding_dim=8, filters=6, pool_size=3, lstm_units=5)
    text = describe_model(build_model(30, 50, 4, small, head), head)
    assert "30 steps -> 10" in text and "(batch, 10, 5)" in text
    assert "head: sigmoid, loss: binary_crossentropy" in text
    assert "decision threshold: 0.4" in text


def test_serving_outputs_name_the_best_class_or_every_class_over_threshold():
    names = tf.constant(["a", "b", "c"])
    probs = tf.constant([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    single = serving_outputs(probs, names, choose_head(False))
    assert single[OUT_LABEL].numpy().tolist() == [b"b", b"a"]

    multi = serving_outputs(probs, names, choose_head(True, threshold=0.5))
    assert multi[OUT_LABELS].numpy().tolist() == [[b"", b"b", b""], [b"a", b"", b""]]


def test_single_label_metrics_count_per_class():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = single_label_metrics(np.array([0, 1, 1, 1]), probs, ["x", "y"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["x"]["precision"] == 0.5 and m["per_class"]["y"]["recall"] == 2 / 3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_roc_auc_by_ranks_with_ties_and_undefined_cases():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_multi_label_metrics_micro_and_macro_f1():
    y = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
    p = np.array([[0.9, 0.2], [0.4, 0.8], [0.1, 0.3]])
    m = multi_label_metrics(y, p, ["x", "y"], threshold=0.5)
    # x: tp 1, fn 1 -> f1 2/3; y: tp 1, fn 1 -> f1 2/3; micro: tp 2, fp 0, fn 2.
    assert m["macro_f1"] == pytest.approx(2 / 3) and m["micro_f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["x"]["roc_auc"] == 1.0


def _write_examples(path, rows):
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for ids, label, labels in rows:
            feature = {
                TOKEN_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
                LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                LABELS_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=labels)),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )


FEATURE_SPEC = {
    TOKEN_IDS_KEY: tf.io.FixedLenFeature([4], tf.int64),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    LABELS_KEY: tf.io.FixedLenFeature([3], tf.float32),
}


def test_dataset_batches_gzipped_examples_in_file_order(tmp_path):
    rows = [([i, i + 1, 0, 0], i % 3, [1.0, 0.0, float(i % 2)]) for i in range(1, 8)]
    _write_examples(str(tmp_path / "train-00000.tfrecord.gz"), rows[:4])
    _write_examples(str(tmp_path / "train-00001.tfrecord.gz"), rows[4:])
    pattern = os.path.join(tmp_path, "train-*.tfrecord.gz")

    batches = list(make_dataset(pattern, FEATURE_SPEC, LABEL_KEY, batch_size=3))
    assert [b[0].shape.as_list() for b in batches] == [[3, 4], [3, 4], [1, 4]]
    ids = np.concatenate([b[0].numpy() for b in batches])
    assert ids[:, 0].tolist() == list(range(1, 8))
    assert np.concatenate([b[1].numpy() for b in batches]).tolist() == [r[1] for r in rows]

    one_hot = next(iter(make_dataset(pattern, FEATURE_SPEC, LABEL_KEY, 2, one_hot_depth=3)))
    assert one_hot[1].numpy().tolist() == [[0, 1, 0], [0, 0, 1]]

    shuffled = make_dataset(pattern, FEATURE_SPEC, LABELS_KEY, 7, shuffle=True, seed=1)
    ids, labels = next(iter(shuffled))
    assert sorted(ids[:, 0].numpy().tolist()) == list(range(1, 8))
    assert labels.dtype == tf.float32 and labels.shape == (7, 3)
