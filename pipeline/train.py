"""`textclf train`: fit the classifier on a preprocess output and export a raw-text SavedModel.

This module wires the training stage: it parses `TrainOptions`, checks the preprocess directory
(`_SUCCESS`, `preprocess_config.json`, the TFRecords) and the head/loss pairing before any
training, builds the tf.data input (transforms/training_data.py) and the Keras model
(transforms/model.py), fits with per-epoch progress, TensorBoard logs and early stopping, then
writes the model directory under a staging dir and finalizes it with `_SUCCESS` last. The model,
the input pipeline and the metrics live in `transforms/`; the SavedModel export and the PNGs in
pipeline/export.py. `train()` is the in-process entry point for the `textclf run` orchestrator.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import logging
import os
import platform
import sys
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import outputs
from pipeline.options import allow_shared_flags
from transforms.contracts import (
    CONFIG_FILE,
    EVAL,
    EXIT_BAD_INPUT,
    HISTORY_FILE,
    LABEL_KEY,
    LABELS_KEY,
    LABELS_TXT,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    SAVED_MODEL_DIR,
    STATS_FILE,
    SUCCESS_FILE,
    TFRECORD_SUFFIX,
    TRAIN,
)
from transforms.model import ACTIVATIONS, LOSSES, Head, ModelSettings, RefusedPairing, choose_head

log = logging.getLogger(__name__)

# Keys of preprocess_config.json this stage relies on.
REQUIRED_CONFIG_KEYS = (
    "multi_label",
    "sequence_length",
    "id_vocabulary_size",
    "num_classes",
    "label_vocabulary",
)


class BadInput(ValueError):
    """Input the user can fix (exit 2): a missing or unfinished directory, a refused pairing."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Layer sizes and head choice: shared by `train` and `describe`."""
    defaults = ModelSettings()
    group = parser.add_argument_group("model")
    group.add_argument("--embedding_dim", type=int, default=defaults.embedding_dim)
    group.add_argument("--dropout", type=float, default=defaults.dropout)
    group.add_argument("--filters", type=int, default=defaults.filters, help="Conv1D filters")
    group.add_argument("--kernel_size", type=int, default=defaults.kernel_size)
    group.add_argument("--pool_size", type=int, default=defaults.pool_size)
    group.add_argument("--lstm_units", type=int, default=defaults.lstm_units)
    group.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=None,
        help="output activation; default from the labels (softmax single-, sigmoid multi-label)",
    )
    group.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="default from the labels (sparse categorical / binary cross-entropy)",
    )
    group.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="multi-label decision threshold on each class's probability",
    )


class TrainOptions(PipelineOptions):
    """Flags of `textclf train`; also reused by `textclf run` and the tests."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Beam's get_all_options() builds ONE parser from every PipelineOptions subclass loaded
        # in the process (preprocess, train and score in `textclf run` or a test session). So no
        # flag here may be required (checked in main instead), and a flag another stage also
        # declares (--model_dir, with score) must replace rather than clash: "resolve".
        allow_shared_flags(parser)
        parser.add_argument("--data_dir", help="a finished preprocess output (required)")
        parser.add_argument("--model_dir", help="where the model dir is written (required)")
        parser.add_argument("--epochs", type=int, default=8)
        parser.add_argument("--batch_size", type=int, default=64)
        parser.add_argument("--learning_rate", type=float, default=1e-3)
        parser.add_argument(
            "--early_stopping_patience",
            type=int,
            default=2,
            help="epochs without a lower eval loss before stopping (best weights are kept)",
        )
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--shuffle_buffer", type=int, default=10_000)
        add_model_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    TrainOptions._add_argparse_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf train",
        description="Fit the Conv1D+LSTM classifier on a preprocess output; export a SavedModel "
        "that takes raw text.",
    )
    add_arguments(parser)
    return parser


def settings_from(data_dir: str, model_dir: str, **settings) -> argparse.Namespace:
    """The parser's defaults overridden by keyword settings (unknown names are refused)."""
    opts = build_parser().parse_args(["--data_dir", data_dir, "--model_dir", model_dir])
    unknown = sorted(set(settings) - set(vars(opts)))
    if unknown:
        raise TypeError(f"unknown train settings: {', '.join(unknown)}")
    for key, value in settings.items():
        setattr(opts, key, value)
    return opts


def model_settings(opts: argparse.Namespace) -> ModelSettings:
    return ModelSettings(
        **{f.name: getattr(opts, f.name) for f in dataclasses.fields(ModelSettings)}
    )


def read_preprocess_config(data_dir: str) -> dict:
    """preprocess_config.json of a finished preprocess output, or BadInput saying what to do."""
    if not outputs.is_complete(data_dir):
        raise BadInput(
            f"{data_dir} has no {SUCCESS_FILE}: it is not a finished preprocess output; run "
            "`textclf preprocess --output_dir` there (again) first"
        )
    path = os.path.join(data_dir, CONFIG_FILE)
    try:
        config = outputs.read_json(path)
    except Exception as err:  # noqa: BLE001 - any unreadable config is the same user error
        raise BadInput(f"cannot read {path}: {err}") from err
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise BadInput(f"{path} lacks {', '.join(missing)}; re-run `textclf preprocess`")
    return config


def head_for(config: dict, opts: argparse.Namespace) -> Head:
    try:
        return choose_head(bool(config["multi_label"]), opts.activation, opts.loss, opts.threshold)
    except RefusedPairing as err:
        raise BadInput(str(err)) from err


def split_pattern(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}-*{TFRECORD_SUFFIX}")


@dataclasses.dataclass
class TrainResult:
    model: object  # keras.Model; typed loosely so importing this module stays light
    metrics: dict
    history: dict
    model_card: dict


def _count_records(pattern: str) -> int:
    import tensorflow as tf

    files = tf.io.gfile.glob(pattern)
    if not files:
        return 0
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _epoch_event_logger(log_dir: str):
    """A Keras callback writing per-epoch scalars as TensorBoard event files.

    Keras's own TensorBoard callback needs the `tensorboard` package for `tf.summary.scalar`;
    the pinned install does not carry it, so this writes the same `logs/train` and
    `logs/validation` runs (tags `epoch_<metric>`, scalars plugin) with TF core's
    `tf.summary.write`, which any TensorBoard reads.
    """
    import keras
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    scalars = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    ).SerializeToString()

    class EpochEventLogger(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.writers = {
                run: tf.summary.create_file_writer(os.path.join(log_dir, run))
                for run in ("train", "validation")
            }

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                with self.writers[run].as_default():
                    tf.summary.write(
                        f"epoch_{name}", tf.constant(float(value)), step=epoch, metadata=scalars
                    )

        def on_train_end(self, logs=None):
            for writer in self.writers.values():
                writer.close()

    return EpochEventLogger()


def _versions() -> dict:
    import apache_beam
    import keras
    import tensorflow as tf
    import tensorflow_transform as tft

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_transform": tft.__version__,
        "apache_beam": apache_beam.__version__,
    }


def new_model_version(now: _dt.datetime | None = None) -> str:
    """`20261125T143000Z-1a2b3c4d`: UTC time of the export plus 8 random hex digits."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def run_training(opts: argparse.Namespace) -> TrainResult:
    """Check, fit, evaluate, export and finalize; returns the in-memory model beside the files."""
    config = read_preprocess_config(opts.data_dir)
    head = head_for(config, opts)
    settings = model_settings(opts)
    train_pattern = split_pattern(opts.data_dir, TRAIN)
    eval_pattern = split_pattern(opts.data_dir, EVAL)

    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from pipeline import export
    from transforms import evaluation
    from transforms.model import build_model, layer_shapes
    from transforms.training_data import make_dataset

    train_rows = _count_records(train_pattern)
    eval_rows = _count_records(eval_pattern)
    if train_rows == 0 or eval_rows == 0:
        raise BadInput(
            f"{opts.data_dir} has {train_rows} train and {eval_rows} eval rows in "
            f"*{TFRECORD_SUFFIX}; both splits need rows (check the corpus and the eval split)"
        )

    tft_output = tft.TFTransformOutput(opts.data_dir)
    feature_spec = tft_output.transformed_feature_spec()
    target_key = LABELS_KEY if head.multi_label else LABEL_KEY
    num_classes = int(config["num_classes"])
    class_names = [str(n) for n in config["label_vocabulary"]]
    one_hot = num_classes if head.one_hot_targets else None

    keras.utils.set_random_seed(opts.seed)
    train_ds = make_dataset(
        train_pattern,
        feature_spec,
        target_key,
        opts.batch_size,
        shuffle=True,
        shuffle_buffer=opts.shuffle_buffer,
        seed=opts.seed,
        one_hot_depth=one_hot,
    )
    eval_ds = make_dataset(
        eval_pattern, feature_spec, target_key, opts.batch_size, one_hot_depth=one_hot
    )
    # Known lengths give Keras a step count for its progress line (and no "ran out of data").
    train_ds = train_ds.apply(
        tf.data.experimental.assert_cardinality(-(-train_rows // opts.batch_size))
    )
    eval_ds = eval_ds.apply(
        tf.data.experimental.assert_cardinality(-(-eval_rows // opts.batch_size))
    )

    model = build_model(
        int(config["sequence_length"]),
        int(config["id_vocabulary_size"]),
        num_classes,
        settings,
        head,
    )
    if head.multi_label:
        fit_metrics = [
            keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=head.threshold),
            keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc"),
        ]
    elif one_hot:
        fit_metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        fit_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.Adam(opts.learning_rate), loss=head.loss, metrics=fit_metrics
    )

    staging = outputs.staging_dir(opts.model_dir)
    try:
        callbacks = [
            _epoch_event_logger(os.path.join(staging, LOGS_DIR)),
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=opts.early_stopping_patience,
                restore_best_weights=True,
            ),
        ]
        log.info(
            "training on %d rows, validating on %d, for up to %d epochs",
            train_rows,
            eval_rows,
            opts.epochs,
        )
        fitted = model.fit(
            train_ds,
            validation_data=eval_ds,
            epochs=opts.epochs,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=2,
        )
        history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}

        # Unshuffled, one_hot off: targets as stored, in the same order as the predictions.
        eval_plain = make_dataset(eval_pattern, feature_spec, target_key, opts.batch_size)
        probabilities = model.predict(eval_plain.map(lambda x, y: x), verbose=0)
        targets = np.concatenate([y.numpy() for _, y in eval_plain])
        if head.multi_label:
            metrics = evaluation.multi_label_metrics(
                targets, probabilities, class_names, head.threshold
            )
        else:
            metrics = evaluation.single_label_metrics(targets, probabilities, class_names)
        metrics["rows_seen"] = {TRAIN: train_rows, EVAL: eval_rows}
        metrics["epochs_run"] = len(history.get("loss", []))

        export.export_saved_model(
            model, tft_output, class_names, head, os.path.join(staging, SAVED_MODEL_DIR)
        )
        outputs.write_text(os.path.join(staging, LABELS_TXT), "\n".join(class_names) + "\n")
        outputs.write_json(os.path.join(staging, METRICS_FILE), metrics)
        outputs.write_json(os.path.join(staging, HISTORY_FILE), history)
        stats_path = os.path.join(opts.data_dir, STATS_FILE)
        card = {
            "model_version": new_model_version(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(),
            "data_dir": opts.data_dir,
            "preprocess_config": config,
            "data_stats": (
                outputs.read_json(stats_path) if FileSystems.exists(stats_path) else None
            ),
            # What the scorer reads (transforms/scoring.py): the head, and the multi-label
            # threshold the serving signature applies, without loading the SavedModel.
            "multi_label": head.multi_label,
            "threshold": head.threshold if head.multi_label else None,
            "model": dataclasses.asdict(settings),
            "head": dataclasses.asdict(head),
            "training": {
                k: getattr(opts, k)
                for k in (
                    "epochs",
                    "batch_size",
                    "learning_rate",
                    "early_stopping_patience",
                    "seed",
                    "shuffle_buffer",
                )
            },
            "epochs_run": metrics["epochs_run"],
            "parameters": int(model.count_params()),
            "layers": layer_shapes(model),
            "versions": _versions(),
        }
        outputs.write_json(os.path.join(staging, MODEL_CARD_FILE), card)
        export.write_reports(history, metrics, class_names, head, staging)
        outputs.finalize(staging, opts.model_dir)
    except BaseException:
        outputs.discard(staging)
        raise
    log.info("model %s written to %s", card["model_version"], opts.model_dir)
    return TrainResult(model, metrics, history, card)


def train(data_dir: str, model_dir: str, **settings) -> dict:
    """In-process entry point: train and export; returns the eval metrics (metrics.json)."""
    return run_training(settings_from(data_dir, model_dir, **settings)).metrics


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts, unknown = parser.parse_known_args(argv)
    if not opts.data_dir or not opts.model_dir:
        parser.error("--data_dir and --model_dir are required")
    if unknown:
        print(f"textclf train: unknown flags: {' '.join(unknown)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = run_training(opts)
    except BadInput as err:
        print(f"textclf train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - one line for the user; the traceback goes to the log
        log.debug("training failed", exc_info=True)
        print(f"textclf train: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    print(
        f"model written to {opts.model_dir}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
    )
    return 0
