"""`textclf run`: preprocess -> train -> (gate) -> score under one run directory per date.

This module owns the run loop and its command line: the thing a scheduler calls. Holding the
root's lock (pipeline/run_lock.py), for each run date (`--run_date`, or every date of
`--from`..`--to` in order) it resolves the config's dated input patterns
(pipeline/run_config.py), runs each selected stage as a child process `textclf <stage> ...`
(pipeline/stage_process.py) under `<root>/<run_date>/{data,model,scores}`, skips a stage whose
`_SUCCESS` exists (unless `--force`, or its input stage finished after it), rewrites
`manifest.json` after every step (pipeline/manifest.py) and writes `report.html`
(pipeline/report.py) at the end. With a `[registry]`, a trained model goes through the
promotion gate (`textclf promote`, pipeline/promote.py) and score uses the registry's champion
(or the `[score] model_version` pinned), so a daily `--stages score` job and a weekly
`--stages preprocess,train` job share one registry. It preprocesses, trains, gates and scores
nothing itself; each step finalizes its own output, so a failed or killed run leaves nothing
that looks complete and a rerun finishes the job.
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

from pipeline import outputs, registry, report
from pipeline.artifacts import IncompleteOutput, ModelOutput
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
from pipeline.run_config import (
    ConfigError,
    RunConfig,
    challenger_argvs,
    challenger_dir,
    evaluate_argv,
    load_config,
    promote_argv,
    stage_argvs,
    stage_dirs,
)
from pipeline.run_lock import RunLock, RunLocked
from pipeline.stage_process import call_stage, discard_stale_staging
from pipeline.versions import package_versions
from transforms.contracts import (
    EXIT_BAD_INPUT,
    EXIT_DRIFT,
    MANIFEST_FILE,
    PREPROCESS_STAGE,
    PROMOTION_FILE,
    REPORT_FILE,
    RUN_LOCK_FILE,
    SCORE_STAGE,
    STAGE_DIRS,
    STAGES,
    STATS_FILE,
    SUCCESS_FILE,
    TRAIN_STAGE,
)

_LOG = logging.getLogger("textclf.run")

StageCall = Callable[[str, list[str]], tuple[int, str | None]]  # (exit code, reason)
PROMOTE_COMMAND = "promote"  # the gate runs as `textclf promote`, through the same StageCall
EVALUATE_COMMAND = "evaluate"  # each compared model on the scored rows: `textclf evaluate`
MISSING_INPUTS = "missing_inputs"  # a date's manifest status when allow_missing skipped it
MAX_BACKFILL_DAYS = 3660


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
    if code in (0, EXIT_DRIFT) and outputs.is_complete(entry["dir"]):
        entry["status"] = RAN  # drift is judged from its stats.json, on reruns too (_drift)
        return 0, None
    entry.update(status=FAILED, reason=reason or f"no {SUCCESS_FILE} was written")
    bad_input = " (bad input)" if code == EXIT_BAD_INPUT else ""
    return code or 1, f"textclf run: stage {stage} failed{bad_input}: {entry['reason']}"


def _evaluate(manifest: dict, dirs: dict[str, str], label_column: str) -> None:
    """The run's metrics: the eval split's (from train) and the scored rows' against their
    labels, when score passed the label column through (judged with the model that scored)."""
    eval_metrics = None
    if outputs.is_complete(dirs[TRAIN_STAGE]):  # also when train was not selected this time
        eval_metrics = finished_stage(TRAIN_STAGE, dirs[TRAIN_STAGE])["metrics"]
    scoring_model = (manifest.get("model") or {}).get("dir") or dirs[TRAIN_STAGE]
    try:
        scored = evaluate_scores(dirs[SCORE_STAGE], scoring_model, label_column)
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


def missing_inputs(config: RunConfig, dirs: dict[str, str], stages: Sequence[str]) -> list[str]:
    """`[inputs] key = pattern` for each input a selected, unfinished step needs whose patterns
    match no file (a date's files have not arrived, or the pattern is wrong)."""
    needed = []
    if PREPROCESS_STAGE in stages and not outputs.is_complete(dirs[PREPROCESS_STAGE]):
        needed.append(("[inputs] train", config.train_inputs))
    if SCORE_STAGE in stages and not outputs.is_complete(dirs[SCORE_STAGE]):
        needed.append(("[inputs] score", config.score_inputs))
    if config.registry_root and config.eval_inputs and TRAIN_STAGE in stages:
        needed.append(("[promotion] eval_input", config.eval_inputs))
    return [
        f"{key} = {' '.join(patterns)}" for key, patterns in needed if not matched_inputs(patterns)
    ]


def _record_missing(config: RunConfig, run_date: str, run_dir: str, missing: list[str]) -> None:
    """allow_missing: the date's manifest says this invocation skipped it and why, keeping what
    earlier invocations recorded; the date is no longer complete (its run `_SUCCESS` goes)."""
    previous = read_json_or_none(FileSystems.join(run_dir, MANIFEST_FILE)) or {}
    manifest = dict(previous) or _new_manifest(config, run_date, run_dir, False, previous)
    manifest.setdefault("invocations", [])
    started = outputs.now()
    reason = f"no input files: {'; '.join(missing)}"
    manifest.update(
        status=MISSING_INPUTS, started_at=started, finished_at=outputs.now(), reason=reason
    )
    manifest["invocations"].append(
        {"started_at": started, "finished_at": manifest["finished_at"],
         "status": MISSING_INPUTS, "exit_code": 0}
    )  # fmt: skip
    if outputs.is_local(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    run_success = FileSystems.join(run_dir, SUCCESS_FILE)
    if FileSystems.exists(run_success):
        FileSystems.delete([run_success])
    write_manifest(run_dir, manifest)
    _LOG.warning("run %s: skipped (allow_missing): %s", run_date, reason)


def _scoring_model(config: RunConfig, argv: list[str]) -> tuple[list[str], dict]:
    """Registry runs: the version score uses (the champion now, or `[score] model_version`),
    added to its argv so the manifest names exactly what scored. RegistryError when none."""
    pinned = config.settings[SCORE_STAGE].get("model_version")
    model_dir, version = registry.resolve_model_dir(
        config.registry_root, None if pinned is None else int(pinned)
    )
    if pinned is None:
        argv = [*argv, "--model_version", str(version)]
    return argv, _model_record(config.registry_root, model_dir, version, pinned is not None)


def _model_record(root: str | None, model_dir: str, version: int | None, pinned: bool) -> dict:
    record = {"dir": model_dir, "model_version": ModelOutput(model_dir).card.get("model_version")}
    if root:
        record.update(registry=root, version=version, chosen="pinned" if pinned else "champion")
    return record


def _gate(
    call: StageCall, config: RunConfig, run_dir: str, manifest: dict
) -> tuple[int, str | None]:
    """The promotion gate for the run's trained model, once per candidate: `textclf promote`
    writes its decision to `<run_dir>/promotion.json`, which the manifest takes in."""
    dirs = stage_dirs(run_dir)
    decision_file = FileSystems.join(run_dir, PROMOTION_FILE)
    candidate = ModelOutput(dirs[TRAIN_STAGE]).card.get("model_version")
    decision = read_json_or_none(decision_file)
    if decision and (decision.get("candidate") or {}).get("model_version") == candidate:
        _LOG.info("gate: decided before for model %s: %s", candidate, decision.get("decision"))
    else:
        _LOG.info("gate: model %s against the champion of %s", candidate, config.registry_root)
        manifest["promotion"] = {"status": "running"}
        write_manifest(run_dir, manifest)
        code, reason = call(PROMOTE_COMMAND, promote_argv(config, run_dir, decision_file))
        decision = read_json_or_none(decision_file)
        if code != 0 or not decision:
            manifest["promotion"] = {"status": FAILED, "reason": reason}
            bad_input = " (bad input)" if code == EXIT_BAD_INPUT else ""
            return code or 1, f"textclf run: promotion gate failed{bad_input}: {reason}"
        _LOG.info("gate: %s: %s", decision.get("decision"), decision.get("reason"))
    manifest["promotion"] = decision
    return 0, None


def _drift(config: RunConfig, manifest: dict, scores_dir: str) -> tuple[int, str | None]:
    """Take the score stage's drift figures into the manifest; with `[score] fail_on_drift`,
    drift fails the run (exit EXIT_DRIFT) on this and every rerun of the date."""
    stats = read_json_or_none(FileSystems.join(scores_dir, STATS_FILE)) or {}
    drift = stats.get("drift")
    manifest["drift"] = drift
    if drift and drift.get("drifted") and config.settings[SCORE_STAGE].get("fail_on_drift"):
        why = "; ".join(drift.get("warnings") or []) or "see stats.json"
        return EXIT_DRIFT, f"textclf run: stage score found drift: {why}"
    return 0, None


def _train_challengers(
    call: StageCall, config: RunConfig, run_dir: str, manifest: dict, force: bool
) -> tuple[int, str | None]:
    """Train each architecture after the first into model-<name>/ (skipped when finished and
    newer than the data), for the comparison; a failure fails the run like a stage's."""
    dirs = stage_dirs(run_dir)
    for name, argv in challenger_argvs(config, run_dir).items():
        model_dir = challenger_dir(run_dir, name)
        entry = manifest["models"].setdefault(name, {})
        entry.update(dir=model_dir, scored=False)
        stale = is_stale(model_dir, dirs[PREPROCESS_STAGE])
        if outputs.is_complete(model_dir) and not force and not stale:
            entry["status"] = SKIPPED
            _LOG.info("model %s: skipped, %s exists in %s", name, SUCCESS_FILE, model_dir)
        else:
            _LOG.info("model %s: training -> %s", name, model_dir)
            code, failure = _run_stage(call, TRAIN_STAGE, argv, entry, manifest, run_dir)
            if code:
                return code, failure.replace("stage train", f"training {name}", 1)
        recorded = finished_stage(TRAIN_STAGE, model_dir)
        entry.update(model_version=recorded["model_version"], eval=recorded["metrics"])
        write_manifest(run_dir, manifest)
    return 0, None


def _compare_on_scored_rows(
    call: StageCall, config: RunConfig, run_dir: str, manifest: dict
) -> None:
    """Each trained architecture's figures on the scored rows (`textclf evaluate`, the gate's
    code), when the scored data carries the label column; cached per model in
    `<run_dir>/evaluation-<name>.json`. A problem here is logged, not a run failure."""
    stats = read_json_or_none(FileSystems.join(stage_dirs(run_dir)[SCORE_STAGE], STATS_FILE))
    if not stats or config.label_column not in (stats.get("columns") or []):
        return
    files = sorted({f["path"] for f in matched_inputs(config.score_inputs)})
    for name, entry in manifest["models"].items():
        if not entry.get("dir") or not outputs.is_complete(entry["dir"]):
            continue
        path = FileSystems.join(run_dir, f"evaluation-{name}.json")
        cached = read_json_or_none(path)
        if not (
            cached
            and cached.get("model_version") == entry.get("model_version")
            and sorted(set((cached.get("eval") or {}).get("files") or [])) == files
        ):
            code, reason = call(EVALUATE_COMMAND, evaluate_argv(config, entry["dir"], path))
            cached = read_json_or_none(path) if code == 0 else None
            if cached is None:
                _LOG.warning("could not evaluate %s on the scored rows: %s", name, reason)
                continue
        entry["scored_rows"] = headline_metrics(cached["metrics"])
        _LOG.info(
            "model %s on the scored rows: accuracy %.4f, macro-F1 %.4f",
            name,
            cached["metrics"]["accuracy"],
            cached["metrics"]["macro_f1"],
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

    `config`'s dated input patterns are resolved for `run_date` here. On failure prints one
    line to stderr naming the stage (or the gate) and the reason. `call` runs one stage or the
    gate (default: `call_stage`, a child process).
    """
    call = call or call_stage
    config = config.for_date(run_date)
    run_dir = FileSystems.join(root, run_date)
    dirs = stage_dirs(run_dir)
    missing = missing_inputs(config, dirs, stages)
    if missing and config.allow_missing:
        _record_missing(config, run_date, run_dir, missing)
        return 0
    if missing:
        print(
            f"textclf run: {run_date}: no input files match {'; '.join(missing)}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    if outputs.is_local(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    argvs = stage_argvs(config, run_dir)
    challenger_argvs(config, run_dir)  # checked before anything runs
    started = time.time()
    previous = read_json_or_none(FileSystems.join(run_dir, MANIFEST_FILE)) or {}
    manifest = _new_manifest(config, run_date, run_dir, force, previous)
    manifest["registry"] = config.registry_root
    # What earlier invocations of this date recorded (which model scored, the gate's decision,
    # drift) stays until the step that records it runs again.
    manifest.update({k: previous[k] for k in ("model", "promotion", "drift") if k in previous})
    # The architectures trained on this date's split: the first (model/) and the compared ones
    # (kept from the last invocation that trained, when this one does not).
    manifest["models"] = {} if TRAIN_STAGE in stages else dict(previous.get("models") or {})
    run_success = FileSystems.join(run_dir, SUCCESS_FILE)
    if FileSystems.exists(run_success):
        FileSystems.delete([run_success])  # the run is being redone; it is no longer complete
    exit_code, failure = 0, None
    for i, stage in enumerate(STAGES):
        entry = {"dir": dirs[stage], "argv": argvs[stage]}
        manifest["stages"][stage] = entry
        stale = is_stale(dirs[stage], _upstream(config, dirs, stage))
        if stage not in stages:
            entry["status"] = NOT_SELECTED
        elif failure:
            entry["status"] = NOT_RUN
        elif outputs.is_complete(dirs[stage]) and not force and not stale:
            entry["status"] = SKIPPED
            old = previous.get("stages", {}).get(stage, {})
            entry.update({k: old[k] for k in ("seconds", "started_at", "finished_at") if k in old})
            if stage == SCORE_STAGE:
                entry["argv"] = old.get("argv", entry["argv"])
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
            argv = argvs[stage]
            if stage == SCORE_STAGE:
                try:
                    if config.registry_root:
                        argv, manifest["model"] = _scoring_model(config, argv)
                    else:
                        manifest["model"] = _model_record(None, dirs[TRAIN_STAGE], None, False)
                except (registry.RegistryError, IncompleteOutput) as err:
                    entry.update(status=FAILED, reason=str(err))
                    exit_code = EXIT_BAD_INPUT
                    failure = f"textclf run: stage score failed (bad input): {err}"
            if not failure:
                entry["argv"] = argv
                _LOG.info("stage %s: started (%s) -> %s", stage, why, dirs[stage])
                exit_code, failure = _run_stage(call, stage, argv, entry, manifest, run_dir)
        if entry["status"] in (RAN, SKIPPED):
            entry.update(finished_stage(stage, dirs[stage]))
            if entry["status"] == RAN:
                log_stage_end(stage, entry)
            if stage == TRAIN_STAGE:
                primary = (config.architectures or ("seed",))[0]
                manifest["models"][primary] = {
                    "dir": dirs[TRAIN_STAGE],
                    "status": entry["status"],
                    "model_version": entry.get("model_version"),
                    "eval": entry.get("metrics"),
                    "scored": not config.registry_root,
                }
                if stage in stages and len(config.architectures) > 1:
                    exit_code, failure = _train_challengers(call, config, run_dir, manifest, force)
            if stage == TRAIN_STAGE and config.registry_root and stage in stages and not failure:
                exit_code, failure = _gate(call, config, run_dir, manifest)
            if stage == SCORE_STAGE:
                if len(manifest["models"]) > 1:
                    _compare_on_scored_rows(call, config, run_dir, manifest)
                exit_code, failure = _drift(config, manifest, dirs[stage])
        write_manifest(run_dir, manifest)

    _evaluate(manifest, dirs, config.label_column)
    complete = all(outputs.is_complete(dirs[s]) for s in stages)
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


def finished_before(config: RunConfig, root: str, run_date: str, stages: Sequence[str]) -> bool:
    """A date a backfill skips: its last invocation succeeded (run `_SUCCESS`) and every
    selected stage's output is there, finished."""
    run_dir = FileSystems.join(root, run_date)
    dirs = stage_dirs(run_dir)
    return outputs.is_complete(run_dir) and all(
        outputs.is_complete(dirs[s]) and not is_stale(dirs[s], _upstream(config, dirs, s))
        for s in stages
    )


def _upstream(config: RunConfig, dirs: dict[str, str], stage: str) -> str | None:
    """The output a stage reads (make's rule for staleness): the previous stage's; none for
    preprocess, and none for score with a registry (it reads the registry's model)."""
    i = STAGES.index(stage)
    if i == 0 or (stage == SCORE_STAGE and config.registry_root):
        return None
    return dirs[STAGES[i - 1]]


# ---------------------------------------------------------------------------------------------
# What a run may find in its directory.


def run_dir_entries() -> tuple[str, ...]:
    """What a run writes in `<root>/<run_date>`: the stage dirs (and their staging, backup and
    replaced siblings), the manifest, the report, the gate's decision, `_SUCCESS` and their
    temp files."""
    names = []
    for name in STAGE_DIRS.values():
        names += [f"{name}/", f".{name}.*/", f"{name}.replaced-*/"]
    return (
        *names,
        MANIFEST_FILE,
        f"{MANIFEST_FILE}.tmp-*",
        REPORT_FILE,
        f"{REPORT_FILE}.tmp-*",
        PROMOTION_FILE,
        f"{PROMOTION_FILE}.tmp-*",
        f"{STAGE_DIRS[TRAIN_STAGE]}-*/",  # the compared architectures' models
        f".{STAGE_DIRS[TRAIN_STAGE]}-*/",
        f"{STAGE_DIRS[TRAIN_STAGE]}-*.replaced-*/",
        "evaluation-*.json",
        "evaluation-*.json.tmp-*",
        RUN_LOCK_FILE,  # runs before 2026-11-30 locked the run directory; now the root
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
        if outputs.is_local(run_dir) and os.path.isdir(run_dir):
            prefix = f"{STAGE_DIRS[TRAIN_STAGE]}-"
            for name in sorted(os.listdir(run_dir)):  # the compared architectures' models
                if name.startswith(prefix) and ".replaced-" not in name:
                    outputs.check_replaceable(os.path.join(run_dir, name), TRAIN_STAGE)
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
        description="Run preprocess -> train -> score under ROOT/RUN_DATE/{data,model,scores} "
        "for one date or every date of --from..--to, skipping stages (and, in a range, dates) "
        "that already finished, and write manifest.json and report.html there. With a "
        "[registry], a trained model is gated before it is published and score uses the "
        "registry's champion. Exit 0 only when every selected stage of every date finished.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="TOML config ([inputs], [preprocess], [train], [score], [beam], [registry], "
        "[promotion]); relative paths are relative to it; input patterns may hold {run_date} "
        "or {run_date:%%Y/%%m/%%d}; required",
    )
    parser.add_argument(
        "--root",
        required=True,
        help="root of the run directories, one run at a time per root; required",
    )
    dates = parser.add_mutually_exclusive_group()
    dates.add_argument(
        "--run_date",
        type=run_date_arg,
        default=None,
        help="YYYY-MM-DD (default: today, UTC); inputs are the config's patterns for that date",
    )
    dates.add_argument(
        "--from",
        dest="from_date",
        type=run_date_arg,
        default=None,
        help="first date of a backfill, YYYY-MM-DD (with --to): every date in order, dates "
        "that finished before skipped, stopping at the first failure (default: none)",
    )
    parser.add_argument(
        "--to", dest="to_date", type=run_date_arg, default=None, help="last date of a backfill "
        "(with --from), inclusive (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo the selected stages even if they finished (default: off)",
    )
    parser.add_argument(
        "--stages",
        type=stages_arg,
        default=STAGES,
        help=f"comma-separated subset of {','.join(STAGES)} (default: all); e.g. score for a "
        "daily job with the registry's champion, preprocess,train for a weekly retrain",
    )
    return parser


def run_dates(args: argparse.Namespace) -> list[str]:
    """The dates this invocation runs, in order; ConfigError for a bad range."""
    if (args.from_date is None) != (args.to_date is None):
        raise ConfigError("--from and --to go together (a backfill's first and last date)")
    if args.from_date is None:
        return [args.run_date or _dt.datetime.now(_dt.UTC).date().isoformat()]
    first, last = _dt.date.fromisoformat(args.from_date), _dt.date.fromisoformat(args.to_date)
    days = (last - first).days
    if days < 0:
        raise ConfigError(f"--from {args.from_date} is after --to {args.to_date}")
    if days >= MAX_BACKFILL_DAYS:
        raise ConfigError(f"--from..--to spans {days + 1} days; at most {MAX_BACKFILL_DAYS}")
    return [(first + _dt.timedelta(days=n)).isoformat() for n in range(days + 1)]


def _terminate(signum, _frame):
    # SystemExit unwinds the clean-ups: the running stage's child is stopped and the manifest
    # says the stage was interrupted (the kernel releases the run lock either way).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dates = run_dates(args)
        config = load_config(args.config)
        if not config.dated and len(dates) > 1:
            _LOG.warning(
                "no input pattern holds {run_date}: every date of the backfill reads the same files"
            )
        for run_date in dates:
            check_outputs(args.root, run_date)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with RunLock(args.root):
            return _run_dates(config, args, dates)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunLocked as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return 1


def _run_dates(config: RunConfig, args: argparse.Namespace, dates: list[str]) -> int:
    """Each date in order; a range skips dates that finished before and stops at a failure."""
    for n, run_date in enumerate(dates):
        if (
            len(dates) > 1
            and not args.force
            and finished_before(config, args.root, run_date, args.stages)
        ):
            _LOG.info("run %s: finished before, skipped (pass --force to redo it)", run_date)
            continue
        code = run(config, args.root, run_date, args.force, args.stages)
        if code != 0:
            if len(dates) > 1:
                manifest = (
                    read_json_or_none(FileSystems.join(args.root, run_date, MANIFEST_FILE)) or {}
                )
                why = manifest.get("reason") if manifest.get("status") == "failed" else None
                why = (why or "").removeprefix("textclf run: ") or f"exit {code}"
                rest = f"; {dates[n + 1]}..{dates[-1]} not run" if n + 1 < len(dates) else ""
                print(f"textclf run: backfill stopped at {run_date}: {why}{rest}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
