"""The classifier: its head and loss, the Keras graphs, and a plain-words account of its shapes.

This module owns the model: `choose_head` picks (or refuses) the output activation and loss for
the labels at hand; two architecture families are built from plain sizes: `build_model`, the
seed (Embedding -> Dropout -> Conv1D -> MaxPooling1D -> LSTM -> GlobalMaxPooling1D -> Dense over
token ids), and `build_tfidf_linear_model` (an L2-regularised Dense head, optionally after one
small hidden layer, over the sparse TF-IDF matrix); `build_architecture` picks one by
`ModelSettings.architecture`. `serving_outputs` turns probabilities into class names the way the
exported signature returns them, and `describe_model` explains each layer. It reads no files and
parses no flags: sizes come from the caller, who reads them from the preprocess output
(pipeline/train.py, pipeline/describe.py).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from transforms.contracts import (
    FEATURE_TFIDF,
    OUT_LABEL,
    OUT_LABELS,
    OUT_PROBABILITIES,
    TOKEN_IDS_KEY,
)

# Architecture families (`textclf train --architecture`).
SEED = "seed"  # Conv1D + LSTM over token_ids
TFIDF_LINEAR = "tfidf_linear"  # a (nearly) linear head over the sparse TF-IDF features
ARCHITECTURES = (SEED, TFIDF_LINEAR)
# Adam's learning rate and the epoch cap when --learning_rate / --epochs are not given. The
# linear head sees L2-normalised TF-IDF rows (each weight well below 1), so its logits need large
# weights, and Adam moves a weight by about the learning rate per step: at 1e-3 it takes dozens
# of epochs to get there. On 20 Newsgroups (100k uni+bigrams) 3e-2 reached at epoch 8 the test
# accuracy 1e-2 reached at epoch 12 and kept improving (still lowering val_loss at 12), so the
# linear family gets 3e-2 and up to 20 epochs (cheap: a sparse matmul per batch); early stopping
# on val_loss ends it sooner when it stops improving.
DEFAULT_LEARNING_RATE = {SEED: 1e-3, TFIDF_LINEAR: 3e-2}
DEFAULT_EPOCHS = {SEED: 8, TFIDF_LINEAR: 20}
# The name of the linear family's input: float32[batch, tfidf_dim], a tf.sparse.SparseTensor.
TFIDF_INPUT = FEATURE_TFIDF

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
ACTIVATIONS = (SOFTMAX, SIGMOID)

SPARSE_CATEGORICAL = "sparse_categorical_crossentropy"
CATEGORICAL = "categorical_crossentropy"
BINARY = "binary_crossentropy"
LOSSES = (SPARSE_CATEGORICAL, CATEGORICAL, BINARY)


class RefusedPairing(ValueError):
    """An activation/loss/label combination that would train, but on a wrong premise."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The architecture and its layer sizes; the defaults are the seed's.

    `embedding_dim`, `filters`, `kernel_size`, `pool_size` and `lstm_units` size the seed;
    `l2` and `hidden_units` the tfidf_linear family; `dropout` is the seed's after the embedding
    and tfidf_linear's after its hidden layer (none without one).
    """

    architecture: str = SEED
    embedding_dim: int = 300
    dropout: float = 0.2
    filters: int = 100
    kernel_size: int = 4
    pool_size: int = 4
    lstm_units: int = 100
    # L2 penalty on the kernels fed by the TF-IDF matrix: the loss (a batch mean) gains
    # l2 * sum(w^2), which for 11k rows is scikit-learn's C of about 1/(2 * l2 * rows) = 45.
    l2: float = 1e-6
    hidden_units: int = 0  # 0: the head sits directly on the TF-IDF matrix (a linear model)


@dataclasses.dataclass(frozen=True)
class Head:
    """The output activation, the loss and the decision rule, with the reason they were chosen."""

    activation: str
    loss: str
    multi_label: bool
    threshold: float
    reason: str

    @property
    def one_hot_targets(self) -> bool:
        """Single-label data trained with a loss that wants one column per class."""
        return not self.multi_label and self.loss in (CATEGORICAL, BINARY)


def choose_head(
    multi_label: bool,
    activation: str | None = None,
    loss: str | None = None,
    threshold: float = 0.5,
) -> Head:
    """The head for the labels, honouring overrides that make sense and refusing the rest.

    Raises RefusedPairing (before any training) for softmax on multi-label data, sigmoid with a
    categorical cross-entropy, categorical cross-entropy on multi-label data and softmax with
    binary cross-entropy.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise RefusedPairing(f"--activation {activation!r} is not one of: {', '.join(ACTIVATIONS)}")
    if loss is not None and loss not in LOSSES:
        raise RefusedPairing(f"--loss {loss!r} is not one of: {', '.join(LOSSES)}")
    if not 0.0 < threshold < 1.0:
        raise RefusedPairing(f"--threshold {threshold} must lie strictly between 0 and 1")

    if multi_label:
        activation = activation or SIGMOID
        loss = loss or BINARY
    else:
        activation = activation or (SIGMOID if loss == BINARY else SOFTMAX)
        loss = loss or (BINARY if activation == SIGMOID else SPARSE_CATEGORICAL)

    if activation == SIGMOID and loss in (CATEGORICAL, SPARSE_CATEGORICAL):
        raise RefusedPairing(
            f"refusing sigmoid with {loss}: sigmoid scores are independent and do not sum to one, "
            "but categorical cross-entropy treats them as one probability distribution over "
            "the classes; use softmax with it, or binary_crossentropy with sigmoid"
        )
    if multi_label and activation == SOFTMAX:
        raise RefusedPairing(
            "refusing softmax for multi-label data: softmax makes the classes compete for one "
            "unit of probability, but in this data classes can co-occur on the same row; use "
            "sigmoid with binary_crossentropy (the default for multi-label data)"
        )
    if activation == SOFTMAX and loss == BINARY:
        raise RefusedPairing(
            "refusing softmax with binary_crossentropy: binary cross-entropy scores each class "
            "as an independent yes/no, but softmax scores sum to one and cannot be independent; "
            "use sparse_categorical_crossentropy with softmax, or sigmoid with binary_crossentropy"
        )

    if multi_label:
        reason = (
            "multi-label data: a row may carry several classes, so each class gets its own "
            f"sigmoid score and binary cross-entropy; a class is predicted when its score >= "
            f"{threshold}"
        )
    elif activation == SOFTMAX:
        reason = (
            "single-label data: exactly one class per row, so softmax turns the scores into one "
            f"distribution that sums to one and {loss} compares it with the true class; the "
            "prediction is the most probable class"
        )
    else:
        reason = (
            "single-label data trained one-vs-rest (explicit --activation sigmoid / --loss "
            "binary_crossentropy): each class gets an independent score, the prediction is the "
            "highest score, and the probabilities need not sum to one"
        )
    return Head(activation, loss, multi_label, threshold, reason)


def build_model(
    sequence_length: int,
    id_vocabulary_size: int,
    num_classes: int,
    settings: ModelSettings,
    head: Head,
) -> keras.Model:
    """The seed architecture over token ids int64[batch, sequence_length]."""
    token_ids = keras.Input(shape=(sequence_length,), dtype="int64", name=TOKEN_IDS_KEY)
    x = keras.layers.Embedding(id_vocabulary_size, settings.embedding_dim, name="embedding")(
        token_ids
    )
    x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
    x = keras.layers.Conv1D(
        settings.filters, settings.kernel_size, padding="same", activation="relu", name="conv1d"
    )(x)
    x = keras.layers.MaxPooling1D(settings.pool_size, name="max_pooling1d")(x)
    x = keras.layers.LSTM(settings.lstm_units, return_sequences=True, name="lstm")(x)
    x = keras.layers.GlobalMaxPooling1D(name="global_max_pooling1d")(x)
    probabilities = keras.layers.Dense(num_classes, activation=head.activation, name="head")(x)
    return keras.Model(token_ids, probabilities, name="textclf")


def build_tfidf_linear_model(
    tfidf_dim: int, num_classes: int, settings: ModelSettings, head: Head
) -> keras.Model:
    """The linear family over the sparse TF-IDF matrix float32[batch, tfidf_dim].

    `Input(sparse) -> Dense(K, activation, L2)`: softmax (or sigmoid) regression. With
    `hidden_units`: `Input -> Dense(hidden_units, relu, L2) -> Dropout -> Dense(K, activation)`.
    The sparse input is multiplied as a sparse matrix (Keras's TF backend), so a row costs its
    non-zero n-grams, not tfidf_dim.
    """
    tfidf = keras.Input(shape=(tfidf_dim,), sparse=True, dtype="float32", name=TFIDF_INPUT)
    l2 = keras.regularizers.L2(settings.l2) if settings.l2 else None
    x = tfidf
    if settings.hidden_units:
        x = keras.layers.Dense(
            settings.hidden_units, activation="relu", kernel_regularizer=l2, name="hidden"
        )(x)
        x = keras.layers.Dropout(settings.dropout, name="dropout")(x)
        l2 = None  # the head sees a few dense units, not the sparse n-grams
    probabilities = keras.layers.Dense(
        num_classes, activation=head.activation, kernel_regularizer=l2, name="head"
    )(x)
    return keras.Model(tfidf, probabilities, name="textclf_tfidf_linear")


def build_architecture(
    settings: ModelSettings,
    head: Head,
    num_classes: int,
    *,
    sequence_length: int | None = None,
    id_vocabulary_size: int | None = None,
    tfidf_dim: int | None = None,
) -> keras.Model:
    """The model `settings.architecture` names, sized by the preprocess output's sizes (the
    seed needs `sequence_length` and `id_vocabulary_size`, tfidf_linear `tfidf_dim`)."""
    if settings.architecture == SEED:
        return build_model(sequence_length, id_vocabulary_size, num_classes, settings, head)
    if settings.architecture == TFIDF_LINEAR:
        if not tfidf_dim:
            raise ValueError("the tfidf_linear architecture needs the preprocess tfidf_dim")
        return build_tfidf_linear_model(tfidf_dim, num_classes, settings, head)
    raise ValueError(
        f"architecture {settings.architecture!r} is not one of: {', '.join(ARCHITECTURES)}"
    )


def serving_outputs(
    probabilities: tf.Tensor, label_vocabulary: tf.Tensor, head: Head
) -> dict[str, tf.Tensor]:
    """Probabilities -> the serving signature's outputs (see docs/DESIGN.md, stage 2).

    Single-label: `label` string[batch], the most probable class. Multi-label: `labels`
    string[batch, K], the class name where its probability >= threshold, else "".
    """
    probabilities = tf.cast(probabilities, tf.float32)
    if not head.multi_label:
        best = tf.argmax(probabilities, axis=-1)
        return {OUT_PROBABILITIES: probabilities, OUT_LABEL: tf.gather(label_vocabulary, best)}
    names = tf.broadcast_to(label_vocabulary, tf.shape(probabilities))
    chosen = probabilities >= head.threshold
    return {
        OUT_PROBABILITIES: probabilities,
        OUT_LABELS: tf.where(chosen, names, tf.zeros_like(names)),
    }


def layer_shapes(model: keras.Model) -> list[dict]:
    """Each layer's name, class and output shape (None for the batch), for the model card."""
    return [
        {
            "name": layer.name,
            "class": type(layer).__name__,
            "output_shape": list(_output_shape(layer)),
        }
        for layer in model.layers
    ]


def _output_shape(layer) -> tuple:
    return tuple(layer.output.shape)


def _fmt(shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


def _explain(layer, in_shape, out_shape) -> str:
    """One line on what the layer does to (batch, timesteps, features)."""
    name = type(layer).__name__
    if name == "InputLayer" and layer.sparse:
        return (
            f"the row's TF-IDF weights over {out_shape[1]} n-gram ids, sparse: only the "
            "document's own n-grams are stored (L2-normalised, so each row has length 1)"
        )
    if name == "InputLayer":
        return f"{out_shape[1]} token ids per row (0 = padding, then vocabulary, then OOV buckets)"
    if name == "Embedding":
        return (
            f"looks up a {layer.output_dim}-number vector for each of the {in_shape[1]} ids "
            f"(table of {layer.input_dim} rows): {_fmt(in_shape)} -> {_fmt(out_shape)}"
        )
    if name == "Dropout":
        return (
            f"during training zeroes {layer.rate:.0%} of the values at random; at prediction "
            "it does nothing; shape unchanged"
        )
    if name == "Conv1D":
        return (
            f"slides {layer.filters} filters of width {layer.kernel_size[0]} along time "
            f"(relu); padding='{layer.padding}' keeps all {out_shape[1]} steps: "
            f"{in_shape[2]} features -> {out_shape[2]}"
        )
    if name == "MaxPooling1D":
        return (
            f"keeps the largest of each {layer.pool_size[0]} consecutive steps: "
            f"{in_shape[1]} steps -> {out_shape[1]}, features unchanged"
        )
    if name == "LSTM":
        keep = (
            f"return_sequences=True keeps one output per step: {_fmt(out_shape)}"
            if layer.return_sequences
            else f"returns only the last step: {_fmt(out_shape)}"
        )
        return f"reads the {in_shape[1]} steps in order with {layer.units} units; {keep}"
    if name == "GlobalMaxPooling1D":
        return (
            f"keeps the largest value over time for each of the {in_shape[2]} features: "
            f"{_fmt(in_shape)} -> {_fmt(out_shape)}"
        )
    if name == "Dense":
        l2 = _l2_penalty(layer)
        penalty = f", L2 {l2:g} on its weights" if l2 else ""
        activation = keras.activations.serialize(layer.activation)
        if layer.name == "hidden":
            return (
                f"{layer.units} {activation} units, each a weighted sum of the {in_shape[1]} "
                f"inputs{penalty}: {_fmt(in_shape)} -> {_fmt(out_shape)}"
            )
        if getattr(layer.input, "sparse", False):
            return (
                f"one score per class ({layer.units} classes), a weighted sum of the row's "
                f"TF-IDF weights (a linear model), through {activation}{penalty}: "
                f"{_fmt(in_shape)} -> {_fmt(out_shape)}"
            )
        return (
            f"one score per class ({layer.units} classes) through "
            f"{activation}{penalty}: {_fmt(out_shape)}"
        )
    return f"{_fmt(in_shape)} -> {_fmt(out_shape)}"


def _l2_penalty(layer) -> float:
    """The L2 factor on a layer's kernel; 0 when it has none."""
    regularizer = getattr(layer, "kernel_regularizer", None)
    return float(getattr(regularizer, "l2", 0.0) or 0.0)


def _sparse_input(model: keras.Model) -> bool:
    return any(getattr(tensor, "sparse", False) for tensor in model.inputs)


def _layer_label(layer) -> str:
    """The layer as the seed writes it: Conv1D(100, 4), MaxPooling1D(4), ..."""
    name = type(layer).__name__
    if name == "Embedding":
        return f"Embedding({layer.input_dim}, {layer.output_dim})"
    if name == "Dropout":
        return f"Dropout({layer.rate:g})"
    if name == "Conv1D":
        return f"Conv1D({layer.filters}, {layer.kernel_size[0]})"
    if name == "MaxPooling1D":
        return f"MaxPooling1D({layer.pool_size[0]})"
    if name == "LSTM":
        return f"LSTM({layer.units}{', seq' if layer.return_sequences else ''})"
    if name == "Dense":
        return f"Dense({layer.units})"
    if name == "InputLayer" and layer.sparse:
        return "Input(sparse)"
    return name


def describe_model(model: keras.Model, head: Head) -> str:
    """Each layer with its output shape and what it does, then the head and loss and why."""
    linear = _sparse_input(model)
    axes = "(batch, features)" if linear else "(batch, timesteps, features)"
    lines = [
        f"architecture: {TFIDF_LINEAR if linear else SEED}",
        f"{'layer':<22} {'output shape':<18} what it does to {axes}",
    ]
    for layer in model.layers:
        out_shape = _output_shape(layer)
        in_shape = out_shape if type(layer).__name__ == "InputLayer" else tuple(layer.input.shape)
        label = _layer_label(layer)
        lines.append(f"{label:<22} {_fmt(out_shape):<18} {_explain(layer, in_shape, out_shape)}")
    lines.append(f"parameters: {model.count_params():,}")
    lines.append(f"head: {head.activation}, loss: {head.loss}")
    if head.multi_label:
        lines.append(f"decision threshold: {head.threshold}")
    lines.append(f"why: {head.reason}")
    return "\n".join(lines)
