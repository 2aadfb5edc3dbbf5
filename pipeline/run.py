"""`textclf run`: preprocess -> train -> score under one run directory, as a scheduled job.

This module owns the run: it reads a TOML config (`[inputs]`, `[preprocess]`, `[train]`,
`[score]`, `[beam]`), turns each stage's section into that stage's own command line (checked
against the stage's own parser, so the config and the CLI cannot drift), calls each stage's
`main(argv)` under `<root>/<run_date>/{data,model,scores}`, skips a stage whose `_SUCCESS` exists
(unless `--force`, or an upstream stage ran again), and writes `manifest.json` (atomically, after
every stage) and `report.html` (pipeline/report.py) beside them. It does not preprocess, train or
score anything itself; each stage finalizes its own directory, so a failed or killed run leaves
nothing that looks complete and a rerun finishes the job.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as _dt
import glob
import importlib
import importlib.metadata
import io
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from transforms.contracts import (
    EXIT_BAD_INPUT,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PREDICTED_LABEL_COLUMN,
    REPORT_FILE,
    STATS_FILE,
    SUCCESS_FILE,
)

_LOG = logging.getLogger("textclf.run")

PREPROCESS, TRAIN, SCORE = "preprocess", "train", "score"
STAGES = (PREPROCESS, TRAIN, SCORE)
STAGE_DIRS = {PREPROCESS: "data", TRAIN: "model", SCORE: "scores"}
STAGE_MODULES = {
    PREPROCESS: "pipeline.preprocess",
    TRAIN: "pipeline.train",
    SCORE: "pipeline.score",
}
# Flags the run sets itself (from [inputs] and the run directory); a stage section may not.
RESERVED_FLAGS = {
    PREPROCESS: {"input", "output_dir", "text_column", "label_column", "id_column"},
    TRAIN: {"data_dir", "model_dir"},
    SCORE: {"model_dir", "input", "output", "text_column", "id_column"},
}
BEAM_STAGES = (PREPROCESS, SCORE)
SECTIONS = ("inputs", *STAGES, "beam")
PACKAGES = (
    "textclf",
    "apache-beam",
    "tensorflow",
    "tensorflow-transform",
    "tfx-bsl",
    "keras",
    "pyarrow",
    "numpy",
    "matplotlib",
)
LOCK_FILE = ".run.lock"
RAN, SKIPPED, FAILED, NOT_RUN, NOT_SELECTED = "ran", "skipped", "failed", "not_run", "not_selected"


class ConfigError(ValueError):
    """A config the user has to fix before anything runs (exit EXIT_BAD_INPUT)."""


# ---------------------------------------------------------------------------------------------
# The config.


@dataclasses.dataclass(frozen=True)
class RunConfig:
    path: str
    raw: dict
    train_inputs: tuple[str, ...]
    score_inputs: tuple[str, ...]
    text_column: str
    label_column: str
    id_column: str | None
    settings: dict  # stage -> {flag: value}
    beam: dict


def _patterns(value, key: str, base: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"[inputs] {key} must be a file pattern or a list of them")
    # Relative patterns are relative to the config file, so a cron job's cwd does not matter.
    return tuple(
        v if "://" in v or os.path.isabs(v) else os.path.normpath(os.path.join(base, v))
        for v in values
    )


def load_config(path: str) -> RunConfig:
    """Parse and check the TOML config; raises ConfigError saying what to fix."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; sections are: {', '.join(SECTIONS)}"
        )
    for section in SECTIONS:
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] must be a table of settings")
    inputs = raw.get("inputs", {})
    allowed = {"train", "score", "text_column", "label_column", "id_column"}
    extra = sorted(set(inputs) - allowed)
    if extra:
        raise ConfigError(
            f"{path}: unknown [inputs] key(s) {', '.join(extra)}; keys are: "
            f"{', '.join(sorted(allowed))}"
        )
    for key in ("train", "score"):
        if key not in inputs:
            raise ConfigError(f"{path}: [inputs] needs `{key}` (file pattern(s) to {key} on)")
    base = os.path.dirname(os.path.abspath(path))
    return RunConfig(
        path=os.path.abspath(path),
        raw=raw,
        train_inputs=_patterns(inputs["train"], "train", base),
        score_inputs=_patterns(inputs["score"], "score", base),
        text_column=str(inputs.get("text_column", "text")),
        label_column=str(inputs.get("label_column", "label")),
        id_column=inputs.get("id_column"),
        settings={stage: dict(raw.get(stage, {})) for stage in STAGES},
        beam=dict(raw.get("beam", {})),
    )


def stage_parser(stage: str) -> argparse.ArgumentParser:
    """The stage's own argument parser: the one source of its flags."""
    if stage == PREPROCESS:
        from pipeline.preprocess import PreprocessOptions

        parser = argparse.ArgumentParser(prog="textclf preprocess")
        PreprocessOptions._add_argparse_args(parser)
        return parser
    return importlib.import_module(STAGE_MODULES[stage]).build_parser()


def settings_argv(parser: argparse.ArgumentParser, section: dict, stage: str) -> list[str]:
    """`{flag: value}` -> the stage's flags, by each flag's own argparse action."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in section.items():
        if key in RESERVED_FLAGS[stage]:
            raise ConfigError(
                f"[{stage}] {key} is set by `textclf run` (from [inputs] and the "
                "run directory); remove it from the config"
            )
        action = actions.get(key)
        if action is None:
            known = sorted(set(actions) - RESERVED_FLAGS[stage] - {"help"})
            raise ConfigError(
                f"[{stage}] {key} is not a flag of `textclf {stage}`; its flags "
                f"are: {', '.join(known)}"
            )
        flag = f"--{key}"
        if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"[{stage}] {key} must be true or false, not {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else f"--no-{key}")
            elif value:
                argv.append(flag)
        elif isinstance(value, bool):
            raise ConfigError(f"[{stage}] {key} takes a value, not {value!r}")
        elif isinstance(value, list):
            if action.nargs in ("+", "*"):
                argv += [flag, *map(str, value)]
            else:  # comma-separated flags such as score's --columns
                argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def beam_argv(beam: dict) -> list[str]:
    argv = []
    for key, value in beam.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False:
            argv.append(f"--{key}={value}")
    return argv


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def stage_dirs(run_dir: str) -> dict[str, str]:
    return {stage: _join(run_dir, name) for stage, name in STAGE_DIRS.items()}


def stage_argvs(config: RunConfig, run_dir: str) -> dict[str, list[str]]:
    """Each stage's full command line; checked with the stage's parser before anything runs."""
    dirs = stage_dirs(run_dir)
    ids = ["--id_column", config.id_column] if config.id_column else []
    base = {
        PREPROCESS: [
            "--input",
            *config.train_inputs,
            "--output_dir",
            dirs[PREPROCESS],
            "--text_column",
            config.text_column,
            "--label_column",
            config.label_column,
            *ids,
        ],
        TRAIN: ["--data_dir", dirs[PREPROCESS], "--model_dir", dirs[TRAIN]],
        SCORE: [
            "--model_dir",
            dirs[TRAIN],
            "--input",
            *config.score_inputs,
            "--output",
            dirs[SCORE],
            "--text_column",
            config.text_column,
            *ids,
        ],
    }
    argvs = {}
    for stage in STAGES:
        parser = stage_parser(stage)
        own = base[stage] + settings_argv(parser, config.settings[stage], stage)
        error = io.StringIO()
        try:
            _, rest = _quietly(error, parser.parse_known_args, own)
        except SystemExit:
            reason = error.getvalue().strip().splitlines()[-1:] or ["invalid settings"]
            raise ConfigError(f"[{stage}] {reason[0].split(': error: ', 1)[-1]}") from None
        if rest:
            raise ConfigError(f"[{stage}] not understood: {' '.join(rest)}")
        argvs[stage] = own + (beam_argv(config.beam) if stage in BEAM_STAGES else [])
    return argvs


def _quietly(stream, fn, *args):
    saved = sys.stderr
    sys.stderr = stream
    try:
        return fn(*args)
    finally:
        sys.stderr = saved


# ---------------------------------------------------------------------------------------------
# Running one stage.


def _last_line(lines: Sequence[str], prefix: str) -> str | None:
    """The last line that starts with `prefix` (prefix removed), else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return lines[-1] if lines else None


def call_stage(stage: str, argv: list[str]) -> tuple[int, str | None]:
    """Run `textclf <stage> argv` in a child process: (exit code, one-line reason or None).

    A child per stage keeps each stage's process-wide state apart (Beam's registry of every
    PipelineOptions subclass, TensorFlow's memory and threads) and lets a killed run stop the
    stage it was in. The child's stderr is passed through line by line; its last
    `textclf <stage>: ...` line (or last line) is the reason when it fails.
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", stage, *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
    )
    tail: collections.deque[str] = collections.deque(maxlen=50)
    try:
        for line in child.stderr:
            sys.stderr.write(line)
            tail.append(line)
        code = child.wait()
    finally:
        if child.poll() is None:  # we are being stopped: stop the stage too
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    if code == 0:
        return 0, None
    if code < 0:
        return 1, f"killed by signal {-code}"
    return code, _last_line(tail, f"textclf {stage}:") or f"exited with code {code}"


def discard_stale_staging(stage_dir: str) -> None:
    """Remove staging dirs a killed run left beside `stage_dir` (we hold the run lock)."""
    if not outputs.is_local(stage_dir):
        return
    parent, name = os.path.split(stage_dir.rstrip("/"))
    for stale in glob.glob(os.path.join(parent, f".{name}.inprogress-*")):
        _LOG.info("removing %s, left by an unfinished earlier run", stale)
        outputs.discard(stale)


# ---------------------------------------------------------------------------------------------
# What the manifest records.


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def matched_inputs(patterns: Sequence[str]) -> list[dict]:
    found = []
    for pattern in patterns:
        try:
            metadata = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # noqa: BLE001 - the stage reports unusable inputs itself
            metadata = []
        found += [
            {"path": m.path, "bytes": m.size_in_bytes}
            for m in sorted(metadata, key=lambda m: m.path)
        ]
    return found


def _read_json_or_none(path: str):
    try:
        return outputs.read_json(path) if FileSystems.exists(path) else None
    except Exception:  # noqa: BLE001 - a half-written file is reported as missing
        return None


def stage_rows(stage: str, stage_dir: str) -> dict | None:
    """The row accounting a finished stage wrote (stats.json / metrics.json)."""
    if not outputs.is_complete(stage_dir):
        return None
    if stage == TRAIN:
        metrics = _read_json_or_none(_join(stage_dir, METRICS_FILE)) or {}
        return {"rows_seen": metrics.get("rows_seen"), "epochs_run": metrics.get("epochs_run")}
    stats = _read_json_or_none(_join(stage_dir, STATS_FILE)) or {}
    if stage == PREPROCESS:
        keys = (
            "rows_read",
            "rows_written",
            "rows_dead_lettered",
            "dead_letter_reasons",
            "rows_accounted",
            "num_classes",
            "vocab_size",
            "rows_truncated",
            "oov_rate",
        )
        return {k: stats.get(k) for k in keys}
    rows = {
        k: stats.get(k)
        for k in (
            "rows_read",
            "rows_scored",
            "rows_dead_lettered",
            "dead_letter_reasons",
            "label_counts",
        )
    }
    if None not in (rows["rows_read"], rows["rows_scored"], rows["rows_dead_lettered"]):
        rows["rows_accounted"] = (
            rows["rows_read"] == rows["rows_scored"] + rows["rows_dead_lettered"]
        )
    return rows


def headline_metrics(metrics: dict | None) -> dict | None:
    """The scalar metrics (accuracy, macro-F1, ...) without per-class tables and matrices."""
    if not metrics:
        return None
    return {
        k: v for k, v in metrics.items() if isinstance(v, int | float | str) or k == "rows_seen"
    }


def evaluate_scores(scores_dir: str, model_dir: str, label_column: str) -> dict | None:
    """Metrics of the scored rows against their true labels, when the label was passed through.

    Joins each scored row's `predicted_label` with its own `label_column` (score keeps input
    columns), so a held-out split scored by the run is also a test-set evaluation. None when the
    scores carry no such column (unlabelled data, or a multi-label model).
    """
    import numpy as np
    import pyarrow.dataset as ds

    from pipeline.score import PARQUET_SUFFIX, SCORED_PREFIX
    from transforms import evaluation
    from transforms.contracts import LABELS_TXT

    if not (outputs.is_complete(scores_dir) and outputs.is_complete(model_dir)):
        return None
    files = [
        m.path
        for m in FileSystems.match([_join(scores_dir, f"{SCORED_PREFIX}-*{PARQUET_SUFFIX}")])[
            0
        ].metadata_list
    ]
    if not files:
        return None
    dataset = ds.dataset(files, format="parquet")
    if not {label_column, PREDICTED_LABEL_COLUMN} <= set(dataset.schema.names):
        return None
    table = dataset.to_table(columns=[label_column, PREDICTED_LABEL_COLUMN])
    names = [n for n in outputs.read_text(_join(model_dir, LABELS_TXT)).split("\n") if n]
    index = {n: i for i, n in enumerate(names)}
    truth = np.array(
        [
            index.get(str(v), -1) if v is not None else -1
            for v in table.column(label_column).to_pylist()
        ]
    )
    predicted = np.array(
        [index.get(v, -1) for v in table.column(PREDICTED_LABEL_COLUMN).to_pylist()]
    )
    known = truth >= 0
    metrics = evaluation.single_label_metrics(
        truth[known], np.eye(len(names))[predicted[known]], names
    )
    metrics["rows_with_unknown_label"] = int((~known).sum())
    metrics["label_column"] = label_column
    return metrics


# ---------------------------------------------------------------------------------------------
# The run.


def finished_at(stage_dir: str) -> _dt.datetime | None:
    """When the stage finalized `stage_dir`: the time `outputs.finalize` wrote into _SUCCESS."""
    if not outputs.is_complete(stage_dir):
        return None
    try:
        return _dt.datetime.fromisoformat(outputs.read_text(_join(stage_dir, SUCCESS_FILE)).strip())
    except ValueError:
        return None


def is_stale(stage_dir: str, upstream_dir: str | None) -> bool:
    """A finished stage whose input stage finished after it (make's rule, across invocations)."""
    if upstream_dir is None:
        return False
    mine, theirs = finished_at(stage_dir), finished_at(upstream_dir)
    return bool(mine and theirs and theirs > mine)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_manifest(run_dir: str, manifest: dict) -> None:
    """Atomically: readers see the previous manifest or this one, never half of one."""
    path = _join(run_dir, MANIFEST_FILE)
    if outputs.is_local(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        outputs.write_json(tmp, manifest)
        os.replace(tmp, path)
    else:  # object stores publish an object only when its upload completes
        outputs.write_json(path, manifest)


class RunLock:
    """`<run_dir>/.run.lock` holding the pid, so two schedulers never run the same date at once."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_FILE) if outputs.is_local(run_dir) else None

    def __enter__(self):
        if self.path is None:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder and _alive(holder):
                    raise RunLocked(
                        f"another textclf run (pid {holder}) is running in "
                        f"{os.path.dirname(self.path)}; wait for it to finish"
                    ) from None
                _LOG.info("removing stale lock %s (pid %s is gone)", self.path, holder)
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RunLocked(f"could not take {self.path}")

    def _holder(self) -> int | None:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self.path and self._holder() == os.getpid():
            os.remove(self.path)


class RunLocked(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_stage_end(stage: str, entry: dict) -> None:
    rows = entry.get("rows") or {}
    if stage == PREPROCESS:
        detail = (
            f"{rows.get('rows_read')} rows read, written {rows.get('rows_written')}, "
            f"{rows.get('rows_dead_lettered')} dead-lettered "
            f"{rows.get('dead_letter_reasons') or ''}"
        )
    elif stage == TRAIN:
        metrics = entry.get("metrics") or {}
        detail = (
            f"rows seen {rows.get('rows_seen')}, {rows.get('epochs_run')} epoch(s), eval "
            f"accuracy {metrics.get('accuracy')}, macro-F1 {metrics.get('macro_f1')}"
        )
    else:
        detail = (
            f"{rows.get('rows_read')} rows read, {rows.get('rows_scored')} scored, "
            f"{rows.get('rows_dead_lettered')} dead-lettered "
            f"{rows.get('dead_letter_reasons') or ''}"
        )
    _LOG.info(
        "stage %s: %s in %.1fs: %s",
        stage,
        entry["status"],
        entry.get("seconds") or 0.0,
        detail.strip(),
    )


def run(
    config: RunConfig,
    root: str,
    run_date: str,
    force: bool = False,
    stages: Sequence[str] = STAGES,
    call: Callable[[str, list[str]], tuple[int, str | None]] | None = None,
) -> int:
    """Run the selected stages under `<root>/<run_date>`; return the exit code.

    On failure prints one line to stderr naming the stage and the reason. `call` runs one stage
    (default: `call_stage`, a child process).
    """
    call = call or call_stage
    run_dir = _join(root, run_date)
    if outputs.is_local(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    argvs = stage_argvs(config, run_dir)
    dirs = stage_dirs(run_dir)
    previous = _read_json_or_none(_join(run_dir, MANIFEST_FILE)) or {}
    started = time.time()
    manifest = {
        "run_date": run_date,
        "run_dir": run_dir,
        "status": "running",
        "started_at": _now(),
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
    run_success = _join(run_dir, SUCCESS_FILE)
    if FileSystems.exists(run_success):
        FileSystems.delete([run_success])  # the run is being redone; it is no longer complete
    exit_code, failure = 0, None
    for i, stage in enumerate(STAGES):
        entry = {"dir": dirs[stage], "argv": argvs[stage]}
        manifest["stages"][stage] = entry
        upstream = dirs[STAGES[i - 1]] if i else None
        stale = is_stale(dirs[stage], upstream)
        if stage not in stages:
            entry["status"] = NOT_SELECTED
        elif failure:
            entry["status"] = NOT_RUN
        elif outputs.is_complete(dirs[stage]) and not force and not stale:
            entry["status"] = SKIPPED
            old = previous.get("stages", {}).get(stage, {})
            for key in ("seconds", "started_at", "finished_at"):
                if key in old:
                    entry[key] = old[key]
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
            entry.update(status="running", started_at=_now())
            write_manifest(run_dir, manifest)
            discard_stale_staging(dirs[stage])
            t0 = time.time()
            try:
                code, reason = call(stage, argvs[stage])
            except (KeyboardInterrupt, SystemExit) as stop:
                # Stopped (SIGTERM, Ctrl-C): say so in the manifest, then stop as asked.
                entry.update(
                    status=FAILED,
                    reason=f"interrupted ({type(stop).__name__})",
                    seconds=round(time.time() - t0, 2),
                    finished_at=_now(),
                )
                manifest.update(
                    status="failed",
                    finished_at=_now(),
                    reason=f"textclf run: stage {stage} interrupted",
                )
                write_manifest(run_dir, manifest)
                raise
            entry.update(seconds=round(time.time() - t0, 2), finished_at=_now(), exit_code=code)
            if code == 0 and outputs.is_complete(dirs[stage]):
                entry["status"] = RAN
            else:
                entry.update(status=FAILED, reason=reason or f"no {SUCCESS_FILE} was written")
                exit_code = code if code else 1
                failure = (
                    f"textclf run: stage {stage} failed"
                    f"{' (bad input)' if code == EXIT_BAD_INPUT else ''}: {entry['reason']}"
                )
        if entry["status"] in (RAN, SKIPPED):
            entry["rows"] = stage_rows(stage, dirs[stage])
            if stage == TRAIN:
                entry["metrics"] = headline_metrics(
                    _read_json_or_none(_join(dirs[TRAIN], METRICS_FILE))
                )
                card = _read_json_or_none(_join(dirs[TRAIN], MODEL_CARD_FILE)) or {}
                entry["model_version"] = card.get("model_version")
            if entry["status"] == RAN:
                _log_stage_end(stage, entry)
        write_manifest(run_dir, manifest)

    manifest["metrics"] = {
        "eval": (
            manifest["stages"][TRAIN].get("metrics")
            or headline_metrics(_read_json_or_none(_join(dirs[TRAIN], METRICS_FILE)))
            if outputs.is_complete(dirs[TRAIN])
            else None
        ),
        "scored": None,
    }
    try:
        scored = evaluate_scores(dirs[SCORE], dirs[TRAIN], config.label_column)
    except Exception as err:  # noqa: BLE001 - an evaluation problem must not hide the run's state
        _LOG.warning("could not evaluate the scores against %s: %s", config.label_column, err)
        scored = None
    manifest["scored_evaluation"] = scored
    manifest["metrics"]["scored"] = headline_metrics(scored)
    if scored:
        _LOG.info(
            "scored rows vs their %s column: accuracy %.4f, macro-F1 %.4f on %d rows",
            config.label_column,
            scored["accuracy"],
            scored["macro_f1"],
            scored["rows"],
        )
    complete = all(outputs.is_complete(d) for d in dirs.values())
    manifest.update(
        status="failed" if failure else "succeeded" if complete else "partial",
        finished_at=_now(),
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
        from pipeline import report

        report_path = report.write_report(run_dir, manifest)
        _LOG.info("report: %s", report_path)
    except Exception as err:  # noqa: BLE001
        _LOG.error("report failed", exc_info=True)
        if not failure:
            failure, exit_code = f"textclf run: report failed: {type(err).__name__}: {err}", 1
    if failure:
        print(failure, file=sys.stderr)
        return exit_code
    if complete:
        outputs.write_text(run_success, _now() + "\n")
    _LOG.info(
        "run %s: %s in %.1fs (%s)",
        run_date,
        manifest["status"],
        manifest["seconds"],
        _join(run_dir, MANIFEST_FILE),
    )
    return 0


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
    # SystemExit unwinds the stages' `except BaseException` clean-ups (staging dirs, the lock).
    raise SystemExit(128 + signum)


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
        LOCK_FILE,
        SUCCESS_FILE,
    )


def check_outputs(root: str, run_date: str) -> None:
    """Before any work: refuse (ConfigError) a run directory, or a stage directory in it, that
    holds anything textclf did not write there; nothing is touched."""
    run_dir = _join(root, run_date)
    try:
        if outputs.is_local(root) and os.path.exists(root) and not os.path.isdir(root):
            raise outputs.OutputNotReplaceable(f"{root} exists and is not a directory")
        outputs.check_replaceable(run_dir, "run", run_dir_entries())
        for stage, stage_dir in stage_dirs(run_dir).items():
            outputs.check_replaceable(stage_dir, stage)
    except outputs.OutputNotReplaceable as err:
        raise ConfigError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        check_outputs(args.root, args.run_date)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with RunLock(_join(args.root, args.run_date)) as _:
            return run(config, args.root, args.run_date, args.force, args.stages)
    except ConfigError as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunLocked as err:
        print(f"textclf run: {err}", file=sys.stderr)
        return 1


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
