"""Airflow 2.x DAGs for textclf: a daily score job and a weekly retrain (docs/RUNNERS.md).

`textclf_daily_score` (06:00 every day) launches the score Flex Template on the day's files with
the model registry's champion. `textclf_weekly_retrain` (03:00 every Monday) launches the
preprocess Flex Template on the week's training snapshot, then runs `textclf train` and
`textclf promote` (the gate that may make the new model the champion) as shell commands on the
Airflow worker, which needs `pip install .` of this repository at the templates' version and
Google credentials that can read and write the bucket. This file owns the schedule and the task
wiring; what each stage accepts is the stage's own (its parser, templates/<stage>/metadata.json).

Everything above the DAG definitions is plain Python with no Airflow in it: the settings to
edit, the paths, each Flex Template's parameters and each command line. tests/test_airflow_dags.py
runs that part without Airflow and checks the parameters against the templates' metadata and the
commands against the stages' own parsers. Airflow renders `{{ ds }}` (the run's logical date,
YYYY-MM-DD) in the launch bodies and commands, so `airflow dags backfill` reads each date's files.
"""

from __future__ import annotations

import datetime as dt
import shlex

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

# ---------------------------------------------------------------------------------------------
# Settings: edit these.

PROJECT = "my-project"
REGION = "europe-west1"
BUCKET = "my-bucket"
# The tag the images and template specs were built with (templates/README.md, "Build"); the
# Airflow worker's `textclf` should be the same version.
VERSION = "0123abc"
SERVICE_ACCOUNT = f"textclf-dataflow@{PROJECT}.iam.gserviceaccount.com"
TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
ID_COLUMN = "id"

DAILY_SCORE_SCHEDULE = "0 6 * * *"  # the crontab lines in docs/RUNNERS.md use the same times
WEEKLY_RETRAIN_SCHEDULE = "0 3 * * 1"

# ---------------------------------------------------------------------------------------------
# Where things live. Airflow renders these macros in the launch bodies and commands at run time:
# the run's logical date, the start of its schedule interval (the daily run that starts on
# 2026-11-02 06:00 has ds 2026-11-01).
DS = "{{ ds }}"  # YYYY-MM-DD
DS_NODASH = "{{ ds_nodash }}"  # YYYYMMDD

TEXTCLF = f"gs://{BUCKET}/textclf"
REGISTRY = f"{TEXTCLF}/registry"  # <REGISTRY>/<N>/ model versions, <REGISTRY>/CHAMPION
RUN_DIR = f"{TEXTCLF}/runs/{DS}"  # the weekly run's data/, model/ and promotion.json
DATA_DIR = f"{RUN_DIR}/data"
MODEL_DIR = f"{RUN_DIR}/model"
DECISION_FILE = f"{RUN_DIR}/promotion.json"
TEMPLATE_SPECS = f"gs://{BUCKET}/templates"
# templates/Dockerfile: the one image that launches the templates and runs their workers.
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/textclf/textclf:{VERSION}"

# ---------------------------------------------------------------------------------------------
# What each task runs. Flex Template parameters are templates/<stage>/metadata.json names with
# string values; Beam's worker settings go in the launch environment, whose keys are the
# Dataflow API's FlexTemplateRuntimeEnvironment fields.

DAILY_SCORE_PARAMETERS = {
    "model_dir": REGISTRY,  # a registry root: score uses its CHAMPION version
    "input": f"gs://{BUCKET}/incoming/{DS}/*.parquet",
    "output": f"{TEXTCLF}/scores/{DS}",
    "text_column": TEXT_COLUMN,
    "id_column": ID_COLUMN,
    "batch_size": "1024",
}
SCORE_ENVIRONMENT = {
    "machineType": "n2-standard-8",
    "maxWorkers": 50,
}

WEEKLY_PREPROCESS_PARAMETERS = {
    "input": f"gs://{BUCKET}/training/{DS}/*.parquet",  # the week's labelled snapshot
    "output_dir": DATA_DIR,
    "text_column": TEXT_COLUMN,
    "label_column": LABEL_COLUMN,
    "id_column": ID_COLUMN,
    "max_tokens": "20000",
    "sequence_length": "200",
}
PREPROCESS_ENVIRONMENT = {
    "machineType": "n2-highmem-4",
    "maxWorkers": 20,
}

TRAIN_COMMAND = [
    "textclf", "train",
    "--data_dir", DATA_DIR,
    "--model_dir", MODEL_DIR,
    "--epochs", "8",
]  # fmt: skip
PROMOTE_COMMAND = [
    "textclf", "promote",
    "--candidate", MODEL_DIR,
    "--registry", REGISTRY,
    "--eval_data", DATA_DIR,
    "--metric", "macro_f1",
    "--decision_file", DECISION_FILE,
]  # fmt: skip


def flex_template_body(
    stage: str, parameters: dict[str, str], environment: dict[str, object]
) -> dict:
    """The `flexTemplates.launch` request body for the stage's template spec (built per task:
    the operator appends a suffix to the job name in place)."""
    return {
        "launchParameter": {
            "jobName": f"textclf-{stage}-{DS_NODASH}",
            "containerSpecGcsPath": f"{TEMPLATE_SPECS}/textclf-{stage}-{VERSION}.json",
            "parameters": dict(parameters),
            "environment": {
                "tempLocation": f"gs://{BUCKET}/tmp",
                "stagingLocation": f"gs://{BUCKET}/staging",
                "serviceAccountEmail": SERVICE_ACCOUNT,
                "sdkContainerImage": IMAGE,
                "additionalExperiments": ["use_runner_v2"],
                **environment,
            },
        }
    }


def bash_command(argv: list[str]) -> str:
    """One shell line running `argv`; Airflow renders its `{{ ds }}` inside the quotes."""
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------
# The DAGs.

# Exit code 2 (bad input) fails for good in textclf, but Airflow retries any failure: keep
# retries low. A retried `textclf train` resumes from its last finished epoch.
DEFAULT_ARGS = {
    "owner": "textclf",
    "retries": 1,
    "retry_delay": dt.timedelta(minutes=10),
}

with DAG(
    dag_id="textclf_daily_score",
    description="Score the day's incoming files with the registry's champion (Flex Template).",
    schedule=DAILY_SCORE_SCHEDULE,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),  # noqa: UP017 - Python 3.10 workers
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    tags=["textclf"],
):
    DataflowStartFlexTemplateOperator(
        task_id="score",
        project_id=PROJECT,
        location=REGION,
        body=flex_template_body("score", DAILY_SCORE_PARAMETERS, SCORE_ENVIRONMENT),
        wait_until_finished=True,  # the task ends when the job has (its _SUCCESS written)
    )

with DAG(
    dag_id="textclf_weekly_retrain",
    description="Preprocess the week's snapshot (Flex Template), train, and gate the new model.",
    schedule=WEEKLY_RETRAIN_SCHEDULE,
    start_date=dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc),  # noqa: UP017
    catchup=False,
    max_active_runs=1,  # one promotion at a time
    default_args=DEFAULT_ARGS,
    tags=["textclf"],
):
    preprocess = DataflowStartFlexTemplateOperator(
        task_id="preprocess",
        project_id=PROJECT,
        location=REGION,
        body=flex_template_body("preprocess", WEEKLY_PREPROCESS_PARAMETERS, PREPROCESS_ENVIRONMENT),
        wait_until_finished=True,  # train must not start before the job wrote _SUCCESS
    )
    train = BashOperator(
        task_id="train",
        bash_command=bash_command(TRAIN_COMMAND),
        execution_timeout=dt.timedelta(hours=6),
    )
    promote = BashOperator(
        task_id="promote",
        bash_command=bash_command(PROMOTE_COMMAND),  # exit 0 whether promoted or refused
        retries=0,
    )
    preprocess >> train >> promote
