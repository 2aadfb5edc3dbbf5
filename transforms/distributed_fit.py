"""Keras's epoch loop for `tf.distribute.MultiWorkerMirroredStrategy`, where `model.fit` fails.

Keras 3's `model.fit` (TF backend) fails under MultiWorkerMirroredStrategy (keras-team/keras#20585:
it cannot convert the PerReplica values it reduces); its per-replica step does not. This module
owns that loop only: each batch runs the compiled model's own `train_step` / `test_step` under
`strategy.run` (the compiled loss, scaled per replica, gradients all-reduced, the compiled
metrics), the epoch's logs are the model's metric results, named as `fit` names them (`loss`,
`accuracy`, ..., `val_*`), and the same Keras callbacks are driven through a `CallbackList` at the
points where `fit` calls them (train, epoch and test begin/end). It also picks the tf.data
auto-shard policy across workers. Strategies, roles (chief or worker) and files are
pipeline/distribution.py's and pipeline/train.py's.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def auto_shard(dataset: tf.data.Dataset, files: int, workers: int) -> tf.data.Dataset:
    """`dataset` with the auto-shard policy for `workers` processes reading `files` files:
    by file when they split evenly (every worker as many files: uneven shards would leave the
    workers with fewer rows feeding empty batches while the others finish the epoch), else by
    element (every worker reads every file and keeps its share of the batches)."""
    policy = tf.data.experimental.AutoShardPolicy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        policy.FILE if files >= workers and files % workers == 0 else policy.DATA
    )
    return dataset.with_options(options)


def fit_across_workers(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    epochs: int,
    callbacks: list,
) -> dict[str, list[float]]:
    """`model.fit(train, validation_data=validation, epochs=epochs, callbacks=callbacks)` for a
    model built and compiled under `strategy.scope()`; returns the history, as `fit` does.

    Both datasets are batched at the global batch size (`strategy` rebatches per replica and
    shards across workers). Every worker runs this with the same callbacks' decisions (the
    logs are all-reduced, so early stopping stops every worker at the same epoch); a callback
    that writes files belongs on the chief alone.
    """
    with strategy.scope():
        # What `fit` builds before its first step: the compiled metrics' and the optimizer's
        # variables, which must exist before the step functions are traced.
        model._symbolic_build(data_batch=train.element_spec)
    train_batches = strategy.experimental_distribute_dataset(train)
    validation_batches = strategy.experimental_distribute_dataset(validation)

    @tf.function(input_signature=[train_batches.element_spec])
    def train_step(batch):
        strategy.run(model.train_step, args=(batch,))

    @tf.function(input_signature=[validation_batches.element_spec])
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    def results() -> dict[str, float]:  # read in cross-replica context: all-reduced
        return {name: float(value) for name, value in model.get_metrics_result().items()}

    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for batch in train_batches:
            train_step(batch)
        logs = results()
        model.reset_metrics()
        callback_list.on_test_begin()
        for batch in validation_batches:
            test_step(batch)
        validation_logs = results()
        callback_list.on_test_end(validation_logs)
        logs.update({f"val_{name}": value for name, value in validation_logs.items()})
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            epochs,
            " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()),
        )
        callback_list.on_epoch_end(epoch, logs)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Return when every worker has called this (an all-reduce of one number)."""

    @tf.function
    def all_reduce():
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None
        )

    all_reduce()
