"""The classifier: its head and loss, the Keras graph, and a plain-words account of its shapes.

This module owns the model: `choose_head` picks (or refuses) the output activation and loss for
the labels at hand, `build_model` builds the seed architecture (Embedding -> Dropout -> Conv1D ->
MaxPooling1D -> LSTM -> GlobalMaxPooling1D -> Dense) from plain sizes, `serving_outputs` turns
probabilities into class names the way the exported signature returns them, and `describe_model`
explains each layer. It reads no files and parses no flags: sizes come from the caller, who reads
them from the preprocess output (pipeline/train.py, pipeline/describe.py).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from transforms.contracts import OUT_LABEL, OUT_LABELS, OUT_PROBABILITIES, TOKEN_IDS_KEY

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
    """Layer sizes of the seed architecture; the defaults are the seed's."""

    embedding_dim: int = 300
    dropout: float = 0.2
    filters: int = 100
    kernel_size: int = 4
    pool_size: int = 4
    lstm_units: int = 100


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
        return (
            f"one score per class ({layer.units} classes) through "
            f"{keras.activations.serialize(layer.activation)}: {_fmt(out_shape)}"
        )
    return f"{_fmt(in_shape)} -> {_fmt(out_shape)}"


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
    return name


def describe_model(model: keras.Model, head: Head) -> str:
    """Each layer with its output shape and what it does, then the head and loss and why."""
    lines = [f"{'layer':<22} {'output shape':<18} what it does to (batch, timesteps, features)"]
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
