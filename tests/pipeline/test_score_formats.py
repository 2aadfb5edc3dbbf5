"""`textclf score` over CSV and JSONL as well as Parquet: the same rows give the same scores, rows
the readers reject are dead letters with a reason, and every input row is counted.

Real files in tmp_path, a real SavedModel (tests/model_fixtures.py) and Beam's DirectRunner.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import run_config
from pipeline.score import build_parser, main, score
from tests.model_fixtures import build_test_model
from transforms.contracts import (
    EXIT_BAD_INPUT,
    PREDICTED_LABEL_COLUMN,
    PROBABILITIES_COLUMN,
    REASON_COLUMN,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NULL,
    SCORE_STAGE,
    SUCCESS_FILE,
    TRAIN_STAGE,
)

RUNNER = ["--runner=DirectRunner"]
TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 6
LABELS = ["pos", "neg", "pos", "neg"] * 6
# id, body, note: the fourth text is empty, the sixth note has a comma and a quote.
ROWS = [
    (1, "good great fun", "a"),
    (2, "awful boring plot", "b"),
    (3, "great movie, great fun", "c"),
    (4, "", "d"),
    (5, "bad film", "e"),
    (6, "fun fun fun", 'has, "quotes"'),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "single")
    build_test_model(path, TEXTS, LABELS, epochs=2)
    return path


def _table() -> pa.Table:
    ids, bodies, notes = zip(*ROWS, strict=True)
    return pa.table({"id": list(ids), "body": list(bodies), "note": list(notes)})


def _write_csv(path, lines: list[str]) -> str:
    path.write_text("id,body,note\n" + "".join(line + "\n" for line in lines))
    return str(path)


def _csv_line(row) -> str:
    i, body, note = row
    return f'{i},"{body}","{note.replace(chr(34), chr(34) * 2)}"'


def _write_jsonl(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _json_line(row) -> str:
    return json.dumps(dict(zip(("id", "body", "note"), row, strict=True)))


def _read(out: str, prefix: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(out, f"{prefix}-*.parquet")))
    return pa.concat_tables(pq.read_table(f) for f in files)


def _score(model_dir, inputs, out, **kw) -> dict:
    return score(model_dir, inputs, str(out), "body", beam_args=RUNNER, **kw)


def test_the_same_rows_as_csv_jsonl_and_parquet_score_the_same(model_dir, tmp_path):
    pq.write_table(_table(), tmp_path / "rows.parquet")
    csv = _write_csv(tmp_path / "rows.csv", [_csv_line(r) for r in ROWS])
    jsonl = _write_jsonl(tmp_path / "rows.jsonl", [_json_line(r) for r in ROWS])

    outs = {}
    for name, path in (("parquet", str(tmp_path / "rows.parquet")), ("csv", csv), ("jsonl", jsonl)):
        stats = _score(model_dir, [path], tmp_path / f"out_{name}")
        assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (6, 5, 1)
        assert stats["dead_letter_reasons"] == {REASON_TEXT_EMPTY: 1}
        outs[name] = _read(str(tmp_path / f"out_{name}"), "part")

    parquet, csv_scored, jsonl_scored = (outs[k].sort_by("id") for k in ("parquet", "csv", "jsonl"))
    # Pass-through columns: CSV cells are strings, JSONL values keep their JSON types.
    assert csv_scored.schema.field("id").type == pa.string()
    assert csv_scored.column("id").to_pylist() == ["1", "2", "3", "5", "6"]
    assert csv_scored.column("note").to_pylist()[-1] == 'has, "quotes"'
    assert jsonl_scored.select(["id", "body", "note"]) == parquet.select(["id", "body", "note"])
    for other in (csv_scored, jsonl_scored):
        assert other.column("body") == parquet.column("body")
        assert other.column(PREDICTED_LABEL_COLUMN) == parquet.column(PREDICTED_LABEL_COLUMN)
        np.testing.assert_array_equal(
            np.array(other.column(PROBABILITIES_COLUMN).to_pylist()),
            np.array(parquet.column(PROBABILITIES_COLUMN).to_pylist()),
        )


def test_one_pattern_over_parquet_and_csv_reads_every_file_once(model_dir, tmp_path):
    """Parquet files matched beside a CSV are read by file name, all by one transform; a file
    whose name holds a glob character (which Beam's readers would match again as a pattern,
    and miss) is refused before any work."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    strings = _table().set_column(0, "id", pa.array([str(i) for i, _, _ in ROWS]))
    pq.write_table(strings.slice(0, 3), inputs / "part-1.parquet")
    pq.write_table(strings.slice(3), inputs / "part-2.parquet")
    _write_csv(inputs / "more.csv", [_csv_line((7, "great fun", "g"))])

    stats = _score(model_dir, [str(inputs / "*")], tmp_path / "out")
    assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (7, 6, 1)
    scored = _read(str(tmp_path / "out"), "part")
    assert sorted(scored.column("id").to_pylist()) == ["1", "2", "3", "5", "6", "7"]

    os.rename(inputs / "part-1.parquet", inputs / "part[1].parquet")
    argv = ["--model_dir", model_dir, "--input", str(inputs / "*"), "--output"]
    assert main([*argv, str(tmp_path / "out2"), "--text_column", "body", *RUNNER]) == 2
    assert not os.path.exists(tmp_path / "out2")


def test_rows_the_readers_reject_are_dead_lettered_with_where_and_why_and_counted(
    model_dir, tmp_path
):
    csv = _write_csv(
        tmp_path / "rows.csv",
        [_csv_line(ROWS[0]), "2,too,many,fields", _csv_line(ROWS[2]), '7,"", x'],
    )
    jsonl = _write_jsonl(
        tmp_path / "rows.jsonl",
        [_json_line(ROWS[0]), "{not json", _json_line(ROWS[4]), '{"id": 8, "note": "no body"}'],
    )
    out = tmp_path / "out"

    # Their `id`s are strings in the CSV, numbers in the JSONL: one schema needs them left out.
    stats = _score(model_dir, [csv, jsonl], out, columns=["body", "note"])

    # Every input row is accounted for: 4 CSV data lines + 4 JSON lines.
    assert stats["rows_read"] == 8 == stats["rows_scored"] + stats["rows_dead_lettered"]
    assert stats["rows_scored"] == 4
    dead = _read(str(out), "dead_letter")
    reasons = sorted(dead.column(REASON_COLUMN).to_pylist())
    assert reasons[:2] == [
        f"invalid JSON line (in {jsonl}, line 2: Expecting property name enclosed in double "
        'quotes: line 1 column 2 (char 1)): "{not json"',
        f'malformed CSV row (in {csv}, expected 3 fields, found 4): "2,too,many,fields"',
    ]
    assert reasons[2:] == [REASON_TEXT_EMPTY, REASON_TEXT_NULL]
    unparsed = dead.filter(
        pa.array([r.startswith(("invalid", "malformed")) for r in dead[REASON_COLUMN].to_pylist()])
    )
    assert unparsed.num_rows == 2
    assert unparsed.column("note").null_count == unparsed.num_rows  # no column could be read
    assert sum(stats["dead_letter_reasons"].values()) == dead.num_rows == 4
    assert os.path.exists(out / SUCCESS_FILE)


def test_csv_options_are_preprocess_flags_and_a_tsv_reads_with_tabs(model_dir, tmp_path):
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("id\tbody\n1\tgood, great fun\n2\tbad film\n")
    semi = tmp_path / "rows.txt"
    semi.write_text("id;body\n1;good, great fun\n2;bad film\n")

    by_tab = _score(model_dir, [str(tsv)], tmp_path / "tab")
    by_semicolon = _score(
        model_dir, [str(semi)], tmp_path / "semi", format="csv", csv_delimiter=";"
    )

    assert by_tab["rows_scored"] == by_semicolon["rows_scored"] == 2
    assert _read(str(tmp_path / "tab"), "part").column("body").to_pylist() == [
        "good, great fun",
        "bad film",
    ]
    help_text = build_parser().format_help()
    assert "--format {auto,csv,jsonl,parquet}" in help_text and "--csv_delimiter" in help_text


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("rows.txt", "id,body\n1,x\n", [], "cannot tell the format of"),
        ("rows.csv", "id,text\n1,x\n", [], "text column 'body' not found in"),
        ("rows.csv", "", [], "cannot read"),
        ("rows.jsonl", "", [], "has no JSON object lines"),
    ],
)
def test_unusable_input_exits_2_with_one_line(
    model_dir, tmp_path, capsys, name, content, extra, message
):
    path = tmp_path / name
    path.write_text(content)
    argv = ["--model_dir", model_dir, "--input", str(path), "--output", str(tmp_path / "out")]

    assert main([*argv, "--text_column", "body", *extra, *RUNNER]) == EXIT_BAD_INPUT

    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")


def test_run_passes_score_its_csv_inputs_read_as_preprocess_reads_them(model_dir, tmp_path):
    """`textclf run`'s score command line for a CSV schedule ([preprocess] format and
    csv_delimiter apply to score's inputs too), run for real against the run's model dir."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "day.txt").write_text("id;body\n1;good, great fun\n2;bad;film\n3;boring\n")
    config_path = tmp_path / "job.toml"
    config_path.write_text(
        '[inputs]\ntrain = "in/train.txt"\nscore = "in/*.txt"\ntext_column = "body"\n'
        '[preprocess]\nformat = "csv"\ncsv_delimiter = ";"\n'
    )
    config = run_config.load_config(str(config_path))
    run_dir = str(tmp_path / "runs" / "2024-03-01")
    shutil.copytree(model_dir, run_config.stage_dirs(run_dir)[TRAIN_STAGE])

    argv = run_config.stage_argvs(config, run_dir)[SCORE_STAGE]

    assert "--format=csv" in argv and "--csv_delimiter=;" in argv
    assert main([*argv, *RUNNER]) == 0
    stats = json.loads(
        open(os.path.join(run_config.stage_dirs(run_dir)[SCORE_STAGE], "stats.json")).read()
    )
    assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (3, 2, 1)
    assert next(iter(stats["dead_letter_reasons"])).startswith("malformed CSV row")


def test_run_scores_parquet_files_with_a_model_trained_on_csv(tmp_path):
    """[preprocess] format = "csv" does not make score read its Parquet files as CSV: a score
    pattern whose extension names a format is read by it (the CSV delimiter still carries)."""
    config_path = tmp_path / "job.toml"
    config_path.write_text(
        '[inputs]\ntrain = "in/train.txt"\nscore = "in/*.parquet"\ntext_column = "body"\n'
        '[preprocess]\nformat = "csv"\ncsv_delimiter = ";"\n'
    )
    config = run_config.load_config(str(config_path))
    argv = run_config.stage_argvs(config, str(tmp_path / "runs" / "2024-03-01"))[SCORE_STAGE]
    assert not [flag for flag in argv if flag.startswith("--format")]
    evaluate = run_config.evaluate_argv(config, "model", "out.json")
    assert not [flag for flag in evaluate if flag.startswith("--format")]
    assert "--csv_delimiter=;" in argv and "--csv_delimiter=;" in evaluate
