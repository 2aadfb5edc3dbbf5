"""Progress lines for long Beam steps: `LogProgress`, a pass-through step that counts what goes by.

A 300k-row score or a million-document preprocess would otherwise print nothing until it ends.
`LogProgress(stage, unit)` passes its elements on unchanged and counts them (an Arrow table or
record batch counts its rows, anything else counts 1), in a Beam counter (namespace
`PROGRESS_METRICS`, so a runner's UI shows it) and in a tally per worker process shared by the
step's DoFn instances (the threads of an in-process DirectRunner count together). At most every
`every_seconds` it logs one INFO line per process, `score: 120,000 rows read, 9,800 rows/s, 12 s
elapsed`, and a last one when the process's last instance of the step is torn down. The interval
comes from the environment variable TEXTCLF_PROGRESS_SECONDS (default 30; 0 turns the lines off,
not the counter), read when the pipeline is built, so the launching process decides for its
workers. This module owns the counting and the wording; where the lines go is the logging
configuration's business (`textclf` logs INFO on stderr), and which steps are counted is the
stage graphs'.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

PROGRESS_METRICS = "textclf.progress"
PROGRESS_SECONDS_ENV = "TEXTCLF_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0

_LOG = logging.getLogger(__name__)


def progress_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between progress lines, from TEXTCLF_PROGRESS_SECONDS (default 30; 0: no lines).
    Raises ValueError, naming the variable, for a value that is not a number >= 0."""
    raw = environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ValueError(
            f"{PROGRESS_SECONDS_ENV}={raw!r} is not a number of seconds >= 0; set it to e.g. 30, "
            "or 0 to turn the progress lines off"
        )
    return seconds


class _Tally:
    """One step's count in this process, shared by its DoFn instances (one per thread)."""

    def __init__(self, every_seconds: float):
        self.lock = threading.Lock()
        self.count = 0
        self.started = time.monotonic()  # when the step's first instance was set up here
        self.last = self.started  # when the last element went by
        self.next_line = self.started + every_seconds
        self.instances = 0


# Tallies by the key a `LogProgress` draws when the pipeline is built (so two pipelines, or two
# steps, in one process never share one). Not `apache_beam.utils.shared.Shared`: a fused stage
# keeps only one Shared object alive, and the scoring model's must be that one.
_TALLIES: dict[str, _Tally] = {}
_TALLIES_LOCK = threading.Lock()


def _rows(element) -> int:
    return element.num_rows if isinstance(element, pa.Table | pa.RecordBatch) else 1


class _CountAndLog(beam.DoFn):
    def __init__(self, stage: str, unit: str, every_seconds: float, key: str):
        self._stage, self._unit, self._every, self._key = stage, unit, every_seconds, key
        self._counter_name = re.sub(r"\W+", "_", f"{stage} {unit}").strip("_")

    def setup(self):
        self._counter = Metrics.counter(PROGRESS_METRICS, self._counter_name)
        with _TALLIES_LOCK:
            if self._key not in _TALLIES:
                _TALLIES[self._key] = _Tally(self._every)
            self._tally = _TALLIES[self._key]
            self._tally.instances += 1

    def process(self, element):
        rows = _rows(element)
        self._counter.inc(rows)
        if self._every > 0:
            tally, now = self._tally, time.monotonic()
            with tally.lock:
                tally.count += rows
                tally.last = now
                if now >= tally.next_line:
                    tally.next_line = now + self._every
                    self._log(tally, now)
        yield element

    def teardown(self):
        tally = getattr(self, "_tally", None)
        if tally is None:  # setup did not run
            return
        with _TALLIES_LOCK:
            tally.instances -= 1
            last = tally.instances == 0
            if last:
                del _TALLIES[self._key]
        if last and self._every > 0 and tally.count:
            self._log(tally, tally.last, final=True)  # timed to the last element, not to now

    def _log(self, tally: _Tally, now: float, final: bool = False) -> None:
        elapsed = now - tally.started
        rate = f"{tally.count / max(elapsed, 1e-3):,.0f} {self._unit.split()[0]}/s"
        _LOG.info(
            "%s: %s %s, %s, %s elapsed%s",
            self._stage,
            f"{tally.count:,}",
            self._unit,
            rate,
            _duration(elapsed),
            " (done)" if final else "",
        )


def _duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min: what a person reads at a glance."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogProgress(beam.PTransform):
    """PCollection -> the same PCollection (same elements, same type), counted on the way.

    `stage` and `unit` make the line: LogProgress("score", "rows read") logs `score: 120,000 rows
    read, 9,800 rows/s, 12 s elapsed`; the counter is `score_rows_read` in PROGRESS_METRICS.
    `every_seconds` (None: `progress_seconds()`, from the environment) is the least time between
    two lines of one process; 0 keeps the counter and logs nothing.
    """

    def __init__(self, stage: str, unit: str, every_seconds: float | None = None):
        super().__init__()
        every = progress_seconds() if every_seconds is None else float(every_seconds)
        if not every >= 0:
            raise ValueError(f"every_seconds must be >= 0, not {every_seconds!r}")
        self._fn = _CountAndLog(stage, unit, every, key=uuid.uuid4().hex)

    def expand(self, pcoll):
        return pcoll | "CountAndLog" >> beam.ParDo(self._fn).with_output_types(pcoll.element_type)
