"""Resuming a killed `textclf train` from its last finished epoch (docs/DESIGN.md, Stage 2).

This module owns the training backup next to the model directory (`outputs.backup_dir`): what
is saved at the end of every epoch, when a saved backup may be resumed from, and how a resumed
`fit` is put back where the uninterrupted one was (weights and optimizer through Keras's
`BackupAndRestore`; history, early stopping, dropout RNG states and the data order here).
pipeline/train.py wires it into the fit; it trains nothing itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from transforms.contracts import SUCCESS_FILE

log = logging.getLogger(__name__)

BACKUP_KERAS_DIR = "keras"  # keras.callbacks.BackupAndRestore's own files, nothing else
BACKUP_SETTINGS_FILE = "settings.json"
BACKUP_STATE_FILE = "state.json"
KERAS_WEIGHTS_FILE = "latest.weights.h5"  # the names BackupAndRestore writes (Keras 3)
_KERAS_METADATA = "training_metadata.json"


def backup_settings(opts: argparse.Namespace) -> dict:
    """What a backup was made under; it is reused only when all of it is the same again: every
    flag but --model_dir and --tensorboard_dir, the data dir's `_SUCCESS` time (a re-preprocessed dir differs) and the
    TensorFlow and Keras versions (the weights file format)."""
    import keras
    import tensorflow as tf

    # Not --tensorboard_dir: where logs also go does not change what training computes.
    settings = {k: v for k, v in vars(opts).items() if k not in ("model_dir", "tensorboard_dir")}
    if outputs.is_local(opts.data_dir):
        settings["data_dir"] = os.path.abspath(opts.data_dir)
    settings["data_dir_success"] = outputs.read_text(
        FileSystems.join(opts.data_dir, SUCCESS_FILE)
    ).strip()
    settings["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


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
            weights_sha = _sha256(FileSystems.join(self.keras_dir, KERAS_WEIGHTS_FILE))
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
        outputs.write_bytes_atomic(self._path(name), buffer.getvalue())

    def read_weights(self, name: str) -> list:
        import io

        import numpy as np

        with np.load(io.BytesIO(_read_bytes(self._path(name)))) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def write_state(self, state: dict) -> None:
        state["weights_sha256"] = _sha256(FileSystems.join(self.keras_dir, KERAS_WEIGHTS_FILE))
        outputs.write_bytes_atomic(
            self._path(BACKUP_STATE_FILE),
            (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        )

    def remove(self, name: str) -> None:
        path = self._path(name)
        if FileSystems.exists(path):
            FileSystems.delete([path])


def seed_states(model) -> list:
    """The RNG states of the model's SeedGenerators (dropout masks), in a fixed order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def backup_state_callback(backup: TrainingBackup, early_stopping, state: dict | None):
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
            for variable, value in zip(seed_states(self.model), state["seed_states"], strict=True):
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
                    "seed_states": [v.numpy().tolist() for v in seed_states(self.model)],
                }
            )
            if old_best and old_best != self.best_file:
                backup.remove(old_best)

    return BackupState()


# Iterators Keras 3 (3.15, TF backend) opens on the training dataset per epoch: with a known
# length and no steps_per_epoch, EpochIterator opens one at the end of each epoch, drops it, and
# opens another at the start of the next. A resumed run must open as many (see skip_epochs).
KERAS_ITERATORS_PER_EPOCH = 2


def skip_epochs(dataset, epochs: int) -> None:
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
