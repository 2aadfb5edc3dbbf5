"""The Flex Templates agree with the stages they launch (fast: no Beam run, no Docker).

For templates/preprocess and templates/score: every metadata parameter is a flag of the stage
(read from its own parser, the one its CLI parses) and every stage flag is a parameter; the stage
refuses to run without exactly the non-optional parameters; each parameter's regexes compile,
accept the example its helpText documents and reject obviously bad values; the documented
examples, rewritten by templates/flex_launch.py, parse as the stage's own flags. For the one
image (templates/Dockerfile, launcher and SDK worker of both templates): every file it COPYs
exists in the repository, it installs requirements.lock, carries the Flex Template launcher and
Beam's worker boot of setup.py's Beam release, sets the launcher's environment, and the build
commands (templates/cloudbuild.yaml, templates/README.md) build that one image and point both
template specs at it; the image's launcher script picks each template's own stage and defaults
the workers to the image itself.
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
import yaml

from pipeline.options import parser_flags
from pipeline.run_config import stage_parser

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
DOCKERFILE = TEMPLATES / "Dockerfile"
LAUNCHER_BASE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"
LAUNCHER_BINARY = "/opt/google/dataflow/python_template_launcher"
BEAM_SDK_IMAGE = "apache/beam_python3.11_sdk"


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


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.MULTILINE))


def dockerfile_env(text: str) -> dict[str, str]:
    return dict(re.findall(r'^ENV (\w+)="?([^"\n]*)"?$', text, re.MULTILINE))


def test_there_is_one_image_and_a_metadata_file_per_stage():
    assert sorted(TEMPLATES.rglob("Dockerfile")) == [DOCKERFILE]
    for stage in STAGES:
        assert (TEMPLATES / stage / "metadata.json").is_file()


def test_every_file_the_dockerfile_copies_exists():
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY\s+(?!--)(.+)$", text, re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{DOCKERFILE}: COPY {source} does not exist"
    # BuildKit sends only what the Dockerfile's own ignore file lets through: exactly these.
    ignore = (TEMPLATES / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = {s.rstrip("/") for line in copies for s in line.split()[:-1]}
    assert allowed == sources
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.MULTILINE)
    for source_stage in re.findall(r"^COPY --from=(\S+) ", text, re.MULTILINE):
        assert source_stage in stages, f"COPY --from={source_stage}: no such build stage"


def test_the_image_is_the_flex_template_launcher_and_the_beam_worker():
    text = DOCKERFILE.read_text()
    args, env = dockerfile_args(text), dockerfile_env(text)
    # Beam's worker boot, from the SDK image of the Beam release setup.py pins.
    beam_pin = re.search(r'"apache-beam\[gcp\]==([^"]+)"', (ROOT / "setup.py").read_text())[1]
    assert args["BEAM_VERSION"] == beam_pin
    assert re.search(rf"^FROM {BEAM_SDK_IMAGE}:\$\{{BEAM_VERSION\}} AS beam_sdk$", text, re.M)
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    # The Flex Template launcher binary, where the launcher VM runs it.
    assert re.search(rf"^FROM {LAUNCHER_BASE}:\$\{{LAUNCHER_TAG\}} AS flex_launcher$", text, re.M)
    assert f"COPY --from=flex_launcher {LAUNCHER_BINARY} {LAUNCHER_BINARY}" in text
    # One launcher script for both templates; nothing installed at launch.
    py_file = Path(env["FLEX_TEMPLATE_PYTHON_PY_FILE"].replace("${WORKDIR}", args["WORKDIR"]))
    assert py_file.parent == Path(args["WORKDIR"]) and py_file.name == "flex_launch.py"
    assert re.search(r"^COPY templates/flex_launch\.py .* \./$", text, re.MULTILINE)
    assert not {"FLEX_TEMPLATE_PYTHON_SETUP_FILE", "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE"} & set(
        env
    )
    # The image's own name, for the workers' sdk_container_image.
    assert env[flex_launch.IMAGE_ENV] == "${" + flex_launch.IMAGE_ENV + "}"
    assert re.search(rf"^ARG {flex_launch.IMAGE_ENV}=$", text, re.MULTILINE)
    for stage in STAGES:
        launcher = (TEMPLATES / f"launch_{stage}.py").read_text()
        assert f'launch("{stage}", sys.argv[1:])' in launcher


def build_steps() -> list[list[str]]:
    return [
        step["args"]
        for step in yaml.safe_load((TEMPLATES / "cloudbuild.yaml").read_text())["steps"]
    ]


def test_cloud_build_builds_one_image_and_points_both_template_specs_at_it():
    image = "${_AR}/textclf:${_VERSION}"
    steps = build_steps()
    docker_builds = [a for a in steps if a[0] == "build"]
    assert docker_builds == [
        ["build", "-f", "templates/Dockerfile", "--build-arg",
         f"{flex_launch.IMAGE_ENV}={image}", "-t", image, "."]
    ]  # fmt: skip
    assert ["push", image] in steps
    specs = [a for a in steps if a[:3] == ["dataflow", "flex-template", "build"]]
    assert [
        (a[3], a[4:]) for a in specs
    ] == [
        (f"gs://${{_BUCKET}}/templates/textclf-{stage}-${{_VERSION}}.json",
         [f"--image={image}", "--sdk-language=PYTHON",
          f"--metadata-file=templates/{stage}/metadata.json"])
        for stage in STAGES
    ]  # fmt: skip
    cloudbuild = yaml.safe_load((TEMPLATES / "cloudbuild.yaml").read_text())
    assert cloudbuild["images"] == [image]


def test_the_readme_build_commands_are_the_same_one_image_and_two_specs():
    readme = (TEMPLATES / "README.md").read_text().replace("\\\n", " ")
    commands = [" ".join(line.split()) for line in readme.splitlines()]
    assert "export IMAGE=$AR/textclf:$VERSION" in commands
    builds = [c for c in commands if c.startswith("docker build")]
    assert builds == [
        f"docker build -f templates/Dockerfile --build-arg {flex_launch.IMAGE_ENV}=$IMAGE -t $IMAGE ."
    ]
    specs = [c for c in commands if c.startswith("gcloud dataflow flex-template build")]
    assert specs == [
        f"gcloud dataflow flex-template build gs://$BUCKET/templates/textclf-{stage}-$VERSION.json"
        f" --image=$IMAGE --sdk-language=PYTHON --metadata-file=templates/{stage}/metadata.json"
        for stage in STAGES
    ]
    assert "--config templates/cloudbuild.yaml" in readme


@pytest.mark.parametrize("stage", STAGES)
def test_a_launch_of_the_one_image_runs_the_template_s_own_stage(stage):
    required = [p["name"] for p in params(stage) if not p["isOptional"]]
    assert set(required) == flex_launch.required_parameters(stage)
    assert flex_launch.template_stage(required) == stage
    assert flex_launch.template_stage([p["name"] for p in params(stage)] + ["runner"]) == stage
    for other in STAGES:  # no stage's required flags lie within another's
        if other != stage:
            assert not flex_launch.required_parameters(stage) <= flex_launch.required_parameters(
                other
            )


def test_a_launch_naming_neither_or_both_stages_is_bad_input_before_any_work(capsys):
    assert flex_launch.main(["--input=gs://b/a.csv"], image="img") == 2
    assert "neither stage" in capsys.readouterr().err
    both = ["--input=gs://b/a.csv", "--output_dir=gs://b/d", "--model_dir=gs://b/m",
            "--output=gs://b/s", "--text_column=t"]  # fmt: skip
    assert flex_launch.main(both, image="img") == 2
    assert "both stages" in capsys.readouterr().err


def launched(monkeypatch, argv: list[str], image: str) -> tuple[str, list[str]]:
    calls = []
    monkeypatch.setattr(flex_launch, "launch", lambda stage, a: calls.append((stage, a)) or 0)
    assert flex_launch.main(argv, image=image) == 0
    return calls[0]


def test_a_template_launch_runs_its_workers_on_the_image_itself(monkeypatch, capsys):
    image = "europe-west1-docker.pkg.dev/p/textclf/textclf:abc123"
    argv = ["--input=gs://b/a.csv", "--output_dir=gs://b/d", "--runner=DataflowRunner",
            "--template_location=gs://b/staging/job_object"]  # fmt: skip
    assert launched(monkeypatch, argv, image) == (
        "preprocess",
        [*argv, f"--sdk_container_image={image}"],
    )
    other = [*argv, "--sdk_container_image=elsewhere/img:1"]
    assert launched(monkeypatch, other, image) == ("preprocess", other)  # given: kept
    local = argv[:3]  # not a template launch (no template_location): nothing added
    assert launched(monkeypatch, local, image) == ("preprocess", local)
    assert flex_launch.main(argv, image="") == 2  # a template launch with no worker image
    assert "sdk_container_image" in capsys.readouterr().err


def test_the_image_python_is_the_project_python():
    text = DOCKERFILE.read_text()
    assert dockerfile_args(text)["PYTHON_IMAGE"].startswith("python:3.11-")
    assert "python311" in LAUNCHER_BASE and "python3.11" in BEAM_SDK_IMAGE
    assert 'python_requires=">=3.11,<3.13"' in (ROOT / "setup.py").read_text()
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()  # the lock's Python
