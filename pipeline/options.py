"""What every Beam stage shares about options and runners.

Each stage declares its flags on a `PipelineOptions` subclass. Beam's `get_all_options()` builds
ONE parser from every such subclass loaded in the process (preprocess, train and score together
in `textclf run` or a test session), so a stage's flags are never argparse-required (each stage
checks its own in `parse`) and a flag two stages declare (`--input`, `--model_dir`) must replace
rather than clash: `allow_shared_flags`. `make_pipeline` picks the runner.
"""

from __future__ import annotations

import argparse
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.portability.fn_api_runner import fn_runner


class _DropInMemoryWorkersWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode should be" not in record.getMessage()


_IN_MEMORY_WORKERS_WARNING = _DropInMemoryWorkersWarning()


def allow_shared_flags(parser: argparse.ArgumentParser) -> None:
    """Let a later declaration of the same flag replace an earlier one instead of raising.

    argparse checks conflicts in the group an option lands in (the parser's default groups
    copied the handler when they were made), so the handler is set on the parser and its groups.
    """
    for container in (parser, *parser._action_groups):
        container.conflict_handler = "resolve"


def make_pipeline(options: PipelineOptions, threads_by_default: bool = False) -> beam.Pipeline:
    """A pipeline on the given runner; with none given, Beam's in-process FnApiRunner.

    Beam's DirectRunner first tries to start Prism (a Go binary it downloads at run time), which
    costs time, fails offline, and on a connected machine would run the job on another engine
    than the one tested; it then falls back to this same FnApiRunner. --direct_running_mode and
    --direct_num_workers are honoured either way. With `threads_by_default` and neither flag
    given, the runner works in process with one worker per core: `in_memory` mode with
    direct_num_workers = cores runs each stage's bundles on that many threads, one embedded
    SDK worker each, without the gRPC data plane of `multi_threading` (preprocess, 1.2M docs
    on 2 cores: 17.8 s against 20.0 s; one worker: slower still). Beam logs a warning that
    in_memory ignores direct_num_workers; for this Beam version it does not, so that warning
    is dropped when the choice is ours.
    """
    if options.view_as(StandardOptions).runner is not None:
        return beam.Pipeline(options=options)
    given = options.get_all_options(drop_default=True)
    if threads_by_default and not {"direct_running_mode", "direct_num_workers"} & set(given):
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 0  # the runner reads 0 as one worker per core
        logging.getLogger(fn_runner.__name__).addFilter(_IN_MEMORY_WORKERS_WARNING)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)


def run_and_log_counters(p: beam.Pipeline, logger, namespaces: tuple[str, ...]) -> None:
    """Run the pipeline, wait for it, and log the Beam counters of `namespaces` (progress a
    person can follow; the numbers of record are in each stage's stats.json)."""
    result = p.run()
    result.wait_until_finish()
    try:
        metrics = result.metrics().query()
    except Exception:  # noqa: BLE001 - a runner without metrics support must not fail the job
        return
    for counter in metrics.get("counters", []):
        if counter.key.metric.namespace in namespaces:
            value = counter.committed if counter.committed is not None else counter.attempted
            logger.info("counter %s: %s", counter.key.metric.name, value)
    for dist in metrics.get("distributions", []):
        value = dist.committed if dist.committed is not None else dist.attempted
        if dist.key.metric.namespace in namespaces and value is not None and value.count:
            logger.info(
                "distribution %s: count %d, mean %.1f, max %s",
                dist.key.metric.name,
                value.count,
                value.mean,
                value.max,
            )
