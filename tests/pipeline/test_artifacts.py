"""The stage output readers on real outputs: a tiny corpus preprocessed by the real stage, small
real model directories (tests/model_fixtures.py) and a real score output of one of them."""

import csv
import datetime as dt
import glob
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import preprocess, score, train
from pipeline.artifacts import IncompleteOutput, ModelOutput, PreprocessOutput, ScoreOutput
from tests.model_fixtures import build_test_model
from tests.stage_outputs import read_examples, read_lines
from transforms.contracts import (
    CONFIG_FILE,
    EVAL,
    EXIT_BAD_INPUT,
    LABEL_VOCAB_NAME,
    LABELS_TXT,
    METRICS_FILE,
    MODEL_CARD_FILE,
    SAVED_MODEL_DIR,
    STATS_FILE,
    SUCCESS_FILE,
    TRAIN,
)

TOPICS = {"sports": "ball goal team match", "science": "atom cell energy lab"}
SEQUENCE_LENGTH = 12


def _preprocess(tmp, name: str, *flags: str) -> str:
    """A 60-row two-topic CSV through `textclf preprocess`; returns the output dir."""
    corpus, out = str(tmp / f"{name}.csv"), str(tmp / name)
    with open(corpus, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(60):
            topic = sorted(TOPICS)[i % 2]
            words = TOPICS[topic].split()
            writer.writerow([" ".join(words[(i + k) % 4] for k in range(2 + i % 5)), topic])
    argv = ["--input", corpus, "--output_dir", out, "--sequence_length", str(SEQUENCE_LENGTH)]
    assert preprocess.main([*argv, *flags]) == 0
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return _preprocess(tmp_path_factory.mktemp("preprocess"), "data", "--eval_fraction", "0.3")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "single")
    build_test_model(path, ["good fun", "bad dull"] * 4, ["pos", "neg"] * 4)
    return path


@pytest.fixture(scope="module")
def multi_model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "multi")
    tags = [["fun"], ["dull", "film"]] * 4
    build_test_model(path, ["good fun", "bad dull"] * 4, tags, multi_label=True, threshold=0.3)
    return path


@pytest.fixture(scope="module")
def score_dir(model_dir, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("score")
    texts = ["good fun", None, "bad dull", "", "fun fun"] * 3  # 6 rows without usable text
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp / "in.parquet")
    out = str(tmp / "scores")
    score.score(model_dir, [str(tmp / "in.parquet")], out, "text", batch_size=4)
    return out


def _copy(src: str, dst, without: str | None = None) -> str:
    """A copy of the output `src` at `dst`, less its file `without`."""
    shutil.copytree(src, dst)
    if without:
        os.remove(os.path.join(dst, without))
    return str(dst)


def _refusal(output) -> str:
    with pytest.raises(IncompleteOutput) as refused:
        output.check_complete()
    return str(refused.value)


# ---------------------------------------------------------------------------------------------
# PreprocessOutput


@pytest.mark.slow
def test_preprocess_output_hands_out_its_config_rows_and_split_files(data_dir):
    data = PreprocessOutput(data_dir).check_complete()
    with open(os.path.join(data_dir, CONFIG_FILE)) as f:
        assert data.config == json.load(f)
    with open(os.path.join(data_dir, STATS_FILE)) as f:
        assert data.stats == json.load(f)
    for split in (TRAIN, EVAL):
        assert data.rows(split) == len(read_examples(data_dir, split)) > 0
        assert glob.glob(data.split_pattern(split))
    assert data.rows(TRAIN) + data.rows(EVAL) == 60
    assert (data.multi_label, data.sequence_length, data.num_classes) == (False, 12, 2)
    assert data.id_vocabulary_size == 1 + data.config["vocab_size"] + 1  # padding, vocab, OOV
    labels = [v.decode() for v in data.tft_output.vocabulary_by_name(LABEL_VOCAB_NAME)]
    assert data.label_vocabulary == labels
    assert sorted(labels) == sorted(TOPICS)


@pytest.mark.slow
def test_finished_at_is_the_time_finalize_wrote(data_dir, model_dir):
    data = PreprocessOutput(data_dir)
    with open(os.path.join(data_dir, SUCCESS_FILE)) as f:
        assert data.finished_at == dt.datetime.fromisoformat(f.read().strip())
    assert data.finished_at.tzinfo is not None
    assert ModelOutput(model_dir).finished_at is None  # the fixture's _SUCCESS holds no time


@pytest.mark.slow
def test_an_unfinished_preprocess_output_is_refused_saying_what_to_do(data_dir, tmp_path):
    unfinished = _copy(data_dir, tmp_path / "unfinished", without=SUCCESS_FILE)
    message = _refusal(PreprocessOutput(unfinished))
    assert message.startswith(f"{unfinished} has no {SUCCESS_FILE}")
    assert "run `textclf preprocess --output_dir` there" in message
    assert not PreprocessOutput(unfinished).finished
    assert PreprocessOutput(unfinished).finished_at is None
    assert "no _SUCCESS" in _refusal(PreprocessOutput(str(tmp_path / "missing")))


@pytest.mark.slow
def test_a_preprocess_output_lacking_a_config_key_or_its_stats_is_refused(data_dir, tmp_path):
    lacking = _copy(data_dir, tmp_path / "lacking")
    config_path = os.path.join(lacking, CONFIG_FILE)
    with open(config_path) as f:
        config = json.load(f)
    del config["num_classes"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    assert _refusal(PreprocessOutput(lacking)) == (
        f"{config_path} lacks num_classes; re-run `textclf preprocess`"
    )

    no_stats = _copy(data_dir, tmp_path / "no_stats", without=STATS_FILE)
    message = _refusal(PreprocessOutput(no_stats))
    assert message.startswith(f"cannot read {os.path.join(no_stats, STATS_FILE)}")


@pytest.mark.slow
def test_train_refuses_a_preprocess_output_with_an_empty_split(tmp_path, capsys):
    """Rows per split come from stats.json; an empty eval split is bad input (exit 2)."""
    data = _preprocess(tmp_path, "no_eval", "--eval_fraction", "0")
    assert PreprocessOutput(data).rows(EVAL) == 0
    argv = ["--data_dir", data, "--model_dir", str(tmp_path / "model")]
    assert train.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "60 train and 0 eval rows" in err[0]
    assert "both splits need rows" in err[0]
    assert not os.path.exists(tmp_path / "model")


# ---------------------------------------------------------------------------------------------
# ModelOutput


def test_model_output_hands_out_its_card_labels_and_scoring_settings(model_dir, multi_model_dir):
    single = ModelOutput(model_dir).check_complete()
    assert single.labels == read_lines(os.path.join(model_dir, LABELS_TXT)) == ["neg", "pos"]
    with open(os.path.join(model_dir, MODEL_CARD_FILE)) as f:
        assert single.card == json.load(f)
    assert (single.model_version, single.multi_label, single.threshold) == (
        "test-model-v1",
        False,
        None,
    )
    assert single.saved_model_dir == os.path.join(model_dir, SAVED_MODEL_DIR)
    assert os.path.isdir(single.saved_model_dir)
    assert single.scoring_model.label_names == ("neg", "pos")

    multi = ModelOutput(multi_model_dir).check_complete()
    assert (multi.multi_label, multi.threshold) == (True, 0.3)
    assert multi.labels == ["dull", "film", "fun"]


def test_model_metrics_and_history_are_none_until_written(model_dir, tmp_path):
    assert ModelOutput(model_dir).metrics is None
    assert ModelOutput(model_dir).history is None
    copy = _copy(model_dir, tmp_path / "model")
    with open(os.path.join(copy, METRICS_FILE), "w") as f:
        json.dump({"accuracy": 0.5}, f)
    assert ModelOutput(copy).metrics == {"accuracy": 0.5}


def test_a_model_without_a_card_is_versioned_by_its_directory_name(model_dir, tmp_path):
    copy = _copy(model_dir, tmp_path / "v7", without=MODEL_CARD_FILE)
    model = ModelOutput(copy).check_complete()
    assert model.card == {}
    assert (model.model_version, model.multi_label) == ("v7", False)  # from the signature


def test_an_unfinished_or_unservable_model_output_is_refused(model_dir, tmp_path):
    unfinished = _copy(model_dir, tmp_path / "unfinished", without=SUCCESS_FILE)
    message = _refusal(ModelOutput(unfinished))
    assert message.startswith(f"{unfinished} has no {SUCCESS_FILE}")
    assert "textclf train --model_dir" in message
    with pytest.raises(IncompleteOutput):
        ModelOutput(unfinished).check_finished()

    no_saved_model = _copy(model_dir, tmp_path / "no_saved_model")
    shutil.rmtree(os.path.join(no_saved_model, SAVED_MODEL_DIR))
    ModelOutput(no_saved_model).check_finished()  # finished, but nothing to score with
    assert _refusal(ModelOutput(no_saved_model)) == (
        f"model directory {no_saved_model} has no {SAVED_MODEL_DIR}; re-export the model"
    )

    no_classes = _copy(model_dir, tmp_path / "no_classes")
    with open(os.path.join(no_classes, LABELS_TXT), "w") as f:
        f.write("\n")
    assert _refusal(ModelOutput(no_classes)).endswith(f"{LABELS_TXT} lists no classes")


# ---------------------------------------------------------------------------------------------
# ScoreOutput


@pytest.mark.slow
def test_score_output_lists_its_part_and_dead_letter_files_and_stats(score_dir):
    scores = ScoreOutput(score_dir).check_complete()
    assert scores.stats["rows_read"] == 15
    assert (scores.stats["rows_scored"], scores.stats["rows_dead_lettered"]) == (9, 6)
    parts, dead = scores.part_files(), scores.dead_letter_files()
    assert parts and dead and parts == sorted(parts)
    assert {os.path.basename(p).split("-")[0] for p in parts} == {"part"}
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 9
    assert sum(pq.read_metadata(p).num_rows for p in dead) == 6


def test_an_unfinished_score_output_is_refused(tmp_path):
    (tmp_path / "scores").mkdir()
    message = _refusal(ScoreOutput(str(tmp_path / "scores")))
    assert "no _SUCCESS" in message and "textclf score --output" in message
