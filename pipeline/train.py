"""`textclf train`: fit the classifier on a preprocess output and export a raw-text SavedModel.

This module wires the training stage: it parses its flags (`build_parser`), checks the preprocess directory
(read through pipeline/artifacts.py's `PreprocessOutput`: `_SUCCESS`, `preprocess_config.json`,
the rows per split in `stats.json`, the TF-IDF features when `--architecture tfidf_linear` needs
them) and the head/loss pairing before any training, builds the tf.data input
(transforms/training_data.py) and the Keras model of the chosen family (transforms/model.py), fits (in
one process, over the local devices or across workers: `--distribution`, pipeline/distribution.py) with
per-epoch progress, TensorBoard logs and early stopping (a killed run's rerun resumes from its
last finished epoch: pipeline/training_backup.py), then writes the model directory under a staging dir and
finalizes it with `_SUCCESS` last. The model, the input pipeline and the metrics live in
`transforms/`; the SavedModel export and the PNGs in pipeline/export.py. `train()` is the
in-process entry point for the `textclf run` orchestrator.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import logging
import os
import sys
import uuid
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline import distribution, outputs
from pipeline.artifacts import IncompleteOutput, PreprocessOutput
from pipeline.options import parse_own_flags
from pipeline.training_backup import (
    KERAS_WEIGHTS_FILE,
    TrainingBackup,
    backup_settings,
    backup_state_callback,
    skip_epochs,
)
from pipeline.versions import package_versions
from transforms.contracts import (
    EVAL,
    EXIT_BAD_INPUT,
    FEATURE_TFIDF,
    HISTORY_FILE,
    LABEL_KEY,
    LABELS_KEY,
    LABELS_TXT,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    SAVED_MODEL_DIR,
    STATS_FILE,
    TRAIN,
    TRAIN_STAGE,
    TRAINING_PROFILE_FILE,
)
from transforms.model import (
    ACTIVATIONS,
    ARCHITECTURES,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    LOSSES,
    SEED,
    TFIDF_LINEAR,
    Head,
    ModelSettings,
    RefusedPairing,
    choose_head,
)

log = logging.getLogger(__name__)

# Vertex AI custom training with a TensorBoard instance sets this to where it reads logs from.
VERTEX_TENSORBOARD_ENV = "AIP_TENSORBOARD_LOG_DIR"


class BadInput(ValueError):
    """Input the user can fix (exit 2): a missing or unfinished directory, a refused pairing."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Architecture, layer sizes and head choice: shared by `train` and `describe`."""
    defaults = ModelSettings()
    group = parser.add_argument_group("model")
    group.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default=defaults.architecture,
        help=f"model family (default {SEED}): {SEED} = Embedding+Conv1D+LSTM over token ids; "
        f"{TFIDF_LINEAR} = an L2-regularised softmax/sigmoid head over the sparse TF-IDF "
        "features (preprocess with --features sequence,tfidf)",
    )
    group.add_argument(
        "--embedding_dim",
        type=int,
        default=defaults.embedding_dim,
        help=f"{SEED} only: size of each token's embedding vector (default: %(default)s)",
    )
    group.add_argument(
        "--dropout",
        type=float,
        default=defaults.dropout,
        help=f"dropout rate (default {defaults.dropout}): {SEED} after the embedding, "
        f"{TFIDF_LINEAR} after its hidden layer (none without one)",
    )
    group.add_argument(
        "--filters",
        type=int,
        default=defaults.filters,
        help=f"{SEED} only: Conv1D filters (default: %(default)s)",
    )
    group.add_argument(
        "--kernel_size",
        type=int,
        default=defaults.kernel_size,
        help=f"{SEED} only: Conv1D window, in tokens (default: %(default)s)",
    )
    group.add_argument(
        "--pool_size",
        type=int,
        default=defaults.pool_size,
        help=f"{SEED} only: max-pooling window after the Conv1D (default: %(default)s)",
    )
    group.add_argument(
        "--lstm_units",
        type=int,
        default=defaults.lstm_units,
        help=f"{SEED} only: units of the LSTM (default: %(default)s)",
    )
    group.add_argument(
        "--l2",
        type=float,
        default=defaults.l2,
        help=f"{TFIDF_LINEAR} only: L2 penalty on the weights over the TF-IDF features "
        f"(default {defaults.l2:g}; 0 = none)",
    )
    group.add_argument(
        "--hidden_units",
        type=int,
        default=defaults.hidden_units,
        help=f"{TFIDF_LINEAR} only: units of one relu hidden layer before the head "
        f"(default {defaults.hidden_units} = none: a linear model)",
    )
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
        help="multi-label decision threshold on each class's probability (default: %(default)s)",
    )


class TrainOptions(argparse.Namespace):
    """The training stage's settings: one attribute per flag of `build_parser()` (no Beam)."""

    data_dir: str
    model_dir: str
    epochs: int | None  # None: the architecture's default (resolved_defaults)
    batch_size: int
    learning_rate: float | None  # None: the architecture's default (resolved_defaults)
    early_stopping_patience: int
    seed: int
    shuffle_buffer: int
    tensorboard_dir: str  # "": tensorboard_dir() picks the default
    distribution: str  # pipeline/distribution.py: none, mirrored, multi_worker
    # add_model_arguments:
    architecture: str
    embedding_dim: int
    dropout: float
    filters: int
    kernel_size: int
    pool_size: int
    lstm_units: int
    l2: float
    hidden_units: int
    activation: str | None
    loss: str | None
    threshold: float


def build_parser() -> argparse.ArgumentParser:
    """The stage's own flags, the one source of them (the CLI, `textclf run`, the tests)."""
    parser = argparse.ArgumentParser(
        prog="textclf train",
        description="Fit the classifier (the Conv1D+LSTM seed, or a linear model over TF-IDF "
        "features) on a preprocess output; export a SavedModel that takes raw text.",
        allow_abbrev=False,
    )
    parser.add_argument("--data_dir", required=True, help="a finished preprocess output (required)")
    parser.add_argument(
        "--model_dir", required=True, help="where the model dir is written (required)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="the most epochs to fit (early stopping may end sooner); default by "
        "--architecture: " + ", ".join(f"{arch} {n}" for arch, n in DEFAULT_EPOCHS.items()),
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="examples per step and model replica: one replica but under --distribution "
        "mirrored/multi_worker, where a step reads --batch_size x replicas (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="Adam's learning rate; default by --architecture: "
        + ", ".join(f"{arch} {rate:g}" for arch, rate in DEFAULT_LEARNING_RATE.items()),
    )
    parser.add_argument(
        "--early_stopping_patience",
        type=int,
        default=2,
        help="epochs without a lower eval loss before stopping, best weights kept (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the weights' initialisation and the shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--shuffle_buffer",
        type=int,
        default=10_000,
        help="training examples held in the shuffle buffer (default: %(default)s)",
    )
    parser.add_argument(
        "--tensorboard_dir",
        default="",
        help="also write TensorBoard logs live here while training runs (local or gs://; "
        "outside --model_dir); default: $" + VERTEX_TENSORBOARD_ENV + " when set (Vertex AI), "
        "else none. They always go live to logs/ in the training backup beside --model_dir, "
        "which the model's logs/ copies",
    )
    parser.add_argument(
        "--distribution",
        choices=distribution.DISTRIBUTIONS,
        default=distribution.NONE,
        help=distribution.HELP,
    )
    add_model_arguments(parser)
    return parser


def parse(argv: Sequence[str]) -> TrainOptions:
    """The stage's options from `argv`; any other flag exits 2 naming it (pipeline/options.py)."""
    return parse_own_flags(build_parser(), argv, TrainOptions())


def settings_from(data_dir: str, model_dir: str, **settings) -> TrainOptions:
    """The parser's defaults overridden by keyword settings (unknown names are refused)."""
    opts = parse(["--data_dir", data_dir, "--model_dir", model_dir])
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


def resolved_defaults(opts: TrainOptions) -> TrainOptions:
    """A copy of `opts` with the defaults that depend on --architecture filled in (the
    learning rate and the epoch cap), so the backup settings and the model card record the
    values used."""
    opts = copy.copy(opts)
    if opts.epochs is None:
        opts.epochs = DEFAULT_EPOCHS[opts.architecture]
    if opts.learning_rate is None:
        opts.learning_rate = DEFAULT_LEARNING_RATE[opts.architecture]
    return opts


def check_architecture(data: PreprocessOutput, settings: ModelSettings) -> None:
    """BadInput unless the preprocess output holds the features the architecture reads."""
    if settings.architecture == TFIDF_LINEAR and FEATURE_TFIDF not in data.features:
        raise BadInput(
            f"--architecture {TFIDF_LINEAR} needs TF-IDF features, but {data.dir} was "
            f"preprocessed with --features {','.join(data.features)}; preprocess with "
            f"--features sequence,{FEATURE_TFIDF}, or train --architecture {SEED}"
        )


def build_model_for(config: dict, settings: ModelSettings, head: Head):
    """The (uncompiled) Keras model of `settings.architecture`, sized by a preprocess output's
    preprocess_config.json `config`: what `train` fits and `describe` explains."""
    from transforms.model import build_architecture

    return build_architecture(
        settings,
        head,
        int(config["num_classes"]),
        sequence_length=int(config["sequence_length"]),
        id_vocabulary_size=int(config["id_vocabulary_size"]),
        tfidf_dim=int(config["tfidf_dim"]) if config.get("tfidf_dim") else None,
    )


def head_for(multi_label: bool, opts: argparse.Namespace) -> Head:
    """The head `--activation`/`--loss`/`--threshold` ask for on these labels; BadInput when
    the pairing is refused."""
    try:
        return choose_head(multi_label, opts.activation, opts.loss, opts.threshold)
    except RefusedPairing as err:
        raise BadInput(str(err)) from err


@dataclasses.dataclass
class TrainResult:
    model: object  # keras.Model; typed loosely so importing this module stays light
    metrics: dict
    history: dict
    model_card: dict


def tensorboard_callback(log_dir: str):
    """Keras's TensorBoard callback writing per-epoch scalars (`logs/train`, `logs/validation`,
    tags `epoch_<metric>`) to `log_dir`, flushed at every epoch end so TensorBoard shows a
    running training live and a killed run keeps the epochs it finished. No graph, histograms
    or per-batch scalars: a resumed run appends its epochs to the same files' directory."""
    import keras

    class LiveTensorBoard(keras.callbacks.TensorBoard):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            for writer in self._writers.values():
                writer.flush()

    return LiveTensorBoard(log_dir=log_dir, write_graph=False, update_freq="epoch")


def tensorboard_dirs(opts: argparse.Namespace) -> list[str]:
    """Where live TensorBoard logs go while training runs: always `logs/` in the training
    backup beside --model_dir (kept across a kill, so a resumed run's logs hold every epoch;
    copied into the model's `logs/` at export), and also --tensorboard_dir, else Vertex AI's
    AIP_TENSORBOARD_LOG_DIR when set (only ever written to: never copied, cleaned or removed)."""
    own = FileSystems.join(outputs.backup_dir(opts.model_dir), LOGS_DIR)
    extra = opts.tensorboard_dir or os.environ.get(VERTEX_TENSORBOARD_ENV)
    return [own, extra] if extra else [own]


def tensorboard_callbacks(opts: argparse.Namespace) -> list:
    dirs = tensorboard_dirs(opts)
    log.info("TensorBoard logs, live: tensorboard --logdir %s", " or ".join(dirs))
    return [tensorboard_callback(d) for d in dirs]


def _check_tensorboard_dir(opts: argparse.Namespace) -> None:
    """BadInput when --tensorboard_dir is a file, or lies in what train writes and replaces
    (--model_dir, its staging dirs, its backup): logs there would be deleted with them."""
    path = opts.tensorboard_dir
    if not path:
        return
    if outputs.is_local(path) and os.path.isfile(path):
        raise BadInput(f"--tensorboard_dir {path} is a file, not a directory")
    if outputs.is_within_output(path, opts.model_dir):
        raise BadInput(
            f"--tensorboard_dir {path} is inside --model_dir {opts.model_dir}, its staging dir or "
            "its training backup, which textclf train replaces or removes; choose another"
        )


def new_model_version(now: _dt.datetime | None = None) -> str:
    """`20261125T143000Z-1a2b3c4d`: UTC time of the export plus 8 random hex digits."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The stage: check inputs -> datasets -> model -> fit (or resume) -> evaluate -> export -> finalize.


def run_training(opts: argparse.Namespace) -> TrainResult:
    """Check, fit, evaluate, export and finalize; returns the in-memory model beside the files."""
    opts = resolved_defaults(opts)
    data, head = _check_inputs(opts)
    import keras

    strategy = distribution.make_strategy(opts.distribution)  # before other TensorFlow work
    keras.utils.set_random_seed(opts.seed)  # before the datasets and the model are made
    datasets = _datasets(opts, data, head, strategy)
    with distribution.scope(strategy):
        model = _compiled_model(opts, data, head)
    if opts.distribution == distribution.MULTI_WORKER:
        return _run_multi_worker(opts, data, head, datasets, model, strategy)
    # A rerun of a killed training resumes after its last finished epoch (TrainingBackup).
    backup = TrainingBackup(opts.model_dir, backup_settings(opts))
    resumed = backup.open()
    staging = outputs.staging_dir(opts.model_dir)
    try:
        history = _fit(opts, model, datasets, backup, resumed, staging)
        metrics, card = _publish(opts, data, head, model, history, resumed, staging)
    except BaseException:
        outputs.discard(staging)  # the backup stays, for the rerun
        raise
    backup.discard()
    log.info("model %s written to %s", card["model_version"], opts.model_dir)
    return TrainResult(model, metrics, history, card)


def _publish(
    opts: argparse.Namespace,
    data: PreprocessOutput,
    head: Head,
    model,
    history: dict,
    resumed: dict | None,
    staging: str,
) -> tuple[dict, dict]:
    """Evaluate, export into `staging` and finalize it onto --model_dir; returns the metrics
    and the model card."""
    metrics = _evaluate(model, data, head, opts, history)
    _export(staging, model, data, head, metrics, history, _tfidf_dim(opts, data))
    card = _model_card(opts, data, head, model, metrics, resumed)
    _finalize(staging, opts.model_dir, card, data, head, metrics, history)
    return metrics, card


def _run_multi_worker(
    opts: argparse.Namespace, data: PreprocessOutput, head: Head, datasets, model, strategy
) -> TrainResult:
    """--distribution multi_worker: every worker fits (transforms/distributed_fit.py: Keras's
    `fit` fails under MultiWorkerMirroredStrategy) with the same early stopping. The chief alone
    writes: the live TensorBoard logs, then, from an undistributed copy of the trained model
    (so that nothing it writes waits on the other workers), the same model dir as one process;
    the other workers wait until it has finalized and write nothing. No resume: a rerun starts
    from epoch 1 (restoring the same state on every worker is not implemented)."""
    import keras

    from transforms.distributed_fit import barrier, fit_across_workers

    chief = distribution.is_chief(strategy)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=opts.early_stopping_patience, restore_best_weights=True
        )
    ]
    if chief:
        # The backup dir holds the default live logs; its settings.json is written as usual.
        backup = TrainingBackup(opts.model_dir, backup_settings(opts))
        if backup.open():
            log.warning(
                "--distribution %s does not resume: discarding the training backup %s and "
                "starting from epoch 1",
                opts.distribution,
                backup.dir,
            )
            backup.discard()
            backup.open()
        callbacks[:0] = tensorboard_callbacks(opts)
    log.info(
        "%s of %d workers: training on %d rows, validating on %d, for up to %d epochs",
        distribution.role(strategy),
        distribution.workers(strategy),
        datasets.train_rows,
        datasets.eval_rows,
        opts.epochs,
    )
    history = fit_across_workers(
        model, strategy, datasets.train, datasets.eval, opts.epochs, callbacks
    )
    # On every worker: reading an on-read variable (none today) would be a collective.
    weights = model.get_weights()
    if not chief:
        log.info(
            "%s: training done; the chief writes %s", distribution.role(strategy), opts.model_dir
        )
        barrier(strategy)  # returns once the chief has finalized (fails if the chief fails)
        return TrainResult(model, {}, history, {})
    trained = build_model_for(data.config, model_settings(opts), head)  # outside the scope
    trained.set_weights(weights)
    staging = outputs.staging_dir(opts.model_dir)
    try:
        outputs.copy_tree(tensorboard_dirs(opts)[0], os.path.join(staging, LOGS_DIR))
        metrics, card = _publish(opts, data, head, trained, history, None, staging)
    except BaseException:
        outputs.discard(staging)
        raise
    backup.discard()
    log.info("model %s written to %s", card["model_version"], opts.model_dir)
    barrier(strategy)
    return TrainResult(trained, metrics, history, card)


def _check_inputs(opts: argparse.Namespace) -> tuple[PreprocessOutput, Head]:
    """What is checked before any training (BadInput, exit 2): --model_dir is train's to
    replace, --data_dir a finished preprocess output with the features --architecture reads,
    the head suits its labels, and both splits have rows."""
    try:
        outputs.check_replaceable(opts.model_dir, TRAIN_STAGE)
    except outputs.OutputNotReplaceable as err:
        raise BadInput(str(err)) from None
    _check_tensorboard_dir(opts)
    data = PreprocessOutput(opts.data_dir)
    try:
        data.check_complete()
    except IncompleteOutput as err:
        raise BadInput(str(err)) from err
    check_architecture(data, model_settings(opts))
    head = head_for(data.multi_label, opts)
    train_rows, eval_rows = data.rows(TRAIN), data.rows(EVAL)
    if train_rows == 0 or eval_rows == 0:
        raise BadInput(
            f"{opts.data_dir} has {train_rows} train and {eval_rows} eval rows (its "
            f"{STATS_FILE}); both splits need rows (check the corpus and the eval split)"
        )
    return data, head


@dataclasses.dataclass(frozen=True)
class _Datasets:
    """Batches to fit on: train shuffled, both with their length known (Keras then has a step
    count for its progress line, and no "ran out of data")."""

    train: object  # tf.data.Dataset
    eval: object
    train_rows: int
    eval_rows: int


def _target_key(head: Head) -> str:
    return LABELS_KEY if head.multi_label else LABEL_KEY


def _tfidf_dim(opts: argparse.Namespace, data: PreprocessOutput) -> int | None:
    """The TF-IDF matrix's width when the architecture reads it (make_dataset's switch)."""
    return data.tfidf_dim if opts.architecture == TFIDF_LINEAR else None


def _datasets(
    opts: argparse.Namespace, data: PreprocessOutput, head: Head, strategy=None
) -> _Datasets:
    """The tf.data input (transforms/training_data.py); one-hot targets where the loss needs
    them. Batches of --batch_size per replica of `strategy` (pipeline/distribution.py); under
    `multi_worker`, sharded across the workers and of unasserted length (a worker's share)."""
    import tensorflow as tf

    from transforms.distributed_fit import auto_shard
    from transforms.training_data import make_dataset

    batch_size = opts.batch_size * distribution.replicas(strategy)

    spec, target_key = data.tft_output.transformed_feature_spec(), _target_key(head)
    one_hot = data.num_classes if head.one_hot_targets else None
    tfidf_dim = _tfidf_dim(opts, data)
    train_ds = make_dataset(
        data.split_pattern(TRAIN),
        spec,
        target_key,
        batch_size,
        shuffle=True,
        shuffle_buffer=opts.shuffle_buffer,
        seed=opts.seed,
        one_hot_depth=one_hot,
        tfidf_dim=tfidf_dim,
    )
    eval_ds = make_dataset(
        data.split_pattern(EVAL),
        spec,
        target_key,
        batch_size,
        one_hot_depth=one_hot,
        tfidf_dim=tfidf_dim,
    )
    train_rows, eval_rows = data.rows(TRAIN), data.rows(EVAL)
    if opts.distribution == distribution.MULTI_WORKER:
        workers = distribution.workers(strategy)
        return _Datasets(
            auto_shard(train_ds, len(_files(data.split_pattern(TRAIN))), workers),
            auto_shard(eval_ds, len(_files(data.split_pattern(EVAL))), workers),
            train_rows,
            eval_rows,
        )
    return _Datasets(
        train_ds.apply(tf.data.experimental.assert_cardinality(-(-train_rows // batch_size))),
        eval_ds.apply(tf.data.experimental.assert_cardinality(-(-eval_rows // batch_size))),
        train_rows,
        eval_rows,
    )


def _files(pattern: str) -> list[str]:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _compiled_model(opts: argparse.Namespace, data: PreprocessOutput, head: Head):
    """The Keras model (transforms/model.py) sized by the preprocess output, compiled with the
    head's loss and the metrics Keras prints per epoch."""
    import keras

    num_classes = data.num_classes
    model = build_model_for(data.config, model_settings(opts), head)
    if head.multi_label:
        fit_metrics = [
            keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=head.threshold),
            keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc"),
        ]
    elif head.one_hot_targets:
        fit_metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    else:
        fit_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.Adam(opts.learning_rate), loss=head.loss, metrics=fit_metrics
    )
    return model


def _fit(
    opts: argparse.Namespace,
    model,
    datasets: _Datasets,
    backup: TrainingBackup,
    resumed: dict | None,
    staging: str,
) -> dict:
    """Fit with early stopping, live per-epoch TensorBoard logs and `backup` kept after every epoch;
    when `resumed`, from the epoch after the last one it finished. Returns the history of every
    epoch, the restored ones included."""
    import keras

    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=opts.early_stopping_patience, restore_best_weights=True
    )
    backup_state = backup_state_callback(backup, early_stopping, resumed)
    epochs_restored = resumed["epochs_done"] if resumed else 0
    if resumed and (resumed["stopped"] or epochs_restored >= opts.epochs):
        _restore_finished_fit(model, backup, resumed)
    else:
        callbacks = [
            # First: an epoch's scalars are flushed before the backup records the epoch, so a
            # killed run's logs hold every epoch a rerun will not redo.
            *tensorboard_callbacks(opts),
            early_stopping,
            # Weights, optimizer state and the epoch count; loaded (and `fit` started at the
            # next epoch) when `resumed`. Kept after fit: removed after finalize.
            keras.callbacks.BackupAndRestore(backup.keras_dir, delete_checkpoint=False),
            backup_state,  # after both: see backup_state_callback
        ]
        _fit_remaining_epochs(opts, model, datasets, epochs_restored, callbacks, backup.dir)
    # The model's own copy of the logs, from the backup (beside --model_dir: same filesystem).
    outputs.copy_tree(tensorboard_dirs(opts)[0], os.path.join(staging, LOGS_DIR))
    return backup_state.history  # every epoch, the restored ones included


def _fit_remaining_epochs(
    opts: argparse.Namespace,
    model,
    datasets: _Datasets,
    epochs_restored: int,
    callbacks: list,
    backup_dir: str,
) -> None:
    """`model.fit` from epoch `epochs_restored + 1` on (the callbacks restore the rest)."""
    if epochs_restored:
        log.info(
            "resuming from epoch %d of %d: epochs 1-%d restored from %s",
            epochs_restored + 1,
            opts.epochs,
            epochs_restored,
            backup_dir,
        )
        skip_epochs(datasets.train, epochs_restored)
    log.info(
        "training on %d rows, validating on %d, for up to %d epochs",
        datasets.train_rows,
        datasets.eval_rows,
        opts.epochs,
    )
    model.fit(
        datasets.train,
        validation_data=datasets.eval,
        epochs=opts.epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=2,
    )


def _restore_finished_fit(model, backup: TrainingBackup, resumed: dict) -> None:
    """Killed after fitting (while evaluating or exporting): the model gets the best weights,
    which EarlyStopping would have restored (the logs of every epoch are already written)."""
    log.info(
        "training had finished (%d epochs) before the interruption; exporting the best "
        "weights from %s",
        resumed["epochs_done"],
        backup.dir,
    )
    if resumed["best_weights"]:
        model.set_weights(backup.read_weights(resumed["best_weights"]))
    else:  # no epoch improved val_loss (NaN from the start): EarlyStopping keeps the last ones
        model.load_weights(os.path.join(backup.keras_dir, KERAS_WEIGHTS_FILE))


def _evaluate(
    model, data: PreprocessOutput, head: Head, opts: argparse.Namespace, history: dict
) -> dict:
    """metrics.json: the eval split's metrics (transforms/evaluation.py), the rows seen and the
    epochs run."""
    import numpy as np

    from transforms import evaluation
    from transforms.training_data import make_dataset

    # Unshuffled, one_hot off: targets as stored, in the same order as the predictions.
    spec = data.tft_output.transformed_feature_spec()
    eval_plain = make_dataset(
        data.split_pattern(EVAL),
        spec,
        _target_key(head),
        opts.batch_size,
        tfidf_dim=_tfidf_dim(opts, data),
    )
    probabilities = model.predict(eval_plain.map(lambda x, y: x), verbose=0)
    targets = np.concatenate([y.numpy() for _, y in eval_plain])
    class_names = data.label_vocabulary
    if head.multi_label:
        metrics = evaluation.multi_label_metrics(
            targets, probabilities, class_names, head.threshold
        )
    else:
        metrics = evaluation.single_label_metrics(targets, probabilities, class_names)
    metrics["rows_seen"] = {TRAIN: data.rows(TRAIN), EVAL: data.rows(EVAL)}
    metrics["epochs_run"] = len(history.get("loss", []))
    return metrics


def _export(
    staging: str,
    model,
    data: PreprocessOutput,
    head: Head,
    metrics: dict,
    history: dict,
    tfidf_dim: int | None,
) -> None:
    """The raw-text SavedModel (pipeline/export.py), labels.txt, metrics.json, history.json."""
    from pipeline import export

    class_names = data.label_vocabulary
    export.export_saved_model(
        model,
        data.tft_output,
        class_names,
        head,
        os.path.join(staging, SAVED_MODEL_DIR),
        tfidf_dim=tfidf_dim,
    )
    outputs.write_text(os.path.join(staging, LABELS_TXT), "\n".join(class_names) + "\n")
    outputs.write_json(os.path.join(staging, METRICS_FILE), metrics)
    outputs.write_json(os.path.join(staging, HISTORY_FILE), history)


# The flags model_card.json records under "training".
CARD_TRAINING_FLAGS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "early_stopping_patience",
    "seed",
    "shuffle_buffer",
    "distribution",
)


def _model_card(
    opts: argparse.Namespace,
    data: PreprocessOutput,
    head: Head,
    model,
    metrics: dict,
    resumed: dict | None,
) -> dict:
    """model_card.json: the model's version, what it was trained on and how, its layers."""
    from transforms.model import layer_shapes

    return {
        "model_version": new_model_version(),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "data_dir": opts.data_dir,
        "preprocess_config": data.config,
        "data_stats": data.stats,
        # What the scorer reads (transforms/scoring.py): the head, and the multi-label
        # threshold the serving signature applies, without loading the SavedModel.
        "multi_label": head.multi_label,
        "threshold": head.threshold if head.multi_label else None,
        "architecture": opts.architecture,
        "model": dataclasses.asdict(model_settings(opts)),
        "head": dataclasses.asdict(head),
        "training": {k: getattr(opts, k) for k in CARD_TRAINING_FLAGS},
        "epochs_run": metrics["epochs_run"],
        "epochs_restored": resumed["epochs_done"] if resumed else 0,
        "parameters": int(model.count_params()),
        "layers": layer_shapes(model),
        "versions": package_versions(),
    }


def _finalize(
    staging: str,
    model_dir: str,
    card: dict,
    data: PreprocessOutput,
    head: Head,
    metrics: dict,
    history: dict,
) -> None:
    """model_card.json, training_profile.json (what the score stage measures drift against:
    transforms/drift.py, from the preprocess stats) and the PNGs, then the staging dir moved onto
    `model_dir`, `_SUCCESS` last."""
    from pipeline import export
    from transforms.drift import training_profile

    outputs.write_json(os.path.join(staging, MODEL_CARD_FILE), card)
    outputs.write_json(
        os.path.join(staging, TRAINING_PROFILE_FILE),
        training_profile(data.stats, data.multi_label),
    )
    export.write_reports(history, metrics, data.label_vocabulary, head, staging)
    outputs.finalize(staging, model_dir, TRAIN_STAGE)


def train(data_dir: str, model_dir: str, **settings) -> dict:
    """In-process entry point: train and export; returns the eval metrics (metrics.json)."""
    return run_training(settings_from(data_dir, model_dir, **settings)).metrics


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    try:
        result = run_training(opts)
    except BadInput as err:
        print(f"textclf train: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Anything else propagates: pipeline/cli.py prints its traceback and exits 1.
    if not result.model_card:  # a multi_worker worker other than the chief
        print(f"training done; the chief wrote {opts.model_dir}")
        return 0
    summary = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    print(
        f"model written to {opts.model_dir}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
    )
    return 0
