"""`textclf run` as a scheduler calls it: dated inputs, backfills, missing dates, config checks.

The stages are `FakeStages` (tests/pipeline/test_run.py): they write each stage's output
contract through the real staging-then-finalize path and record the command lines they get, so
the dates, the inputs each date reads and the skip/stop rules are checked in milliseconds. The
registry, the gate and drift run for real in tests/pipeline/test_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from pipeline import run
from tests.pipeline.test_run import FakeStages, _corpus
from transforms.contracts import EXIT_BAD_INPUT, MANIFEST_FILE, SUCCESS_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATES = ("2024-03-01", "2024-03-02", "2024-03-03")


def _dated_config(tmp_path, dates=DATES, skip=(), extra_inputs: str = "") -> str:
    """Train files under in/<date>/, score files under in/<Y>/<m>/<d>/, for `dates` but `skip`."""
    for n, date in enumerate(dates):
        if date in skip:
            continue
        day = tmp_path / "in" / date
        day.mkdir(parents=True)
        _corpus(day / "train.parquet", 40, seed=n)
        y, m, d = date.split("-")
        scored = tmp_path / "in" / y / m / d
        scored.mkdir(parents=True)
        _corpus(scored / "score.parquet", 10, seed=100 + n)
    path = tmp_path / "job.toml"
    path.write_text(f"""
[inputs]
train = "in/{{run_date}}/train.parquet"
score = "in/{{run_date:%Y/%m/%d}}/*.parquet"
label_column = "label"
{extra_inputs}

[preprocess]
max_tokens = 50

[train]
epochs = 1
""")
    return str(path)


def _inputs(fake_argvs: list[tuple[str, list[str]]], stage: str) -> list[str]:
    return [argv[argv.index("--input") + 1] for s, argv in fake_argvs if s == stage]


class RecordingStages(FakeStages):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.argvs: list[tuple[str, list[str]]] = []

    def __call__(self, stage, argv):
        self.argvs.append((stage, list(argv)))
        return super().__call__(stage, argv)


def _manifest(root, date) -> dict:
    return json.loads((root / date / MANIFEST_FILE).read_text())


def test_each_date_of_a_backfill_reads_its_own_files_in_order(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", _dated_config(tmp_path), "--root", str(root)]
    assert run.main([*argv, "--from", DATES[0], "--to", DATES[-1]]) == 0
    assert fake.calls == ["preprocess", "train", "score"] * 3
    assert _inputs(fake.argvs, "preprocess") == [
        str(tmp_path / "in" / d / "train.parquet") for d in DATES
    ]
    assert _inputs(fake.argvs, "score") == [
        str(tmp_path / "in" / "2024" / "03" / d[-2:] / "*.parquet") for d in DATES
    ]
    for date in DATES:
        manifest = _manifest(root, date)
        assert manifest["status"] == "succeeded" and manifest["run_date"] == date
        assert [f["path"] for f in manifest["inputs"]["train_files"]] == [
            str(tmp_path / "in" / date / "train.parquet")
        ]
        assert (root / date / SUCCESS_FILE).exists()

    # A second backfill over a longer range skips the finished dates and runs only the new one.
    (tmp_path / "in" / "2024-03-04").mkdir()
    _corpus(tmp_path / "in" / "2024-03-04" / "train.parquet", 40, seed=9)
    (tmp_path / "in" / "2024" / "03" / "04").mkdir(parents=True)
    _corpus(tmp_path / "in" / "2024" / "03" / "04" / "score.parquet", 10, seed=19)
    assert run.main([*argv, "--from", DATES[0], "--to", "2024-03-04"]) == 0
    assert fake.calls[9:] == ["preprocess", "train", "score"]
    assert len(_manifest(root, DATES[0])["invocations"]) == 1  # not touched again


def test_a_date_without_input_files_stops_the_backfill_with_its_date(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    config = _dated_config(tmp_path, skip=(DATES[1],))
    code = run.main(["--config", config, "--root", str(root), "--from", DATES[0], "--to", DATES[2]])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == (
        f"textclf run: {DATES[1]}: no input files match [inputs] train = "
        f"{tmp_path}/in/{DATES[1]}/train.parquet; [inputs] score = "
        f"{tmp_path}/in/2024/03/02/*.parquet"
    )
    assert err[-1].startswith(f"textclf run: backfill stopped at {DATES[1]}: ")
    assert err[-1].endswith(f"; {DATES[2]}..{DATES[2]} not run")
    assert fake.calls == ["preprocess", "train", "score"]  # the first date only
    assert not (root / DATES[1]).exists() and not (root / DATES[2]).exists()


def test_allow_missing_records_the_date_as_skipped_and_goes_on(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    config = _dated_config(tmp_path, skip=(DATES[1],), extra_inputs="allow_missing = true")
    argv = ["--config", config, "--root", str(root), "--from", DATES[0], "--to", DATES[2]]
    assert run.main(argv) == 0
    assert fake.calls == ["preprocess", "train", "score"] * 2
    skipped = _manifest(root, DATES[1])
    assert skipped["status"] == run.MISSING_INPUTS
    assert "no input files: [inputs] train = " in skipped["reason"]
    assert not (root / DATES[1] / SUCCESS_FILE).exists()
    # The files arrive later: the next backfill runs that date (only).
    (tmp_path / "in" / DATES[1]).mkdir()
    _corpus(tmp_path / "in" / DATES[1] / "train.parquet", 40, seed=5)
    (tmp_path / "in" / "2024" / "03" / "02").mkdir(parents=True)
    _corpus(tmp_path / "in" / "2024" / "03" / "02" / "score.parquet", 10, seed=6)
    assert run.main(argv) == 0
    assert fake.calls[6:] == ["preprocess", "train", "score"]
    assert _manifest(root, DATES[1])["status"] == "succeeded"


def test_a_failing_date_stops_the_backfill_naming_the_date_and_the_stage(
    tmp_path, monkeypatch, capsys
):
    root = tmp_path / "runs"
    fake = RecordingStages(fail={"score": 1})
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", _dated_config(tmp_path), "--root", str(root)]
    assert run.main([*argv, "--from", DATES[0], "--to", DATES[2]]) == EXIT_BAD_INPUT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"textclf run: backfill stopped at {DATES[0]}: stage score failed (bad input): "
        f"column 'body' not found in score input; {DATES[1]}..{DATES[2]} not run"
    )
    assert fake.calls == ["preprocess", "train", "score"]
    # The rerun resumes: the first date's score only, then the other dates.
    assert run.main([*argv, "--from", DATES[0], "--to", DATES[2]]) == 0
    assert fake.calls[3:] == ["score"] + ["preprocess", "train", "score"] * 2


def test_only_the_selected_stages_decide_success(tmp_path, monkeypatch):
    """`--stages preprocess` exits 0 and marks the date finished for what was asked."""
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", _dated_config(tmp_path), "--root", str(root), "--run_date", DATES[0]]
    assert run.main([*argv, "--stages", "preprocess"]) == 0
    manifest = _manifest(root, DATES[0])
    assert manifest["status"] == "succeeded"
    assert {s: e["status"] for s, e in manifest["stages"].items()} == {
        "preprocess": "ran",
        "train": "not_selected",
        "score": "not_selected",
    }
    assert (root / DATES[0] / SUCCESS_FILE).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "2024-03-02"], "--from and --to go together"),
        (["--from", "2024-03-02", "--to", "2024-03-01"], "--from 2024-03-02 is after --to"),
    ],
)
def test_bad_date_ranges_are_refused_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", _dated_config(tmp_path), "--root", str(tmp_path / "runs"), *args]
    assert run.main(argv) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert fake.calls == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "inputs, message",
    [
        ('train = "in/{date}/t.parquet"\nscore = "s.parquet"', "unknown placeholder {date}"),
        ('train = "in/{run_date:%Y/t.parquet"\nscore = "s.parquet"', "only placeholder"),
        ('train = "t.parquet"\nscore = "s.parquet"\nallow_missing = "yes"', "allow_missing"),
    ],
)
def test_bad_dated_patterns_are_refused(tmp_path, capsys, inputs, message):
    path = tmp_path / "job.toml"
    path.write_text(f"[inputs]\n{inputs}\n")
    assert run.main(["--config", str(path), "--root", str(tmp_path / "runs")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize(
    "sections, message",
    [
        ('[promotion]\nmetric = "accuracy"', "[promotion] needs [registry] root"),
        ('[registry]\nroot = "models"\n[promotion]\nmetric = "auc"', "metric must be one of"),
        ('[registry]\nroot = "models"\n[promotion]\nfloor = 2', "floor must be a number"),
        ('[registry]\nroots = "models"', "unknown [registry] key(s) roots"),
    ],
)
def test_bad_registry_settings_are_refused(tmp_path, capsys, sections, message):
    path = tmp_path / "job.toml"
    path.write_text(f'[inputs]\ntrain = "t.parquet"\nscore = "s.parquet"\n{sections}\n')
    assert run.main(["--config", str(path), "--root", str(tmp_path / "runs")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_scheduled_config_and_the_readme_commands_hold(tmp_path):
    """configs/scheduled.toml loads and gives each stage a valid command line for a date; the
    README shows it verbatim (its TOML lines are the file's) with commands the run parser takes."""
    from pipeline.run_config import load_config, promote_argv, stage_argvs

    config_path = os.path.join(ROOT, "configs", "scheduled.toml")
    config = load_config(config_path).for_date("2024-03-01")
    base = os.path.dirname(config_path)
    assert config.score_inputs == (os.path.join(base, "incoming/2024/03/01/*.parquet"),)
    assert config.train_inputs == (os.path.join(base, "labelled/2024-03-01/*.parquet"),)
    argvs = stage_argvs(config, str(tmp_path / "2024-03-01"))
    score = argvs["score"]
    assert score[score.index("--model_dir") + 1] == os.path.join(base, "models")
    gate = promote_argv(config, str(tmp_path / "2024-03-01"), "decision.json")
    assert gate[gate.index("--metric") + 1] == "macro_f1"

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("### Scheduled jobs", 1)[1]
    toml_block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    file_lines = set(open(config_path, encoding="utf-8").read().splitlines())
    assert [line for line in toml_block.splitlines() if line not in file_lines] == []
    bash_block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in bash_block.splitlines() if "textclf run" in line]
    assert len(commands) == 3
    for line in commands:
        args = shlex.split(line.split("textclf run", 1)[1])
        run.run_dates(run.build_parser().parse_args(args))  # a valid date or range


def test_a_literal_brace_is_a_brace_in_every_pattern(tmp_path, monkeypatch):
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    braces = tmp_path / "in" / "{x}"
    braces.mkdir(parents=True)
    _corpus(braces / "train.parquet", 40, seed=1)
    _corpus(braces / "score.parquet", 10, seed=2)
    path = tmp_path / "job.toml"
    path.write_text(
        '[inputs]\ntrain = "in/{{x}}/train.parquet"\nscore = "in/{{x}}/score.parquet"\n'
    )
    argv = ["--config", str(path), "--root", str(tmp_path / "runs"), "--run_date", DATES[0]]
    assert run.main(argv) == 0
    assert _inputs(fake.argvs, "preprocess") == [str(braces / "train.parquet")]


def test_a_backfill_redoes_a_date_whose_stages_are_older_than_their_input(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", _dated_config(tmp_path), "--root", str(root)]
    assert run.main([*argv, "--from", DATES[0], "--to", DATES[1]]) == 0
    # Preprocess of the first date redone alone: the date is "complete" for what was selected,
    # but its model and scores are now older than its data.
    assert run.main([*argv, "--run_date", DATES[0], "--stages", "preprocess", "--force"]) == 0
    assert (root / DATES[0] / SUCCESS_FILE).exists()
    calls = len(fake.calls)
    assert run.main([*argv, "--from", DATES[0], "--to", DATES[1], "--stages", "train,score"]) == 0
    assert fake.calls[calls:] == ["train", "score"]  # the first date again; the second skipped


def test_a_date_skipped_for_missing_files_keeps_what_earlier_runs_recorded(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    config = _dated_config(tmp_path, extra_inputs="allow_missing = true")
    argv = ["--config", config, "--root", str(root), "--run_date", DATES[0]]
    assert run.main([*argv, "--stages", "preprocess,train"]) == 0
    for f in (tmp_path / "in" / "2024" / "03" / "01").iterdir():
        f.unlink()  # that day's files to score never arrived
    assert run.main([*argv, "--stages", "score"]) == 0
    manifest = _manifest(root, DATES[0])
    assert manifest["status"] == run.MISSING_INPUTS
    assert manifest["stages"]["train"]["status"] == "ran"  # still recorded
    assert "seed" in manifest["models"]
    assert not (root / DATES[0] / SUCCESS_FILE).exists()
    assert [i.get("status") for i in manifest["invocations"]][-1] == run.MISSING_INPUTS


def test_a_score_only_invocation_keeps_the_architectures_compared(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    fake = RecordingStages()
    monkeypatch.setattr(run, "call_stage", fake)
    config = _dated_config(tmp_path)
    text = (
        open(config)
        .read()
        .replace("[train]\n", '[train]\narchitecture = ["seed", "tfidf_linear"]\n')
    )
    text = text.replace("[preprocess]\n", '[preprocess]\nfeatures = "sequence,tfidf"\n')
    open(config, "w").write(text)
    argv = ["--config", config, "--root", str(root), "--run_date", DATES[0]]
    assert run.main([*argv, "--stages", "preprocess,train"]) == 0
    assert fake.calls == ["preprocess", "train", "train"]
    assert run.main([*argv, "--stages", "score"]) == 0
    assert list(_manifest(root, DATES[0])["models"]) == ["seed", "tfidf_linear"]


def test_tfidf_linear_without_tfidf_features_is_refused_before_any_work(tmp_path, capsys):
    config = _dated_config(tmp_path)
    text = open(config).read().replace("[train]\n", '[train]\narchitecture = "tfidf_linear"\n')
    open(config, "w").write(text)
    argv = ["--config", config, "--root", str(tmp_path / "runs"), "--run_date", DATES[0]]
    assert run.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'features = "sequence,tfidf"' in err[0]
