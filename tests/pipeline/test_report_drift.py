"""report.html's drift section, from a manifest whose `drift` is transforms/drift.py's own
comparison of two profiles built here (short training texts vs long scored ones)."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import matplotlib.image
import numpy as np

from pipeline import report
from transforms import drift


class _Page(HTMLParser):
    """The page's h2 headings, image sources and table rows (cell texts)."""

    def __init__(self):
        super().__init__()
        self.headings, self.srcs, self.rows = [], [], []
        self._text, self._row = None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "td", "th"):
            self._text = ""
        elif tag == "tr":
            self._row = []
        elif tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "h2":
            self.headings.append(self._text)
            self._text = None
        elif tag in ("td", "th"):
            self._row.append(self._text)
            self._text = None
        elif tag == "tr":
            self.rows.append(self._row)


def parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    return parsed


def drift_dict() -> dict:
    rng = np.random.default_rng(0)
    train_lengths = rng.integers(3, 16, size=500)
    values, counts = np.unique(train_lengths, return_counts=True)
    stats = {
        "rows_written": {"train": 400, "eval": 100},
        "label_counts": {"train": {"neg": 200, "pos": 200}},
        "token_length_histogram": {
            "bin_edges": list(drift.LENGTH_BIN_EDGES),
            "counts": drift.bin_length_histogram(dict(zip(values.tolist(), counts.tolist()))),
        },
        "oov_rate": 0.01,
    }
    lengths = rng.integers(40, 90, size=200)
    tokens = {
        "rows": 200,
        "length_counts": drift.length_histogram(lengths),
        "window_tokens": 4000,
        "oov_tokens": 4000,
    }
    scored = drift.scoring_profile(tokens, 200, {"neg": 90, "pos": 110}, multi_label=False)
    return drift.compare(drift.training_profile(stats, multi_label=False), scored)


def manifest(drift_figures) -> dict:
    return {"run_date": "2024-03-01", "status": "succeeded", "stages": {}, "drift": drift_figures}


def test_drift_section_tables_the_measures_and_plots_the_token_lengths(tmp_path):
    figures = drift_dict()
    page = report.render(str(tmp_path), manifest(figures))
    parsed = parse(page)
    assert "Drift (scored data vs training data)" in parsed.headings
    by_what = {
        row[0]: row for row in parsed.rows if row and row[0] in dict(report.DRIFT_MEASURES).values()
    }
    assert by_what["token lengths"][7] == "drift"
    assert by_what["OOV rate"][7] == "drift"
    assert by_what["OOV rate"][2:5] == ["0.0100", "1.0000", "0.9900"]
    assert by_what["predicted classes vs training labels"][7] == "ok"
    assert by_what["token lengths"][2].startswith("p50 ")
    for warning in figures["warnings"]:
        assert warning.split(":")[0] in page
    # One inline PNG: the training vs scored token-length histograms.
    (src,) = parsed.srcs
    assert src.startswith("data:image/png;base64,")
    image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # self-contained


def test_no_drift_figures_no_section_and_unmeasured_drift_says_why(tmp_path):
    assert "Drift" not in "".join(parse(report.render(str(tmp_path), manifest(None))).headings)
    unmeasured = {"available": False, "reason": "model/training_profile.json does not exist"}
    page = report.render(str(tmp_path), manifest(unmeasured))
    assert "Drift (scored data vs training data)" in parse(page).headings
    assert "Not measured: model/training_profile.json does not exist" in page
    assert "data:image/png" not in page
