"""The Flex Templates agree with the stages they launch (fast: no Beam run, no Docker).

For templates/preprocess and templates/score: every metadata parameter is a flag of the stage
(read from its own parser, the one its CLI parses) and every stage flag is a parameter; the stage
refuses to run without exactly the non-optional parameters; each parameter's regexes compile,
accept the example its helpText documents and reject obviously bad values; the documented
examples, rewritten by templates/flex_launch.py, parse as the stage's own flags; and every file a
Dockerfile COPYs or names exists in the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

from pipeline.options import parser_flags
from pipeline.run_config import stage_parser

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
LAUNCHER_BASE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"


# Values every parameter's regexes must reject, then per-parameter ones.
BAD_EVERYWHERE = ["", " ", "a\nb"]
BAD_VALUES = {
    "input": ["/local/corpus.csv", "gs://bucket", "gs://my-bucket/a b.csv", "gs://b/a.csv,"],
    "output_dir": ["/tmp/out", "gs://my-bucket", "gs://my-bucket/out/*", "gs://b/x,y"],
    "output": ["out/", "gs://my-bucket", "gs://my-bucket/scores?"],
    "model_dir": ["model", "s3://bucket/model", "gs://my-bucket"],
    "text_column": ["a,b", " text"],
    "columns": ["a,,b", ",a"],
    "format": ["tsv", "CSV"],
    "multi_label": ["yes", "True", "1"],
    "lowercase": ["no"],
    "max_tokens": ["-1", "1.5", "ten"],
    "min_frequency": ["0", "-2"],
    "sequence_length": ["0", "1e3", "100 "],
    "batch_rows": ["0"],
    "batch_size": ["0", "-5", "64.0"],
    "eval_fraction": ["1", "1.0", "-0.1", "0.5.1"],
    "threshold": ["1.5", "-0.1", "2", "0", "1", "0.0", "1.0"],
    "csv_delimiter": [",,", "ab"],
    "vocabulary_path": ["slow"],
}


def load_flex_launch():
    spec = importlib.util.spec_from_file_location("flex_launch", TEMPLATES / "flex_launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flex_launch = load_flex_launch()
STAGES = flex_launch.STAGES


def metadata(stage: str) -> dict:
    return json.loads((TEMPLATES / stage / "metadata.json").read_text())


def stage_flags(stage: str) -> dict[str, argparse.Action]:
    return parser_flags(stage_parser(stage))


def refuses(stage: str, argv: list[str]) -> bool:
    """Whether the stage's parser refuses `argv` (it exits before any work)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            stage_parser(stage).parse_known_args(argv)
        except SystemExit:
            return True
    return False


def example_of(param: dict) -> str:
    found = re.findall(r"Example: `([^`]*)`", param["helpText"])
    assert len(found) == 1, f"{param['name']}: helpText needs one 'Example: `...`'"
    return found[0]


def params(stage: str) -> list[dict]:
    return metadata(stage)["parameters"]


ALL_PARAMS = [(stage, p["name"]) for stage in STAGES for p in params(stage)]


@pytest.mark.parametrize("stage", STAGES)
def test_metadata_has_name_description_and_complete_parameters(stage):
    meta = metadata(stage)
    assert meta["name"] and meta["description"]
    names = [p["name"] for p in meta["parameters"]]
    assert len(names) == len(set(names)), "duplicate parameter names"
    for p in meta["parameters"]:
        assert {"name", "label", "helpText", "isOptional", "regexes"} <= p.keys(), p["name"]
        assert isinstance(p["isOptional"], bool) and p["regexes"], p["name"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_parameter_is_a_stage_flag_and_every_stage_flag_a_parameter(stage):
    names = {p["name"] for p in params(stage)}
    flags = set(stage_flags(stage))
    assert names - flags == set(), f"metadata parameters the {stage} CLI does not accept"
    assert flags - names == set(), f"{stage} flags missing from templates/{stage}/metadata.json"


@pytest.mark.parametrize("stage", STAGES)
def test_the_stage_refuses_to_run_without_exactly_the_non_optional_parameters(stage):
    examples = {p["name"]: [f"--{p['name']}={example_of(p)}"] for p in params(stage)}
    argvs = {n: flex_launch.template_argv(stage, a) for n, a in examples.items()}
    non_optional = {p["name"] for p in params(stage) if not p["isOptional"]}
    assert non_optional, f"templates/{stage}/metadata.json: no parameter is required"
    assert not refuses(stage, [a for argv in argvs.values() for a in argv])
    for p in params(stage):
        without = [a for name, argv in argvs.items() if name != p["name"] for a in argv]
        assert refuses(stage, without) == (not p["isOptional"]), p["name"]


@pytest.mark.parametrize(("stage", "name"), ALL_PARAMS)
def test_regexes_compile_accept_the_example_and_reject_bad_values(stage, name):
    param = next(p for p in params(stage) if p["name"] == name)
    regexes = [re.compile(r) for r in param["regexes"]]
    example = example_of(param)
    # Dataflow matches a parameter against the whole regex (Java's Matcher.matches()).
    assert all(r.fullmatch(example) for r in regexes), f"{name}: example {example!r} rejected"
    for bad in BAD_EVERYWHERE + BAD_VALUES.get(name, []):
        assert not all(r.fullmatch(bad) for r in regexes), f"{name}: {bad!r} accepted"


@pytest.mark.parametrize("stage", STAGES)
def test_documented_examples_parse_as_the_stage_flags(stage):
    template_args = [f"--{p['name']}={example_of(p)}" for p in params(stage)]
    argv = flex_launch.template_argv(stage, template_args + ["--runner=DataflowRunner"])
    parsed, unknown = stage_parser(stage).parse_known_args(argv)
    assert unknown == ["--runner=DataflowRunner"]
    input_example = example_of(next(p for p in params(stage) if p["name"] == "input"))
    assert parsed.input == input_example.split(",")


def test_template_lists_and_switches_become_the_stage_flags():
    argv = flex_launch.template_argv(
        "preprocess",
        ["--input=gs://b/a/*.csv, gs://b/c.parquet", "--multi_label=true", "--lowercase=false",
         "--strip_punctuation=false", "--output_dir=gs://b/out", "--project=p",
         "--experiments=use_runner_v2", "--experiments=shuffle_mode=service"],
    )  # fmt: skip
    assert argv == ["--input", "gs://b/a/*.csv", "gs://b/c.parquet", "--multi_label",
                    "--no-lowercase", "--no-strip_punctuation", "--output_dir=gs://b/out",
                    "--project=p", "--experiments=use_runner_v2",
                    "--experiments=shuffle_mode=service"]  # fmt: skip
    parsed, beam = stage_parser("preprocess").parse_known_args(argv)
    assert (parsed.multi_label, parsed.lowercase, parsed.strip_punctuation) == (True, False, False)
    assert beam == argv[-3:]


def test_a_bad_switch_value_is_bad_input_before_any_work(capsys):
    assert flex_launch.launch("preprocess", ["--multi_label=maybe"]) == 2
    assert "multi_label must be true or false, not 'maybe'" in capsys.readouterr().err


def dockerfiles() -> list[Path]:
    return sorted(TEMPLATES.glob("*/Dockerfile"))


def test_there_is_a_dockerfile_and_metadata_per_stage():
    for stage in STAGES:
        assert (TEMPLATES / stage / "Dockerfile").is_file()
        assert (TEMPLATES / stage / "metadata.json").is_file()


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.parent.name)
def test_every_file_a_dockerfile_copies_exists(dockerfile):
    copies = re.findall(r"^COPY\s+(?!--)(.+)$", dockerfile.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


@pytest.mark.parametrize("stage", STAGES)
def test_flex_template_dockerfile_names_its_launcher_and_setup_file(stage):
    text = (TEMPLATES / stage / "Dockerfile").read_text()
    assert f"ARG LAUNCHER_IMAGE={LAUNCHER_BASE}" in text
    env = dict(re.findall(r'^ENV (\w+)="?([^"\n]+)"?$', text, re.MULTILINE))
    py_file = Path(env["FLEX_TEMPLATE_PYTHON_PY_FILE"]).name
    setup_file = Path(env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]).name
    assert py_file == f"launch_{stage}.py" and (TEMPLATES / py_file).is_file()
    assert f"templates/{py_file}" in text and "templates/flex_launch.py" in text
    assert setup_file == "setup.py" and "COPY setup.py" in text
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text), "install at build time"
    launcher = (TEMPLATES / py_file).read_text()
    assert f'launch("{stage}", sys.argv[1:])' in launcher


def test_the_launcher_base_image_python_is_the_project_python():
    setup = (ROOT / "setup.py").read_text()
    assert 'python_requires=">=3.10,<3.13"' in setup  # python311 lies inside; update both
    assert 'target-version = "py311"' in (ROOT / "pyproject.toml").read_text()
    assert "python311" in LAUNCHER_BASE
