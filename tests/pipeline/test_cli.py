"""`textclf <command>` failures, through the real CLI in child processes: an unexpected failure
prints its traceback on stderr and exits 1 (with a last one-line summary); bad input is one line
on stderr and exit 2, with no traceback. Failures are reported in one place, pipeline/cli.py."""

import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from tests.model_fixtures import build_test_model
from tests.pipeline.test_train import SEQUENCE_LENGTH, _corpus
from transforms.contracts import EXIT_BAD_INPUT, MODEL_CARD_FILE, SAVED_MODEL_DIR, SUCCESS_FILE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What TensorFlow's native code prints on stderr while it loads, whatever textclf does (absl's
# "before InitializeLog" notice and glog lines such as "I0000 00:00:... cudart_stub.cc:31] ...").
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} )")


def textclf(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run `python -m pipeline.cli argv` in a child (with `env` added to this process's
    environment); (exit code, stderr lines of textclf's own)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, [line for line in lines if not NATIVE_LOG.match(line)]


def assert_traceback_then_summary(code: int, err: list[str], command: str) -> None:
    assert code == 1, err
    assert any(line.startswith("Traceback (most recent call last):") for line in err), err
    assert err[-1].startswith(f"textclf {command}: failed: "), err[-1]


def assert_one_line(code: int, err: list[str], command: str) -> str:
    assert code == EXIT_BAD_INPUT, err
    assert len(err) == 1, err
    assert err[0].startswith(f"textclf {command}: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A real, finished preprocess output of a tiny corpus."""
    from pipeline import preprocess

    tmp = tmp_path_factory.mktemp("cli")
    corpus, out = str(tmp / "corpus.csv"), str(tmp / "data")
    _corpus(corpus, multi_label=False, rows=120)
    argv = ["--input", corpus, "--output_dir", out, "--sequence_length", str(SEQUENCE_LENGTH)]
    assert preprocess.main(argv) == 0
    return out


@pytest.mark.slow
def test_train_on_truncated_tfrecords_prints_the_traceback_and_exits_1(data_dir, tmp_path):
    """_SUCCESS and a valid config, but a cut-off gzip: not bad input the checks can see."""
    broken = str(tmp_path / "data")
    shutil.copytree(data_dir, broken)
    for name in os.listdir(broken):
        if name.startswith("train-"):
            path = os.path.join(broken, name)
            with open(path, "rb") as f:
                head = f.read(os.path.getsize(path) // 2)
            with open(path, "wb") as f:
                f.write(head)
    model_dir = str(tmp_path / "model")

    code, err = textclf("train", "--data_dir", broken, "--model_dir", model_dir, "--epochs", "1")

    assert_traceback_then_summary(code, err, "train")
    assert any("DataLossError" in line for line in err)
    assert not os.path.exists(model_dir)
    assert not [n for n in os.listdir(tmp_path) if ".inprogress-" in n]


def test_train_on_an_unfinished_data_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "data").mkdir()
    code, err = textclf(
        "train", "--data_dir", str(tmp_path / "data"), "--model_dir", str(tmp_path / "model")
    )
    assert "has no _SUCCESS" in assert_one_line(code, err, "train")


@pytest.fixture(scope="module")
def scoring_inputs(tmp_path_factory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("cli_score")
    model_dir = str(tmp / "model")
    build_test_model(model_dir, ["good fine great", "bad awful poor"] * 4, ["pos", "neg"] * 4)
    pq.write_table(pa.table({"body": ["good", "poor", "fine"]}), tmp / "in.parquet")
    return model_dir, str(tmp / "in.parquet")


@pytest.mark.slow
def test_score_with_a_corrupt_saved_model_prints_the_traceback_and_exits_1(
    scoring_inputs, tmp_path
):
    """A finished model dir whose SavedModel cannot be loaded: fails inside the Beam job."""
    model_dir, parquet = scoring_inputs
    broken = str(tmp_path / "model")
    shutil.copytree(model_dir, broken)
    with open(os.path.join(broken, SAVED_MODEL_DIR, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    out = str(tmp_path / "scores")

    code, err = textclf(
        "score", "--model_dir", broken, "--input", parquet, "--output", out, "--text_column", "body"
    )

    assert_traceback_then_summary(code, err, "score")
    assert not os.path.exists(out)


@pytest.mark.slow
def test_score_logs_progress_lines_up_to_every_row_read(scoring_inputs, tmp_path):
    """With TEXTCLF_PROGRESS_SECONDS tiny, score's stderr shows `score: N rows read, R rows/s,
    T elapsed` lines while it reads (one per table of 100 rows here), the last one counting
    every row read."""
    model_dir, _ = scoring_inputs
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": ["good fine", "poor bad"] * 300}), parquet, row_group_size=100)
    out = str(tmp_path / "scores")

    code, err = textclf(
        "score", "--model_dir", model_dir, "--input", str(parquet), "--output", out,
        "--text_column", "body", env={"TEXTCLF_PROGRESS_SECONDS": "0.000001"},
    )  # fmt: skip

    assert code == 0, err
    line = re.compile(r"score: ([\d,]+) rows read, [\d,]+ rows/s, \d+ s elapsed( \(done\))?$")
    found = [match for text in err if (match := line.search(text))]
    counts = [int(match.group(1).replace(",", "")) for match in found]
    assert len(counts) >= 2 and counts == sorted(counts), err
    assert counts[-1] == 600 and found[-1].group(2), err


def test_score_without_the_text_column_is_one_line_and_exit_2(scoring_inputs, tmp_path):
    model_dir, parquet = scoring_inputs
    out = str(tmp_path / "scores")
    code, err = textclf(
        "score", "--model_dir", model_dir, "--input", parquet, "--output", out, "--text_column", "x"
    )
    assert "x" in assert_one_line(code, err, "score")
    assert not os.path.exists(out)


def test_an_unexpected_error_in_any_command_gets_its_traceback_in_process(tmp_path, capsys):
    """describe used to print one line for every failure; now only for bad input."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / SUCCESS_FILE).write_text("2026-01-01T00:00:00+00:00\n")
    (model_dir / MODEL_CARD_FILE).write_text("{not json")

    assert cli.main(["describe", "--model_dir", str(model_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith("textclf describe: failed: JSONDecodeError: ")

    assert cli.main(["describe", "--model_dir", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no _SUCCESS" in err[0]
