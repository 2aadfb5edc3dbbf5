"""`textclf run`: config -> stage flags, scheduled-job semantics, the manifest, and one real run.

Most tests replace the stage runner with `FakeStages`, which writes each stage's output contract
(stats.json, metrics.json, ...) through the same staging-then-finalize path the stages use, so
skipping, forcing, failing and the manifest are checked in milliseconds. The bad-input test and the
end-to-end test run the real stages in child processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import outputs, run, run_config
from pipeline.manifest import is_stale
from pipeline.options import flags_from_mapping
from pipeline.run_lock import RunLock
from transforms.contracts import (
    EXIT_BAD_INPUT,
    LABELS_TXT,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    REPORT_FILE,
    RUN_LOCK_FILE,
    STATS_FILE,
    SUCCESS_FILE,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RUN_DATE = "2024-03-01"
TOPICS = {
    "sports": "ball goal team match coach referee",
    "politics": "vote law senate party election budget",
    "science": "atom cell energy theory lab molecule",
}


def _corpus(path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(rows):
        topic = rng.choice(sorted(TOPICS))
        words = TOPICS[topic].split() + ["the", "a", "of"]
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))))
        labels.append(topic)
    pq.write_table(pa.table({"text": texts, "label": labels}), path)


def _config(tmp_path, extra: str = "", text_column: str = "text") -> str:
    """A config beside tiny train/score Parquet files (relative paths: relative to the config)."""
    _corpus(tmp_path / "train.parquet", 240, seed=1)
    _corpus(tmp_path / "score.parquet", 60, seed=2)
    path = tmp_path / "job.toml"
    path.write_text(f"""
[inputs]
train = "train.parquet"
score = ["score.parquet"]
text_column = "{text_column}"
label_column = "label"

[preprocess]
max_tokens = 100
sequence_length = 16
lowercase = true

[train]
epochs = 1
batch_size = 32
embedding_dim = 8
filters = 8
kernel_size = 3
pool_size = 2
lstm_units = 4

[score]
batch_size = 64
columns = ["label"]

[beam]
direct_num_workers = 1
{extra}
""")
    return str(path)


class FakeStages:
    """Stands in for the three stages: writes their output contracts, counts calls, can fail."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.calls: list[str] = []
        self.fail = dict(fail or {})

    def __call__(self, stage: str, argv: list[str]):
        self.calls.append(stage)
        if self.fail.get(stage):
            self.fail[stage] -= 1
            return EXIT_BAD_INPUT, f"column 'body' not found in {stage} input"
        flag = {"preprocess": "--output_dir", "train": "--model_dir", "score": "--output"}[stage]
        out = argv[argv.index(flag) + 1]
        staging = outputs.staging_dir(out)
        if stage == "preprocess":
            outputs.write_json(
                os.path.join(staging, STATS_FILE),
                {
                    "rows_read": 240,
                    "rows_written": {"train": 216, "eval": 24},
                    "rows_dead_lettered": 0,
                    "dead_letter_reasons": {},
                    "rows_accounted": True,
                },
            )
        elif stage == "train":
            outputs.write_json(
                os.path.join(staging, METRICS_FILE),
                {
                    "rows": 24,
                    "accuracy": 0.75,
                    "macro_f1": 0.7,
                    "epochs_run": 1,
                    "rows_seen": {"train": 216, "eval": 24},
                    "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2}},
                    "confusion_matrix": [[1, 1], [0, 2]],
                },
            )
            outputs.write_json(os.path.join(staging, MODEL_CARD_FILE), {"model_version": "v1"})
            outputs.write_text(os.path.join(staging, LABELS_TXT), "a\nb\n")
        else:
            outputs.write_json(
                os.path.join(staging, STATS_FILE),
                {
                    "rows_read": 60,
                    "rows_scored": 59,
                    "rows_dead_lettered": 1,
                    "dead_letter_reasons": {"text_is_empty": 1},
                    "label_counts": {"a": 59},
                },
            )
        outputs.finalize(staging, out, stage)
        return 0, None


def _manifest(root) -> dict:
    return json.loads((root / RUN_DATE / MANIFEST_FILE).read_text())


def _statuses(root) -> dict:
    return {s: e["status"] for s, e in _manifest(root)["stages"].items()}


def test_config_sections_become_each_stages_own_flags(tmp_path):
    config = run_config.load_config(_config(tmp_path))
    argvs = run_config.stage_argvs(config, str(tmp_path / "runs" / RUN_DATE))
    pre, train, score = argvs["preprocess"], argvs["train"], argvs["score"]
    assert pre[pre.index("--input") + 1] == str(tmp_path / "train.parquet")
    assert "--max_tokens=100" in pre and "--lowercase" in pre
    assert pre[pre.index("--output_dir") + 1].endswith(f"{RUN_DATE}/data")
    assert train[train.index("--data_dir") + 1].endswith(f"{RUN_DATE}/data")
    assert "--epochs=1" in train
    assert "--columns=label" in score
    assert score[score.index("--model_dir") + 1].endswith(f"{RUN_DATE}/model")
    # Beam options go to the Beam stages only (train refuses unknown flags).
    assert "--direct_num_workers=1" in pre and "--direct_num_workers=1" in score
    assert not any(a.startswith("--direct") for a in train)
    # Each stage's own parser reads back what the config says.
    parsed = run_config.stage_parser("preprocess").parse_known_args(pre)[0]
    assert (parsed.max_tokens, parsed.sequence_length, parsed.lowercase) == (100, 16, True)
    assert run_config.stage_parser("score").parse_known_args(score)[0].columns == "label"


def test_boolean_settings_follow_the_flags_own_action():
    parser = run_config.stage_parser("preprocess")
    assert flags_from_mapping(parser, {"lowercase": False, "multi_label": False}) == [
        "--no-lowercase"
    ]
    assert flags_from_mapping(parser, {"strip_punctuation": True, "multi_label": True}) == [
        "--strip_punctuation",
        "--multi_label",
    ]
    assert flags_from_mapping(parser, {"multi_label": "true", "lowercase": "false"}) == [
        "--multi_label",
        "--no-lowercase",
    ]
    with pytest.raises(ValueError, match="multi_label must be true or false, not 'maybe'"):
        flags_from_mapping(parser, {"multi_label": "maybe"})
    with pytest.raises(ValueError, match="max_tokens takes a value, not True"):
        flags_from_mapping(parser, {"max_tokens": True})


def test_list_settings_follow_the_flags_nargs():
    """A flag of several values gets them after one flag; a one-value flag a comma list."""
    pre, score = run_config.stage_parser("preprocess"), run_config.stage_parser("score")
    assert flags_from_mapping(pre, {"input": ["a.csv", "b.csv"]}) == ["--input", "a.csv", "b.csv"]
    assert flags_from_mapping(pre, {"input": "a.csv, b.csv"}) == ["--input", "a.csv", "b.csv"]
    assert flags_from_mapping(score, {"columns": ["id", "label"]}) == ["--columns=id,label"]
    argv = flags_from_mapping(score, {"input": ["a", "b"], "columns": ["id", "label"]})
    parsed, rest = score.parse_known_args([*argv, "--model_dir=m", "--output=o", "--text_column=t"])
    assert (parsed.input, parsed.columns, rest) == (["a", "b"], "id,label", [])
    with pytest.raises(ValueError, match="input is empty"):
        flags_from_mapping(pre, {"input": []})


def test_beam_lists_become_repeated_flags_as_beams_from_dictionary_makes_them(tmp_path):
    beam = {
        "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
        "save_main_session": True,
        "streaming": False,
        "direct_num_workers": 2,
        "runner": "DirectRunner",
    }
    argv = flags_from_mapping(run_config.stage_parser("score"), beam)
    assert argv == [
        "--experiments=use_runner_v2",
        "--experiments=no_use_multiple_sdk_containers",
        "--save_main_session",
        "--direct_num_workers=2",
        "--runner=DirectRunner",
    ]
    assert PipelineOptions(argv).get_all_options() == (
        PipelineOptions.from_dictionary(beam).get_all_options()
    )
    # Through the config, to both Beam stages.
    path = _config(tmp_path, extra='experiments = ["a", "b"]')
    argvs = run_config.stage_argvs(run_config.load_config(path), str(tmp_path / RUN_DATE))
    for stage in ("preprocess", "score"):
        assert argvs[stage][-3:] == ["--direct_num_workers=1", "--experiments=a", "--experiments=b"]
        rest = run_config.stage_parser(stage).parse_known_args(argvs[stage])[1]
        assert PipelineOptions(rest).get_all_options()["experiments"] == ["a", "b"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[train]\nepoch = 3", "[train] epoch is not a flag of `textclf train`"),
        ("[score]\noutput = 'x'", "[score] output is set by `textclf run`"),
        (
            "[preprocess]\nnum_oov_buckets = 'many'",
            "[preprocess] argument --num_oov_buckets: invalid",
        ),
        ("[stages]\nx = 1", "unknown section(s) stages"),
        ("[beam]\nbatch_size = 3", "[beam] batch_size is a flag of `textclf score`"),
        ("[beam]\ndirect_num_worker = 2", "[beam] not a Beam option: --direct_num_worker=2"),
        (
            "[preprocess]\nstrip_punctuation = 'no'",
            "[preprocess] strip_punctuation must be true or false",
        ),
    ],
)
def test_bad_config_is_refused_before_any_stage_runs(tmp_path, monkeypatch, capsys, extra, message):
    path = _config(tmp_path)
    text = open(path).read()
    section = extra.split("\n")[0]
    text = text.replace(section, extra) if section in text else text + "\n" + extra
    open(path, "w").write(text)
    fake = FakeStages()
    monkeypatch.setattr(run, "call_stage", fake)
    code = run.main(["--config", path, "--root", str(tmp_path / "runs"), "--run_date", RUN_DATE])
    assert code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert fake.calls == []


def test_rerun_skips_finished_stages_and_force_redoes_them(tmp_path, monkeypatch, caplog):
    root = tmp_path / "runs"
    argv = ["--config", _config(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    fake = FakeStages()
    monkeypatch.setattr(run, "call_stage", fake)
    assert run.main(argv) == 0
    assert fake.calls == ["preprocess", "train", "score"]
    assert (root / RUN_DATE / SUCCESS_FILE).exists()

    caplog.set_level("INFO", logger="textclf.run")
    assert run.main(argv) == 0
    assert fake.calls == ["preprocess", "train", "score"]  # nothing ran again
    assert _statuses(root) == {"preprocess": "skipped", "train": "skipped", "score": "skipped"}
    assert "stage train: skipped, _SUCCESS exists" in caplog.text
    assert _manifest(root)["stages"]["train"]["seconds"] is not None  # timing of the real run

    assert run.main(argv + ["--force"]) == 0
    assert fake.calls == ["preprocess", "train", "score"] * 2
    assert _statuses(root) == {"preprocess": "ran", "train": "ran", "score": "ran"}


def test_a_stage_older_than_its_input_stage_runs_again(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    argv = ["--config", _config(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    fake = FakeStages()
    monkeypatch.setattr(run, "call_stage", fake)
    assert run.main(argv) == 0
    assert run.main(argv + ["--force", "--stages", "train"]) == 0
    assert fake.calls[3:] == ["train"]
    assert _statuses(root) == {
        "preprocess": "not_selected",
        "train": "ran",
        "score": "not_selected",
    }
    assert is_stale(str(root / RUN_DATE / "scores"), str(root / RUN_DATE / "model"))
    assert run.main(argv) == 0  # the scores predate the new model: only score runs
    assert fake.calls[4:] == ["score"]
    assert _statuses(root) == {"preprocess": "skipped", "train": "skipped", "score": "ran"}


def test_failed_stage_exits_non_zero_with_one_line_and_a_rerun_finishes(
    tmp_path, monkeypatch, capsys
):
    root = tmp_path / "runs"
    argv = ["--config", _config(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    fake = FakeStages(fail={"train": 1})
    monkeypatch.setattr(run, "call_stage", fake)
    assert run.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "textclf run: stage train failed (bad input): column 'body' not found in train input"
    )
    assert _statuses(root) == {"preprocess": "ran", "train": "failed", "score": "not_run"}
    manifest = _manifest(root)
    assert manifest["status"] == "failed" and manifest["reason"] == err[-1]
    assert not (root / RUN_DATE / "model" / SUCCESS_FILE).exists()
    assert not (root / RUN_DATE / SUCCESS_FILE).exists()

    assert run.main(argv) == 0
    assert fake.calls == ["preprocess", "train", "train", "score"]
    assert _statuses(root) == {"preprocess": "skipped", "train": "ran", "score": "ran"}
    assert [i["exit_code"] for i in _manifest(root)["invocations"]] == [EXIT_BAD_INPUT, 0]


def test_manifest_records_inputs_config_versions_rows_metrics_and_timings(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    config = _config(tmp_path)
    monkeypatch.setattr(run, "call_stage", FakeStages())
    assert run.main(["--config", config, "--root", str(root), "--run_date", RUN_DATE]) == 0
    manifest = _manifest(root)
    assert manifest["status"] == "succeeded" and manifest["run_date"] == RUN_DATE
    assert manifest["config_file"] == config
    assert manifest["config"]["train"]["epochs"] == 1
    assert manifest["inputs"]["train_files"][0]["path"] == str(tmp_path / "train.parquet")
    assert manifest["inputs"]["train_files"][0]["bytes"] > 0
    assert manifest["inputs"]["label_column"] == "label"
    assert {"python", "apache-beam", "tensorflow", "keras", "pyarrow", "textclf"} <= set(
        manifest["versions"]
    )
    stages = manifest["stages"]
    assert stages["preprocess"]["rows"]["rows_read"] == 240
    assert stages["preprocess"]["rows"]["rows_written"] == {"train": 216, "eval": 24}
    assert stages["train"]["rows"]["rows_seen"] == {"train": 216, "eval": 24}
    assert stages["score"]["rows"] == {
        "rows_read": 60,
        "rows_scored": 59,
        "rows_dead_lettered": 1,
        "dead_letter_reasons": {"text_is_empty": 1},
        "label_counts": {"a": 59},
        "rows_accounted": True,
    }
    assert manifest["metrics"]["eval"]["accuracy"] == 0.75
    assert "per_class" not in manifest["metrics"]["eval"]
    assert stages["train"]["model_version"] == "v1"
    for entry in stages.values():
        assert entry["status"] == "ran" and entry["seconds"] >= 0 and entry["finished_at"]
        assert entry["argv"]
    assert (root / RUN_DATE / REPORT_FILE).exists()
    assert not list((root / RUN_DATE).glob("*.tmp-*"))


def _hold_run_lock(root) -> subprocess.Popen:
    """Another process that takes the run lock of `root` and holds it until it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pipeline.run_lock import RunLock\n"
            "with RunLock(sys.argv[1]):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(root),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_the_same_root_is_refused_while_another_process_holds_the_lock(
    tmp_path, monkeypatch, capsys
):
    root, run_dir = tmp_path / "runs", tmp_path / "runs" / RUN_DATE
    argv = ["--config", _config(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    fake = FakeStages()
    monkeypatch.setattr(run, "call_stage", fake)
    holder = _hold_run_lock(root)  # another run on this root
    try:
        assert run.main(argv) == 1  # the same date
        assert run.main([*argv[:-1], "2024-03-02"]) == 1  # or another date
        err = capsys.readouterr().err
        assert err.count(f"another textclf run (pid {holder.pid}) is running on {root}") == 2
        assert fake.calls == [] and not (run_dir / MANIFEST_FILE).exists()
    finally:
        holder.kill()  # SIGKILL: the holder cleans nothing up
        holder.wait()
    # The kernel released the dead holder's lock; the lock file stays and is taken again.
    assert (root / RUN_LOCK_FILE).exists()
    assert run.main(argv) == 0
    assert fake.calls == ["preprocess", "train", "score"]


def test_the_lock_is_held_for_the_whole_run_and_released_after_it(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    argv = ["--config", _config(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    contended = []

    def stage_that_tries_the_lock(stage, stage_argv):
        # Another process asks the kernel for the same lock while the stage runs.
        probe = subprocess.run(
            [sys.executable, "-c", "import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError:\n    sys.exit(3)\n", str(root / RUN_LOCK_FILE)],
        )  # fmt: skip
        contended.append(probe.returncode == 3)
        return FakeStages()(stage, stage_argv)

    monkeypatch.setattr(run, "call_stage", stage_that_tries_the_lock)
    assert run.main(argv) == 0
    assert contended == [True, True, True]
    with RunLock(str(root)):  # free again once the run is over
        pass


def test_an_object_store_run_directory_has_no_lock():
    with RunLock("gs://bucket/runs/2024-03-01") as lock:
        assert lock.path is None


def test_a_real_stage_with_bad_input_fails_with_exit_2_and_leaves_no_success(tmp_path, capsys):
    """A missing text column, found by the real preprocess stage in its child process."""
    root = tmp_path / "runs"
    code = run.main(
        [
            "--config",
            _config(tmp_path, text_column="body"),
            "--root",
            str(root),
            "--run_date",
            RUN_DATE,
        ]
    )
    assert code == EXIT_BAD_INPUT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("textclf run: stage preprocess failed (bad input): ")
    assert "body" in last
    run_dir = root / RUN_DATE
    assert not list(run_dir.rglob(SUCCESS_FILE))
    assert not list(run_dir.glob(".data.inprogress-*"))
    assert _manifest(root)["stages"]["preprocess"]["exit_code"] == EXIT_BAD_INPUT


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_that_looks_complete(tmp_path):
    """SIGTERM while preprocess runs: the stage stops, no _SUCCESS, the manifest says so."""
    root = tmp_path / "runs"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            "--config",
            _config(tmp_path),
            "--root",
            str(root),
            "--run_date",
            RUN_DATE,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = root / RUN_DATE
    deadline = time.time() + 120
    while not list(run_dir.glob(".data.inprogress-*")) and time.time() < deadline:
        assert job.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) != 0
    assert not list(run_dir.rglob(SUCCESS_FILE))
    assert not (run_dir / "data").exists()
    manifest = _manifest(root)
    assert manifest["status"] == "failed"
    assert manifest["stages"]["preprocess"]["status"] == "failed"
    assert "interrupted" in manifest["stages"]["preprocess"]["reason"]
    with RunLock(str(root)):  # the killed run's lock went with its process
        pass


# The end-to-end run with the real stages (two architectures, a rerun that skips everything) is
# tests/pipeline/test_run_compare.py::test_two_architectures_are_trained_compared_and_reported.
