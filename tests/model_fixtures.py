"""Real, small model directories in the training stage's export contract, built in code.

`build_test_model` fits a tiny Keras 3 text classifier on a few texts and exports it the way
docs/DESIGN.md (Stage 2) says a model directory looks: `saved_model/` with a raw-text
`serving_default` signature, `labels.txt`, `model_card.json` and `_SUCCESS`. The scoring tests and
the scoring benchmark use it until they can also run against the trainer's own export. It owns the
model contract's shape only; it does not try to train anything useful.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from transforms.contracts import (
    LABELS_TXT,
    MODEL_CARD_FILE,
    OUT_LABEL,
    OUT_LABELS,
    OUT_PROBABILITIES,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    SUCCESS_FILE,
)


def _tiny_body(vocab_size: int, num_classes: int) -> list[keras.layers.Layer]:
    return [
        keras.layers.Embedding(vocab_size + 2, 8),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(num_classes),
    ]


def _seed_body(vocab_size: int, num_classes: int) -> list[keras.layers.Layer]:
    """The seed architecture's cost: Embedding 300 -> Conv1D -> MaxPool -> LSTM -> GlobalMaxPool."""
    return [
        keras.layers.Embedding(vocab_size + 2, 300),
        keras.layers.Conv1D(100, 4, padding="same", activation="relu"),
        keras.layers.MaxPooling1D(4),
        keras.layers.LSTM(100, return_sequences=True),
        keras.layers.GlobalMaxPooling1D(),
        keras.layers.Dense(num_classes),
    ]


def build_test_model(
    model_dir: str,
    texts: Sequence[str],
    labels: Sequence,
    multi_label: bool = False,
    *,
    architecture: str = "tiny",
    vocab_size: int = 1000,
    sequence_length: int = 16,
    epochs: int = 1,
    model_version: str | None = "test-model-v1",
    write_model_card: bool = True,
    threshold: float = 0.5,
    seed: int = 0,
) -> list[str]:
    """Fit a small real model on (texts, labels) and export a complete model directory.

    `labels` holds one class name per text, or (multi_label) a list of class names per text.
    `architecture` is "tiny" (fast to build, for tests) or "seed" (the seed model's layer sizes,
    for the benchmark; `epochs=0` leaves it untrained). Returns the class names in index order.
    """
    keras.utils.set_random_seed(seed)
    if multi_label:
        class_names = sorted({name for row in labels for name in row})
    else:
        class_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(class_names)}
    num_classes = len(class_names)

    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocab_size, output_sequence_length=sequence_length
    )
    vectorizer.adapt(tf.constant(list(texts)))
    vocab = len(vectorizer.get_vocabulary())
    body = (
        _seed_body(vocab, num_classes) if architecture == "seed" else _tiny_body(vocab, num_classes)
    )
    model = keras.Sequential([keras.Input(shape=(sequence_length,), dtype="int64"), *body])

    if multi_label:
        target = np.zeros((len(texts), num_classes), dtype="float32")
        for row, names in enumerate(labels):
            for name in names:
                target[row, index[name]] = 1.0
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        target = np.array([index[name] for name in labels], dtype="int64")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss)
    token_ids = vectorizer(tf.constant(list(texts)))  # also builds both layers for export
    model(token_ids[:1])
    if epochs:
        model.fit(token_ids, target, epochs=epochs, batch_size=32, verbose=0)

    names = tf.constant(class_names)

    def serve(text):
        logits = model(vectorizer(text), training=False)
        if multi_label:
            probabilities = tf.sigmoid(logits)
            chosen = tf.where(
                probabilities >= threshold, tf.broadcast_to(names, tf.shape(probabilities)), ""
            )
            return {OUT_PROBABILITIES: probabilities, OUT_LABELS: chosen}
        probabilities = tf.nn.softmax(logits)
        return {
            OUT_PROBABILITIES: probabilities,
            OUT_LABEL: tf.gather(names, tf.argmax(probabilities, axis=1)),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(vectorizer)
    archive.add_endpoint(
        SERVING_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)],
    )
    os.makedirs(model_dir, exist_ok=True)
    archive.write_out(os.path.join(model_dir, SAVED_MODEL_DIR), verbose=False)

    with open(os.path.join(model_dir, LABELS_TXT), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    if write_model_card:
        card = {
            "multi_label": multi_label,
            "threshold": threshold if multi_label else None,
            "architecture": architecture,
        }
        if model_version is not None:
            card["model_version"] = model_version
        with open(os.path.join(model_dir, MODEL_CARD_FILE), "w") as f:
            json.dump(card, f, indent=2)
    with open(os.path.join(model_dir, SUCCESS_FILE), "w") as f:
        f.write("test fixture\n")
    return class_names


POISON_MARKER = "POISON"


def build_poisoned_model(model_dir: str, source_dir: str, marker: str = POISON_MARKER) -> None:
    """A copy of the model directory `source_dir` whose serving signature raises on some rows.

    The new `serving_default` checks, with `tf.debugging.Assert`, that no text in the batch
    contains `marker`, then calls the source signature: same input, outputs and weights (so the
    other rows score exactly as with the source model), same labels.txt, model_card.json and
    _SUCCESS. A batch holding a marked text fails as a whole with InvalidArgumentError.
    """
    loaded = tf.saved_model.load(os.path.join(source_dir, SAVED_MODEL_DIR))
    inner = loaded.signatures[SERVING_SIGNATURE]
    module = tf.Module()
    module.source = loaded  # tracked, so the source's variables and assets are saved too

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(text):
        poisoned = tf.strings.regex_full_match(text, f"(?s).*{marker}.*")
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(poisoned)), [f"a text in the batch contains {marker}"]
        )
        with tf.control_dependencies([check]):
            return inner(**{SERVING_INPUT: tf.identity(text)})

    os.makedirs(model_dir, exist_ok=True)
    tf.saved_model.save(
        module, os.path.join(model_dir, SAVED_MODEL_DIR), signatures={SERVING_SIGNATURE: serve}
    )
    for name in (LABELS_TXT, MODEL_CARD_FILE, SUCCESS_FILE):
        if os.path.exists(os.path.join(source_dir, name)):
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(model_dir, name))
