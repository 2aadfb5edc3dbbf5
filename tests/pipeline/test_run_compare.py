"""`textclf run` with two architectures on one split: both trained, compared, one scores.

The config lists `[train] architecture = ["seed", "tfidf_linear"]` with `[train.tfidf_linear]`
overrides: the first trains into model/ and scores, the second into model-tfidf_linear/; each is
evaluated on the scored rows with `textclf evaluate` (the gate's code), and the manifest, the
report and `textclf evaluate` itself tell the same figures. Real stages, tiny corpus.
"""

from __future__ import annotations

import json

import pytest

from pipeline import evaluate, run, train
from pipeline.run_config import ConfigError, challenger_argvs, load_config, stage_argvs
from tests.pipeline.test_run import FakeStages, _config
from transforms.contracts import MANIFEST_FILE, REPORT_FILE, SUCCESS_FILE

RUN_DATE = "2024-03-01"


def _two_architectures(tmp_path) -> str:
    path = _config(tmp_path)
    text = open(path).read()
    text = text.replace("[preprocess]\n", '[preprocess]\nfeatures = "sequence,tfidf"\n')
    text = text.replace("[train]\n", '[train]\narchitecture = ["seed", "tfidf_linear"]\n').replace(
        "[score]\n", "[train.tfidf_linear]\nepochs = 8\n\n[score]\n"
    )
    open(path, "w").write(text)
    return path


def test_each_architecture_gets_its_own_train_command(tmp_path):
    config = load_config(_two_architectures(tmp_path))
    run_dir = str(tmp_path / "runs" / RUN_DATE)
    parser = train.build_parser()
    primary = parser.parse_args(stage_argvs(config, run_dir)["train"])
    assert (primary.architecture, primary.epochs) == ("seed", 1)
    ((name, argv),) = challenger_argvs(config, run_dir).items()
    other = parser.parse_args(argv)
    assert name == "tfidf_linear"
    assert other.model_dir == f"{run_dir}/model-tfidf_linear"
    assert (other.architecture, other.epochs) == ("tfidf_linear", 8)  # [train.tfidf_linear] wins


@pytest.mark.parametrize(
    "train, message",
    [
        ('architecture = ["seed", "seed"]', "a list of distinct names"),
        ("[train.tfidf_linear]\nepochs = 3", "does not list"),
        ('architecture = ["seed", "bag_of_words"]', "[train.bag_of_words]"),
    ],
)
def test_bad_architecture_lists_are_refused(tmp_path, monkeypatch, capsys, train, message):
    path = _config(tmp_path)
    text = open(path).read().replace("[train]\n", f"[train]\n{train}\n", 1)
    if train.startswith("[train."):
        text = open(path).read().replace("[score]\n", f"{train}\n\n[score]\n")
    open(path, "w").write(text)
    fake = FakeStages()
    monkeypatch.setattr(run, "call_stage", fake)
    argv = ["--config", path, "--root", str(tmp_path / "runs"), "--run_date", RUN_DATE]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert fake.calls == []


@pytest.mark.slow
def test_two_architectures_are_trained_compared_and_reported(tmp_path, capsys):
    root = tmp_path / "runs"
    argv = ["--config", _two_architectures(tmp_path), "--root", str(root), "--run_date", RUN_DATE]
    assert run.main(argv) == 0
    run_dir = root / RUN_DATE
    for name in ("data", "model", "model-tfidf_linear", "scores"):
        assert (run_dir / name / SUCCESS_FILE).exists()
    assert (run_dir / SUCCESS_FILE).exists()
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    stages = manifest["stages"]
    assert stages["preprocess"]["rows"]["rows_read"] == 240
    assert stages["preprocess"]["rows"]["rows_accounted"] is True
    assert stages["train"]["rows"]["epochs_run"] == 1
    assert stages["score"]["rows"]["rows_read"] == 60
    assert stages["score"]["rows"]["rows_accounted"] is True
    assert manifest["metrics"]["scored"]["rows"] == 60
    assert manifest["versions"]["tensorflow"]
    models = manifest["models"]
    assert list(models) == ["seed", "tfidf_linear"]
    for name, entry in models.items():
        assert 0.0 <= entry["eval"]["accuracy"] <= 1.0, name
        assert entry["scored_rows"]["rows"] == 60, name
    # The primary's figures on the scored rows agree with the scores' own evaluation.
    assert models["seed"]["scored_rows"]["accuracy"] == pytest.approx(
        manifest["metrics"]["scored"]["accuracy"]
    )
    cached = json.loads((run_dir / "evaluation-tfidf_linear.json").read_text())
    assert cached["architecture"] == "tfidf_linear"
    page = (run_dir / REPORT_FILE).read_text()
    assert "Models compared" in page and "tfidf_linear" in page
    assert "confusion matrix of the scored rows" in page
    assert "data:image/png;base64," in page and "sports" in page

    # `textclf evaluate` by hand gives the run's figures.
    capsys.readouterr()
    opts, beam = evaluate.parse(
        [
            "--model_dir",
            str(run_dir / "model-tfidf_linear"),
            "--input",
            str(tmp_path / "score.parquet"),
        ]
    )
    result = evaluate.evaluate(opts, beam)
    assert result["metrics"]["accuracy"] == pytest.approx(
        models["tfidf_linear"]["scored_rows"]["accuracy"]
    )

    # A rerun trains and evaluates nothing again.
    assert run.main(argv) == 0
    rerun = json.loads((run_dir / MANIFEST_FILE).read_text())
    assert {s: e["status"] for s, e in rerun["stages"].items()} == dict.fromkeys(
        ("preprocess", "train", "score"), "skipped"
    )
    assert rerun["models"]["tfidf_linear"]["status"] == "skipped"
    assert rerun["models"]["tfidf_linear"]["scored_rows"] == models["tfidf_linear"]["scored_rows"]


def test_a_config_error_names_the_architecture_table(tmp_path):
    path = _two_architectures(tmp_path)
    text = open(path).read().replace("epochs = 8\n\n[score]", "epochs = -3\nbogus = 1\n\n[score]")
    open(path, "w").write(text)
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"\[train\] bogus is not a flag"):
        challenger_argvs(config, str(tmp_path / "runs" / RUN_DATE))


def test_the_demo_config_trains_both_families_and_its_written_copy_loads(tmp_path):
    """configs/20newsgroups.toml (what `make demo` runs), as `textclf demo` writes it with an
    override: every stage and both architectures get command lines their parsers accept."""
    from pipeline import demo

    path = demo.write_config(str(tmp_path), {"train": {"epochs": 3}})
    config = load_config(path)
    assert config.architectures == ("seed", "tfidf_linear")
    run_dir = str(tmp_path / RUN_DATE)
    argvs = stage_argvs(config, run_dir)
    assert "--features=sequence,tfidf" in argvs["preprocess"]
    parser = train.build_parser()
    assert parser.parse_args(argvs["train"]).epochs == 3
    other = parser.parse_args(challenger_argvs(config, run_dir)["tfidf_linear"])
    assert (other.architecture, other.epochs) == ("tfidf_linear", 20)
