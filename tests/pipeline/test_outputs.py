"""What an output path may hold before a stage replaces it: real directories, real stages.

The rule (pipeline/outputs.py, docs/DESIGN.md): a stage replaces only an empty directory or one
holding nothing but what that stage writes; anything else is refused before any work (exit 2,
one line) and nothing in it is moved or deleted.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import demo, outputs, preprocess, run, score, train
from tests.pipeline.test_run import RUN_DATE, _config
from transforms.contracts import (
    CONFIG_FILE,
    EXIT_BAD_INPUT,
    MODEL_CARD_FILE,
    PREPROCESS_STAGE,
    SCORE_STAGE,
    STATS_FILE,
    SUCCESS_FILE,
    TRAIN_STAGE,
)


def _tree(root, files: dict[str, str]) -> dict[str, str]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return _snapshot(root)


def _snapshot(root) -> dict[str, str]:
    """Every file under `root` (relative path -> content), to show nothing was touched."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path) as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


PREPROCESS_OUTPUT = {
    SUCCESS_FILE: "2026-01-01T00:00:00+00:00\n",
    STATS_FILE: "{}",
    CONFIG_FILE: "{}",
    "transform_fn/saved_model.pb": "x",
    "transformed_metadata/schema.pbtxt": "x",
    "train-00000-of-00001.tfrecord.gz": "",
    "eval-00000-of-00001.tfrecord.gz": "",
    "dead_letter-00000-of-00001.jsonl": "",
}
TRAIN_OUTPUT = {SUCCESS_FILE: "t\n", MODEL_CARD_FILE: "{}", "saved_model/saved_model.pb": "x"}
SCORE_OUTPUT = {SUCCESS_FILE: "t\n", STATS_FILE: "{}", "part-00000-of-00001.parquet": "x"}


@pytest.mark.parametrize(
    "stage, layout",
    [
        (PREPROCESS_STAGE, PREPROCESS_OUTPUT),
        (TRAIN_STAGE, TRAIN_OUTPUT),
        (SCORE_STAGE, SCORE_OUTPUT),
    ],
)
def test_a_stage_may_replace_its_own_output_an_empty_dir_or_nothing(tmp_path, stage, layout):
    outputs.check_replaceable(str(tmp_path / "missing"), stage)
    (tmp_path / "empty").mkdir()
    outputs.check_replaceable(str(tmp_path / "empty"), stage)
    _tree(tmp_path / "own", layout)
    outputs.check_replaceable(str(tmp_path / "own"), stage)
    unfinished = {k: v for k, v in layout.items() if k != SUCCESS_FILE}
    _tree(tmp_path / "unfinished", unfinished)
    outputs.check_replaceable(str(tmp_path / "unfinished"), stage)


@pytest.mark.parametrize(
    "stage, layout, foreign",
    [
        (PREPROCESS_STAGE, PREPROCESS_OUTPUT, "thesis.txt"),
        (TRAIN_STAGE, TRAIN_OUTPUT, "notes/todo.md"),
        (SCORE_STAGE, SCORE_OUTPUT, "part-final.parquet"),
        (SCORE_STAGE, PREPROCESS_OUTPUT, None),  # another stage's output
        (TRAIN_STAGE, SCORE_OUTPUT, None),
        (PREPROCESS_STAGE, TRAIN_OUTPUT, None),
    ],
)
def test_anything_a_stage_did_not_write_is_refused_and_left_alone(tmp_path, stage, layout, foreign):
    files = dict(layout, **({foreign: "mine"} if foreign else {}))
    before = _tree(tmp_path / "out", files)
    with pytest.raises(outputs.OutputNotReplaceable, match="does not write"):
        outputs.check_replaceable(str(tmp_path / "out"), stage)
    staging = outputs.staging_dir(str(tmp_path / "out"))
    with pytest.raises(outputs.OutputNotReplaceable):
        outputs.finalize(staging, str(tmp_path / "out"), stage)
    assert _snapshot(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path)) == sorted(["out", os.path.basename(staging)])


def test_a_regular_file_or_a_link_is_not_an_output_directory(tmp_path):
    (tmp_path / "report.pdf").write_text("mine")
    with pytest.raises(outputs.OutputNotReplaceable, match="not a directory"):
        outputs.check_replaceable(str(tmp_path / "report.pdf"), PREPROCESS_STAGE)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(outputs.OutputNotReplaceable, match="not a directory"):
        outputs.check_replaceable(str(tmp_path / "link"), PREPROCESS_STAGE)
    assert (tmp_path / "report.pdf").read_text() == "mine"


def test_finalize_refuses_a_user_file_that_appeared_during_the_run(tmp_path):
    _tree(tmp_path / "out", TRAIN_OUTPUT)
    staging = outputs.staging_dir(str(tmp_path / "out"))
    outputs.check_replaceable(str(tmp_path / "out"), TRAIN_STAGE)  # fine when the run starts
    (tmp_path / "out" / "thesis.txt").write_text("mine")  # ... then someone saves into it
    with pytest.raises(outputs.OutputNotReplaceable, match="thesis.txt"):
        outputs.finalize(staging, str(tmp_path / "out"), TRAIN_STAGE)
    assert (tmp_path / "out" / "thesis.txt").read_text() == "mine"


def test_finalize_replaces_an_older_output_of_the_same_stage(tmp_path):
    _tree(tmp_path / "out", SCORE_OUTPUT)
    staging = outputs.staging_dir(str(tmp_path / "out"))
    (open(os.path.join(staging, STATS_FILE), "w")).write('{"new": 1}')
    outputs.finalize(staging, str(tmp_path / "out"), SCORE_STAGE)
    assert sorted(os.listdir(tmp_path / "out")) == [SUCCESS_FILE, STATS_FILE]
    assert os.listdir(tmp_path) == ["out"]


def _one_line_naming(capsys, path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err, err
    return err


def _user_dir(tmp_path):
    before = _tree(tmp_path / "precious", {"thesis.txt": "years of work", "data/raw.csv": "a,b"})
    return tmp_path / "precious", before


def test_preprocess_into_a_users_directory_exits_2_and_deletes_nothing(tmp_path, capsys):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": ["a b", "c d"], "label": ["x", "y"]}), corpus)
    out, before = _user_dir(tmp_path)
    code = preprocess.main(["--input", str(corpus), "--output_dir", str(out)])
    assert code == EXIT_BAD_INPUT
    assert "thesis.txt" in _one_line_naming(capsys, out)
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["corpus.parquet", "precious"]  # no staging left
    (tmp_path / "file.txt").write_text("mine")
    assert (
        preprocess.main(["--input", str(corpus), "--output_dir", str(tmp_path / "file.txt")]) == 2
    )
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_train_and_score_into_a_users_directory_exit_2_and_delete_nothing(tmp_path, capsys):
    out, before = _user_dir(tmp_path)
    assert train.main(["--data_dir", str(tmp_path / "data"), "--model_dir", str(out)]) == 2
    assert "textclf train does not write" in _one_line_naming(capsys, out)
    corpus = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a b"]}), corpus)
    argv = ["--model_dir", str(tmp_path / "m"), "--input", str(corpus), "--text_column", "text"]
    assert score.main([*argv, "--output", str(out)]) == 2
    assert "textclf score does not write" in _one_line_naming(capsys, out)
    assert _snapshot(out) == before


def test_run_refuses_a_run_or_stage_directory_holding_a_users_files(tmp_path, capsys):
    config = _config(tmp_path)
    root = tmp_path / "runs"
    _tree(root / RUN_DATE, {"notes.txt": "mine"})
    argv = ["--config", config, "--root", str(root), "--run_date", RUN_DATE]
    assert run.main(argv) == EXIT_BAD_INPUT
    assert "notes.txt" in _one_line_naming(capsys, root / RUN_DATE)
    os.remove(root / RUN_DATE / "notes.txt")
    _tree(root / RUN_DATE / "model", {"weights.h5": "mine"})
    assert run.main(argv) == EXIT_BAD_INPUT
    assert "weights.h5" in _one_line_naming(capsys, root / RUN_DATE / "model")
    assert _snapshot(root) == {os.path.join(RUN_DATE, "model", "weights.h5"): "mine"}
    (tmp_path / "afile").write_text("mine")
    assert run.main(["--config", config, "--root", str(tmp_path / "afile")]) == EXIT_BAD_INPUT
    assert (tmp_path / "afile").read_text() == "mine"


def test_demo_refuses_a_root_holding_other_files(tmp_path, capsys):
    _tree(tmp_path / "home", {"thesis.txt": "mine"})
    assert demo.main(["--root", str(tmp_path / "home")]) == EXIT_BAD_INPUT
    assert "thesis.txt" in _one_line_naming(capsys, tmp_path / "home")
    assert _snapshot(tmp_path / "home") == {"thesis.txt": "mine"}


@pytest.mark.parametrize(
    "stage, files",
    [
        (TRAIN_STAGE, {"logs/train/events.out": "x"}),  # common names alone are not textclf's
        (TRAIN_STAGE, {"metrics.json": "{}", "labels.txt": "a\n"}),
        (PREPROCESS_STAGE, {STATS_FILE: "{}"}),
        (SCORE_STAGE, {STATS_FILE: "{}"}),
    ],
)
def test_a_directory_without_success_or_the_stages_own_file_is_refused(tmp_path, stage, files):
    before = _tree(tmp_path / "out", files)
    with pytest.raises(outputs.OutputNotReplaceable, match="not a textclf"):
        outputs.check_replaceable(str(tmp_path / "out"), stage)
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("suffix", ["/", "/.", "//"])
def test_a_path_spelled_with_a_trailing_slash_or_dot_is_checked_as_itself(tmp_path, suffix):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(outputs.OutputNotReplaceable, match="not a directory"):
        outputs.check_replaceable(str(tmp_path / "link") + suffix, TRAIN_STAGE)
    _tree(tmp_path / "mine", {"thesis.txt": "mine"})
    with pytest.raises(outputs.OutputNotReplaceable, match="thesis.txt"):
        outputs.check_replaceable(str(tmp_path / "mine") + suffix, TRAIN_STAGE)
    staging = outputs.staging_dir(str(tmp_path / "new") + suffix)
    assert os.path.dirname(staging) == str(tmp_path)  # a sibling, never inside the output
