"""`textclf score` end to end: real Parquet files, a real SavedModel, Beam's in-process runner."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.score import build_parser, finalize, main, score
from tests.model_fixtures import POISON_MARKER, build_poisoned_model, build_test_model
from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    EXIT_BAD_INPUT,
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
    REASON_TEXT_NULL,
    SAVED_MODEL_DIR,
    SCORE_COLUMN,
    SCORED_PART_PREFIX,
    SERVING_SIGNATURE,
    STATS_FILE,
    SUCCESS_FILE,
)

TRAIN_TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 8
TRAIN_LABELS = ["pos", "neg", "pos", "neg"] * 8
TRAIN_TAGS = [["fun"], ["dull"], ["fun", "film"], ["dull", "film"]] * 8
WORDS = ["good", "bad", "great", "boring", "fun", "awful", "film", "movie", "plot"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "single")
    build_test_model(path, TRAIN_TEXTS, TRAIN_LABELS, epochs=3)
    return path


@pytest.fixture(scope="module")
def multi_model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "multi")
    build_test_model(path, TRAIN_TEXTS, TRAIN_TAGS, multi_label=True, epochs=3)
    return path


def corpus(first_id: int, n: int) -> pa.Table:
    """n rows of varied pass-through types; every 7th text null, every 11th blank."""
    ids = np.arange(first_id, first_id + n)
    texts = [" ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 5)) for i in ids]
    texts = [None if i % 7 == 0 else ("" if i % 11 == 0 else t) for i, t in zip(ids, texts)]
    base = dt.datetime(2024, 1, 1)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "body": pa.array(texts, pa.string()),
            "when": pa.array([base + dt.timedelta(hours=int(i)) for i in ids], pa.timestamp("ms")),
            "tags": pa.array([[f"t{i % 3}"] * int(i % 3) for i in ids], pa.list_(pa.string())),
            "rating": pa.array([None if i % 5 == 0 else float(i) / 2 for i in ids], pa.float64()),
            "flag": pa.array([i % 2 == 0 for i in ids], pa.bool_()),
        }
    )


def signature_outputs(model_dir: str, texts: list[str]) -> dict[str, np.ndarray]:
    signature = tf.saved_model.load(f"{model_dir}/{SAVED_MODEL_DIR}").signatures[SERVING_SIGNATURE]
    return {k: v.numpy() for k, v in signature(text=tf.constant(texts)).items()}


def read_dir(out: str, prefix: str) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(f) for f in sorted(glob.glob(os.path.join(out, f"{prefix}-*.parquet")))
    )


def test_scoring_several_files_keeps_pass_through_columns_and_matches_the_signature(
    model_dir, tmp_path
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    parts = [corpus(0, 120), corpus(120, 45), corpus(165, 0)]  # the last file is empty
    for i, (table, row_group) in enumerate(zip(parts, [50, 7, 10], strict=True)):
        pq.write_table(table, inputs / f"part{i}.parquet", row_group_size=row_group)
    out = str(tmp_path / "scores")

    stats = score(model_dir, [str(inputs / "*.parquet")], out, "body", batch_size=16)

    source = pa.concat_tables(parts)
    scored = read_dir(out, "part").sort_by("id")
    dead = read_dir(out, "dead_letter").sort_by("id")
    usable = [t is not None and t.strip() != "" for t in source.column("body").to_pylist()]
    kept = source.filter(pa.array(usable))
    # Pass-through columns are unchanged: values, nulls and types.
    assert scored.select(source.column_names) == kept
    assert scored.schema.field("when").type == pa.timestamp("ms")
    # Predictions equal the in-process signature on the same texts.
    expected = signature_outputs(model_dir, kept.column("body").to_pylist())
    assert scored.column(PREDICTED_LABEL_COLUMN).to_pylist() == [
        b.decode() for b in expected[OUT_LABEL]
    ]
    np.testing.assert_allclose(
        np.array(scored.column(PROBABILITIES_COLUMN).to_pylist()),
        expected[OUT_PROBABILITIES],
        rtol=1e-5,
        atol=1e-6,
    )
    assert scored.schema.field(SCORE_COLUMN).type == pa.float32()
    assert set(scored.column(MODEL_VERSION_COLUMN).to_pylist()) == {"test-model-v1"}
    # Accounting.
    assert (
        stats["rows_read"] == source.num_rows == stats["rows_scored"] + stats["rows_dead_lettered"]
    )
    assert stats["rows_scored"] == scored.num_rows and stats["rows_dead_lettered"] == dead.num_rows
    assert sum(stats["label_counts"].values()) == scored.num_rows
    assert dead.select(source.column_names) == source.filter(pa.array([not u for u in usable]))
    assert os.path.exists(os.path.join(out, SUCCESS_FILE))
    assert sorted(os.listdir(tmp_path)) == ["in", "scores"]  # no staging directory left behind


def test_rows_read_equal_rows_scored_plus_dead_lettered_with_reasons(model_dir, tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, 5, 6], pa.int32()),
            "text": pa.array(["good fun", None, "", " \t", "bad film", None]),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    out = str(tmp_path / "scores")

    stats = score(model_dir, [str(tmp_path / "in.parquet")], out, "text", id_column="id")

    assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (6, 2, 4)
    assert stats["dead_letter_reasons"] == {REASON_TEXT_NULL: 2, REASON_TEXT_EMPTY: 2}
    dead = read_dir(out, "dead_letter").sort_by("id")
    assert dead.column("id").to_pylist() == [2, 3, 4, 6]
    assert dead.column(REASON_COLUMN).to_pylist() == [
        REASON_TEXT_NULL,
        REASON_TEXT_EMPTY,
        REASON_TEXT_EMPTY,  # whitespace only counts as empty, as in preprocess
        REASON_TEXT_NULL,
    ]
    assert read_dir(out, "part").column("id").to_pylist() in ([1, 5], [5, 1])
    assert os.path.exists(os.path.join(out, STATS_FILE))


def test_an_empty_input_file_gives_valid_empty_outputs(model_dir, tmp_path):
    empty = pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())})
    pq.write_table(empty, tmp_path / "empty.parquet")
    out = str(tmp_path / "scores")

    stats = score(model_dir, [str(tmp_path / "empty.parquet")], out, "text")

    assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (0, 0, 0)
    scored = read_dir(out, "part")
    assert scored.num_rows == 0
    assert scored.schema.names == ["id", "text", PREDICTED_LABEL_COLUMN, SCORE_COLUMN,
                                   PROBABILITIES_COLUMN, MODEL_VERSION_COLUMN]  # fmt: skip
    assert read_dir(out, "dead_letter").schema.names == ["id", "text", REASON_COLUMN]
    assert os.path.exists(os.path.join(out, SUCCESS_FILE))


def assert_multi_labels_at_threshold(out: str, model_dir: str, texts: list[str], threshold):
    """The scored rows (one per text) predict every class whose probability >= threshold."""
    scored = read_dir(out, "part")
    order = {t: i for i, t in enumerate(texts)}
    scored = scored.take(np.argsort([order[t] for t in scored.column("text").to_pylist()]))
    probs = signature_outputs(model_dir, texts)[OUT_PROBABILITIES]
    names = np.array(["dull", "film", "fun"])
    assert scored.column(PREDICTED_LABELS_COLUMN).to_pylist() == [
        list(names[row >= threshold]) for row in probs
    ]


def test_multi_label_scores_hold_every_class_at_or_above_the_threshold(multi_model_dir, tmp_path):
    texts = ["good great fun", "boring bad film", "great movie", "film fun", "plot"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    out = str(tmp_path / "scores")

    stats = main(
        ["--model_dir", multi_model_dir, "--input", str(tmp_path / "in.parquet"),
         "--output", out, "--text_column", "text", "--threshold", "0.45"]
    )  # fmt: skip

    assert stats == 0
    assert_multi_labels_at_threshold(out, multi_model_dir, texts, 0.45)
    assert read_dir(out, "part").schema.field(PREDICTED_LABELS_COLUMN).type == pa.list_(pa.string())


def test_without_threshold_flag_multi_label_uses_the_threshold_in_the_model_card(
    multi_model_dir, tmp_path
):
    model_dir = str(tmp_path / "model")
    shutil.copytree(multi_model_dir, model_dir)
    card_path = os.path.join(model_dir, MODEL_CARD_FILE)
    card = json.load(open(card_path))
    card["threshold"] = 0.3
    json.dump(card, open(card_path, "w"))
    texts = ["good great fun", "boring bad film", "plot"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    out = str(tmp_path / "scores")

    stats = score(model_dir, [str(tmp_path / "in.parquet")], out, "text")

    assert stats["threshold"] == 0.3
    assert_multi_labels_at_threshold(out, model_dir, texts, 0.3)


def test_single_label_stats_have_no_threshold(model_dir, tmp_path):
    pq.write_table(pa.table({"text": ["good fun"]}), tmp_path / "in.parquet")
    stats = score(model_dir, [str(tmp_path / "in.parquet")], str(tmp_path / "scores"), "text")
    assert (stats["multi_label"], stats["threshold"]) == (False, None)


def test_finalize_refuses_counts_the_parquet_footers_disagree_with(tmp_path):
    staging = tmp_path / ".scores.inprogress"
    staging.mkdir()
    pq.write_table(
        pa.table({"id": [1, 2]}), staging / f"{SCORED_PART_PREFIX}-00000-of-00001.parquet"
    )
    pq.write_table(pa.table({"id": [3]}), staging / f"{DEAD_LETTER_PREFIX}-00000-of-00001.parquet")
    out = tmp_path / "scores"

    def summary(rows):
        return {"rows": rows, "counts": {}}

    with pytest.raises(RuntimeError, match="rows_scored is 3 but .* hold 2 rows"):
        finalize(None, summary(4), summary(3), summary(1), str(staging), str(out), {})
    with pytest.raises(RuntimeError, match="row accounting failed"):
        finalize(None, summary(5), summary(2), summary(1), str(staging), str(out), {})
    assert not out.exists() and not (staging / SUCCESS_FILE).exists()

    finalize(None, summary(3), summary(2), summary(1), str(staging), str(out), {"batch_size": 8})
    assert (out / SUCCESS_FILE).exists() and not staging.exists()
    stats = json.loads((out / STATS_FILE).read_text())
    assert (stats["rows_read"], stats["rows_scored"], stats["batch_size"]) == (3, 2, 8)


@pytest.mark.parametrize("threshold", ["0", "1", "1.5"])
def test_threshold_outside_zero_one_exits_2(model_dir, small_input, tmp_path, capsys, threshold):
    err = run_cli_expecting_bad_input(
        ["--model_dir", model_dir, "--input", small_input, "--output", str(tmp_path / "scores"),
         "--text_column", "body", "--threshold", threshold], capsys, tmp_path,
    )  # fmt: skip
    assert "--threshold must lie strictly between 0 and 1" in err


def test_columns_flag_limits_pass_through_columns_and_always_keeps_the_id(model_dir, tmp_path):
    pq.write_table(corpus(0, 30), tmp_path / "in.parquet")
    out = str(tmp_path / "scores")

    score(model_dir, [str(tmp_path / "in.parquet")], out, "body", id_column="id",
          columns=["rating"])  # fmt: skip

    assert read_dir(out, "part").column_names[:2] == ["id", "rating"]
    assert read_dir(out, "dead_letter").column_names == ["id", "rating", REASON_COLUMN]


def run_cli_expecting_bad_input(argv, capsys, tmp_path) -> str:
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "scores")
    return err


@pytest.fixture
def small_input(tmp_path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "body": ["good", "bad"], "n": [1, 2]}), path)
    return str(path)


def test_model_dir_without_success_marker_exits_2(model_dir, small_input, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    err = run_cli_expecting_bad_input(
        ["--model_dir", str(unfinished), "--input", small_input, "--output",
         str(tmp_path / "scores"), "--text_column", "body"], capsys, tmp_path,
    )  # fmt: skip
    assert "_SUCCESS" in err and str(unfinished) in err


def test_input_pattern_matching_no_files_exits_2(model_dir, tmp_path, capsys):
    missing = str(tmp_path / "nothing-*.parquet")
    err = run_cli_expecting_bad_input(
        ["--model_dir", model_dir, "--input", missing, "--output", str(tmp_path / "scores"),
         "--text_column", "body"], capsys, tmp_path,
    )  # fmt: skip
    assert f"no input files match '{missing}'" in err


def test_missing_text_column_exits_2_and_lists_the_columns(
    model_dir, small_input, tmp_path, capsys
):
    err = run_cli_expecting_bad_input(
        ["--model_dir", model_dir, "--input", small_input, "--output", str(tmp_path / "scores"),
         "--text_column", "txt"], capsys, tmp_path,
    )  # fmt: skip
    assert "'txt' not found" in err and "columns are: id, body, n" in err


def test_non_string_text_column_exits_2(model_dir, small_input, tmp_path, capsys):
    err = run_cli_expecting_bad_input(
        ["--model_dir", model_dir, "--input", small_input, "--output", str(tmp_path / "scores"),
         "--text_column", "n"], capsys, tmp_path,
    )  # fmt: skip
    assert "'n'" in err and "int64" in err and "not string" in err


def test_help_lists_the_score_flags():
    text = build_parser().format_help()
    for flag in ["--model_dir", "--input", "--output", "--text_column", "--id_column",
                 "--batch_size", "--columns", "--threshold",
                 "--max_dead_letter_fraction"]:  # fmt: skip
        assert flag in text


@pytest.mark.slow
def test_multi_processing_direct_runner_gives_the_same_counts(model_dir, tmp_path):
    for i in range(2):
        pq.write_table(corpus(i * 40, 40), tmp_path / f"in{i}.parquet", row_group_size=10)
    stats = score(
        model_dir, [str(tmp_path / "in*.parquet")], str(tmp_path / "scores"), "body",
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )  # fmt: skip
    assert stats["rows_read"] == 80
    assert stats["rows_scored"] == read_dir(str(tmp_path / "scores"), "part").num_rows


# ---------------------------------------------------------------------------------------------
# A model call that fails on some rows: those rows are dead-lettered, counted and capped.

MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(scope="module")
def poisoned_model_dir(model_dir, tmp_path_factory) -> str:
    """`model_dir` behind a signature that raises on any batch holding a POISON text."""
    path = str(tmp_path_factory.mktemp("models") / "poisoned")
    build_poisoned_model(path, model_dir)
    return path


def poisoned_corpus(n: int, poisoned) -> pa.Table:
    """corpus(0, n) with the texts of the rows `poisoned` marked for the poisoned model."""
    table = corpus(0, n)
    texts = table.column("body").to_pylist()
    for i in poisoned:
        texts[i] = f"good {POISON_MARKER} film {i}"
    return table.set_column(1, "body", pa.array(texts, pa.string()))


def score_argv(model: str, inputs: str, out: str, *extra: str) -> list[str]:
    return ["--model_dir", model, "--input", inputs, "--output", out, "--text_column", "body",
            "--id_column", "id", "--batch_size", "32", *extra]  # fmt: skip


def read_stats(out: str) -> dict:
    with open(os.path.join(out, STATS_FILE)) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "beam_args",
    [
        pytest.param([], id="in_process"),
        pytest.param(
            ["--runner=DirectRunner", *MULTI_PROCESSING],
            id="multi_processing",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_rows_the_model_call_fails_on_are_dead_lettered_and_counted_the_rest_scored(
    model_dir, poisoned_model_dir, tmp_path, beam_args
):
    poisoned = [10, 150]
    source = poisoned_corpus(300, poisoned)
    pq.write_table(source, tmp_path / "in.parquet", row_group_size=100)
    inputs = str(tmp_path / "in.parquet")
    clean_out, out = str(tmp_path / "clean"), str(tmp_path / "scores")

    assert main(score_argv(model_dir, inputs, clean_out)) == 0
    assert main(score_argv(poisoned_model_dir, inputs, out, *beam_args)) == 0

    clean, clean_stats = read_dir(clean_out, "part").sort_by("id"), read_stats(clean_out)
    failed = pc.is_in(clean.column("id"), pa.array(poisoned, pa.int64()))
    # Every other row is scored as by the fault-free model (the rows of a failed 32-row call
    # were scored in smaller calls: their probabilities may differ in the last bit).
    got, want = read_dir(out, "part").sort_by("id"), clean.filter(pc.invert(failed))
    values = [SCORE_COLUMN, PROBABILITIES_COLUMN]
    assert got.drop_columns(values) == want.drop_columns(values)
    np.testing.assert_allclose(
        np.array(got.column(PROBABILITIES_COLUMN).to_pylist()),
        np.array(want.column(PROBABILITIES_COLUMN).to_pylist()),
        rtol=1e-6,
    )
    dead = read_dir(out, "dead_letter").sort_by("id")
    clean_dead = read_dir(clean_out, "dead_letter")
    assert dead.schema == clean_dead.schema  # the dead-letter columns are unchanged
    model_dead = dead.filter(pc.starts_with(dead.column(REASON_COLUMN), REASON_MODEL_CALL_FAILED))
    assert model_dead.column("id").to_pylist() == poisoned
    assert model_dead.drop_columns([REASON_COLUMN]) == source.take(poisoned)
    [reason] = set(model_dead.column(REASON_COLUMN).to_pylist())
    assert reason.startswith(
        f"{REASON_MODEL_CALL_FAILED} (model_version test-model-v1): InvalidArgumentError: "
    )
    # stats.json accounts for them.
    stats = read_stats(out)
    assert stats["rows_read"] == clean_stats["rows_read"] == 300
    assert stats["rows_failed_model_call"] == 2 and clean_stats["rows_failed_model_call"] == 0
    assert stats["rows_dead_lettered"] == clean_stats["rows_dead_lettered"] + 2 == dead.num_rows
    assert stats["rows_scored"] == clean_stats["rows_scored"] - 2
    assert stats["dead_letter_reasons"] == {**clean_stats["dead_letter_reasons"], reason: 2}
    label_counts = dict(clean_stats["label_counts"])
    for label in clean.filter(failed).column(PREDICTED_LABEL_COLUMN).to_pylist():
        label_counts[label] -= 1
    assert stats["label_counts"] == {k: n for k, n in label_counts.items() if n}
    assert stats["max_dead_letter_fraction"] == 0.01
    assert os.path.exists(os.path.join(out, SUCCESS_FILE))


def test_more_model_call_failures_than_the_cap_exit_1_and_publish_nothing(
    poisoned_model_dir, tmp_path
):
    # 5 of 200 rows fail the model call (2.5%); about a fifth are null or blank text, which
    # the cap does not count.
    pq.write_table(poisoned_corpus(200, range(1, 200, 40)), tmp_path / "in.parquet")
    inputs, out = str(tmp_path / "in.parquet"), str(tmp_path / "scores")

    job = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "score",
         *score_argv(poisoned_model_dir, inputs, out, "--max_dead_letter_fraction", "0.02")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert job.returncode == 1, job.stderr[-3000:]
    assert "model call failed for 5 of 200 rows read (2.50%)" in job.stderr
    assert "more than --max_dead_letter_fraction 0.02" in job.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.parquet"]  # no output, no staging left behind

    # At the cap exactly (5 / 200 = 0.025) the job succeeds.
    argv = score_argv(poisoned_model_dir, inputs, out, "--max_dead_letter_fraction", "0.025")
    assert main(argv) == 0
    stats = read_stats(out)
    assert (stats["rows_failed_model_call"], stats["max_dead_letter_fraction"]) == (5, 0.025)
    assert stats["rows_dead_lettered"] > 0.2 * 200  # text dead letters are not capped


def test_finalize_checks_model_call_failures_against_the_cap(tmp_path):
    staging = tmp_path / ".scores.inprogress"
    staging.mkdir()
    for prefix, ids in ((SCORED_PART_PREFIX, [1, 2, 3]), (DEAD_LETTER_PREFIX, [4, 5])):
        pq.write_table(pa.table({"id": ids}), staging / f"{prefix}-00000-of-00001.parquet")
    out = tmp_path / "scores"
    read, scored = {"rows": 5, "counts": {}}, {"rows": 3, "counts": {}}
    failure = f"{REASON_MODEL_CALL_FAILED} (model_version v): ValueError: x"
    dead = {"rows": 2, "counts": {failure: 1, REASON_TEXT_NULL: 1}}

    with pytest.raises(RuntimeError, match=r"model call failed for 1 of 5 rows read \(20.00%\), "
                       r"more than --max_dead_letter_fraction 0.19"):  # fmt: skip
        finalize(None, read, scored, dead, str(staging), str(out), {},
                 max_dead_letter_fraction=0.19)  # fmt: skip
    assert not out.exists() and not (staging / SUCCESS_FILE).exists()

    finalize(None, read, scored, dead, str(staging), str(out), {}, max_dead_letter_fraction=0.2)
    stats = json.loads((out / STATS_FILE).read_text())
    assert (stats["rows_failed_model_call"], stats["rows_dead_lettered"]) == (1, 2)
    assert (out / SUCCESS_FILE).exists()


@pytest.mark.parametrize("fraction", ["-0.1", "1.5", "nan"])
def test_max_dead_letter_fraction_outside_zero_one_exits_2(
    model_dir, small_input, tmp_path, capsys, fraction
):
    err = run_cli_expecting_bad_input(
        ["--model_dir", model_dir, "--input", small_input, "--output", str(tmp_path / "scores"),
         "--text_column", "body", "--max_dead_letter_fraction", fraction], capsys, tmp_path,
    )  # fmt: skip
    assert "--max_dead_letter_fraction must lie between 0 and 1" in err


@pytest.mark.slow
def test_reruns_on_two_worker_processes_write_byte_identical_files(model_dir, tmp_path):
    # Two workers finish their bundles in either order; the part files are numbered by their
    # content, so the same rows land in the same file names with the same bytes every time.
    for i in range(4):
        pq.write_table(corpus(i * 60, 60), tmp_path / f"in{i}.parquet", row_group_size=15)
    listings = []
    for attempt in range(3):
        out = tmp_path / f"scores{attempt}"
        score(
            model_dir, [str(tmp_path / "in*.parquet")], str(out), "body", batch_size=8,
            beam_args=["--runner=DirectRunner", *MULTI_PROCESSING],
        )  # fmt: skip
        listings.append(
            {
                name: open(out / name, "rb").read()
                for name in sorted(os.listdir(out))
                if name != SUCCESS_FILE  # its content is the time of the finalize
            }
        )
    assert len([n for n in listings[0] if n.startswith(SCORED_PART_PREFIX)]) > 1
    assert listings[0] == listings[1] == listings[2]
