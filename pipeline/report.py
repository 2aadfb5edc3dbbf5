"""`report.html`: one self-contained page about a run, written beside its manifest.

This module owns rendering only: from the run's manifest and the stage outputs it already wrote
(the model's metrics.json and PNGs) it builds a single HTML page with the stages' status and
timings, each stage's row accounting, the metrics table, the training curves, the confusion matrix
(or per-class F1 bars), the per-class table and the score stage's drift figures (the measures'
table and a plot of training vs scored token lengths, drawn here from the manifest's `drift`),
with every image embedded as a base64 data URI so the file can be mailed or archived alone. It
runs nothing and computes no metric itself.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import os
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
.ok { color: #11772d; font-weight: bold; } .warn, .unavailable { color: #8a6d00;
font-weight: bold; } .drift { color: #b00020; font-weight: bold; }
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
    test = (scored or {}).get("per_class") or {}
    if not per_class and test:  # a score-only run: the scored rows alone
        rows = [[n, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                for n, m in test.items()]  # fmt: skip
        note = "the scored rows against their labels"
        return f'<h2>Per class</h2><p class="muted">{_e(note)}</p>' + _table(
            ["class", "precision", "recall", "F1", "support"], rows
        )
    if not per_class:
        return ""
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


# The drift measures (transforms/drift.py) as the report names them.
DRIFT_MEASURES = (
    ("token_length", "token lengths"),
    ("predicted_class", "predicted classes vs training labels"),
    ("oov_rate", "OOV rate"),
)


def _length_bins(edges: list) -> list[str]:
    """Bin labels from the lower edges: "3", "4-5", ..., "8192+"."""
    labels = []
    for lo, hi in zip(edges, [*edges[1:], None], strict=True):
        labels.append(f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
    return labels


def _length_plot(measure: dict) -> str:
    """Training vs scored token lengths (share of rows per bin) as an inline PNG figure; ""
    when either histogram is missing."""
    training, scored = measure["training"].get("counts"), measure["scored"].get("counts")
    if not training or not scored or not sum(training) or not sum(scored):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = np.asarray(training, float) / sum(training)
    q = np.asarray(scored, float) / sum(scored)
    used = np.nonzero((t > 0) | (q > 0))[0]
    first, last = int(used[0]), int(used[-1]) + 1
    x = np.arange(last - first)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(x) + 2), 3.2))
    ax.bar(x - 0.2, t[first:last], width=0.4, label="training")
    ax.bar(x + 0.2, q[first:last], width=0.4, label="scored")
    ax.set_xticks(x, _length_bins(measure["bin_edges"])[first:last], rotation=45, fontsize=8)
    ax.set_xlabel("tokens per text")
    ax.set_ylabel("share of rows")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    caption = "Token lengths: training data vs scored data (share of rows per bin)"
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f'<figcaption class="muted">{_e(caption)}</figcaption></figure>'
    )


def _drift_figure(name: str, side) -> str:
    """A measure's training or scored figure, short: quantiles, a rate, or class shares."""
    if name == "token_length":
        quantiles = (side or {}).get("quantiles") or {}
        return ", ".join(f"{k} {v:g}" for k, v in quantiles.items()) or "none"
    if isinstance(side, float):
        return f"{side:.4f}"
    return _fmt(side)


def _drift_section(drift: dict | None) -> str:
    """The score stage's drift against the training data: absent when the run has none."""
    if not drift:
        return ""
    parts = ["<h2>Drift (scored data vs training data)</h2>"]
    if not drift.get("available"):
        parts.append(f'<p class="muted">Not measured: {_e(drift.get("reason"))}</p>')
        return "".join(parts)
    if drift.get("drifted"):
        verdict = f"{_status('drift')}: the scored data differ from the training data"
    else:
        verdict = f"{_status('ok')}: no measure found drift"
    parts.append(f"<p>{verdict}</p>")
    measures = drift.get("measures") or {}
    rows = []
    for name, title in DRIFT_MEASURES:
        m = measures.get(name)
        if m is None:
            continue
        rows.append(
            [
                title,
                m.get("measure"),
                _drift_figure(name, m.get("training")),
                _drift_figure(name, m.get("scored")),
                "" if m.get("value") is None else m["value"],
                m.get("warn_at"),
                m.get("drift_at"),
                _status(m.get("status")),
                m.get("reason") or "",
            ]
        )
    header = ["what", "measure", "training", "scored", "value", "warn at", "drift at", "status"]
    parts.append(_table([*header, "note"], rows, left=(0, 1, 2, 3, 7, 8)))
    warnings = drift.get("warnings") or []
    if warnings:
        parts.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    if "token_length" in measures:
        parts.append(_length_plot(measures["token_length"]))
    return "".join(parts)


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
        _models_section(manifest),
        _promotion_section(manifest),
    ]
    images = [(model.path(name), caption) for name, caption in IMAGES] if model.finished else []
    images = [(p, c) for p, c in images if FileSystems.exists(p)]
    if images:
        parts.append("<h2>Training</h2>" + "".join(_image(p, c) for p, c in images))
    parts.append(_per_class_section(metrics, manifest.get("scored_evaluation")))
    parts.append(_scored_confusion(manifest.get("scored_evaluation")))
    parts.append(_drift_section(manifest.get("drift")))
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


def _promotion_section(manifest: dict) -> str:
    """The registry: which model scored, and the gate's decision with both models' figures."""
    model, decision = manifest.get("model"), manifest.get("promotion")
    if not manifest.get("registry") and not decision:
        return ""
    parts = ["<h2>Model registry</h2>"]
    parts.append(f'<p class="muted">registry: {_e(manifest.get("registry"))}</p>')
    if model and model.get("version") is not None:
        parts.append(
            f"<p>Scored with version {_e(model.get('version'))} "
            f"({_e(model.get('chosen'))}; model_version {_e(model.get('model_version'))}).</p>"
        )
    if decision and decision.get("decision"):
        metric = decision.get("metric")
        rows = []
        for who in ("candidate", "champion"):
            entry = decision.get(who)
            if not entry:
                continue
            metrics = entry.get("metrics") or {}
            name = "candidate" if who == "candidate" else f"champion v{entry.get('version')}"
            rows.append(
                [name, entry.get("model_version"), metrics.get("accuracy"),
                 metrics.get("macro_f1"), metrics.get("rows")]
            )  # fmt: skip
        parts.append(
            f"<p>Promotion gate: {_status(decision['decision'])} &mdash; "
            f"{_e(decision.get('reason'))}</p>"
        )
        parts.append(
            f'<p class="muted">metric {_e(metric)}, tolerance {_e(decision.get("tolerance"))}, '
            f"floor {_e(decision.get('floor'))}, evaluated on "
            f"{_e((decision.get('eval') or {}).get('source'))}</p>"
        )
        parts.append(_table(["model", "model_version", "accuracy", "macro_f1", "rows"], rows))
    elif decision:
        parts.append(f"<p>Promotion gate: {_status(decision.get('status'))} "
                     f"{_e(decision.get('reason') or '')}</p>")  # fmt: skip
    return "".join(parts)


def _models_section(manifest: dict) -> str:
    """The architectures trained on this date's split, side by side: eval split and scored rows."""
    models = manifest.get("models") or {}
    if len(models) < 2:
        return ""
    scored_with = (manifest.get("model") or {}).get("dir")
    rows = []
    for name, entry in models.items():
        eval_m, scored_m = entry.get("eval") or {}, entry.get("scored_rows") or {}
        rows.append(
            [
                name,
                "yes" if entry.get("dir") == scored_with else "",
                eval_m.get("accuracy"),
                eval_m.get("macro_f1"),
                scored_m.get("accuracy"),
                scored_m.get("macro_f1"),
                scored_m.get("rows"),
                entry.get("model_version"),
            ]
        )
    header = ["architecture", "scored", "eval accuracy", "eval macro-F1", "scored-rows accuracy",
              "scored-rows macro-F1", "scored rows", "model_version"]  # fmt: skip
    note = (
        "Every architecture the run trained, on the same eval split and (when the scored data "
        "has labels) on the scored rows, evaluated with the same code (textclf evaluate); "
        "'scored' marks the model that wrote the scores."
    )
    return f'<h2>Models compared</h2><p class="muted">{_e(note)}</p>' + _table(
        header, rows, left=(0, 1, 7)
    )


def _scored_confusion(scored: dict | None) -> str:
    """The scored rows' confusion matrix (single-label, labels passed through) as an inline
    PNG, drawn like the eval split's (pipeline/export.py)."""
    if not scored or not scored.get("confusion_matrix") or not scored.get("per_class"):
        return ""
    import tempfile

    from pipeline.export import plot_confusion_matrix

    names = list(scored["per_class"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scored_confusion.png")
        plot_confusion_matrix(scored["confusion_matrix"], names, path)
        return "<h2>Scored rows</h2>" + _image(
            path, f"confusion matrix of the scored rows vs their {scored.get('label_column')}"
        )
