"""Writes a trained model's artifacts: the raw-text SavedModel and the two PNG reports.

The SavedModel carries the tf.Transform graph (`TFTransformOutput.transform_features_layer()`)
and the Keras model behind one `serving_default(text: string[None])` endpoint, so serving cannot
drift from the preprocessing the model was trained on: the seed reads the layer's token ids, the
tfidf_linear family the TF-IDF matrix built from its ids and weights by the same function that
builds it for training (`transforms.training_data.tfidf_matrix`). The endpoint also returns each
row's token counts, which the score stage's drift check profiles. This module writes into a directory it is
given (the training stage's staging dir); finalizing and `_SUCCESS` are the caller's job.
"""

from __future__ import annotations

import io

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.io.filesystems import FileSystems

from transforms.contracts import (
    CONFUSION_PNG,
    CURVES_PNG,
    F1_BARS_PNG,
    NUM_TOKENS_KEY,
    OUT_NUM_TOKENS,
    OUT_OOV_TOKENS,
    OUT_WINDOW_TOKENS,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    TEXT_KEY,
    TFIDF_IDS_KEY,
    TFIDF_WEIGHTS_KEY,
    TOKEN_IDS_KEY,
    TOKEN_VOCAB_NAME,
)
from transforms.model import Head, serving_outputs
from transforms.training_data import tfidf_matrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def export_saved_model(
    model: keras.Model,
    tft_output: tft.TFTransformOutput,
    label_vocabulary: list[str],
    head: Head,
    path: str,
    *,
    tfidf_dim: int | None = None,
) -> None:
    """raw text -> tf.Transform graph -> model -> probabilities and class names, at `path`.

    The model reads token_ids, or with `tfidf_dim` (the tfidf_linear family) the sparse TF-IDF
    matrix float32[batch, tfidf_dim].

    Beside the predictions, each row's input profile (what the score stage's drift check sums):
    `num_tokens` (tokens in the text), `window_tokens` (the non-padding ids the model saw) and
    `oov_tokens` (those past the vocabulary: ids are vocabulary index + 1, OOV buckets after
    it, the same definition as preprocess's `oov_rate`).
    """
    transform_layer = tft_output.transform_features_layer()
    class_names = tf.constant(label_vocabulary, dtype=tf.string)
    vocab_size = tft_output.vocabulary_size_by_name(TOKEN_VOCAB_NAME)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(text):
        features = transform_layer({TEXT_KEY: text})
        ids = features[TOKEN_IDS_KEY]
        if tfidf_dim:
            inputs = tfidf_matrix(features[TFIDF_IDS_KEY], features[TFIDF_WEIGHTS_KEY], tfidf_dim)
        else:
            inputs = ids
        probabilities = model(inputs, training=False)
        outputs = serving_outputs(probabilities, class_names, head)
        outputs[OUT_NUM_TOKENS] = tf.cast(features[NUM_TOKENS_KEY], tf.int64)
        outputs[OUT_WINDOW_TOKENS] = tf.reduce_sum(tf.cast(ids > 0, tf.int64), axis=1)
        outputs[OUT_OOV_TOKENS] = tf.reduce_sum(tf.cast(ids > vocab_size, tf.int64), axis=1)
        return outputs

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(transform_layer)
    archive.add_endpoint(SERVING_SIGNATURE, serve)
    archive.write_out(path, verbose=False)


def _save(fig, path: str) -> None:
    """PNG bytes through Beam's filesystems, so a gs:// model dir works like a local one."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    with FileSystems.create(path) as f:
        f.write(buffer.getvalue())


def plot_training_curves(history: dict[str, list[float]], path: str) -> None:
    """Loss and the other metrics per epoch, train beside validation."""
    metric_names = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, len(metric_names), figsize=(5 * len(metric_names), 4))
    for ax, name in zip(np.atleast_1d(axes), metric_names, strict=True):
        epochs = range(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", label="eval")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    _save(fig, path)


def plot_confusion_matrix(counts: list[list[int]], class_names: list[str], path: str) -> None:
    counts = np.asarray(counts)
    size = max(5, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 25:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=6)
    ax.set_title("eval confusion matrix")
    _save(fig, path)


def plot_per_class_f1(per_class: dict[str, dict], path: str) -> None:
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2), 4))
    ax.bar(range(len(names)), [per_class[n]["f1"] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 at threshold")
    ax.set_title("eval F1 per class")
    _save(fig, path)


def write_reports(history: dict, metrics: dict, class_names: list[str], head: Head, out: str):
    """The two PNGs: training curves, then the confusion matrix or the per-class F1 bars."""
    plot_training_curves(history, FileSystems.join(out, CURVES_PNG))
    if head.multi_label:
        plot_per_class_f1(metrics["per_class"], FileSystems.join(out, F1_BARS_PNG))
    else:
        plot_confusion_matrix(
            metrics["confusion_matrix"], class_names, FileSystems.join(out, CONFUSION_PNG)
        )
