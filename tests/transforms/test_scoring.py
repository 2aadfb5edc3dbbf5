"""ScoreRecordBatches and its pieces on a real (tiny) SavedModel, with Beam's TestPipeline."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.model_fixtures import POISON_MARKER, build_poisoned_model, build_test_model
from transforms.contracts import (
    LABELS_TXT,
    MODEL_CARD_FILE,
    MODEL_VERSION_COLUMN,
    OUT_LABEL,
    OUT_PROBABILITIES,
    PREDICTED_LABEL_COLUMN,
    PREDICTED_LABELS_COLUMN,
    PROBABILITIES_COLUMN,
    REASON_COLUMN,
    REASON_MODEL_CALL_FAILED,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NOT_STRING,
    REASON_TEXT_NULL,
    SAVED_MODEL_DIR,
    SCORE_COLUMN,
    SERVING_SIGNATURE,
)
from transforms.scoring import (
    DEAD_LETTER_TAG,
    DEFAULT_THRESHOLD,
    MAX_ERROR_MESSAGE_CHARS,
    METRICS_NAMESPACE,
    ScoreRecordBatches,
    ScoringModel,
    SummarizeTables,
    model_call_failure_reason,
    prediction_arrays,
    scored_schema,
    unusable_text_reasons,
)

TRAIN_TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 8
TRAIN_LABELS = ["pos", "neg", "pos", "neg"] * 8
TRAIN_TAGS = [["fun"], ["dull"], ["fun", "film"], ["dull", "film"]] * 8


@pytest.fixture(scope="module")
def single_label_model(tmp_path_factory) -> ScoringModel:
    model_dir = str(tmp_path_factory.mktemp("single") / "model")
    build_test_model(model_dir, TRAIN_TEXTS, TRAIN_LABELS, epochs=3)
    return ScoringModel.from_model_dir(model_dir)


@pytest.fixture(scope="module")
def multi_label_model(tmp_path_factory) -> ScoringModel:
    model_dir = str(tmp_path_factory.mktemp("multi") / "model")
    build_test_model(model_dir, TRAIN_TEXTS, TRAIN_TAGS, multi_label=True, epochs=3)
    return ScoringModel.from_model_dir(model_dir)


def signature_outputs(model: ScoringModel, texts: list[str]) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(f"{model.model_dir}/{SAVED_MODEL_DIR}").signatures[
        SERVING_SIGNATURE
    ]
    return {k: v.numpy() for k, v in signature(text=tf.constant(texts)).items()}


def run_score(tables, model, passthrough, check_scored, check_dead, **kwargs) -> None:
    """Run ScoreRecordBatches over `tables` on the in-process runner; the checks get the lists
    of scored and dead-letter tables (Beam's assert_that, so a failed check fails the run)."""
    with TestPipeline(runner=FnApiRunner()) as p:
        results = (
            p
            | beam.Create(tables, reshuffle=False)
            | ScoreRecordBatches(model, "text", passthrough, **kwargs)
        )
        assert_that(results["scored"], check_scored, label="CheckScored")
        assert_that(results[DEAD_LETTER_TAG], check_dead, label="CheckDeadLetter")


def no_tables(tables):
    assert tables == []


def test_model_info_is_read_from_labels_txt_and_model_card(single_label_model):
    assert single_label_model.label_names == ("neg", "pos")
    assert single_label_model.multi_label is False
    assert single_label_model.model_version == "test-model-v1"


def test_model_without_model_card_falls_back_to_signature_and_dir_name(tmp_path):
    model_dir = str(tmp_path / "model-2024")
    build_test_model(model_dir, TRAIN_TEXTS, TRAIN_TAGS, multi_label=True, write_model_card=False)
    info = ScoringModel.from_model_dir(model_dir)
    assert info.multi_label is True
    assert info.model_version == "model-2024"
    assert info.threshold == DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    "card, multi_label, threshold",
    [
        ({"multi_label": True, "threshold": 0.3}, True, 0.3),
        ({"multi_label": False, "threshold": None}, False, None),
        ({"head": {"multi_label": True, "threshold": 0.4}}, True, 0.4),  # older train cards
        ({"multi_label": True}, True, DEFAULT_THRESHOLD),
    ],
)
def test_head_and_threshold_come_from_the_model_card_without_loading_the_model(
    tmp_path, card, multi_label, threshold
):
    # No saved_model/ here: reading the head off the card must not need the SavedModel.
    (tmp_path / LABELS_TXT).write_text("a\nb\n")
    (tmp_path / MODEL_CARD_FILE).write_text(json.dumps(card))
    info = ScoringModel.from_model_dir(str(tmp_path))
    assert (info.multi_label, info.threshold) == (multi_label, threshold)
    assert info.decision_threshold() == threshold
    assert info.decision_threshold(0.7) == (0.7 if multi_label else None)


def test_unusable_text_reasons_name_null_rows_and_count_whitespace_only_as_empty():
    text = pa.array(["ok", None, "", "  \t\n", "\u3000\u00a0", " a "])
    assert unusable_text_reasons(text).to_pylist() == [
        None,
        REASON_TEXT_NULL,
        REASON_TEXT_EMPTY,
        REASON_TEXT_EMPTY,
        REASON_TEXT_EMPTY,
        None,
    ]


def test_prediction_arrays_take_argmax_label_and_top_probability(single_label_model):
    probs = np.array([[0.2, 0.8], [0.7, 0.3]], dtype=np.float32)
    label, score, probabilities, version = prediction_arrays(probs, single_label_model, 0.5)
    assert label.to_pylist() == ["pos", "neg"]
    assert score.type == pa.float32()
    assert score.to_pylist() == pytest.approx([0.8, 0.7])
    assert probabilities.type == pa.list_(pa.float32())
    assert np.allclose(np.array(probabilities.to_pylist()), probs)
    assert version.to_pylist() == ["test-model-v1"] * 2


def test_multi_label_prediction_arrays_keep_every_class_at_or_above_threshold(multi_label_model):
    # label_names are sorted: dull, film, fun
    probs = np.array([[0.9, 0.3, 0.6], [0.1, 0.2, 0.3], [0.3, 0.3, 0.31]], dtype=np.float32)
    labels = prediction_arrays(probs, multi_label_model, 0.3)[0]
    assert labels.type == pa.list_(pa.string())
    assert labels.to_pylist() == [["dull", "film", "fun"], ["fun"], ["dull", "film", "fun"]]
    assert prediction_arrays(probs, multi_label_model, 0.95)[0].to_pylist() == [[], [], []]
    # No threshold given: the model's own (0.5 in the fixture's card).
    assert prediction_arrays(probs, multi_label_model)[0].to_pylist() == [["dull", "fun"], [], []]


def test_scored_tables_equal_the_signature_called_in_process(single_label_model):
    texts = [f"{w} {v}" for w in ("good", "bad", "great", "boring") for v in ("film", "fun", "x")]
    texts[4] = "café naïve 映画 good"  # multi-byte UTF-8 survives the blob + offsets hand-off
    first = pa.table({"id": pa.array(range(7), pa.int64()), "text": texts[:7]})
    second = pa.table({"id": pa.array(range(7, 12), pa.int64()), "text": texts[7:]})
    passthrough = pa.schema([("id", pa.int64()), ("text", pa.string())])

    expected = signature_outputs(single_label_model, texts)

    def check_scored(scored):
        assert sorted(t.num_rows for t in scored) == [5, 7]  # one output table per input table
        table = pa.concat_tables(scored).sort_by("id")
        assert table.schema == scored_schema(passthrough, single_label_model)
        assert table.column("text").to_pylist() == texts
        assert table.column(PREDICTED_LABEL_COLUMN).to_pylist() == [
            b.decode() for b in expected[OUT_LABEL]
        ]
        got = np.array(table.column(PROBABILITIES_COLUMN).to_pylist(), dtype=np.float32)
        np.testing.assert_allclose(got, expected[OUT_PROBABILITIES], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            table.column(SCORE_COLUMN).to_numpy(),
            expected[OUT_PROBABILITIES].max(axis=1),
            rtol=1e-6,
        )
        assert set(table.column(MODEL_VERSION_COLUMN).to_pylist()) == {"test-model-v1"}

    run_score(
        [first, second], single_label_model, passthrough, check_scored, no_tables, batch_size=3
    )


def test_rows_with_unusable_text_are_dead_lettered_with_their_columns_and_reason(
    single_label_model,
):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
            "text": pa.array(["good fun", None, "", "   ", "bad"], pa.string()),
        }
    )
    passthrough = pa.schema([("id", pa.int64())])

    def check_scored(scored):
        assert pa.concat_tables(scored).column("id").to_pylist() == [1, 5]

    def check_dead(dead):
        dead_table = pa.concat_tables(dead)
        assert dead_table.schema.names == ["id", REASON_COLUMN]
        assert dead_table.to_pylist() == [
            {"id": 2, REASON_COLUMN: REASON_TEXT_NULL},
            {"id": 3, REASON_COLUMN: REASON_TEXT_EMPTY},
            {"id": 4, REASON_COLUMN: REASON_TEXT_EMPTY},
        ]

    run_score([table], single_label_model, passthrough, check_scored, check_dead)


def test_a_table_whose_text_is_not_a_string_is_dead_lettered_whole(single_label_model):
    table = pa.table({"id": [1, 2], "text": [10, 20]})

    def check_dead(dead):
        reasons = pa.concat_tables(dead).column(REASON_COLUMN).to_pylist()
        assert reasons == [REASON_TEXT_NOT_STRING] * 2

    passthrough = pa.schema([("id", pa.int64())])
    run_score([table], single_label_model, passthrough, no_tables, check_dead)


def test_multi_label_scoring_rethresholds_the_signature_probabilities(multi_label_model):
    texts = ["good great fun", "boring bad film", "great movie", "film"]
    table = pa.table({"text": texts})
    passthrough = pa.schema([("text", pa.string())])

    probs = signature_outputs(multi_label_model, texts)[OUT_PROBABILITIES]
    names = np.array(multi_label_model.label_names)
    expected = [list(names[row >= 0.4]) for row in probs]

    def check_scored(scored):
        out = pa.concat_tables(scored)
        assert out.column(PREDICTED_LABELS_COLUMN).to_pylist() == expected
        assert out.schema.field(PREDICTED_LABELS_COLUMN).type == pa.list_(pa.string())

    run_score([table], multi_label_model, passthrough, check_scored, no_tables, threshold=0.4)


def test_summarize_tables_counts_rows_and_values_including_list_values():
    with TestPipeline(runner=FnApiRunner()) as p:
        tables = p | beam.Create(
            [
                pa.table({"l": pa.array([["a"], ["a", "b"], []])}),
                pa.table({"l": pa.array([["b"]])}),
                pa.table({"l": pa.array([], pa.list_(pa.string()))}),
            ],
            reshuffle=False,
        )
        summary = tables | beam.CombineGlobally(SummarizeTables("l"))
        assert_that(summary, equal_to([{"rows": 4, "counts": {"a": 2, "b": 2}}]))


# ---------------------------------------------------------------------------------------------
# A model call that fails on some rows: bisected down to those rows, which are dead-lettered.


@pytest.fixture(scope="module")
def poisoned_model(single_label_model, tmp_path_factory) -> ScoringModel:
    """The single-label model behind a signature that raises on any batch with a marked text."""
    model_dir = str(tmp_path_factory.mktemp("poisoned") / "model")
    build_poisoned_model(model_dir, single_label_model.model_dir)
    return ScoringModel.from_model_dir(model_dir)


_COLLECTED: dict[str, list] = {}


class _Collect:
    """A Beam check that keeps the tables it gets in _COLLECTED[key]. Beam pickles checks; the
    class (not a closure) is pickled by reference, so on the in-process runner the tables land
    in this module's dict."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, tables):
        _COLLECTED[self.key] = list(tables)


def run_score_collecting(tables, model, passthrough, **kwargs):
    """Run ScoreRecordBatches on the in-process runner; return (scored tables, dead-letter
    tables, {counter name: value})."""
    _COLLECTED.clear()
    p = TestPipeline(runner=FnApiRunner())
    results = (
        p
        | beam.Create(tables, reshuffle=False)
        | ScoreRecordBatches(model, "text", passthrough, **kwargs)
    )
    assert_that(results["scored"], _Collect("scored"), label="CollectScored")
    assert_that(results[DEAD_LETTER_TAG], _Collect(DEAD_LETTER_TAG), label="CollectDeadLetter")
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))[
            "counters"
        ]
    }
    return _COLLECTED["scored"], _COLLECTED[DEAD_LETTER_TAG], counters


def test_model_call_failure_reason_names_the_version_error_type_and_first_line():
    reason = model_call_failure_reason(ValueError("\n  bad row  \nsecond line"), "v7")
    assert reason == f"{REASON_MODEL_CALL_FAILED} (model_version v7): ValueError: bad row"
    long_reason = model_call_failure_reason(RuntimeError("x" * 1000), "v7")
    assert long_reason.endswith(": RuntimeError: " + "x" * (MAX_ERROR_MESSAGE_CHARS - 3) + "...")
    # TensorFlow's graph-function preamble and the node's stack are skipped.
    graph_error = tf.errors.InvalidArgumentError(
        None,
        None,
        "Graph execution error:\n\nDetected at node 'a/Assert' defined at (most recent call "
        "last):\n  File \"x.py\", line 3, in f\n    return g()\nNode: 'a/Assert'\nassertion "
        "failed: [no]\n\t [[{{node a/Assert}}]] [Op:__inference_serve_12]",
    )
    assert model_call_failure_reason(graph_error, "v7") == (
        f"{REASON_MODEL_CALL_FAILED} (model_version v7): InvalidArgumentError: "
        "assertion failed: [no]"
    )


def test_rows_the_model_call_fails_on_are_isolated_and_the_rest_score_as_without_faults(
    single_label_model, poisoned_model
):
    words = ["good", "bad", "great", "boring", "fun", "film", "movie"]
    texts = [f"{words[i % 7]} {words[(3 * i) % 7]} {words[(5 * i) % 7]}" for i in range(50)]
    texts[5] = f"good {POISON_MARKER} fun"  # first input table, a batch of 8 (rows 0-7)
    texts[33] = f"{POISON_MARKER}"  # second input table
    texts[41] = None  # a text dead letter, as before
    for i in range(45, 50):  # the third input table: every row fails
        texts[i] = f"bad {POISON_MARKER} {i}"
    table = pa.table({"id": pa.array(range(50), pa.int64()), "text": pa.array(texts)})
    tables = [table.slice(0, 25), table.slice(25, 20), table.slice(45)]
    passthrough = pa.schema([("id", pa.int64()), ("text", pa.string())])
    poisoned_ids = [5, 33, 45, 46, 47, 48, 49]

    clean_scored, clean_dead, _ = run_score_collecting(
        tables, single_label_model, passthrough, batch_size=8
    )
    scored, dead, counters = run_score_collecting(tables, poisoned_model, passthrough, batch_size=8)

    # Every other row is scored exactly as the fault-free model scores it, in input order.
    clean = pa.concat_tables(clean_scored).sort_by("id")
    keep = pc.invert(pc.is_in(clean.column("id"), pa.array(poisoned_ids, pa.int64())))
    assert [t.num_rows for t in sorted(scored, key=lambda t: t.column("id")[0].as_py())] == [24, 18]
    for out in scored:
        assert out.column("id").to_pylist() == sorted(out.column("id").to_pylist())
    got, want = pa.concat_tables(scored).sort_by("id"), clean.filter(keep)
    # The rows of the two 8-row slices that failed (ids 0-7 and 33-40) were scored in smaller
    # calls, which may change a probability in its last bit (as another --batch_size would);
    # every other row is bit for bit the same.
    bisected = pc.is_in(got.column("id"), pa.array([*range(8), *range(33, 41)], pa.int64()))
    assert got.filter(pc.invert(bisected)) == want.filter(pc.invert(bisected))
    values = [SCORE_COLUMN, PROBABILITIES_COLUMN]
    assert got.drop_columns(values) == want.drop_columns(values)
    np.testing.assert_allclose(
        np.array(got.column(PROBABILITIES_COLUMN).to_pylist()),
        np.array(want.column(PROBABILITIES_COLUMN).to_pylist()),
        rtol=1e-6,
    )
    # Exactly the failing rows are dead-lettered, with their columns, the reason and the version.
    dead_table = pa.concat_tables(dead).sort_by("id")
    assert dead_table.schema == pa.concat_tables(clean_dead).schema  # no new dead-letter column
    assert dead_table.column("id").to_pylist() == sorted([*poisoned_ids, 41])
    reasons = dict(zip(*dead_table.select(["id", REASON_COLUMN]).to_pydict().values()))
    assert reasons.pop(41) == REASON_TEXT_NULL
    assert set(reasons.values()) == {
        f"{REASON_MODEL_CALL_FAILED} (model_version test-model-v1): InvalidArgumentError: "
        f"assertion failed: [a text in the batch contains {POISON_MARKER}]"
    }
    assert dead_table.filter(pc.field("id") != 41).column("text").to_pylist() == [
        texts[i] for i in poisoned_ids
    ]
    # Beam counters.
    assert counters["rows_failed_model_call"] == len(poisoned_ids)
    assert counters["rows_dead_lettered"] == len(poisoned_ids) + 1
    assert counters["rows_scored"] == 50 - len(poisoned_ids) - 1
    assert counters["model_calls_failed"] >= 3
