"""`textclf run`: preprocess -> train -> score under one run directory, as a scheduled job.

This module owns the run loop and its command line. Holding the run directory's lock
(pipeline/run_lock.py), it turns the TOML config into each stage's command line
(pipeline/run_config.py), runs each selected stage as a child process `textclf <stage> ...`
(pipeline/stage_process.py) under `<root>/<run_date>/{data,model,scores}`, skips a stage whose
`_SUCCESS` exists (unless `--force`, or its input stage finished after it), rewrites
`manifest.json` after every stage (pipeline/manifest.py) and writes `report.html`
(pipeline/report.py) at the end. It preprocesses, trains and scores nothing itself; each stage
finalizes its own directory, so a failed or killed run leaves nothing that looks complete and a
rerun finishes the job.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs, report
from pipeline.manifest import (
    FAILED,
    NOT_RUN,
    NOT_SELECTED,
    RAN,
    SKIPPED,
    evaluate_scores,
    finished_stage,
    headline_metrics,
    is_stale,
    log_stage_end,
    matched_inputs,
    read_json_or_none,
    write_manifest,
)
from pipeline.run_config import ConfigError, RunConfig, load_config, stage_argvs, stage_dirs
from pipeline.run_lock import RunLock, RunLocked
from pipeline.stage_process import call_stage, discard_stale_staging
from pipeline.versions import package_versions
from transforms.contracts import (
    EXIT_BAD_INPUT,
    MANIFEST_FILE,
    REPORT_FILE,
    RUN_LOCK_FILE,
    SCORE_STAGE,
    STAGE_DIRS,
    STAGES,
    SUCCESS_FILE,
    TRAIN_STAGE,
)

_LOG = logging.getLogger("textclf.run")

StageCall = Callable[[str, list[str]], tuple[int, str | None]]  # (exit code, reason)


def _new_manifest(
    config: RunConfig, run_date: str, run_dir: str, force: bool, previous: dict
) -> dict:
    """The manifest of this invocation, before any stage: config, inputs, versions, and the
    earlier invocations of the same run date (from the `previous` manifest)."""
    return {
        "run_date": run_date,
        "run_dir": run_dir,
        "status": "running",
        "started_at": outputs.now(),
        "config_file": config.path,
        "config": config.raw,
        "inputs": {
            "train": list(config.train_inputs),
            "score": list(config.score_inputs),
            "train_files": matched_inputs(config.train_inputs),
            "score_files": matched_inputs(config.score_inputs),
            "text_column": config.text_column,
            "label_column": config.label_column,
            "id_column": config.id_column,
        },
        "versions": package_versions(),
        "force": force,
        "stages": {},
        "invocations": list(previous.get("invocations", [])),
    }


def _run_stage(
    call: StageCall, stage: str, argv: list[str], entry: dict, manifest: dict, run_dir: str
) -> tuple[int, str | None]:
    """Run one stage and record it in `entry`; (exit code, the run's failure line or None)."""
    entry.update(status="running", started_at=outputs.now())
    write_manifest(run_dir, manifest)
    discard_stale_staging(entry["dir"])
    t0 = time.time()
    try:
        code, reason = call(stage, argv)
    except (KeyboardInterrupt, SystemExit) as stop:
        # Stopped (SIGTERM, Ctrl-C): say so in the manifest, then stop as asked.
        entry.update(
            status=FAILED,
            reason=f"interrupted ({type(stop).__name__})",
            seconds=round(time.time() - t0, 2),
            finished_at=outputs.now(),
        )
        manifest.update(
            status="failed",
            finished_at=outputs.now(),
            reason=f"textclf run: stage {stage} interrupted",
        )
        write_manifest(run_dir, manifest)
        raise
    entry.update(seconds=round(time.time() - t0, 2), finished_at=outputs.now(), exit_code=code)
    if code == 0 and outputs.is_complete(entry["dir"]):
        entry["status"] = RAN
        return 0, None
    entry.update(status=FAILED, reason=reason or f"no {SUCCESS_FILE} was written")
    bad_input = " (bad input)" if code == EXIT_BAD_INPUT else ""
    return code or 1, f"textclf run: stage {stage} failed{bad_input}: {entry['reason']}"


def _evaluate(manifest: dict, dirs: dict[str, str], label_column: str) -> None:
    """The run's metrics: the eval split's (from train) and the scored rows' against their
    labels, when score passed the label column through."""
    eval_metrics = None
    if outputs.is_complete(dirs[TRAIN_STAGE]):  # also when train was not selected this time
        eval_metrics = finished_stage(TRAIN_STAGE, dirs[TRAIN_STAGE])["metrics"]
    try:
        scored = evaluate_scores(dirs[SCORE_STAGE], dirs[TRAIN_STAGE], label_column)
    except Exception as err:  # noqa: BLE001 - an evaluation problem must not hide the run's state
        _LOG.warning("could not evaluate the scores against %s: %s", label_column, err)
        scored = None
    manifest["scored_evaluation"] = scored
    manifest["metrics"] = {"eval": eval_metrics, "scored": headline_metrics(scored)}
    if scored:
        _LOG.info(
            "scored rows vs their %s column: accuracy %.4f, macro-F1 %.4f on %d rows",
            label_column,
            scored["accuracy"],
            scored["macro_f1"],
            scored["rows"],
        )


def run(
    config: RunConfig,
    root: str,
    run_date: str,
    force: bool = False,
    stages: Sequence[str] = STAGES,
    call: StageCall | None = None,
) -> int:
    """Run the selected stages under `<root>/<run_date>`; return the exit code.

    On failure prints one line to stderr naming the stage and the reason. `call` runs one stage
    (default: `call_stage`, a child process).
    """
    call = call or call_stage
    run_dir = FileSystems.join(root, run_date)
    if outputs.is_local(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    argvs = stage_argvs(config, run_dir)
    dirs = stage_dirs(run_dir)
    started = time.time()
    previous = read_json_or_none(FileSystems.join(run_dir, MANIFEST_FILE)) or {}
    manifest = _new_manifest(config, run_date, run_dir, force, previous)
    run_success = FileSystems.join(run_dir, SUCCESS_FILE)
    if FileSystems.exists(run_success):
        FileSystems.delete([run_success])  # the run is being redone; it is no longer complete
    exit_code, failure = 0, None
    for i, stage in enumerate(STAGES):
        entry = {"dir": dirs[stage], "argv": argvs[stage]}
        manifest["stages"][stage] = entry
        stale = is_stale(dirs[stage], dirs[STAGES[i - 1]] if i else None)
        if stage not in stages:
            entry["status"] = NOT_SELECTED
        elif failure:
            entry["status"] = NOT_RUN
        elif outputs.is_complete(dirs[stage]) and not force and not stale:
            entry["status"] = SKIPPED
            old = previous.get("stages", {}).get(stage, {})
            entry.update({k: old[k] for k in ("seconds", "started_at", "finished_at") if k in old})
            _LOG.info(
                "stage %s: skipped, %s exists in %s (pass --force to redo it)",
                stage,
                SUCCESS_FILE,
                dirs[stage],
            )
        else:
            why = (
                "--force"
                if force and outputs.is_complete(dirs[stage])
                else f"{STAGES[i - 1]} finished after it"
                if stale
                else "no finished output yet"
            )
            _LOG.info("stage %s: started (%s) -> %s", stage, why, dirs[stage])
            exit_code, failure = _run_stage(call, stage, argvs[stage], entry, manifest, run_dir)
        if entry["status"] in (RAN, SKIPPED):
            entry.update(finished_stage(stage, dirs[stage]))
            if entry["status"] == RAN:
                log_stage_end(stage, entry)
        write_manifest(run_dir, manifest)

    _evaluate(manifest, dirs, config.label_column)
    complete = all(outputs.is_complete(d) for d in dirs.values())
    manifest.update(
        status="failed" if failure else "succeeded" if complete else "partial",
        finished_at=outputs.now(),
        seconds=round(time.time() - started, 2),
        reason=failure,
    )
    manifest["invocations"].append(
        {
            "started_at": manifest["started_at"],
            "finished_at": manifest["finished_at"],
            "force": force,
            "stages": {s: e["status"] for s, e in manifest["stages"].items()},
            "exit_code": exit_code,
        }
    )
    write_manifest(run_dir, manifest)
    try:
        _LOG.info("report: %s", report.write_report(run_dir, manifest))
    except Exception as err:  # noqa: BLE001
        _LOG.error("report failed", exc_info=True)
        if not failure:
            failure, exit_code = f"textclf run: report failed: {type(err).__name__}: {err}", 1
    if failure:
        print(failure, file=sys.stderr)
        return exit_code
    if complete:
        outputs.write_text(run_success, outputs.now() + "\n")
    _LOG.info(
        "run %s: %s in %.1fs (%s)",
        run_date,
        manifest["status"],
        manifest["seconds"],
        FileSystems.join(run_dir, MANIFEST_FILE),
    )
    return 0


# ---------------------------------------------------------------------------------------------
# What a run may find in its directory.


def run_dir_entries() -> tuple[str, ...]:
    """What a run writes in `<root>/<run_date>`: the stage dirs (and their staging, backup and
    replaced siblings), the manifest, the report, the lock, `_SUCCESS` and their temp files."""
    names = []
    for name in STAGE_DIRS.values():
        names += [f"{name}/", f".{name}.*/", f"{name}.replaced-*/"]
    return (
        *names,
        MANIFEST_FILE,
        f"{MANIFEST_FILE}.tmp-*",
        REPORT_FILE,
        f"{REPORT_FILE}.tmp-*",
        RUN_LOCK_FILE,
        SUCCESS_FILE,
    )


def check_outputs(root: str, run_date: str) -> None:
    """Before any work: refuse (ConfigError) a run directory, or a stage directory in it, that
    holds anything textclf did not write there; nothing is touched."""
    run_dir = FileSystems.join(root, run_date)
    try:
        if outputs.is_local(root) and os.path.exists(root) and not os.path.isdir(root):
            raise outputs.OutputNotReplaceable(f"{root} exists and is not a directory")
        outputs.check_replaceable(run_dir, "run", run_dir_entries())
        for stage, stage_dir in stage_dirs(run_dir).items():
            outputs.check_replaceable(stage_dir, stage)
    except outputs.OutputNotReplaceable as err:
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# The CLI.

_RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def run_date_arg(value: str) -> str:
    try:
        if not _RUN_DATE.match(value):
            raise ValueError
        _dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a date YYYY-MM-DD") from None
    return value


def stages_arg(value: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {','.join(STAGES)}"
        )
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textclf run",
        description="Run preprocess -> train -> score under ROOT/RUN_DATE/{data,model,scores}, "
        "skipping stages that already finished, and write manifest.json and report.html there.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="TOML config ([inputs], [preprocess], "
        "[train], [score], [beam]); relative paths are relative to it",
    )
    parser.add_argument("--root", required=True, help="root of the run directories")
    parser.add_argument(
        "--run_date",
        type=run_date_arg,
        default=_dt.datetime.now(_dt.UTC).date().isoformat(),
        help="YYYY-MM-DD (default: today, UTC); give an older one to backfill",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo the selected stages even if they finished"
    )
    parser.add_argument(
        "--stages",
        type=stages_arg,
        default=STAGES,
        help=f"comma-separated subset of {','.join(STAGES)} (default: all)",
    )
    return parser


def _terminate(signum, _frame):
    # SystemExit unwinds the clean-ups: the running stage's child is stopped and the manifest
    # says the stage was interrupted (the kernel releases the run lock either way).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        check_outputs(args.root, args.run_date)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with RunLock(FileSystems.join(args.root, args.run_date)):
            return run(config, args.root, args.run_date, args.force, args.stages)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunLocked as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
