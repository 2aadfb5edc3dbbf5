"""LogProgress on Beam's in-process FnApiRunner (the DirectRunner's engine): it passes elements
on unchanged, counts Arrow rows or elements in a Beam counter, and logs progress lines whose last
count is the whole input; TEXTCLF_PROGRESS_SECONDS sets the interval."""

from __future__ import annotations

import logging
import re

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.options import make_pipeline
from transforms.progress import (
    DEFAULT_PROGRESS_SECONDS,
    PROGRESS_METRICS,
    PROGRESS_SECONDS_ENV,
    LogProgress,
    progress_seconds,
)

LINE = re.compile(r"^test: ([\d,]+) rows read, [\d,]+ rows/s, \d+ s elapsed( \(done\))?$")


def _tables(count: int, rows: int) -> list[pa.Table]:
    return [pa.table({"x": list(range(i * rows, (i + 1) * rows))}) for i in range(count)]


def _run(pipeline: beam.Pipeline, elements: list, every_seconds: float, element_type=None):
    """`elements` through LogProgress("test", "rows read") on `pipeline`; its counter's value."""
    create = beam.Create(elements)
    created = pipeline | (create.with_output_types(element_type) if element_type else create)
    _ = created | "Progress" >> LogProgress("test", "rows read", every_seconds=every_seconds)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(PROGRESS_METRICS))
    [counter] = counters["counters"]
    assert counter.key.metric.name == "test_rows_read"
    return counter.committed


def _progress_lines(caplog) -> list[tuple[int, bool]]:
    """(count, is the last line) of each progress line logged."""
    lines = []
    for record in caplog.records:
        match = LINE.match(record.getMessage())
        if match:
            lines.append((int(match.group(1).replace(",", "")), bool(match.group(2))))
    return lines


def test_elements_pass_through_unchanged():
    tables = _tables(3, 4)
    with TestPipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(tables).with_output_types(pa.Table)
            | LogProgress("test", "rows read", every_seconds=0)
        )
        assert_that(
            out | beam.Map(lambda t: t.column("x").to_pylist()),
            equal_to([t.column("x").to_pylist() for t in tables]),
        )
        assert out.element_type == pa.Table


def test_progress_lines_count_the_rows_of_arrow_batches_up_to_the_whole_input(caplog):
    """On the in-process runner with four worker threads: the threads share one tally, so the
    lines count up and the last one, logged at teardown, is every row read."""
    caplog.set_level(logging.INFO, logger="transforms.progress")
    options = PipelineOptions(["--direct_running_mode=in_memory", "--direct_num_workers=4"])

    counted = _run(make_pipeline(options), _tables(40, 250), 1e-6, pa.Table)

    lines = _progress_lines(caplog)
    assert counted == 10_000
    assert len(lines) >= 2, caplog.text
    assert [count for count, _ in lines] == sorted(count for count, _ in lines)
    assert lines[-1] == (10_000, True)


def test_plain_elements_count_one_each():
    counted = _run(make_pipeline(PipelineOptions([])), list(range(1234)), 0)
    assert counted == 1234


def test_zero_seconds_logs_nothing_but_still_counts(caplog):
    caplog.set_level(logging.INFO, logger="transforms.progress")

    counted = _run(make_pipeline(PipelineOptions([])), _tables(5, 10), 0, pa.Table)

    assert counted == 50
    assert _progress_lines(caplog) == []


def test_a_long_interval_logs_only_the_last_line(caplog):
    caplog.set_level(logging.INFO, logger="transforms.progress")

    _run(make_pipeline(PipelineOptions([])), _tables(5, 10), 3600, pa.Table)

    assert _progress_lines(caplog) == [(50, True)]


def test_the_interval_comes_from_the_environment():
    assert progress_seconds({}) == DEFAULT_PROGRESS_SECONDS
    assert progress_seconds({PROGRESS_SECONDS_ENV: "0"}) == 0
    assert progress_seconds({PROGRESS_SECONDS_ENV: " 2.5 "}) == 2.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ValueError, match=PROGRESS_SECONDS_ENV):
            progress_seconds({PROGRESS_SECONDS_ENV: bad})


def test_the_step_reads_the_environment_when_the_pipeline_is_built(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="transforms.progress")
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    p = make_pipeline(PipelineOptions([]))
    _ = (
        p
        | beam.Create(_tables(3, 5)).with_output_types(pa.Table)
        | LogProgress("test", "rows read")
    )
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "3600")  # too late: the step was built with 0

    p.run().wait_until_finish()

    assert _progress_lines(caplog) == []
