"""`textclf promote` end to end: a real preprocess output of a tiny corpus, a real `textclf train`
model and small real SavedModels (one trained on shuffled labels), the evaluation rows read by a
Beam pipeline on the FnApiRunner, a real registry directory. Plus the gate's pure pieces: the
by-name metrics and the decision rule."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline import gate, preprocess, promote, train
from pipeline.artifacts import ModelOutput, PreprocessOutput
from pipeline.registry import Registry
from tests.model_fixtures import build_test_model
from tests.pipeline.test_train import SEQUENCE_LENGTH, TINY, _corpus
from tests.stage_outputs import file_tree
from transforms.contracts import (
    CHAMPION_FILE,
    EVAL,
    EXIT_BAD_INPUT,
    METRICS_FILE,
    OUT_LABELS,
    PROMOTION_FILE,
    SAVED_MODEL_PB,
    SERVING_SIGNATURE,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = "--runner=FnApiRunner"


# -- fixtures: one corpus, its preprocess output, three candidates --------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """(the corpus CSV, its finished preprocess output)."""
    tmp = tmp_path_factory.mktemp("promote_data")
    corpus, out = str(tmp / "corpus.csv"), str(tmp / "data")
    _corpus(corpus, multi_label=False, rows=200)
    argv = ["--input", corpus, "--output_dir", out, "--sequence_length", str(SEQUENCE_LENGTH)]
    assert preprocess.main([*argv, "--max_tokens", "100", RUNNER]) == 0
    return corpus, out


def _rows(corpus: str) -> tuple[list[str], list[str]]:
    with open(corpus, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> str:
    """A real `textclf train` output (2 tiny epochs)."""
    model_dir = str(tmp_path_factory.mktemp("promote_trained") / "model")
    train.train(data[1], model_dir, epochs=2, batch_size=16, **TINY)
    return model_dir


@pytest.fixture(scope="module")
def better(data, tmp_path_factory) -> str:
    texts, labels = _rows(data[0])
    model_dir = str(tmp_path_factory.mktemp("promote_better") / "model")
    build_test_model(model_dir, texts, labels, epochs=3, model_version="better")
    return model_dir


@pytest.fixture(scope="module")
def worse(data, tmp_path_factory) -> str:
    """Deliberately worse: the same texts with their labels shuffled."""
    texts, labels = _rows(data[0])
    random.Random(1).shuffle(labels)
    model_dir = str(tmp_path_factory.mktemp("promote_worse") / "model")
    build_test_model(model_dir, texts, labels, epochs=3, model_version="worse")
    return model_dir


def _promote(candidate: str, root: str, *flags: str) -> dict:
    """`textclf promote` in process (its main, as the CLI calls it); the decision file's JSON."""
    decision_file = os.path.join(os.path.dirname(root), f"decision-{random.random()}.json")
    code = promote.main(
        ["--candidate", candidate, "--registry", root, "--decision_file", decision_file]
        + list(flags)
        + [RUNNER]
    )
    assert code == 0
    with open(decision_file) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def two_promotions(data, trained, better, tmp_path_factory) -> tuple[str, dict, dict]:
    """A registry after the trained model (no champion) and then `better` were promoted."""
    root = str(tmp_path_factory.mktemp("promote_registry") / "registry")
    first = _promote(trained, root, "--eval_data", data[1])
    second = _promote(better, root, "--eval_data", data[1], "--tolerance", "0.3")
    return root, first, second


# -- promotions ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_first_promotion_has_no_champion_so_the_floor_decides_and_it_becomes_version_1(
    data, trained, two_promotions
):
    root, first, _ = two_promotions
    assert first["decision"] == "promoted" and first["champion"] is None
    assert first["reason"].endswith(">= floor 0.0000, and there is no champion yet")
    assert (first["version"], first["champion_after"]) == (1, 1)
    # --eval_data recovers exactly the eval split preprocess wrote...
    assert first["eval"]["rows"] == PreprocessOutput(data[1]).rows(EVAL) > 0
    assert first["eval"]["files"] == [data[0]]
    # ...so the trained model's accuracy on it is the one train measured on the TFRecords.
    with open(os.path.join(trained, METRICS_FILE)) as f:
        assert first["candidate"]["metrics"]["accuracy"] == pytest.approx(json.load(f)["accuracy"])
    assert first["candidate"]["model_version"] == ModelOutput(trained).model_version
    # Version 1 is a TF Serving version directory, and textclf reads it as a model directory.
    version = os.path.join(root, "1")
    assert os.path.exists(os.path.join(version, SAVED_MODEL_PB))
    assert SERVING_SIGNATURE in tf.saved_model.load(version).signatures
    assert (
        ModelOutput(version).check_complete().model_version == first["candidate"]["model_version"]
    )
    gate_record = Registry(root).record(1)["gate"]
    assert gate_record["decision"] == "promoted" and gate_record["reason"] == first["reason"]


@pytest.mark.slow
def test_a_second_good_candidate_becomes_version_2_and_the_champion(two_promotions):
    root, first, second = two_promotions
    assert second["decision"] == "promoted"
    assert (second["version"], second["champion_after"]) == (2, 2)
    with open(os.path.join(root, CHAMPION_FILE)) as f:
        assert f.read() == "2\n"
    # The champion was scored from its registry copy with the same code on the same rows: the
    # same figures the first promotion measured on the training output.
    assert second["champion"]["version"] == 1
    assert second["champion"]["metrics"] == first["candidate"]["metrics"]
    assert second["reason"].startswith(
        f"accuracy {second['candidate']['metrics']['accuracy']:.4f} >= champion v1's "
    )
    assert Registry(root).versions() == [1, 2]


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_the_registry_is_left_byte_for_byte(
    data, worse, two_promotions, tmp_path, capsys
):
    root = str(tmp_path / "registry")
    shutil.copytree(two_promotions[0], root)
    before = file_tree(root)
    decision_file = str(tmp_path / "run" / PROMOTION_FILE)

    code = promote.main(
        ["--candidate", worse, "--registry", root, "--eval_data", data[1], RUNNER]
        + ["--decision_file", decision_file]
    )

    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("refused: worse was not published; the champion stays v2 (")
    assert file_tree(root) == before
    with open(decision_file) as f:
        decision = json.load(f)
    assert decision["decision"] == "refused" and decision["version"] is None
    assert decision["champion_after"] == 2 and decision["champion"]["model_version"] == "better"
    assert (
        decision["candidate"]["metrics"]["accuracy"] < decision["champion"]["metrics"]["accuracy"]
    )
    assert "< champion v2's" in decision["reason"]


@pytest.mark.slow
def test_the_floor_alone_refuses_a_first_candidate_and_no_registry_is_created(
    data, better, tmp_path
):
    root = str(tmp_path / "registry")
    decision = _promote(better, root, "--eval_data", data[1], "--floor", "0.99")
    assert decision["decision"] == "refused" and decision["champion_after"] is None
    assert decision["reason"].endswith("< floor 0.9900 (there is no champion yet)")
    assert not os.path.exists(root)


@pytest.mark.slow
def test_a_rerun_for_a_published_candidate_publishes_nothing(
    data, better, two_promotions, tmp_path
):
    root = str(tmp_path / "registry")
    shutil.copytree(two_promotions[0], root)
    before = file_tree(root)

    decision = _promote(better, root, "--eval_data", data[1])

    assert decision["already_published"] is True
    assert (decision["decision"], decision["version"], decision["champion_after"]) == (
        "promoted",
        2,
        2,
    )
    assert "already published as version 2" in decision["reason"]
    assert file_tree(root) == before


@pytest.mark.slow
def test_a_promotion_cut_short_before_the_pointer_is_finished_by_its_rerun(data, better, tmp_path):
    root = str(tmp_path / "registry")
    Registry(root).publish(better, {"gate": {"decision": "promoted"}})  # then "killed"
    assert Registry(root).champion() is None

    decision = _promote(better, root, "--eval_data", data[1])

    assert Registry(root).champion() == 1 and decision["champion_after"] == 1
    assert Registry(root).versions() == [1]


@pytest.mark.slow
def test_a_champion_rolled_back_by_hand_stays_when_the_promotion_is_rerun(
    data, better, two_promotions, tmp_path
):
    root = str(tmp_path / "registry")
    shutil.copytree(two_promotions[0], root)
    Registry(root).set_champion(1)  # an operator rolls back from v2 to v1

    decision = _promote(better, root, "--eval_data", data[1])  # v2's candidate, rerun

    assert decision["already_published"] is True and decision["version"] == 2
    assert Registry(root).champion() == 1 and decision["champion_after"] == 1


@pytest.mark.slow
def test_a_fixed_evaluation_set_uses_every_valid_row_and_compares_labels_by_name(
    data, trained, tmp_path
):
    texts, labels = _rows(data[0])
    table = pa.table(
        {
            "body": texts[:30] + ["", "vote law senate", "ball goal team"],
            "topic": labels[:30] + ["politics", None, "cooking"],  # blank text, no label, unknown
        }
    )
    pq.write_table(table, tmp_path / "fixed.parquet")
    root = str(tmp_path / "registry")

    decision = _promote(
        trained,
        root,
        "--eval_input",
        str(tmp_path / "fixed.parquet"),
        "--text_column",
        "body",
        "--label_column",
        "topic",
    )

    figures = decision["candidate"]["metrics"]
    assert decision["eval"]["rows"] == figures["rows"] == 31  # the blank and unlabeled dropped
    assert figures["unknown_label_rows"] == 1
    assert decision["eval"]["source"] == f"evaluation set {tmp_path / 'fixed.parquet'}"
    # By hand: the scorer's predicted label against the row's label; "cooking" is always wrong.
    serve = tf.saved_model.load(os.path.join(trained, "saved_model")).signatures[SERVING_SIGNATURE]
    kept = texts[:30] + ["ball goal team"]
    predicted = [p.decode() for p in serve(text=tf.constant(kept))["label"].numpy()]
    expected = np.mean([p == t for p, t in zip(predicted, labels[:30] + ["cooking"])])
    assert figures["accuracy"] == pytest.approx(expected)


@pytest.mark.slow
def test_a_multi_label_candidate_is_judged_by_exact_match_at_its_own_threshold(tmp_path):
    texts = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 8
    tags = [["fun"], ["dull"], ["fun", "film"], ["dull", "film"]] * 8
    model_dir = str(tmp_path / "multi")
    build_test_model(model_dir, texts, tags, multi_label=True, epochs=3, threshold=0.4)
    with open(tmp_path / "fixed.jsonl", "w") as f:
        for text, row in zip(texts[:8], tags[:8]):
            f.write(json.dumps({"text": text, "label": "|".join(row)}) + "\n")

    decision = _promote(
        model_dir,
        str(tmp_path / "registry"),
        "--eval_input",
        str(tmp_path / "fixed.jsonl"),
        "--label_delimiter",
        "|",
        "--metric",
        "macro_f1",
    )

    assert decision["decision"] == "promoted" and decision["metric"] == "macro_f1"
    serve = tf.saved_model.load(os.path.join(model_dir, "saved_model")).signatures[
        SERVING_SIGNATURE
    ]
    chosen = serve(text=tf.constant(texts[:8]))[OUT_LABELS].numpy()
    exact = [{n.decode() for n in row if n} == set(t) for row, t in zip(chosen, tags[:8])]
    assert decision["candidate"]["metrics"]["accuracy"] == pytest.approx(np.mean(exact))


# -- bad input: exit 2, one line, nothing written --------------------------------------------------


def test_the_cli_refuses_an_unfinished_candidate_with_one_line(tmp_path):
    (tmp_path / "model").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "promote", "--candidate", str(tmp_path / "model")]
        + ["--registry", str(tmp_path / "registry"), "--eval_input", "x.csv"],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = [line for line in proc.stderr.splitlines() if line.startswith("textclf")]
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert len(err) == 1 and "has no _SUCCESS" in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "registry").exists()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("promote_small") / "model")
    build_test_model(path, ["good fine", "bad awful"] * 4, ["pos", "neg"] * 4, epochs=0)
    return path


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval_input", "{tmp}/missing-*.csv"], "no input file matches"),
        (["--eval_input", "{tmp}/blank.csv"], "has no valid rows"),
        (["--eval_input", "{tmp}/blank.csv", "--metric", "f1"], "--metric 'f1' is not one of"),
        (["--eval_input", "{tmp}/blank.csv", "--floor", "2"], "--floor must be in [0, 1]"),
        ([], "pass exactly one of --eval_data"),
        (["--eval_data", "{tmp}", "--eval_input", "{tmp}/blank.csv"], "pass exactly one of"),
        (["--eval_data", "{tmp}"], "not a finished preprocess output"),
        (["--eval_input", "{tmp}/blank.csv", "--label_delimiter", "|"], "--label_delimiter"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_and_touches_no_registry(
    small_model, tmp_path, capsys, flags, message
):
    (tmp_path / "blank.csv").write_text("text,label\n,pos\nhello,\n")
    root = tmp_path / "registry"
    argv = ["--candidate", small_model, "--registry", str(root), RUNNER]
    code = promote.main(argv + [f.format(tmp=tmp_path) for f in flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert len(err) == 1 and err[0].startswith("textclf promote: ") and message in err[0], err
    assert not root.exists()


# -- the gate's pure pieces ------------------------------------------------------------------------


def test_metrics_compare_by_label_name_across_different_vocabularies():
    truth = pa.array([["a"], ["b"], ["c"], ["a"]], pa.list_(pa.string()))
    # The model knows a, b and z (not c): its "z" is wrong everywhere, the "c" row wrong for it.
    figures = gate.label_metrics(truth, pa.array(["a", "z", "b", "a"]), ["b", "z", "a"], False)
    assert figures == {
        "accuracy": 0.5,
        "macro_f1": pytest.approx((1.0 + 0.0 + 0.0) / 3),
        "rows": 4,
        "unknown_label_rows": 1,
    }


def test_multi_label_accuracy_is_the_exact_match_ratio():
    truth = pa.array([["a", "b"], ["b"], [], ["a"]], pa.list_(pa.string()))
    predicted = pa.array([["a", "b"], ["b", "x"], [], ["b"]], pa.list_(pa.string()))
    figures = gate.label_metrics(truth, predicted, ["a", "b", "x"], True)
    assert figures["accuracy"] == 0.5  # rows 0 and 2; "x" spoils row 1
    # a: tp 1, fn 1 -> f1 2/3; b: tp 2, fp 1 -> f1 0.8
    assert figures["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


@pytest.mark.parametrize(
    "candidate, champion, tolerance, floor, promoted, reason",
    [
        (0.8123, 0.8010, 0.01, 0.5, True,
         "accuracy 0.8123 >= champion v3's 0.8010 - 0.0100 and >= floor 0.5000"),
        (0.7950, 0.8010, 0.01, 0.5, True,
         "accuracy 0.7950 >= champion v3's 0.8010 - 0.0100 and >= floor 0.5000"),
        (0.7000, 0.8010, 0.01, 0.5, False, "accuracy 0.7000 < champion v3's 0.8010 - 0.0100"),
        (0.4000, 0.3000, 0.0, 0.5, False, "accuracy 0.4000 < floor 0.5000"),
        (0.4000, 0.9000, 0.0, 0.5, False,
         "accuracy 0.4000 < floor 0.5000 and < champion v3's 0.9000 - 0.0000"),
        (0.8, 0.81, 0.01, 0.0, True,
         "accuracy 0.8000 >= champion v3's 0.8100 - 0.0100 and >= floor 0.0000"),
    ],
)  # fmt: skip
def test_the_rule_and_its_reason(candidate, champion, tolerance, floor, promoted, reason):
    assert gate.decide("accuracy", candidate, champion, 3, tolerance, floor) == (promoted, reason)


def test_the_options_class_names_exactly_the_commands_flags(tmp_path):
    opts, beam_options = promote.parse(
        ["--candidate", "m", "--registry", "r", "--eval_data", "d", "--runner=FnApiRunner"]
    )
    assert isinstance(opts, promote.PromoteOptions)
    assert sorted(vars(opts)) == sorted(promote.PromoteOptions.__annotations__)
    assert (opts.metric, opts.tolerance, opts.floor, opts.decision_file) == (
        "accuracy",
        0.0,
        0.0,
        None,
    )
    assert beam_options.get_all_options()["runner"] == "FnApiRunner"
    for action in promote.build_parser()._actions:  # each says what it does and its default
        if action.dest != "help":
            assert "default" in action.help or "required" in action.help, action.dest
