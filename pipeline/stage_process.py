"""One stage of `textclf run` as a child process: `textclf <stage> argv`, its exit code and why.

This module owns starting a stage, passing its stderr through, stopping it when the run is
stopped, and the one-line reason a failed stage gives; and removing the staging directories a
killed earlier run left. What a stage computes and how it finalizes its output are the stage's.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from pipeline import outputs

_LOG = logging.getLogger("textclf.run")


def _last_line(lines: Sequence[str], prefix: str) -> str | None:
    """The last line that starts with `prefix` (prefix removed), else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return lines[-1] if lines else None


def call_stage(stage: str, argv: list[str]) -> tuple[int, str | None]:
    """Run `textclf <stage> argv` in a child process: (exit code, one-line reason or None).

    A child per stage keeps each stage's process-wide state apart (Beam's registry of options,
    TensorFlow's memory and threads) and lets a killed run stop the stage it was in. The child's stderr is passed through line by line; its last
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
    """Remove staging dirs a killed run left beside `stage_dir` (the caller holds the run lock)."""
    if not outputs.is_local(stage_dir):
        return
    parent, name = os.path.split(stage_dir.rstrip("/"))
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.inprogress-*")):
        _LOG.info("removing %s, left by an unfinished earlier run", stale)
        outputs.discard(stale)
