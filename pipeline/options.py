"""What the stages share about flags, Beam options and runners.

Every stage parses its command line one way. Its `build_parser()` is a plain argparse parser
holding only the stage's own flags (`prog="textclf <stage>"`, required flags argparse-required,
no abbreviations: flags match exactly, as Beam's do), and its `parse(argv)` reads `argv` once
with `parse_known_args`. For the Beam stages (`parse_beam_stage`) what is left, in its order,
becomes Beam's `PipelineOptions`; train (`parse_own_flags`) takes nothing else. A flag that
neither the stage nor Beam declares exits 2 with one line naming it, before any work. The
stages' options are not `PipelineOptions` subclasses, so Beam's parser (built from every
subclass loaded in the process) never holds them, and stages loaded together in one process do
not see each other's flags (the one subclass here, `_ViewsMadeOnce`, declares no flag).
`make_pipeline` picks the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import types
from collections.abc import Sequence
from typing import TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.portability.fn_api_runner import fn_runner

from transforms.contracts import EXIT_BAD_INPUT

# The --help epilog of the Beam stages.
BEAM_FLAGS_HELP = (
    "Other flags are Beam pipeline options (--runner, --direct_num_workers, --temp_location, "
    "...); a flag that neither this stage nor Beam declares is refused (exit 2). Without "
    "--runner the pipeline runs in this process on the FnApiRunner (Beam's DirectRunner minus "
    "its Prism attempt)."
)

StageOptions = TypeVar("StageOptions", bound=argparse.Namespace)


class _DropInMemoryWorkersWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode should be" not in record.getMessage()


_IN_MEMORY_WORKERS_WARNING = _DropInMemoryWorkersWarning()


def parse_beam_stage(
    parser: argparse.ArgumentParser, argv: Sequence[str], options: StageOptions
) -> tuple[StageOptions, PipelineOptions]:
    """A Beam stage's command line, read once: its own flags (`parser`) into `options`, the rest,
    in the order given, into Beam's PipelineOptions. Exits 2 naming what Beam does not declare
    either, or a Beam flag's unusable value."""
    options, rest, missing = _parse_known(parser, argv, options)
    beam_parser = _beam_parser()
    beam_parser.exit_on_error = False  # a bad value: one line below, not Beam's whole usage
    try:
        _, unknown = beam_parser.parse_known_args(rest)
    except argparse.ArgumentError as err:
        parser.exit(EXIT_BAD_INPUT, f"{parser.prog}: {err}\n")
    _refuse_unknown(parser, unknown, "not a flag of this stage (see --help) nor of Beam")
    _refuse_missing(parser, missing)
    return options, PipelineOptions(rest)


def parse_own_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str], options: StageOptions
) -> StageOptions:
    """A command line with no Beam in it (train): `parser`'s flags into `options`; anything else
    exits 2 with one line naming it."""
    options, rest, missing = _parse_known(parser, argv, options)
    _refuse_unknown(parser, rest, "see --help")
    _refuse_missing(parser, missing)
    return options


def _parse_known(parser: argparse.ArgumentParser, argv: Sequence[str], options: StageOptions):
    """`parser.parse_known_args` that leaves the required flags' check to the caller (returned
    as the flags missing), so that a misspelled required flag (`--text_colum`) is named as the
    unknown flag it is, not reported as `--text_column` missing."""
    asks_help = any(arg in ("-h", "--help") for arg in argv)  # whose usage marks them required
    required = [action for action in parser._actions if action.required and not asks_help]
    for action in required:
        action.required = False
    try:
        options, rest = parser.parse_known_args(list(argv), options)
    finally:
        for action in required:
            action.required = True
    missing = [a.option_strings[0] for a in required if getattr(options, a.dest, None) is None]
    return options, rest, missing


def _refuse_missing(parser: argparse.ArgumentParser, missing: list[str]) -> None:
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def _beam_parser() -> argparse.ArgumentParser:
    """The parser Beam builds from every PipelineOptions subclass loaded in this process."""
    built = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
    return built[0]


def unknown_beam_flags(argv: list[str]) -> list[str]:
    """The arguments of `argv` that Beam's registered options do not take (misspelled flags,
    stray values); what `textclf run` refuses in a config's `[beam]` before anything runs."""
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error):
            _, unknown = _beam_parser().parse_known_args(argv)
    except SystemExit:  # a value Beam's parser refuses
        return [error.getvalue().strip().splitlines()[-1]]
    return unknown


def _refuse_unknown(parser: argparse.ArgumentParser, unknown: list[str], hint: str) -> None:
    """Exit 2 with one line naming the flags in `unknown` (the values after them are theirs),
    or the stray values when there is no flag among them."""
    if not unknown:
        return
    flags = [arg.partition("=")[0] for arg in unknown if arg.startswith("-")]
    if flags:
        named = f"unknown flag(s): {' '.join(flags)}"
    else:
        named = f"stray value(s): {' '.join(unknown)}"
    parser.exit(EXIT_BAD_INPUT, f"{parser.prog}: {named}; {hint}\n")


class _ViewsMadeOnce(PipelineOptions):
    """Beam's PipelineOptions whose `view_as(cls)` makes each class's view once.

    Beam 2.77 builds a new argparse parser for every `view_as` call, and its type checks call it
    for every transform applied and every type-hint comparison: ~700 parsers, about 1 s of
    single-threaded CPU, per preprocess run (profiled). A view holds no state of its own (it reads
    and writes the options' one `_all_options` dict), so reusing it changes nothing else. The
    views are dropped when the options are copied or pickled (`Pipeline` deep-copies them).
    Written by hand because Beam has no switch for it.
    """

    _VIEWS = "_views_made_once"

    @classmethod
    def of(cls, options: PipelineOptions) -> PipelineOptions:
        """The same options (flags and values, shared with `options`), views made once."""
        if isinstance(options, cls):
            return options
        made = cls.__new__(cls)
        object.__setattr__(made, "__dict__", dict(options.__dict__))
        return made

    def view_as(self, cls):
        views = self.__dict__.setdefault(self._VIEWS, {})
        view = views.get(cls)
        if view is None:
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop(self._VIEWS, None)
        return state


# The Beam version whose internals the trims below (`_share_map_dofn_specs`, `_skip_idle_workers`,
# `_stop_state_samplers_promptly`) were checked against; on any other version none is applied.
_BEAM_CHECKED_ON = "2.77.0"


def _share_map_dofn_specs() -> None:
    """Make Beam's `userstate.get_dofn_specs` compute Map/FlatMap's answer once per process.

    Beam asks every DoFn for its state and timer specs about six times per run (ParDo's
    constructor, `to_runner_api`, each in-process worker's bundle processor); each time it
    walks every attribute of the DoFn and builds an `inspect` signature of each method: ~1.4 ms a
    call, ~1 s of a preprocess run's fixed cost (700 calls, profiled; tf.Transform's graph holds
    ~120 Map/FlatMaps). The answer depends only on the bound methods `dir(dofn)` finds (and
    their `_inspect_<name>` hooks). For a `CallableWrapperDoFn` (what Map, FlatMap and Filter
    wrap a function, builtin, partial or callable object in) with no bound method among its
    instance attributes, those are its class's methods, the same for every instance (Beam 2.77
    does not read state-parameter defaults of a `process` that is a plain function), so the
    answer is computed once and every caller gets a copy. Every other DoFn (a DoFn subclass, or
    one wrapping a bound method: the ones that can declare state) goes to Beam's own function.
    Process-wide once applied (pipelines built later in the process share it), only on the
    Beam version it was checked against; threads racing on the first call compute equal
    answers. Written by hand because Beam has no switch for it (measured: 20 Newsgroups
    preprocess 7.6 s -> 6.4 s, 2 cores).
    """
    from apache_beam.transforms import core, userstate

    found = userstate.get_dofn_specs
    if beam.__version__ != _BEAM_CHECKED_ON or getattr(found, "shares_map_specs", False):
        return
    known: list = []

    def get_dofn_specs(dofn):
        if type(dofn) is not core.CallableWrapperDoFn or any(
            isinstance(value, types.MethodType) for value in vars(dofn).values()
        ):
            return found(dofn)
        if not known:
            known.append(found(dofn))
        states, timers = known[0]
        return set(states), set(timers)

    get_dofn_specs.shares_map_specs = True
    get_dofn_specs.__wrapped__ = found
    userstate.get_dofn_specs = get_dofn_specs


def _skip_idle_workers() -> None:
    """Make the in-process runner run a stage's bundle on one worker when only one has input.

    With direct_num_workers = N, Beam's `ParallelBundleManager` splits every bundle's input N
    ways and runs N bundles, even when the input is one element (an Impulse, a combine's one
    accumulator, a single Parquet row group): N-1 of them get nothing, yet each builds its own
    bundle processor (every DoFn of the stage unpickled and set up, tf.Transform's graph state
    acquired) and reports metrics, in parallel with the one doing the work and competing for the
    GIL. A preprocess run has ~20 stages, most of them one element, and that was a third of its
    fixed cost (README.md, "Benchmarks"). Here the input is split as Beam splits it; when at
    most one part holds data (in practice: one element, key or encoded chunk) and no timer
    fired, that part runs as one plain bundle, as Beam's own `BundleManager` runs it when N is 1
    (on the worker its round-robin picks, in the calling thread). Bundles with input for several
    workers run as before. An empty bundle produces nothing in Beam's model (a DoFn may still
    start and finish it), and no DoFn here writes anything for one, so the output is the same
    (whole preprocess outputs compared byte for byte; tests/pipeline/test_flags.py). One
    difference: Beam's parallel path merges only its bundles' metrics and errors, dropping the
    residuals a splittable DoFn defers (`defer_remainder`), which the one-bundle path keeps, as
    N = 1 does; no DoFn here defers work. Process-wide once applied, only on the Beam version it
    was checked against. Written by hand because Beam has no switch for it.
    """
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    manager = fn_runner.ParallelBundleManager
    found = manager.process_bundle
    if beam.__version__ != _BEAM_CHECKED_ON or getattr(found, "skips_idle_workers", False):
        return

    def process_bundle(
        self, inputs, expected_outputs, fired_timers, expected_output_timers, dry_run=False
    ):
        parts: list[dict] = [{} for _ in range(self._num_workers)]
        for name, buffer in inputs.items():
            for ix, part in enumerate(buffer.partition(self._num_workers)):
                parts[ix][name] = part
        busy = [
            part
            for part in parts
            if any(len(chunk) for chunks in part.values() for chunk in chunks)
        ]
        if len(busy) > 1 or fired_timers:
            return found(
                self, inputs, expected_outputs, fired_timers, expected_output_timers, dry_run
            )
        one = fn_runner.BundleManager(
            self.bundle_context_manager,
            self._progress_frequency,
            cache_token_generator=self._cache_token_generator,
        )
        return one.process_bundle(
            busy[0] if busy else parts[0],
            expected_outputs,
            fired_timers,
            expected_output_timers,
            dry_run,
        )

    process_bundle.skips_idle_workers = True
    process_bundle.__wrapped__ = found
    manager.process_bundle = process_bundle


# How often (ms) the in-process workers' state samplers wake; Beam's default is 200.
SAMPLING_PERIOD_MS = 10


def _stop_state_samplers_promptly() -> None:
    """Make each bundle's state sampler wake every `SAMPLING_PERIOD_MS`, not every 200 ms.

    Every bundle of Beam's SDK worker starts a thread that samples which transform is running
    (the msecs metrics and the "processing stuck" log), sleeping in steps that grow to 200 ms;
    when the bundle ends, the worker joins that thread, so it waits out the sleep in progress:
    up to 200 ms per bundle, ~100 ms on average for a bundle that ran a second or more. A
    preprocess run's two corpus passes are such bundles, one per worker, each stage waiting for
    its slowest: their times came in steps of 0.2 s (README.md, "Benchmarks"). A 10 ms period
    costs the sampler 100 wake-ups a second, each a lock and a clock read; the metrics are as
    accurate. Applied to samplers made in this process after the call (Beam builds one per
    bundle processor; a LOOPBACK portable run's worker, in the same process, gets it too; the
    worker processes of `multi_processing` do not), only on the Beam version it was checked
    against. Written by hand because Beam has no option for it.
    """
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if beam.__version__ == _BEAM_CHECKED_ON and init.__defaults__ == (
        statesampler.DEFAULT_SAMPLING_PERIOD_MS,
    ):
        init.__defaults__ = (SAMPLING_PERIOD_MS,)


def make_pipeline(options: PipelineOptions, threads_by_default: bool = False) -> beam.Pipeline:
    """A pipeline on the given runner; with none given, Beam's in-process FnApiRunner.

    Beam's DirectRunner first tries to start Prism (a Go binary it downloads at run time), which
    costs time, fails offline, and on a connected machine would run the job on another engine
    than the one tested; it then falls back to this same FnApiRunner. --direct_running_mode and
    --direct_num_workers are honoured either way. With `threads_by_default` and neither flag
    given, the runner works in process with one worker per core: `in_memory` mode with
    direct_num_workers = cores runs each stage's bundles on that many threads, one embedded
    SDK worker each, without the gRPC data plane of `multi_threading` (faster for preprocess in
    README's benchmark; one worker is slower still). Beam logs a warning that
    in_memory ignores direct_num_workers; for this Beam version it does not, so that warning
    is dropped when the choice is ours. Views of the options are made once (`_ViewsMadeOnce`), and
    so are Map/FlatMap's DoFn specs (`_share_map_dofn_specs`); a bundle with input for one worker
    alone runs as one bundle (`_skip_idle_workers`), and its end waits at most `SAMPLING_PERIOD_MS`
    for the state sampler (`_stop_state_samplers_promptly`).
    """
    options = _ViewsMadeOnce.of(options)
    _share_map_dofn_specs()
    if options.view_as(StandardOptions).runner is not None:
        return beam.Pipeline(options=options)
    given = options.get_all_options(drop_default=True)
    if threads_by_default and not {"direct_running_mode", "direct_num_workers"} & set(given):
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 0  # the runner reads 0 as one worker per core
        logging.getLogger(fn_runner.__name__).addFilter(_IN_MEMORY_WORKERS_WARNING)
    _skip_idle_workers()
    _stop_state_samplers_promptly()
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


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long flags by name without `--` (`{"input": action, "lowercase": action}`);
    the `--no-x` half of a BooleanOptionalAction is its `x`, and `--help` is left out."""
    flags = {}
    for action in parser._actions:  # argparse lists its actions nowhere public
        for option in action.option_strings:
            negation = option.startswith("--no-") and f"--{option[5:]}" in action.option_strings
            if option.startswith("--") and option != "--help" and not negation:
                flags[option[2:]] = action
    return flags


def flags_from_mapping(parser: argparse.ArgumentParser, mapping: dict[str, object]) -> list[str]:
    """`{flag: value}` -> the command line that sets those values, by each flag's own action.

    The one place that turns settings into flags: `textclf run` maps its config sections with it,
    the Flex Template launcher its `--name=value` parameters. For a flag of `parser`:
    * a switch (an action that takes no value: store_true, BooleanOptionalAction) takes true or
      false, as a bool or the string "true"/"false": `--x`, `--no-x`, or nothing when false is
      the default;
    * a flag of several values (nargs "+"/"*") takes a list or a comma-separated string, given
      once: `--input a b`;
    * any other flag takes one value, a list being comma-joined: `--columns=a,b`.
    Any other name is a Beam option and maps as Beam's `PipelineOptions.from_dictionary` does:
    true is `--x`, false leaves it out, a list repeats the flag (`--experiments=a
    --experiments=b`), a table is JSON, anything else `--x=value`. Raises ValueError, naming the
    flag, for a value that its flag cannot take.
    """
    flags = parser_flags(parser)
    argv: list[str] = []
    for name, value in mapping.items():
        action = flags.get(name)
        if action is None:
            argv += _beam_flags(name, value)
        elif action.nargs == 0:
            argv += _switch_flags(name, action, value)
        elif isinstance(value, bool | dict):
            raise ValueError(f"{name} takes a value, not {value!r}")
        elif action.nargs in (None, "?"):
            one = ",".join(map(str, value)) if isinstance(value, list) else value
            argv.append(f"--{name}={one}")
        else:
            items = value if isinstance(value, list) else str(value).split(",")
            items = [str(item).strip() for item in items if str(item).strip()]
            if not items and action.nargs != "*":
                raise ValueError(f"{name} is empty; give one value or more")
            argv += [f"--{name}", *items]
    return argv


def _switch_flags(name: str, action: argparse.Action, value) -> list[str]:
    if isinstance(value, str):
        value = {"true": True, "false": False}.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    if f"--no-{name}" in action.option_strings:
        return [f"--{name}" if value else f"--no-{name}"]
    if value == action.const:
        return [f"--{name}"]
    if value == bool(action.default):
        return []
    raise ValueError(f"{name} is a switch that sets {action.const!r}; it cannot be {value!r}")


def _beam_flags(name: str, value) -> list[str]:
    import json

    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    if isinstance(value, list):
        return [f"--{name}={item}" for item in value]
    if isinstance(value, dict):
        return [f"--{name}={json.dumps(value)}"]
    return [] if value is None else [f"--{name}={value}"]
