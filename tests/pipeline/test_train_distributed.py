"""`textclf train --distribution mirrored|multi_worker` end to end, each run a child process:
two logical CPU devices for `mirrored` (set before TensorFlow starts, as a machine's GPUs would
be), two worker processes on 127.0.0.1 with their $TF_CONFIG for `multi_worker`. Each is held
against one process's run on the same keyword-separable corpus (tests/pipeline/test_train.py's),
where the tiny seed model learns clearly, so "within noise" means something."""

import glob
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from pipeline import distribution, preprocess, train
from pipeline.outputs import backup_dir, read_json
from tests.pipeline.test_train import SEQUENCE_LENGTH, TINY, _corpus
from transforms.contracts import (
    HISTORY_FILE,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    OUT_LABEL,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    SUCCESS_FILE,
)
from transforms.distributed_fit import auto_shard

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = dict(epochs=4, batch_size=16, learning_rate=0.01, **TINY)
CHILD_TIMEOUT_S = 480  # a child's whole run: TensorFlow's start dominates on a loaded machine
# Two logical CPU devices, configured before TensorFlow initialises, then the CLI.
TWO_CPUS_THEN_CLI = (
    "import sys, tensorflow as tf\n"
    "cpus = tf.config.list_physical_devices('CPU')\n"
    "tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)\n"
    "from pipeline.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _flags(data_dir: str, model_dir: str, distribution: str) -> list[str]:
    flags = ["train", "--data_dir", data_dir, "--model_dir", model_dir]
    flags += [f"--{key}={value}" for key, value in SETTINGS.items()]
    return flags + ["--distribution", distribution]


def _env(**extra) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO, **extra}


def _free_ports(n: int) -> list[int]:
    """Ports the OS had free on 127.0.0.1 (all held open until each is picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Each process's exit code and output; every one is killed if any overruns the timeout."""
    try:
        return [(p.wait(timeout=CHILD_TIMEOUT_S), p.stdout.read()) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()


def _start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """400 rows of three topics, each text of its topic's keywords: 40 eval rows."""
    tmp = tmp_path_factory.mktemp("distributed")
    corpus, out = str(tmp / "corpus.csv"), str(tmp / "data")
    _corpus(corpus, multi_label=False, rows=400)
    argv = ["--input", corpus, "--output_dir", out, "--text_column", "text"]
    argv += ["--label_column", "label", "--sequence_length", str(SEQUENCE_LENGTH)]
    assert preprocess.main(argv + ["--max_tokens", "100"]) == 0
    return out


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("one_process") / "model")
    return model_dir, train.train(data_dir, model_dir, **SETTINGS)


def _check_model_dir(model_dir: str, one_process_dir: str, distribution: str) -> dict:
    """The same files as one process's model dir, a working raw-text signature; the metrics."""
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(one_process_dir))
    assert os.path.exists(os.path.join(model_dir, SUCCESS_FILE))
    assert not os.path.exists(backup_dir(model_dir))
    assert glob.glob(os.path.join(model_dir, LOGS_DIR, "validation", "events.out.tfevents.*"))
    history = read_json(os.path.join(model_dir, HISTORY_FILE))
    assert set(history) == set(read_json(os.path.join(one_process_dir, HISTORY_FILE)))
    assert read_json(os.path.join(model_dir, MODEL_CARD_FILE))["training"]["distribution"] == (
        distribution
    )
    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    texts = ["Ball goal team coach", "Vote law senate party", "Atom cell energy lab"]
    labels = serve(**{SERVING_INPUT: tf.constant(texts)})[OUT_LABEL].numpy()
    assert [label.decode() for label in labels] == ["sports", "politics", "science"]
    return read_json(os.path.join(model_dir, METRICS_FILE))


def _assert_within_noise(metrics: dict, one_process_metrics: dict) -> None:
    print(
        f"eval accuracy: one process {one_process_metrics['accuracy']:.4f}, "
        f"distributed {metrics['accuracy']:.4f}"
    )
    assert one_process_metrics["accuracy"] >= 0.9
    assert metrics["accuracy"] >= 0.9
    assert abs(metrics["accuracy"] - one_process_metrics["accuracy"]) <= 0.1


def test_mirrored_over_two_devices_exports_a_model_as_good_as_one_process(
    data_dir, one_process, tmp_path
):
    model_dir = str(tmp_path / "model")
    argv = [sys.executable, "-c", TWO_CPUS_THEN_CLI, *_flags(data_dir, model_dir, "mirrored")]
    [(code, output)] = _wait([_start(argv, _env())])
    assert code == 0, output[-3000:]
    assert "--distribution mirrored: 2 replicas" in output
    metrics = _check_model_dir(model_dir, one_process[0], "mirrored")
    _assert_within_noise(metrics, one_process[1])


def test_two_workers_train_together_and_the_chief_alone_writes(data_dir, one_process, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    # The worker is given its own --model_dir, so that "it wrote nothing there" can be seen.
    chief_dir, worker_dir = str(tmp_path / "model"), str(tmp_path / "worker_model")
    processes = [
        _start(
            [sys.executable, "-m", "pipeline.cli", *_flags(data_dir, model_dir, "multi_worker")],
            _env(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            ),
        )
        for i, model_dir in enumerate([chief_dir, worker_dir])
    ]
    (chief_code, chief_output), (worker_code, worker_output) = _wait(processes)
    assert chief_code == 0, chief_output[-3000:]
    assert worker_code == 0, worker_output[-3000:]
    assert "of 2 workers" in chief_output and "worker 1 of 2 workers" in worker_output
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no worker_model, staging or backup dir
    metrics = _check_model_dir(chief_dir, one_process[0], "multi_worker")
    _assert_within_noise(metrics, one_process[1])
    # Both workers logged the same all-reduced epochs, stopped together, and history.json
    # holds them.
    chief_epochs, worker_epochs = (
        [line.split("INFO ")[1] for line in output.splitlines() if "INFO epoch" in line]
        for output in (chief_output, worker_output)
    )
    assert chief_epochs == worker_epochs
    history = read_json(os.path.join(chief_dir, HISTORY_FILE))
    assert 1 <= len(chief_epochs) == len(history["loss"]) <= SETTINGS["epochs"]
    np.testing.assert_allclose(
        history["val_loss"],
        [float(e.split("val_loss: ")[1].split()[0]) for e in chief_epochs],
        atol=1e-4,
    )


def _in_cluster(cluster: dict, task_type: str, task_id: int):
    """A stand-in for a multi-worker strategy: what is_chief/workers read of its resolver."""
    resolver = SimpleNamespace(
        task_type=task_type,
        task_id=task_id,
        cluster_spec=lambda: SimpleNamespace(as_dict=lambda: cluster),
    )
    return SimpleNamespace(cluster_resolver=resolver)


def test_the_chief_is_the_chief_task_or_worker_0_without_one():
    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert distribution.is_chief(_in_cluster(with_chief, "chief", 0))
    assert not distribution.is_chief(_in_cluster(with_chief, "worker", 0))
    assert distribution.workers(_in_cluster(with_chief, "worker", 1)) == 3
    workers_only = {"worker": ["a:1", "b:1"]}
    assert distribution.is_chief(_in_cluster(workers_only, "worker", 0))
    assert not distribution.is_chief(_in_cluster(workers_only, "worker", 1))
    assert distribution.role(_in_cluster(workers_only, "worker", 1)) == "worker 1"
    assert distribution.is_chief(None) and distribution.workers(None) == 1  # --distribution none


def test_records_are_sharded_by_file_only_when_the_files_split_evenly():
    policy = tf.data.experimental.AutoShardPolicy
    dataset = tf.data.Dataset.range(4)
    cases = [(2, 2, policy.FILE), (4, 2, policy.FILE), (3, 2, policy.DATA), (1, 2, policy.DATA)]
    for files, workers, expected in cases:
        options = auto_shard(dataset, files, workers).options()
        assert options.experimental_distribute.auto_shard_policy == expected
