"""The scheduler examples run the commands textclf accepts (fast: no Airflow, no Beam run).

templates/airflow/textclf_dags.py is read statically: it must compile, and its part above the
DAG definitions (settings, parameters, commands; no Airflow in it) is executed on its own. The
DAGs' ids, schedules, operators and task order are read from the syntax tree, and each task's
arguments are evaluated from it as Airflow would get them. With `{{ ds }}` rendered as a date,
each Flex Template launch body's parameters must be the template's metadata parameters (the
required ones present, each value accepted by the parameter's regexes) and must parse, through
templates/flex_launch.py, as the stage's own flags with nothing left over; each BashOperator's
command must parse with its stage's parser. The crontab lines, the backfill command and the
config in docs/RUNNERS.md ("Scheduling: cron and Airflow") must be what `textclf run` accepts.
"""

from __future__ import annotations

import ast
import datetime as _dt
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.options import parser_flags, unknown_beam_flags
from pipeline.run_config import stage_parser

ROOT = Path(__file__).resolve().parent.parent
DAG_FILE = ROOT / "templates" / "airflow" / "textclf_dags.py"
RUNNERS = ROOT / "docs" / "RUNNERS.md"
SECTION = "## Scheduling: cron and Airflow"

RUN_DATE = "2026-11-02"
# The Airflow macros the DAG file may use, rendered for RUN_DATE; any other is an error here.
MACROS = {"ds": RUN_DATE, "ds_nodash": RUN_DATE.replace("-", "")}
EXPECTED_DAGS = {
    "textclf_daily_score": "0 6 * * *",
    "textclf_weekly_retrain": "0 3 * * 1",
}
FLEX_OPERATOR = "DataflowStartFlexTemplateOperator"
BASH_OPERATOR = "BashOperator"
# google.dataflow.v1beta3.FlexTemplateRuntimeEnvironment, the launch body's `environment`.
FLEX_ENVIRONMENT_FIELDS = {
    "numWorkers", "maxWorkers", "zone", "serviceAccountEmail", "tempLocation", "machineType",
    "additionalExperiments", "network", "subnetwork", "additionalUserLabels", "kmsKeyName",
    "ipConfiguration", "workerRegion", "workerZone", "enableStreamingEngine", "flexrsGoal",
    "stagingLocation", "sdkContainerImage", "diskSizeGb", "autoscalingAlgorithm",
    "dumpHeapOnOom", "saveHeapDumpsToGcsPath", "launcherMachineType",
    "enableLauncherVmSerialPortLogging",
}  # fmt: skip


def render(value):
    """`value` with every `{{ macro }}` rendered for RUN_DATE, as Airflow renders templated
    fields (nested dicts and lists included)."""
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    if not isinstance(value, str):
        return value

    def macro(match: re.Match) -> str:
        assert match.group(1) in MACROS, f"unexpected Airflow macro {match.group(0)!r}"
        return MACROS[match.group(1)]

    rendered = re.sub(r"\{\{\s*(\w+)\s*\}\}", macro, value)
    assert "{{" not in rendered and "{%" not in rendered, f"unrendered template in {value!r}"
    return rendered


# ---------------------------------------------------------------------------------------------
# The DAG file, read without Airflow.


def _is_airflow_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "airflow"
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "airflow" for alias in node.names)
    return False


def _is_dag_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.With) and any(
        isinstance(item.context_expr, ast.Call) and _name(item.context_expr.func) == "DAG"
        for item in node.items
    )


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _keywords(call: ast.Call) -> dict[str, ast.expr]:
    return {kw.arg: kw.value for kw in call.keywords if kw.arg}


class DagFile:
    def __init__(self, path: Path):
        source = path.read_text()
        compile(source, str(path), "exec")  # a SyntaxError fails here, as Airflow's import would
        self.tree = ast.parse(source, str(path))
        body = self.tree.body
        imports = [n for n in body if _is_airflow_import(n)]
        assert imports, "a DAG file imports Airflow at module level"
        # The part a test may run: everything but the Airflow imports and the DAG blocks.
        plain = [n for n in body if not _is_airflow_import(n) and not _is_dag_block(n)]
        self.namespace: dict = {"__name__": "textclf_dags"}
        exec(compile(ast.Module(plain, []), str(path), "exec"), self.namespace)
        self.dags = {}  # dag_id -> (schedule, {task_id: (operator, {kwarg: value})}, chains)
        for block in filter(_is_dag_block, body):
            dag_call = block.items[0].context_expr
            kwargs = {k: self.eval(v) for k, v in _keywords(dag_call).items()}
            self.dags[kwargs["dag_id"]] = (kwargs["schedule"], *self._tasks(block))

    def eval(self, node: ast.expr):
        """The value of an expression of the DAG file, in its Airflow-free namespace."""
        return eval(compile(ast.Expression(node), "<dag>", "eval"), self.namespace)

    def _tasks(self, block: ast.With) -> tuple[dict, list[list[str]]]:
        tasks, variables, chains = {}, {}, []
        for stmt in block.body:
            value = stmt.value if isinstance(stmt, ast.Assign | ast.Expr) else None
            if isinstance(value, ast.Call) and _name(value.func) in (FLEX_OPERATOR, BASH_OPERATOR):
                kwargs = _keywords(value)
                task_id = ast.literal_eval(kwargs["task_id"])
                tasks[task_id] = (_name(value.func), kwargs)
                if isinstance(stmt, ast.Assign):
                    variables[stmt.targets[0].id] = task_id
            elif isinstance(value, ast.BinOp):
                chains.append(_rshift_chain(value))
        return tasks, [[variables[name] for name in chain] for chain in chains]


def _rshift_chain(node: ast.expr) -> list[str]:
    """`a >> b >> c` -> ["a", "b", "c"]."""
    if isinstance(node, ast.BinOp):
        assert isinstance(node.op, ast.RShift), "tasks are chained with >>"
        return _rshift_chain(node.left) + _rshift_chain(node.right)
    assert isinstance(node, ast.Name), ast.dump(node)
    return [node.id]


@pytest.fixture(scope="module")
def dag_file() -> DagFile:
    return DagFile(DAG_FILE)


def task(dag_file: DagFile, dag_id: str, task_id: str) -> tuple[str, dict]:
    operator, kwargs = dag_file.dags[dag_id][1][task_id]
    return operator, {name: dag_file.eval(node) for name, node in kwargs.items()}


def launch_parameter(dag_file: DagFile, dag_id: str, task_id: str) -> dict:
    operator, kwargs = task(dag_file, dag_id, task_id)
    assert operator == FLEX_OPERATOR
    return render(kwargs["body"])["launchParameter"]


def command(dag_file: DagFile, dag_id: str, task_id: str) -> list[str]:
    operator, kwargs = task(dag_file, dag_id, task_id)
    assert operator == BASH_OPERATOR
    return shlex.split(render(kwargs["bash_command"]))


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------------------------------------
# The DAGs.


def test_the_dag_file_defines_the_daily_score_and_weekly_retrain_dags(dag_file):
    schedules = {dag_id: schedule for dag_id, (schedule, _, _) in dag_file.dags.items()}
    assert schedules == EXPECTED_DAGS


def test_each_dag_runs_its_tasks_in_order(dag_file):
    _, daily_tasks, daily_chains = dag_file.dags["textclf_daily_score"]
    assert {t: op for t, (op, _) in daily_tasks.items()} == {"score": FLEX_OPERATOR}
    assert daily_chains == []
    _, weekly_tasks, weekly_chains = dag_file.dags["textclf_weekly_retrain"]
    assert {t: op for t, (op, _) in weekly_tasks.items()} == {
        "preprocess": FLEX_OPERATOR,
        "train": BASH_OPERATOR,
        "promote": BASH_OPERATOR,
    }
    assert weekly_chains == [["preprocess", "train", "promote"]]


FLEX_TASKS = [  # (dag_id, task_id, the template's stage)
    ("textclf_daily_score", "score", "score"),
    ("textclf_weekly_retrain", "preprocess", "preprocess"),
]


@pytest.mark.parametrize(("dag_id", "task_id", "stage"), FLEX_TASKS)
def test_flex_template_tasks_wait_for_the_job_to_finish(dag_file, dag_id, task_id, stage):
    # A launch returns once the job is submitted; train must not start on a half-written data/.
    _, kwargs = task(dag_file, dag_id, task_id)
    assert kwargs.get("wait_until_finished") is True
    assert kwargs["project_id"] and kwargs["location"]
    assert f"textclf-{stage}-" in render(kwargs["body"])["launchParameter"]["containerSpecGcsPath"]


@pytest.mark.parametrize(("dag_id", "task_id", "stage"), FLEX_TASKS)
def test_flex_template_parameters_are_the_templates_metadata_parameters(
    dag_file, dag_id, task_id, stage
):
    launch = launch_parameter(dag_file, dag_id, task_id)
    metadata = json.loads((ROOT / "templates" / stage / "metadata.json").read_text())
    declared = {p["name"]: p for p in metadata["parameters"]}
    parameters = launch["parameters"]
    assert set(parameters) - set(declared) == set(), "not in templates/{stage}/metadata.json"
    required = {name for name, p in declared.items() if not p["isOptional"]}
    assert required - set(parameters) == set(), "required template parameters missing"
    for name, value in parameters.items():
        assert isinstance(value, str), f"{name}: a launch parameter is a string, not {value!r}"
        for regex in declared[name]["regexes"]:  # Dataflow matches the whole value
            assert re.fullmatch(regex, value), f"{name}={value!r} fails the regex {regex!r}"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", launch["jobName"]), launch["jobName"]
    assert launch["containerSpecGcsPath"].startswith("gs://")
    assert launch["containerSpecGcsPath"].endswith(".json")
    assert set(launch["environment"]) <= FLEX_ENVIRONMENT_FIELDS


@pytest.mark.parametrize(("dag_id", "task_id", "stage"), FLEX_TASKS)
def test_flex_template_parameters_parse_as_the_stage_flags(dag_file, dag_id, task_id, stage):
    flex_launch = _load_flex_launch()
    parameters = launch_parameter(dag_file, dag_id, task_id)["parameters"]
    argv = flex_launch.template_argv(stage, [f"--{k}={v}" for k, v in parameters.items()])
    _, rest = stage_parser(stage).parse_known_args(argv)
    assert unknown_beam_flags(rest) == []


def _load_flex_launch():
    spec = importlib.util.spec_from_file_location(
        "flex_launch", ROOT / "templates" / "flex_launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_train_command_parses_with_the_train_parser(dag_file):
    argv = command(dag_file, "textclf_weekly_retrain", "train")
    assert argv[:2] == ["textclf", "train"]
    opts, unknown = stage_parser("train").parse_known_args(argv[2:])
    assert unknown == []
    assert opts.data_dir.endswith(f"/{RUN_DATE}/data")


def test_the_promote_command_parses_with_the_promote_parser(dag_file):
    promote = pytest.importorskip(
        "pipeline.promote", reason="pipeline/promote.py (textclf promote) is not written yet"
    )
    argv = command(dag_file, "textclf_weekly_retrain", "promote")
    assert argv[:2] == ["textclf", "promote"]
    _, rest = promote.build_parser().parse_known_args(argv[2:])
    assert unknown_beam_flags(rest) == []  # promote reads its eval rows with Beam


@pytest.mark.parametrize("task_id", ["train", "promote"])
def test_each_command_is_a_textclf_subcommand(dag_file, task_id):
    argv = command(dag_file, "textclf_weekly_retrain", task_id)
    assert argv[0] == "textclf"
    assert argv[1] in cli.SUBCOMMANDS, f"`textclf {argv[1]}` is not registered in pipeline/cli.py"


def test_the_weekly_tasks_hand_on_one_run_directory_and_the_daily_score_reads_the_registry(
    dag_file,
):
    preprocess = launch_parameter(dag_file, "textclf_weekly_retrain", "preprocess")["parameters"]
    train = command(dag_file, "textclf_weekly_retrain", "train")
    promote = command(dag_file, "textclf_weekly_retrain", "promote")
    score = launch_parameter(dag_file, "textclf_daily_score", "score")["parameters"]
    assert flag(train, "--data_dir") == preprocess["output_dir"] == flag(promote, "--eval_data")
    assert flag(train, "--model_dir") == flag(promote, "--candidate")
    assert score["model_dir"] == flag(promote, "--registry")
    assert RUN_DATE in score["input"] and RUN_DATE in score["output"]  # backfills read their date


# ---------------------------------------------------------------------------------------------
# docs/RUNNERS.md: the crontab lines, the backfill command and the config.


def scheduling_section() -> str:
    text = RUNNERS.read_text()
    assert SECTION in text, f"docs/RUNNERS.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1]
    return section.split("\n## ", 1)[0]


def fenced(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", scheduling_section(), re.M | re.S)


SHELL_OPERATORS = {">>", ">", "2>&1", "&&", "||", ";", "|", "&"}


def textclf_run_argv(line: str) -> list[str]:
    """The arguments after `textclf run` in a shell line, up to its redirections."""
    words = shlex.split(line)
    start = next(i for i, w in enumerate(words) if w.endswith("textclf") and words[i + 1] == "run")
    argv = []
    for word in words[start + 2 :]:
        if word in SHELL_OPERATORS or word.startswith((">", "2>")):
            break
        argv.append(word)
    return argv


def crontab_entries() -> list[tuple[str, list[str]]]:
    (block,) = fenced("crontab")
    entries = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^\w+=", line):
            continue
        fields = line.split(None, 5)
        entries.append((" ".join(fields[:5]), textclf_run_argv(fields[5])))
    return entries


def run_parser():
    from pipeline.run import build_parser

    return build_parser()


def test_the_crontab_lines_are_the_dags_schedules_and_parse_as_textclf_run():
    entries = crontab_entries()
    assert [schedule for schedule, _ in entries] == list(EXPECTED_DAGS.values())
    stages = []
    for _, argv in entries:
        args = run_parser().parse_args(argv)
        stages.append(tuple(args.stages))
    assert stages == [("score",), ("preprocess", "train")]


def test_the_backfill_command_parses_with_from_and_to():
    # `textclf run --from/--to` (issue 14): this fails until pipeline/run.py declares them.
    lines = [line for block in fenced("sh") for line in block.splitlines() if "--from" in line]
    assert lines, "docs/RUNNERS.md shows no backfill command"
    for line in lines:
        argv = textclf_run_argv(line)
        flags = set(parser_flags(run_parser()))
        assert {"from", "to"} <= flags, "pipeline.run.build_parser() has no --from/--to"
        args = vars(run_parser().parse_args(argv))
        assert {str(v) for v in args.values()} >= {"2026-11-01", "2026-11-07"}


def test_the_documented_config_loads_and_resolves_a_run_date(tmp_path):
    from pipeline.run_config import load_config

    (block,) = fenced("toml")
    tomllib.loads(block)
    path = tmp_path / "textclf.toml"
    path.write_text(block)
    config = load_config(str(path))
    assert config.registry_root == "/srv/textclf/registry"
    dated = config.for_date(_dt.date(2026, 11, 2).isoformat())
    assert dated.score_inputs == ("/srv/textclf/incoming/2026-11-02/*.parquet",)
