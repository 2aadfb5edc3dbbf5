"""`textclf train`: fit the classifier on a preprocess output and export a raw-text SavedModel.

This module wires the training stage: it parses `TrainOptions`, checks the preprocess directory
(`_SUCCESS`, `preprocess_config.json`, the TFRecords) and the head/loss pairing before any
training, builds the tf.data input (transforms/training_data.py) and the Keras model
(transforms/model.py), fits with per-epoch progress, TensorBoard logs and early stopping (a
killed run's rerun resumes from its last finished epoch: `TrainingBackup`), then
writes the model directory under a staging dir and finalizes it with `_SUCCESS` last. The model,
the input pipeline and the metrics live in `transforms/`; the SavedModel export and the PNGs in
pipeline/export.py. `train()` is the in-process entry point for the `textclf run` orchestrator.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
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
    TRAIN_STAGE,
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


def _epoch_event_logger(log_dir: str, replay: dict | None = None):
    """A Keras callback writing per-epoch scalars as TensorBoard event files.

    Keras's own TensorBoard callback needs the `tensorboard` package for `tf.summary.scalar`;
    the pinned install does not carry it, so this writes the same `logs/train` and
    `logs/validation` runs (tags `epoch_<metric>`, scalars plugin) with TF core's
    `tf.summary.write`, which any TensorBoard reads. `replay` (a history, `{metric: [per
    epoch]}`) is written first, as epochs 0.., when training resumes: the killed run's event
    files died with its staging dir, and the logs must hold every epoch once.
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
            for epoch in range(len((replay or {}).get("loss", []))):
                self.on_epoch_end(epoch, {k: v[epoch] for k, v in replay.items() if epoch < len(v)})

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


# ---------------------------------------------------------------------------------------------
# Resuming a killed training (docs/DESIGN.md, Stage 2, "Resume").

BACKUP_KERAS_DIR = "keras"  # keras.callbacks.BackupAndRestore's own files, nothing else
BACKUP_SETTINGS_FILE = "settings.json"
BACKUP_STATE_FILE = "state.json"
_KERAS_WEIGHTS = "latest.weights.h5"  # the names BackupAndRestore writes (Keras 3)
_KERAS_METADATA = "training_metadata.json"


def backup_settings(opts: argparse.Namespace) -> dict:
    """What a backup was made under; it is reused only when all of it is the same again: every
    flag but --model_dir, the data dir's `_SUCCESS` time (a re-preprocessed dir differs) and the
    TensorFlow and Keras versions (the weights file format)."""
    import keras
    import tensorflow as tf

    settings = {k: v for k, v in vars(opts).items() if k != "model_dir"}
    if outputs.is_local(opts.data_dir):
        settings["data_dir"] = os.path.abspath(opts.data_dir)
    settings["data_dir_success"] = outputs.read_text(
        FileSystems.join(opts.data_dir, SUCCESS_FILE)
    ).strip()
    settings["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _write_bytes(path: str, data: bytes) -> None:
    """Write `path` whole or not at all: a temp file renamed over it locally (object stores
    publish an object only when its upload completes)."""
    if not outputs.is_local(path):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(_read_bytes(path)).hexdigest()


class TrainingBackup:
    """`outputs.backup_dir(model_dir)`: what a rerun of the same `textclf train` resumes from.

    - `keras/`: `keras.callbacks.BackupAndRestore` (weights and optimizer state after every
      epoch, and the epoch count), which restores them and makes `fit` start at the next epoch;
    - `settings.json`: `backup_settings(opts)`; a rerun with any difference discards the backup
      (logging which settings differ) and starts from epoch 1;
    - `state.json`: what BackupAndRestore does not keep, written after it at the end of every
      epoch: the whole history, the early-stopping state (`wait`, `best`, `best_epoch`, and the
      best weights in `best-<epoch>.npz`), the dropout layers' RNG states (Keras keeps them out
      of the weights file), whether training stopped, and the SHA-256 of BackupAndRestore's
      weights file. A kill while the two are written leaves them disagreeing (epoch count or
      checksum); the backup is then discarded rather than resumed from a mixed state.

    `textclf train` removes the directory after a successful finalize; a failed or killed run
    leaves it for the rerun.
    """

    def __init__(self, model_dir: str, settings: dict):
        self.dir = outputs.backup_dir(model_dir)
        self.keras_dir = FileSystems.join(self.dir, BACKUP_KERAS_DIR)
        self.settings = settings

    def _path(self, name: str) -> str:
        return FileSystems.join(self.dir, name)

    def open(self) -> dict | None:
        """The saved state when the backup can be resumed from, else None after starting a fresh
        backup (an unusable one is discarded, with the reason logged)."""
        state = None
        if FileSystems.exists(self._path(BACKUP_SETTINGS_FILE)):
            state, reason = self._usable_state()
            if state is None:
                log.info("discarding the training backup %s: %s", self.dir, reason)
        if state is None:
            self.discard()
            if outputs.is_local(self.dir):
                os.makedirs(self.dir, exist_ok=True)
            outputs.write_json(self._path(BACKUP_SETTINGS_FILE), self.settings)
        return state

    def _usable_state(self) -> tuple[dict | None, str]:
        try:
            saved = outputs.read_json(self._path(BACKUP_SETTINGS_FILE))
        except Exception as err:  # noqa: BLE001 - an unreadable backup is only discarded
            return None, f"cannot read its {BACKUP_SETTINGS_FILE} ({err})"
        if saved != self.settings:
            changed = sorted(set(saved) | set(self.settings))
            changed = [k for k in changed if saved.get(k) != self.settings.get(k)]
            return None, "it was made with other settings: " + ", ".join(
                f"{k} {saved.get(k)!r} -> {self.settings.get(k)!r}" for k in changed
            )
        if not FileSystems.exists(self._path(BACKUP_STATE_FILE)):
            return None, "no epoch had finished"
        try:
            state = outputs.read_json(self._path(BACKUP_STATE_FILE))
            keras_meta = outputs.read_json(FileSystems.join(self.keras_dir, _KERAS_METADATA))
            weights_sha = _sha256(FileSystems.join(self.keras_dir, _KERAS_WEIGHTS))
            best = state["best_weights"]
            if best and not FileSystems.exists(self._path(best)):
                return None, f"{best} is missing"
        except Exception as err:  # noqa: BLE001
            return None, f"it is incomplete ({type(err).__name__}: {err})"
        if (
            keras_meta.get("epoch") != state["epochs_done"]
            or weights_sha != state["weights_sha256"]
        ):
            return None, "the run was killed while saving an epoch (its files disagree)"
        return state, ""

    def discard(self) -> None:
        outputs.discard(self.dir)

    def write_weights(self, name: str, weights: list) -> None:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, *weights)
        _write_bytes(self._path(name), buffer.getvalue())

    def read_weights(self, name: str) -> list:
        import io

        import numpy as np

        with np.load(io.BytesIO(_read_bytes(self._path(name)))) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def write_state(self, state: dict) -> None:
        state["weights_sha256"] = _sha256(FileSystems.join(self.keras_dir, _KERAS_WEIGHTS))
        _write_bytes(
            self._path(BACKUP_STATE_FILE),
            (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        )

    def remove(self, name: str) -> None:
        path = self._path(name)
        if FileSystems.exists(path):
            FileSystems.delete([path])


def _seed_states(model) -> list:
    """The RNG states of the model's SeedGenerators (dropout masks), in a fixed order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _backup_state_callback(backup: TrainingBackup, early_stopping, state: dict | None):
    """The Keras callback that keeps `backup`'s state.json and restores from it.

    It must come after EarlyStopping and BackupAndRestore in the callback list: on train begin
    it restores the early-stopping state that EarlyStopping has just reset, and at every epoch
    end it records the files BackupAndRestore has just written.
    """
    import keras

    class BackupState(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {k: list(v) for k, v in (state or {}).get("history", {}).items()}
            self.best_file = (state or {}).get("best_weights")

        def on_train_begin(self, logs=None):
            if not state:
                return
            saved = state["early_stopping"]
            early_stopping.wait = saved["wait"]
            early_stopping.best = saved["best"]
            early_stopping.best_epoch = saved["best_epoch"]
            if self.best_file:
                early_stopping.best_weights = backup.read_weights(self.best_file)
            for variable, value in zip(_seed_states(self.model), state["seed_states"], strict=True):
                variable.assign(value)

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                self.history.setdefault(key, []).append(float(value))
            old_best = self.best_file
            if early_stopping.best_weights is not None and early_stopping.best_epoch == epoch:
                self.best_file = f"best-{epoch}.npz"
                backup.write_weights(self.best_file, early_stopping.best_weights)
            best = early_stopping.best
            backup.write_state(
                {
                    "epochs_done": epoch + 1,
                    "stopped": bool(self.model.stop_training),
                    "history": self.history,
                    "early_stopping": {
                        "wait": int(early_stopping.wait),
                        "best": None if best is None else float(best),
                        "best_epoch": int(early_stopping.best_epoch),
                    },
                    "best_weights": self.best_file,
                    "seed_states": [v.numpy().tolist() for v in _seed_states(self.model)],
                }
            )
            if old_best and old_best != self.best_file:
                backup.remove(old_best)

    return BackupState()


# Iterators Keras 3 (3.15, TF backend) opens on the training dataset per epoch: with a known
# length and no steps_per_epoch, EpochIterator opens one at the end of each epoch, drops it, and
# opens another at the start of the next. A resumed run must open as many (see _skip_epochs).
KERAS_ITERATORS_PER_EPOCH = 2


def _skip_epochs(dataset, epochs: int) -> None:
    """Advance `dataset`'s shuffle order past `epochs` epochs without reading them.

    The training data are shuffled with a fixed seed and `reshuffle_each_iteration`: every
    iterator opened on the dataset advances its seed generator once, so an epoch's order is
    fixed by how many iterators were opened before it (2 per epoch, by Keras). A resumed `fit`
    starts on a fresh dataset, whose first iterator would replay epoch 1's order. Opening and
    dropping as many iterators as the finished epochs took gives the resumed epochs the orders
    the uninterrupted run had. Together with the restored weights, optimizer state, dropout RNG
    states and early-stopping state, a resumed model is bit-identical to an uninterrupted one
    on CPU (tests/pipeline/test_train.py holds this). Uninterrupted runs are unchanged, so the
    orders the published figures were measured with are kept; the cost is this dependence on
    Keras's iterator count, which the test would catch if a Keras upgrade changed it.
    """
    for _ in range(KERAS_ITERATORS_PER_EPOCH * epochs):
        iterator = iter(dataset)
        del iterator


def run_training(opts: argparse.Namespace) -> TrainResult:
    """Check, fit, evaluate, export and finalize; returns the in-memory model beside the files."""
    try:
        outputs.check_replaceable(opts.model_dir, TRAIN_STAGE)
    except outputs.OutputNotReplaceable as err:
        raise BadInput(str(err)) from None
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

    # A rerun of a killed training resumes after its last finished epoch (TrainingBackup).
    backup = TrainingBackup(opts.model_dir, backup_settings(opts))
    resumed = backup.open()
    epochs_restored = resumed["epochs_done"] if resumed else 0
    staging = outputs.staging_dir(opts.model_dir)
    try:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=opts.early_stopping_patience,
            restore_best_weights=True,
        )
        backup_state = _backup_state_callback(backup, early_stopping, resumed)
        event_logger = _epoch_event_logger(
            os.path.join(staging, LOGS_DIR), replay=resumed and resumed["history"]
        )
        if resumed and (resumed["stopped"] or epochs_restored >= opts.epochs):
            # Killed after fitting (while evaluating or exporting): the best weights are what
            # EarlyStopping would have restored.
            log.info(
                "training had finished (%d epochs) before the interruption; exporting the best "
                "weights from %s",
                epochs_restored,
                backup.dir,
            )
            model.set_weights(backup.read_weights(resumed["best_weights"]))
            event_logger.on_train_begin()
            event_logger.on_train_end()
        else:
            if resumed:
                log.info(
                    "resuming from epoch %d of %d: epochs 1-%d restored from %s",
                    epochs_restored + 1,
                    opts.epochs,
                    epochs_restored,
                    backup.dir,
                )
                _skip_epochs(train_ds, epochs_restored)
            log.info(
                "training on %d rows, validating on %d, for up to %d epochs",
                train_rows,
                eval_rows,
                opts.epochs,
            )
            model.fit(
                train_ds,
                validation_data=eval_ds,
                epochs=opts.epochs,
                callbacks=[
                    event_logger,
                    early_stopping,
                    # Weights, optimizer state and the epoch count; loaded (and `fit` started at
                    # the next epoch) when `resumed`. Kept after fit: removed after finalize.
                    keras.callbacks.BackupAndRestore(backup.keras_dir, delete_checkpoint=False),
                    backup_state,  # after both: see _backup_state_callback
                ],
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=2,
            )
        history = backup_state.history  # every epoch, the restored ones included

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
            "epochs_restored": epochs_restored,
            "parameters": int(model.count_params()),
            "layers": layer_shapes(model),
            "versions": _versions(),
        }
        outputs.write_json(os.path.join(staging, MODEL_CARD_FILE), card)
        export.write_reports(history, metrics, class_names, head, staging)
        outputs.finalize(staging, opts.model_dir, TRAIN_STAGE)
    except BaseException:
        outputs.discard(staging)  # the backup stays, for the rerun
        raise
    backup.discard()
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
    # Anything else propagates: pipeline/cli.py prints its traceback and exits 1.
    summary = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    print(
        f"model written to {opts.model_dir}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
    )
    return 0
