"""report.html: self-contained, shows each stage's accounting and the metrics, renders in Chromium.

The run directory is built here in code: a model directory with metrics.json and the two PNGs
drawn by the trainer's own plotting functions, and a manifest, either written out as `textclf
run` writes it or recorded by pipeline/manifest.py from the stages' own output files.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

from pipeline import export, manifest, outputs, report
from transforms.contracts import METRICS_FILE, REPORT_FILE, STATS_FILE, SUCCESS_FILE

CHROMIUM = "/usr/bin/chromium"
CLASSES = ["comp.graphics", "rec.autos", "sci.space"]


@pytest.fixture
def run_dir(tmp_path):
    run_dir = tmp_path / "2024-03-01"
    model = run_dir / "model"
    model.mkdir(parents=True)
    history = {
        "loss": [1.1, 0.7, 0.5],
        "accuracy": [0.4, 0.7, 0.8],
        "val_loss": [1.0, 0.8, 0.7],
        "val_accuracy": [0.5, 0.66, 0.71],
    }
    confusion = [[30, 3, 2], [4, 25, 6], [1, 2, 27]]
    metrics = {
        "rows": 100,
        "accuracy": 0.82,
        "macro_f1": 0.815,
        "per_class": {
            c: {"precision": 0.8, "recall": 0.85, "f1": 0.824, "support": 35} for c in CLASSES
        },
        "confusion_matrix": confusion,
    }
    outputs.write_json(str(model / METRICS_FILE), metrics)
    export.plot_training_curves(history, str(model / export.CURVES_PNG))
    export.plot_confusion_matrix(confusion, CLASSES, str(model / export.CONFUSION_PNG))
    (model / "_SUCCESS").write_text("2024-03-01T00:00:00+00:00\n")
    return run_dir


def _manifest(run_dir, status="succeeded", reason=None) -> dict:
    return {
        "run_date": "2024-03-01",
        "status": status,
        "reason": reason,
        "seconds": 12.5,
        "config_file": "/jobs/news.toml",
        "started_at": "2024-03-01T01:00:00+00:00",
        "finished_at": "2024-03-01T01:00:12+00:00",
        "versions": {"python": "3.11.7", "tensorflow": "2.21.0"},
        "stages": {
            "preprocess": {
                "status": "ran",
                "seconds": 4.0,
                "dir": str(run_dir / "data"),
                "rows": {
                    "rows_read": 1234,
                    "rows_written": {"train": 1100, "eval": 120},
                    "rows_dead_lettered": 14,
                    "dead_letter_reasons": {"text_is_empty": 14},
                    "rows_accounted": True,
                },
            },
            "train": {
                "status": "skipped",
                "seconds": 6.0,
                "dir": str(run_dir / "model"),
                "model_version": "20240301T010000Z-abcd1234",
                "rows": {"rows_seen": {"train": 1100, "eval": 120}, "epochs_run": 3},
            },
            "score": {
                "status": "failed" if reason else "ran",
                "seconds": 2.5,
                "dir": str(run_dir / "scores"),
                "reason": reason,
                "rows": None
                if reason
                else {
                    "rows_read": 777,
                    "rows_scored": 770,
                    "rows_dead_lettered": 7,
                    "dead_letter_reasons": {"text_is_null": 7},
                    "rows_accounted": True,
                },
            },
        },
        "metrics": {
            "eval": {"accuracy": 0.82, "macro_f1": 0.815, "rows": 120},
            "scored": None if reason else {"accuracy": 0.79, "macro_f1": 0.78, "rows": 770},
        },
        "scored_evaluation": None,
    }


class _Tables(HTMLParser):
    """Each table of a page as {heading: [rows of cell texts]}, under the heading before it."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self._text, self._row = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3", "th", "td"):
            self._text = ""
        elif tag == "tr":
            self._row = []

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self.heading, self._text = self._text, None
        elif tag in ("th", "td"):
            self._row.append(self._text)
            self._text = None
        elif tag == "tr":
            self.tables.setdefault(self.heading, []).append(self._row)


def tables(page: str) -> dict[str, list[list[str]]]:
    found = _Tables()
    found.feed(page)
    return found.tables


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "src" in attrs:
            self.srcs.append(attrs["src"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])


def _finished(stage_dir, files: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        outputs.write_json(str(stage_dir / name), content)
    (stage_dir / SUCCESS_FILE).write_text("2024-03-01T00:00:00+00:00\n")


def test_report_shows_the_figures_the_stages_wrote_as_the_manifest_records_them(run_dir):
    """stats.json / metrics.json -> pipeline/manifest.py -> report.html, figure for figure."""
    _finished(
        run_dir / "data",
        {
            STATS_FILE: {
                "rows_read": 5001,
                "rows_written": {"train": 4400, "eval": 590},
                "rows_dead_lettered": 11,
                "dead_letter_reasons": {"text is empty": 11},
                "rows_accounted": True,
            }
        },
    )
    _finished(
        run_dir / "scores",
        {
            STATS_FILE: {
                "rows_read": 301,
                "rows_scored": 299,
                "rows_dead_lettered": 2,
                "dead_letter_reasons": {"text is null": 2},
            }
        },
    )
    metrics = outputs.read_json(str(run_dir / "model" / METRICS_FILE))
    metrics.update(rows_seen={"train": 4400, "eval": 590}, epochs_run=4)
    outputs.write_json(str(run_dir / "model" / METRICS_FILE), metrics)
    dirs = {"preprocess": "data", "train": "model", "score": "scores"}
    stages = {
        stage: {
            "status": "ran",
            "dir": str(run_dir / d),
            **manifest.finished_stage(stage, str(run_dir / d)),
        }
        for stage, d in dirs.items()
    }
    recorded = {
        "run_date": "2024-03-01",
        "status": "succeeded",
        "stages": stages,
        "metrics": {"eval": stages["train"]["metrics"], "scored": None},
    }
    found = tables(report.render(str(run_dir), recorded))
    assert found["preprocess"][1] == ["5001", "4400", "590", "11", "text is empty: 11", "True"]
    assert found["train"][1] == ["4400", "590", "4"]
    assert found["score"][1] == ["301", "299", "2", "text is null: 2", "True"]
    assert found["Metrics"][1][:3] == ["eval split (train stage)", "0.8200", "0.8150"]
    assert [row[:2] for row in found["Stages"][1:]] == [
        ["preprocess", "ran"],
        ["train", "ran"],
        ["score", "ran"],
    ]
    assert [row[0] for row in found["Per class"][1:]] == CLASSES


def test_report_is_one_self_contained_page_with_accounting_metrics_and_images(run_dir):
    path = report.write_report(str(run_dir), _manifest(run_dir))
    assert path == str(run_dir / REPORT_FILE)
    page = (run_dir / REPORT_FILE).read_text()
    found = _Collect()
    found.feed(page)
    assert found.hrefs == []  # no stylesheet, script or link to fetch
    assert len(found.srcs) == 2 and "script" not in found.tags
    for src in found.srcs:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(
            io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png"
        )
        assert image.shape[0] > 100 and image.shape[1] > 100
    text = re.sub(r"<[^>]+>", " ", page)
    for expected in (
        "1234",
        "1100",
        "120",
        "text_is_empty: 14",
        "777",
        "770",
        "text_is_null: 7",
        "0.8200",
        "0.7900",
        "20240301T010000Z-abcd1234",
        "sci.space",
        "skipped",
        "Training curves",
    ):
        assert expected in text, expected


def test_report_of_a_failed_run_names_the_failure(run_dir):
    reason = "textclf run: stage score failed (bad input): text column 'body' not found"
    page = report.render(str(run_dir), _manifest(run_dir, "failed", reason))
    assert "stage score failed (bad input): text column &#x27;body&#x27; not found" in page
    assert 'class="failed"' in page


def test_report_without_a_finished_model_still_renders(tmp_path):
    manifest = _manifest(tmp_path, "failed", "textclf run: stage train failed: boom")
    manifest["stages"]["train"] = {"status": "failed", "dir": str(tmp_path / "model")}
    manifest["metrics"] = {"eval": None, "scored": None}
    page = report.render(str(tmp_path), manifest)
    assert "data:image" not in page and "No metrics yet" in page


@pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason=f"{CHROMIUM} missing (CI: apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    report.write_report(str(run_dir), _manifest(run_dir))
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (run_dir / REPORT_FILE).as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    not_white = np.any(pixels < 0.95, axis=-1).mean()
    # Text, table borders and the two plots cover a good share of the first screen; a blank or
    # error page would be (nearly) uniform.
    assert not_white > 0.03, not_white
    assert pixels.std() > 0.05
    # The plots' colours (matplotlib blue/orange lines, the blue confusion matrix) are on screen.
    blue = (pixels[..., 2] > 0.6) & (pixels[..., 0] < 0.4)
    assert blue.mean() > 0.001
