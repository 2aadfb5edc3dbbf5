"""The training stage end to end: real preprocess outputs of tiny corpora written here, real
training with tiny sizes, the real SavedModel loaded back the way the scoring stage loads it."""

import csv
import glob
import json
import logging
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from pipeline import describe, preprocess, train, training_backup
from pipeline.outputs import backup_dir, read_json
from transforms.contracts import (
    CONFUSION_PNG,
    CURVES_PNG,
    EXIT_BAD_INPUT,
    F1_BARS_PNG,
    HISTORY_FILE,
    LABELS_TXT,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    OUT_LABEL,
    OUT_LABELS,
    OUT_PROBABILITIES,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    SUCCESS_FILE,
    TOKEN_IDS_KEY,
    TOKEN_VOCAB_NAME,
)

pytestmark = pytest.mark.slow

SEQUENCE_LENGTH = 20
TINY = dict(embedding_dim=8, filters=8, kernel_size=3, pool_size=4, lstm_units=6)
TOPICS = {
    "sports": "ball goal team match coach referee",
    "politics": "vote law senate party election budget",
    "science": "atom cell energy theory lab molecule",
}
COMMON = "the a of and in".split()


def _corpus(path, multi_label: bool, rows: int = 200, seed: int = 0) -> None:
    """Texts of 3..15 words (shorter than SEQUENCE_LENGTH, so ids decode back to the text),
    drawn from their topics' words plus common words; the first word capitalised."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            topics = rng.sample(sorted(TOPICS), rng.choice([1, 2]) if multi_label else 1)
            words = [w for t in topics for w in TOPICS[t].split()] + COMMON
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
            writer.writerow([text.capitalize(), "|".join(topics)])


def _preprocess(tmp, name: str, multi_label: bool) -> str:
    corpus, out = str(tmp / f"{name}.csv"), str(tmp / f"{name}_data")
    _corpus(corpus, multi_label)
    argv = ["--input", corpus, "--output_dir", out, "--text_column", "text"]
    argv += ["--label_column", "label", "--sequence_length", str(SEQUENCE_LENGTH)]
    argv += ["--max_tokens", "100"]
    if multi_label:
        argv += ["--multi_label", "--label_delimiter", "|"]
    assert preprocess.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    data_dir = _preprocess(tmp, "single", multi_label=False)
    opts = train.settings_from(data_dir, str(tmp / "model"), epochs=2, batch_size=16, **TINY)
    return data_dir, opts.model_dir, train.run_training(opts)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    data_dir = _preprocess(tmp, "multi", multi_label=True)
    model_dir = str(tmp / "model")
    metrics = train.train(
        data_dir,
        model_dir,
        epochs=2,
        batch_size=16,
        threshold=0.4,
        tensorboard_dir=str(tmp / "tensorboard"),
        **TINY,
    )
    return data_dir, model_dir, metrics


@pytest.mark.parametrize("inside", ["model/tb", "model", ".model.train-backup/tb"])
def test_a_tensorboard_dir_inside_what_train_replaces_is_refused(tmp_path, capsys, inside):
    model_dir, tensorboard = tmp_path / "model", tmp_path / inside
    argv = ["--data_dir", str(tmp_path / "data"), "--model_dir", str(model_dir)]
    assert train.main([*argv, "--tensorboard_dir", str(tensorboard)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard_dir" in err[0] and "choose another" in err[0]
    assert not os.listdir(tmp_path)  # nothing written


def test_tensorboard_dir_keeps_its_live_logs_and_the_model_gets_a_copy(multi):
    _, model_dir, _ = multi
    live = _events(None, os.path.join(os.path.dirname(model_dir), "tensorboard"))
    assert live == _events(model_dir)
    tags = {(run, tag) for run, tag, _, _ in live}
    assert {("train", "epoch_loss"), ("validation", "epoch_loss")} <= tags
    assert {step for _, tag, step, _ in live if tag == "epoch_loss"} == {0, 1}


def _eval_rows(data_dir):
    """token_ids of every eval row, and the raw text each came from (decoded via the vocab)."""
    tft_output = tft.TFTransformOutput(data_dir)
    spec = {TOKEN_IDS_KEY: tft_output.transformed_feature_spec()[TOKEN_IDS_KEY]}
    vocab = [w.decode() for w in tft_output.vocabulary_by_name(TOKEN_VOCAB_NAME)]
    files = sorted(glob.glob(os.path.join(data_dir, "eval-*.tfrecord.gz")))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000)
    ids = np.concatenate([tf.io.parse_example(r, spec)[TOKEN_IDS_KEY].numpy() for r in records])
    texts = [" ".join(vocab[i - 1] for i in row if i > 0).capitalize() for row in ids]
    return ids, texts


def test_saved_model_on_raw_text_matches_keras_on_tfrecord_token_ids(single):
    data_dir, model_dir, result = single
    ids, texts = _eval_rows(data_dir)
    assert len(texts) >= 5
    keras_probs = result.model.predict(ids, verbose=0)

    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    out = serve(**{SERVING_INPUT: tf.constant(texts)})
    np.testing.assert_allclose(out[OUT_PROBABILITIES].numpy(), keras_probs, atol=1e-5)

    labels = open(os.path.join(model_dir, LABELS_TXT)).read().split()
    best = [labels[i] for i in keras_probs.argmax(axis=1)]
    assert [s.decode() for s in out[OUT_LABEL].numpy()] == best


def test_export_holds_every_contract_file_with_success_last(single):
    _, model_dir, result = single
    names = set(os.listdir(model_dir))
    expected = {SAVED_MODEL_DIR, LABELS_TXT, METRICS_FILE, HISTORY_FILE, MODEL_CARD_FILE}
    expected |= {LOGS_DIR, CURVES_PNG, CONFUSION_PNG, SUCCESS_FILE}
    assert expected <= names
    everything = [os.path.join(d, f) for d, _, fs in os.walk(model_dir) for f in fs]
    success = os.path.join(model_dir, SUCCESS_FILE)
    assert all(os.path.getmtime(p) <= os.path.getmtime(success) for p in everything)
    assert not [n for n in os.listdir(os.path.dirname(model_dir)) if "inprogress" in n]
    assert not os.path.exists(backup_dir(model_dir))  # removed after finalize
    assert glob.glob(os.path.join(model_dir, LOGS_DIR, "*", "events.out.tfevents.*"))

    metrics = read_json(os.path.join(model_dir, METRICS_FILE))
    assert set(metrics) >= {"accuracy", "macro_f1", "per_class", "rows_seen"}
    assert set(metrics["per_class"]["sports"]) >= {"precision", "recall"}
    assert metrics == result.metrics
    card = read_json(os.path.join(model_dir, MODEL_CARD_FILE))
    assert card["versions"]["tensorflow"] == tf.__version__
    assert card["data_stats"]["rows_read"] == 200
    assert [layer["output_shape"] for layer in card["layers"]][-3:] == [
        [None, 5, 6],
        [None, 6],
        [None, 3],
    ]
    assert len(card["model_version"]) == len("20261125T143000Z-") + 8
    assert (card["multi_label"], card["threshold"]) == (False, None)
    assert len(read_json(os.path.join(model_dir, HISTORY_FILE))["loss"]) == 2


def test_multi_label_model_returns_every_class_over_threshold(multi):
    data_dir, model_dir, metrics = multi
    assert set(metrics) >= {"micro_f1", "macro_f1", "per_class"}
    assert all("roc_auc" in m for m in metrics["per_class"].values())
    assert os.path.exists(os.path.join(model_dir, F1_BARS_PNG))
    assert os.path.exists(os.path.join(model_dir, SUCCESS_FILE))
    card = read_json(os.path.join(model_dir, MODEL_CARD_FILE))
    assert (card["multi_label"], card["threshold"]) == (True, 0.4)

    _, texts = _eval_rows(data_dir)
    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    out = serve(**{SERVING_INPUT: tf.constant(texts)})
    probs, labels = out[OUT_PROBABILITIES].numpy(), out[OUT_LABELS].numpy()
    names = open(os.path.join(model_dir, LABELS_TXT)).read().split()
    assert labels.shape == probs.shape == (len(texts), len(names))
    expected = np.where(probs >= 0.4, np.array(names, dtype=object), "")
    assert [[s.decode() for s in row] for row in labels] == expected.tolist()


def test_softmax_on_multi_label_data_is_refused_before_training(multi, tmp_path, capsys):
    data_dir, _, _ = multi
    model_dir = str(tmp_path / "refused")
    code = train.main(["--data_dir", data_dir, "--model_dir", model_dir, "--activation", "softmax"])
    assert code == EXIT_BAD_INPUT
    assert "co-occur" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_sigmoid_with_categorical_crossentropy_is_refused_before_training(single, tmp_path, capsys):
    data_dir, _, _ = single
    argv = ["--data_dir", data_dir, "--model_dir", str(tmp_path / "m"), "--activation", "sigmoid"]
    assert train.main(argv + ["--loss", "categorical_crossentropy"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "do not sum to one" in err and len(err.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_a_data_dir_without_success_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    argv = ["--data_dir", str(tmp_path / "data"), "--model_dir", str(tmp_path / "m")]
    assert train.main(argv) == EXIT_BAD_INPUT
    assert f"no {SUCCESS_FILE}" in capsys.readouterr().err


def test_describe_a_trained_model_and_an_untrained_configuration(single, capsys):
    data_dir, model_dir, _ = single
    assert describe.main(["--model_dir", model_dir]) == 0
    text = capsys.readouterr().out
    assert "MaxPooling1D(4)" in text and "20 steps -> 5" in text
    assert "(batch, 5, 6)" in text and "head: softmax" in text

    text = describe.describe(data_dir=data_dir, pool_size=2, lstm_units=7, filters=9)
    assert "20 steps -> 10" in text and "(batch, 10, 7)" in text
    assert "(batch, 20, 9)" in text and "(batch, 3)" in text


def test_train_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--shuffle_buffer", "--early_stopping_patience", "--lstm_units", "--threshold"):
        assert flag in out


def _events(model_dir, logs_dir=None) -> list[tuple]:
    """(run, tag, step, value) of every scalar in the model's TensorBoard logs (or in
    `logs_dir`), sorted."""
    from tensorflow.core.util import event_pb2

    found = []
    logs_dir = logs_dir or os.path.join(model_dir, LOGS_DIR)
    for path in glob.glob(os.path.join(logs_dir, "*", "events.out.tfevents.*")):
        run = os.path.basename(os.path.dirname(path))
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.append((run, value.tag, event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(found)


def _saved_weights(model_dir) -> list[np.ndarray]:
    """The float variables of the exported SavedModel, in a canonical order."""
    path = os.path.join(model_dir, SAVED_MODEL_DIR, "variables", "variables")
    arrays = [tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)]
    arrays = [a for a in arrays if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size]
    return sorted(arrays, key=lambda a: (a.shape, a.tobytes()))


def test_a_killed_training_resumes_after_its_last_finished_epoch(tmp_path):
    """kill -9 during epoch 2, then the same command again: it resumes at epoch 2, writes a model
    that is bit-identical to an uninterrupted run's (history, event logs, weights), and removes
    its backup."""
    corpus, data_dir = str(tmp_path / "corpus.csv"), str(tmp_path / "data")
    _corpus(corpus, multi_label=False, rows=1200)
    argv = ["--input", corpus, "--output_dir", data_dir, "--sequence_length", str(SEQUENCE_LENGTH)]
    assert preprocess.main(argv + ["--max_tokens", "100"]) == 0
    model_dir = str(tmp_path / "model")
    flags = ["--data_dir", data_dir, "--epochs", "3", "--batch_size", "16"]
    flags += [f"--{k}={v}" for k, v in TINY.items()]
    command = [sys.executable, "-m", "pipeline.cli", "train", "--model_dir", model_dir, *flags]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    state_file = os.path.join(backup_dir(model_dir), training_backup.BACKUP_STATE_FILE)

    def epochs_done() -> int:
        try:
            with open(state_file) as f:
                return json.load(f)["epochs_done"]
        except (OSError, ValueError):  # not written yet (it is replaced whole, never partly)
            return 0

    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while epochs_done() < 1:
            assert job.poll() is None and time.time() < deadline, "epoch 1 never finished"
            time.sleep(0.02)
    finally:
        job.kill()  # SIGKILL: no clean-up of any kind runs
        job.wait()
    killed_after = epochs_done()
    assert killed_after in (1, 2)  # 1 unless epoch 2 (about a second) won the race
    assert not os.path.exists(model_dir)
    # The live TensorBoard logs (in the backup, kept across the kill) hold the finished epochs.
    live = _events(None, os.path.join(backup_dir(model_dir), LOGS_DIR))
    assert ("validation", "epoch_loss", 0) in [event[:3] for event in live]

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from epoch {killed_after + 1} of 3" in rerun.stderr
    assert "Epoch 1/3" not in rerun.stdout and "Epoch 3/3" in rerun.stdout
    assert os.path.exists(os.path.join(model_dir, SUCCESS_FILE))
    assert not os.path.exists(backup_dir(model_dir))
    assert read_json(os.path.join(model_dir, METRICS_FILE))["epochs_run"] == 3
    assert read_json(os.path.join(model_dir, MODEL_CARD_FILE))["epochs_restored"] == killed_after

    # The same training, never interrupted (in this process; seeded the same way).
    uninterrupted = str(tmp_path / "uninterrupted")
    settings = dict(epochs=3, batch_size=16, **TINY)
    train.run_training(train.settings_from(data_dir, uninterrupted, **settings))
    history = read_json(os.path.join(model_dir, HISTORY_FILE))
    assert len(history["loss"]) == 3
    assert history == read_json(os.path.join(uninterrupted, HISTORY_FILE))
    assert _events(model_dir) == _events(uninterrupted)
    # Each epoch once per metric: no duplicate (run, tag, step), every epoch of every metric.
    keys = [event[:3] for event in _events(model_dir)]
    assert len(keys) == len(set(keys))
    epoch_steps = {(run, tag): [] for run, tag, _ in keys if tag.startswith("epoch_")}
    for run, tag, step in keys:
        if tag.startswith("epoch_"):
            epoch_steps[(run, tag)].append(step)
    assert ("train", "epoch_loss") in epoch_steps and ("validation", "epoch_loss") in epoch_steps
    assert all(sorted(steps) == [0, 1, 2] for steps in epoch_steps.values())
    resumed_weights, full_weights = _saved_weights(model_dir), _saved_weights(uninterrupted)
    assert len(resumed_weights) == len(full_weights) >= 8
    for resumed, full in zip(resumed_weights, full_weights):
        np.testing.assert_array_equal(resumed, full)


def _fake_backup(model_dir: str, settings: dict) -> training_backup.TrainingBackup:
    """A backup whose settings.json, Keras files and state.json agree (epoch 1 done)."""
    backup = training_backup.TrainingBackup(model_dir, settings)
    assert backup.open() is None  # nothing to resume: a fresh backup
    os.makedirs(backup.keras_dir)
    with open(os.path.join(backup.keras_dir, "latest.weights.h5"), "wb") as f:
        f.write(b"weights of epoch 1")
    with open(os.path.join(backup.keras_dir, "training_metadata.json"), "w") as f:
        json.dump({"epoch": 1, "batch": 0}, f)
    backup.write_state({"epochs_done": 1, "stopped": False, "best_weights": None})
    return backup


def test_a_backup_is_resumed_only_under_the_same_settings(tmp_path, caplog):
    model_dir = str(tmp_path / "model")
    _fake_backup(model_dir, {"epochs": 3, "seed": 42})
    assert (
        training_backup.TrainingBackup(model_dir, {"epochs": 3, "seed": 42}).open()["epochs_done"]
        == 1
    )

    with caplog.at_level(logging.INFO, logger="pipeline.training_backup"):
        again = training_backup.TrainingBackup(model_dir, {"epochs": 5, "seed": 42})
        assert again.open() is None
    assert "other settings: epochs 3 -> 5" in caplog.text
    assert os.listdir(again.dir) == [training_backup.BACKUP_SETTINGS_FILE]  # started afresh
    assert read_json(os.path.join(again.dir, training_backup.BACKUP_SETTINGS_FILE))["epochs"] == 5


def test_a_backup_killed_while_saving_an_epoch_is_discarded(tmp_path, caplog):
    model_dir = str(tmp_path / "model")
    backup = _fake_backup(model_dir, {"epochs": 3})
    with open(os.path.join(backup.keras_dir, "latest.weights.h5"), "wb") as f:
        f.write(b"weights of epoch 2")  # the kill came before state.json caught up
    with caplog.at_level(logging.INFO, logger="pipeline.training_backup"):
        assert training_backup.TrainingBackup(model_dir, {"epochs": 3}).open() is None
    assert "killed while saving an epoch" in caplog.text


def test_textclf_run_leaves_the_backup_when_it_removes_stale_staging_dirs(tmp_path):
    from pipeline import run

    model_dir = str(tmp_path / "model")
    stale = tmp_path / ".model.inprogress-20260101T000000-0123abcd"
    stale.mkdir()
    os.makedirs(backup_dir(model_dir))
    run.discard_stale_staging(model_dir)
    assert not stale.exists() and os.path.isdir(backup_dir(model_dir))
