"""`textclf train --distribution`: which tf.distribute strategy trains, and which process publishes.

This module owns the choice between one process on its default device (`none`), every local
device of one machine (`mirrored`: `tf.distribute.MirroredStrategy`) and several processes or
machines (`multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, its cluster and this
process's role read from `TF_CONFIG`, as Vertex AI custom training and a Kubernetes Job set it),
and the one rule about roles: the chief alone writes the model directory, the training backup
and the TensorBoard logs. The multi-worker epoch loop is transforms/distributed_fit.py's; the
wiring is pipeline/train.py's; docs/RUNNERS.md says how to launch it.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger(__name__)

NONE, MIRRORED, MULTI_WORKER = "none", "mirrored", "multi_worker"
DISTRIBUTIONS = (NONE, MIRRORED, MULTI_WORKER)
TF_CONFIG_ENV = "TF_CONFIG"

HELP = (
    f"how training is spread (default {NONE}): {NONE} = one process, TensorFlow's default "
    f"device; {MIRRORED} = every GPU of this machine (or its CPU), one model replica each, "
    f"gradients summed (tf.distribute.MirroredStrategy); {MULTI_WORKER} = several processes "
    f"or machines, one replica per device of each, the cluster and this process's role read "
    f"from ${TF_CONFIG_ENV} (tf.distribute.MultiWorkerMirroredStrategy; the chief, or worker "
    "0 without one, writes --model_dir, the others exit 0 writing nothing there; a killed "
    "run starts again from epoch 1). --batch_size is per replica: a step reads "
    "--batch_size x replicas examples (docs/RUNNERS.md)"
)


def make_strategy(distribution: str):
    """The tf.distribute strategy of `distribution`, or None for `none` (TensorFlow's default).

    Made before the datasets and the model (a multi-worker strategy configures TensorFlow's
    collective ops, which must happen before they are first used; it waits for every worker of
    the cluster to start).
    """
    if distribution == NONE:
        return None
    import tensorflow as tf

    if distribution == MIRRORED:
        strategy = tf.distribute.MirroredStrategy()
    else:
        if not os.environ.get(TF_CONFIG_ENV):
            log.warning("--distribution %s without $%s: one worker", distribution, TF_CONFIG_ENV)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info(
        "--distribution %s: %d replicas (%s)",
        distribution,
        strategy.num_replicas_in_sync,
        os.environ.get(TF_CONFIG_ENV) or "this machine",
    )
    return strategy


def scope(strategy):
    """Where the model is built and compiled: the strategy's scope, or no scope for `none`."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy) -> int:
    return strategy.num_replicas_in_sync if strategy is not None else 1


def _cluster(strategy) -> tuple[dict, str | None, int | None]:
    """The cluster spec from $TF_CONFIG, this process's task type and index (None outside a
    cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return {}, None, None
    return resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id


def workers(strategy) -> int:
    """How many processes train together (1 but under `multi_worker` in a cluster)."""
    cluster, _, _ = _cluster(strategy)
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) or 1


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs: always but under `multi_worker` in a cluster,
    where it is the `chief` task, or worker 0 when the cluster has no chief (TensorFlow's
    rule)."""
    cluster, task_type, task_id = _cluster(strategy)
    if task_type is None:
        return True
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )


def role(strategy) -> str:
    """`chief`, or `worker N`, for the log."""
    _, task_type, task_id = _cluster(strategy)
    return "chief" if is_chief(strategy) else f"{task_type} {task_id}"
