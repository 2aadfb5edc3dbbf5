"""Drift, end to end: a real preprocess and training on one synthetic corpus, then `textclf
score` on a held-out part of that corpus (no drift) and on another corpus (other words, longer
texts: drift), with and without --fail_on_drift; and a model without the profile outputs."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline import preprocess, score, train
from tests.model_fixtures import build_test_model
from transforms.contracts import (
    EXIT_DRIFT,
    OUT_NUM_TOKENS,
    OUT_OOV_TOKENS,
    OUT_WINDOW_TOKENS,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    STATS_FILE,
    SUCCESS_FILE,
    TRAINING_PROFILE_FILE,
)
from transforms.drift import DRIFT, LENGTH_BIN_EDGES, OOV_RATE, PREDICTED_CLASS, TOKEN_LENGTH

pytestmark = pytest.mark.slow

RUNNER = "--runner=DirectRunner"
SEQUENCE_LENGTH = 20
TOPICS = {
    "sports": "ball goal team match coach referee",
    "politics": "vote law senate party election budget",
    "science": "atom cell energy theory lab molecule",
}
COMMON = "the a of and in".split()
# The other corpus: words the model never saw, and texts three times as long or more.
OTHER_WORDS = "recipe oven flour butter sugar whisk bake dough yeast salt pepper".split()


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts of 3..15 words from one topic's words plus common words, with the topic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = TOPICS[topic].split() + COMMON
        rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))), topic))
    return rows


def other_rows(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(40, 90))) for _ in range(n)]


def write_parquet(path, texts: list[str]) -> str:
    pq.write_table(
        pa.table({"id": pa.array(range(len(texts)), pa.int64()), "body": texts}), str(path)
    )
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model_dir, held-out parquet, other-corpus parquet) from one preprocess + training."""
    tmp = tmp_path_factory.mktemp("drift")
    rows = topic_rows(450, seed=1)
    corpus = tmp / "corpus.csv"
    with open(corpus, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows[:300])
    data_dir, model_dir = str(tmp / "data"), str(tmp / "model")
    argv = ["--input", str(corpus), "--output_dir", data_dir, "--text_column", "text",
            "--label_column", "label", "--sequence_length", str(SEQUENCE_LENGTH), RUNNER]  # fmt: skip
    assert preprocess.main(argv) == 0
    train.train(
        data_dir, model_dir, epochs=3, batch_size=16, learning_rate=0.01,
        embedding_dim=8, filters=8, kernel_size=3, pool_size=4, lstm_units=6,
    )  # fmt: skip
    held_out = write_parquet(tmp / "held_out.parquet", [text for text, _ in rows[300:]])
    other = write_parquet(tmp / "other.parquet", other_rows(150, seed=2))
    return model_dir, held_out, other


def score_argv(model_dir: str, inputs: str, out, *extra: str) -> list[str]:
    return ["--model_dir", model_dir, "--input", inputs, "--output", str(out),
            "--text_column", "body", "--id_column", "id", RUNNER, *extra]  # fmt: skip


def read_stats(out) -> dict:
    with open(os.path.join(out, STATS_FILE)) as f:
        return json.load(f)


def test_the_model_directory_holds_the_training_profile(trained):
    model_dir, _, _ = trained
    with open(os.path.join(model_dir, TRAINING_PROFILE_FILE)) as f:
        profile = json.load(f)
    assert profile["rows"] == 300 and profile["multi_label"] is False
    assert profile["token_length_histogram"]["bin_edges"] == list(LENGTH_BIN_EDGES)
    assert sum(profile["token_length_histogram"]["counts"]) == 300
    assert 3 <= profile["token_length_quantiles"]["p50"] <= 16
    assert sum(profile["class_counts"].values()) < 300  # the train split only
    assert set(profile["class_counts"]) == set(TOPICS)
    assert profile["oov_rate"] == 0.0  # every word is in the vocabulary


def test_the_signature_returns_each_rows_token_counts(trained):
    model_dir, _, _ = trained
    signature = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    texts = ["goal team", "goal " * 30, "flour goal sugar yeast"]
    out = signature(**{SERVING_INPUT: tf.constant(texts)})
    assert out[OUT_NUM_TOKENS].numpy().tolist() == [2, 30, 4]
    assert out[OUT_WINDOW_TOKENS].numpy().tolist() == [2, SEQUENCE_LENGTH, 4]
    assert out[OUT_OOV_TOKENS].numpy().tolist() == [0, 0, 3]
    assert out[OUT_NUM_TOKENS].dtype == tf.int64


def test_a_held_out_part_of_the_training_corpus_does_not_drift(trained, tmp_path):
    model_dir, held_out, _ = trained
    out = tmp_path / "scores"
    assert score.main(score_argv(model_dir, held_out, out, "--fail_on_drift")) == 0
    stats = read_stats(out)
    profile, drift = stats["profile"], stats["drift"]
    assert profile["rows"] == 150 == sum(profile["token_length_histogram"]["counts"])
    assert profile["oov_rate"] == 0.0
    assert profile["class_counts"] == stats["label_counts"]
    assert drift["available"] and not drift["drifted"], drift["warnings"]
    statuses = {name: m["status"] for name, m in drift["measures"].items()}
    assert DRIFT not in statuses.values() and drift["unavailable"] == []


def test_another_corpus_drifts_and_fail_on_drift_exits_3_after_the_output_is_complete(
    trained, tmp_path, capsys, caplog
):
    model_dir, _, other = trained
    out = tmp_path / "scores"
    with caplog.at_level(logging.WARNING, logger="pipeline.score"):
        code = score.main(score_argv(model_dir, other, out, "--fail_on_drift"))
    assert code == EXIT_DRIFT == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textclf score: drift: ")
    assert "oov_rate" in err[0] and "token_length" in err[0]
    # The output is whole: _SUCCESS, the scored rows and stats.json with the drift figures.
    assert os.path.exists(out / SUCCESS_FILE)
    assert pq.read_table(str(out / "part-00000-of-00001.parquet")).num_rows == 150
    drift = read_stats(out)["drift"]
    assert drift["drifted"]
    assert drift["measures"][TOKEN_LENGTH]["status"] == DRIFT
    assert drift["measures"][OOV_RATE]["status"] == DRIFT
    assert drift["measures"][OOV_RATE]["scored"] == 1.0
    assert drift["measures"][TOKEN_LENGTH]["scored"]["quantiles"]["p50"] >= 40
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("drift: token-length distribution") for m in logged)
    assert any(m.startswith("drift: OOV rate") for m in logged)

    # Without the flag: the same figures, exit 0.
    again = tmp_path / "again"
    assert score.main(score_argv(model_dir, other, again)) == 0
    assert read_stats(again)["drift"] == drift


def test_a_model_without_profile_outputs_still_scores_and_says_what_is_unavailable(
    trained, tmp_path
):
    trained_dir, held_out, _ = trained
    texts = [text for text, _ in topic_rows(64, seed=3)]
    old = str(tmp_path / "old_model")
    build_test_model(old, texts, [t.split()[0] for t in texts], epochs=1)

    out = tmp_path / "scores"
    assert score.main(score_argv(old, held_out, out, "--fail_on_drift")) == 0
    stats = read_stats(out)
    assert stats["rows_scored"] == 150 and os.path.exists(out / SUCCESS_FILE)
    assert stats["profile"]["token_length_histogram"] is None
    assert stats["profile"]["oov_rate"] is None
    assert stats["drift"]["available"] is False
    assert TRAINING_PROFILE_FILE in stats["drift"]["reason"]

    # With a training profile beside it, the class mix is still compared.
    shutil.copy(os.path.join(trained_dir, TRAINING_PROFILE_FILE), old)
    out2 = tmp_path / "scores2"
    assert score.main(score_argv(old, held_out, out2)) == 0
    drift = read_stats(out2)["drift"]
    assert drift["available"] and drift["unavailable"] == [OOV_RATE, TOKEN_LENGTH]
    assert "no token-length histogram" in drift["measures"][TOKEN_LENGTH]["reason"]
    assert drift["measures"][PREDICTED_CLASS]["value"] is not None
