"""`manifest.json`: what a run recorded about itself, and what it reads back from the stages.

This module owns the manifest's content: the package versions, the input files matched, each
finished stage's row accounting (from its stats.json / metrics.json), the headline metrics, the
scored rows evaluated against their own labels, when a stage finished (to tell a stale one), and
writing the file atomically after every step. Running the stages and deciding what runs is
pipeline/run.py's; rendering is pipeline/report.py's.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from pipeline.artifacts import ModelOutput, ScoreOutput, StageOutput
from transforms.contracts import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PREDICTED_LABEL_COLUMN,
    PREPROCESS_STAGE,
    STATS_FILE,
    TRAIN_STAGE,
)

_LOG = logging.getLogger("textclf.run")

# A stage's status in the manifest.
RAN, SKIPPED, FAILED, NOT_RUN, NOT_SELECTED = "ran", "skipped", "failed", "not_run", "not_selected"
PREPROCESS_ROWS = (
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
SCORE_ROWS = (
    "rows_read",
    "rows_scored",
    "rows_dead_lettered",
    "dead_letter_reasons",
    "label_counts",
)


def matched_inputs(patterns: Sequence[str]) -> list[dict]:
    """The files each pattern matches now, with their sizes."""
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


def read_json_or_none(path: str):
    try:
        return outputs.read_json(path) if FileSystems.exists(path) else None
    except Exception:  # noqa: BLE001 - a half-written file is reported as missing
        return None


def stage_rows(stage: str, stage_dir: str) -> dict | None:
    """The row accounting a finished stage wrote (stats.json / metrics.json)."""
    if not outputs.is_complete(stage_dir):
        return None
    if stage == TRAIN_STAGE:
        metrics = read_json_or_none(FileSystems.join(stage_dir, METRICS_FILE)) or {}
        return {"rows_seen": metrics.get("rows_seen"), "epochs_run": metrics.get("epochs_run")}
    stats = read_json_or_none(FileSystems.join(stage_dir, STATS_FILE)) or {}
    if stage == PREPROCESS_STAGE:
        return {k: stats.get(k) for k in PREPROCESS_ROWS}
    rows = {k: stats.get(k) for k in SCORE_ROWS}
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
    scores carry no such column (unlabelled data, or a multi-label model), or when no row's
    label is one of the model's classes.
    """
    import numpy as np
    import pyarrow.dataset as ds

    from transforms import evaluation

    scores, model = ScoreOutput(scores_dir), ModelOutput(model_dir)
    if not (scores.finished and model.finished):
        return None
    files = scores.part_files()
    if not files:
        return None
    dataset = ds.dataset(files, format="parquet")
    if not {label_column, PREDICTED_LABEL_COLUMN} <= set(dataset.schema.names):
        return None
    table = dataset.to_table(columns=[label_column, PREDICTED_LABEL_COLUMN])
    names = model.labels
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
    if not known.any():  # another label set (e.g. another corpus scored): nothing to compare
        _LOG.info("no scored row's %s is a class of the model; no scored-row metrics", label_column)
        return None
    metrics = evaluation.single_label_metrics(
        truth[known], np.eye(len(names))[predicted[known]], names
    )
    metrics["rows_with_unknown_label"] = int((~known).sum())
    metrics["label_column"] = label_column
    return metrics


def finished_at(stage_dir: str) -> _dt.datetime | None:
    """When the stage finalized `stage_dir`: the time `outputs.finalize` wrote into _SUCCESS."""
    return StageOutput(stage_dir).finished_at


def is_stale(stage_dir: str, upstream_dir: str | None) -> bool:
    """A finished stage whose input stage finished after it (make's rule, across invocations)."""
    if upstream_dir is None:
        return False
    mine, theirs = finished_at(stage_dir), finished_at(upstream_dir)
    return bool(mine and theirs and theirs > mine)


def write_manifest(run_dir: str, manifest: dict) -> None:
    """`<run_dir>/manifest.json`, atomically: readers see the previous one or this one."""
    outputs.write_json_atomic(FileSystems.join(run_dir, MANIFEST_FILE), manifest)


def finished_stage(stage: str, stage_dir: str) -> dict:
    """What the manifest records of a stage that finished (ran now or before): its rows, and
    for train the headline eval metrics and the model version."""
    recorded = {"rows": stage_rows(stage, stage_dir)}
    if stage == TRAIN_STAGE:
        recorded["metrics"] = headline_metrics(
            read_json_or_none(FileSystems.join(stage_dir, METRICS_FILE))
        )
        card = read_json_or_none(FileSystems.join(stage_dir, MODEL_CARD_FILE)) or {}
        recorded["model_version"] = card.get("model_version")
    return recorded


def log_stage_end(stage: str, entry: dict) -> None:
    """One INFO line: how the stage that just ran ended, with its rows (and eval metrics)."""
    rows = entry.get("rows") or {}
    if stage == PREPROCESS_STAGE:
        detail = (
            f"{rows.get('rows_read')} rows read, written {rows.get('rows_written')}, "
            f"{rows.get('rows_dead_lettered')} dead-lettered "
            f"{rows.get('dead_letter_reasons') or ''}"
        )
    elif stage == TRAIN_STAGE:
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
