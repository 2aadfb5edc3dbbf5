"""`report.html`: one self-contained page about a run, written beside its manifest.

This module owns rendering only: from the run's manifest and the stage outputs it already wrote
(the model's metrics.json and PNGs) it builds a single HTML page with the stages' status and
timings, each stage's row accounting, the metrics table, the training curves, the confusion matrix
(or per-class F1 bars) and the per-class table, with every image embedded as a base64 data URI so
the file can be mailed or archived alone. It runs nothing and computes no metric itself.
"""

from __future__ import annotations

import base64
import functools
import html
from collections.abc import Container

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from pipeline.artifacts import ModelOutput
from transforms.contracts import (
    CONFUSION_PNG,
    CURVES_PNG,
    EVAL,
    F1_BARS_PNG,
    PREPROCESS_STAGE,
    REPORT_FILE,
    SCORE_STAGE,
    STAGE_DIRS,
    STAGES,
    TRAIN,
    TRAIN_STAGE,
)

# Row accounting per stage: (column, the path to its value in the stage's manifest "rows").
ACCOUNTING = (
    (
        PREPROCESS_STAGE,
        (
            ("rows read", "rows_read"),
            ("written: train", "rows_written", TRAIN),
            ("written: eval", "rows_written", EVAL),
            ("dead-lettered", "rows_dead_lettered"),
            ("reasons", "dead_letter_reasons"),
            ("accounted (read = written + dead)", "rows_accounted"),
        ),
    ),
    (
        TRAIN_STAGE,
        (
            ("rows trained on", "rows_seen", TRAIN),
            ("rows evaluated on", "rows_seen", EVAL),
            ("epochs run", "epochs_run"),
        ),
    ),
    (
        SCORE_STAGE,
        (
            ("rows read", "rows_read"),
            ("scored", "rows_scored"),
            ("dead-lettered", "rows_dead_lettered"),
            ("reasons", "dead_letter_reasons"),
            ("accounted (read = scored + dead)", "rows_accounted"),
        ),
    ),
)
IMAGES = (
    (CURVES_PNG, "Training curves (train and eval, per epoch)"),
    (CONFUSION_PNG, "Eval confusion matrix (rows: true class, columns: predicted)"),
    (F1_BARS_PNG, "Eval F1 per class"),
)

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em;
       color: #222; max-width: 1150px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid
#ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #e8eef6; } td.l, th.l { text-align: left; }
.ran, .succeeded { color: #11772d; font-weight: bold; } .failed { color: #b00020;
font-weight: bold; } .skipped, .partial, .not_run, .not_selected, .running { color: #8a6d00;
font-weight: bold; }
.muted { color: #666; } img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


class _Html(str):
    """A table cell that is already HTML (not escaped)."""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value) -> str:
    if isinstance(value, _Html):
        return value
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "none"
    return _e(value)


def _table(header: list[str], rows: list[list], left: Container[int] = (0,)) -> str:
    """An HTML table; the columns in `left` are left-aligned, the others (figures) right."""

    def cell(tag: str, i: int, content: str) -> str:
        return f'<{tag} class="{"l" if i in left else ""}">{content}</{tag}>'

    head = "".join(cell("th", i, _e(h)) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, _fmt(c)) for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: str, caption: str) -> str:
    with FileSystems.open(path) as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f'<figcaption class="muted">{_e(caption)}</figcaption></figure>'
    )


def _status(status) -> _Html:
    return _Html(f'<span class="{_e(status)}">{_e(status)}</span>')


def _stages_section(manifest: dict) -> str:
    rows = []
    stages = manifest.get("stages", {})
    # manifest.json is written with sorted keys; show the stages in the order they run.
    for stage in sorted(stages, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES)):
        entry = stages[stage]
        seconds = entry.get("seconds")
        rows.append(
            [
                stage,
                _status(entry.get("status")),
                f"{seconds:.1f}" if isinstance(seconds, int | float) else "",
                entry.get("finished_at"),
                entry.get("reason") or "",
                entry.get("dir"),
            ]
        )
    header = ["stage", "status", "seconds", "finished at", "reason", "directory"]
    return "<h2>Stages</h2>" + _table(header, rows, left=(0, 1, 3, 4, 5))


def _accounting_section(manifest: dict) -> str:
    stages = manifest.get("stages", {})
    parts = ["<h2>Row accounting</h2>"]
    for stage, columns in ACCOUNTING:
        rows = (stages.get(stage) or {}).get("rows")
        if rows:
            header = [name for name, *_ in columns]
            values = [functools.reduce(_get, path, rows) for _, *path in columns]
            parts.append(f"<h3>{_e(stage)}</h3>" + _table(header, [values], left=()))
    if len(parts) == 1:
        parts.append('<p class="muted">No stage has finished yet.</p>')
    return "".join(parts)


def _get(value, key: str):
    return value.get(key) if isinstance(value, dict) else None


def _metrics_section(manifest: dict) -> str:
    evaluated = {
        "eval split (train stage)": (manifest.get("metrics") or {}).get("eval"),
        "scored rows vs their labels": (manifest.get("metrics") or {}).get("scored"),
    }
    evaluated = {where: m for where, m in evaluated.items() if m}
    names = [
        n
        for n in ("accuracy", "macro_f1", "micro_f1", "subset_accuracy", "rows")
        if any(n in m for m in evaluated.values())
    ]
    rows = [[where, *[m.get(n, "") for n in names]] for where, m in evaluated.items()]
    parts = ["<h2>Metrics</h2>"]
    parts.append(
        _table(["evaluated on", *names], rows)
        if rows
        else '<p class="muted">No metrics yet (the train stage has not finished).</p>'
    )
    return "".join(parts)


def _per_class_section(metrics: dict | None, scored: dict | None) -> str:
    per_class = (metrics or {}).get("per_class") or {}
    if not per_class:
        return ""
    test = (scored or {}).get("per_class") or {}
    header = ["class", "precision", "recall", "F1", "support"]
    if test:
        header += ["scored precision", "scored recall", "scored F1", "scored support"]
    rows = []
    for name, m in per_class.items():
        row = [name, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
        if test:
            t = test.get(name, {})
            row += [t.get("precision"), t.get("recall"), t.get("f1"), t.get("support")]
        rows.append(row)
    note = "eval split of the train stage" + (
        "; scored columns: the scored rows against their labels" if test else ""
    )
    return f'<h2>Per class</h2><p class="muted">{_e(note)}</p>' + _table(header, rows)


def render(run_dir: str, manifest: dict) -> str:
    """The report page for `run_dir`, from its manifest and the model directory's files."""
    train = (manifest.get("stages") or {}).get(TRAIN_STAGE) or {}
    model = ModelOutput(train.get("dir") or FileSystems.join(run_dir, STAGE_DIRS[TRAIN_STAGE]))
    metrics = model.metrics if model.finished else None
    status = manifest.get("status")
    versions = manifest.get("versions") or {}
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>textclf run {_e(manifest.get('run_date'))}</title><style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>textclf run {_e(manifest.get('run_date'))}: {_status(status)}</h1>",
        f'<p class="muted">{_e(run_dir)} &middot; config {_e(manifest.get("config_file"))} '
        f"&middot; started {_e(manifest.get('started_at'))}, finished "
        f"{_e(manifest.get('finished_at'))} ({_e(manifest.get('seconds'))} s)"
        + (
            f" &middot; model {_e(train.get('model_version'))}"
            if train.get("model_version")
            else ""
        )
        + "</p>",
    ]
    if manifest.get("reason"):
        parts.append(f'<p class="failed">{_e(manifest["reason"])}</p>')
    parts += [
        _stages_section(manifest),
        _accounting_section(manifest),
        _metrics_section(manifest),
    ]
    images = [(model.path(name), caption) for name, caption in IMAGES] if model.finished else []
    images = [(p, c) for p, c in images if FileSystems.exists(p)]
    if images:
        parts.append("<h2>Training</h2>" + "".join(_image(p, c) for p, c in images))
    parts.append(_per_class_section(metrics, manifest.get("scored_evaluation")))
    parts.append(
        "<h2>Versions</h2>" + _table(["package", "version"], [[k, v] for k, v in versions.items()])
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: str, manifest: dict) -> str:
    """Render and write `<run_dir>/report.html` (atomically); return its path."""
    path = FileSystems.join(run_dir, REPORT_FILE)
    outputs.write_text_atomic(path, render(run_dir, manifest))
    return path
