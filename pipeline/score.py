"""`textclf score`: CSV/JSONL/Parquet + a model directory -> scored Parquet, dead letters, stats.

This module owns the scoring stage's flags (`ScoreOptions`), the checks made before any Beam work
(model directory complete, inputs match, text column present and string-typed, pass-through columns
consistent), the wiring of `transforms.score_graph.ScoreParquet` (read -> `ScoreRecordBatches` ->
write) and the job's last step, finalizing the output
directory (`part-*.parquet`, `dead_letter-*.parquet`, `stats.json`, then `_SUCCESS`; nothing is
visible under the output until it is complete, and nothing at all when the row counts disagree or
more than `--max_dead_letter_fraction` of the rows read failed the model call). Finalizing is the
job's own last step, so a launch that returns before the job ends (a Flex Template) still gets a
finished directory. The same step writes the scored rows' profile and its drift against the
model's training_profile.json into stats.json (transforms/drift.py measures it); the CLI warns of
drift and, with `--fail_on_drift`, exits EXIT_DRIFT once the output is complete. The batched
inference itself lives in `transforms/scoring.py`. `score(...)` is the library entry used by
`textclf run`; `main(argv)` is the CLI.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import outputs
from pipeline.artifacts import IncompleteOutput, ModelOutput
from pipeline.options import (
    BEAM_FLAGS_HELP,
    make_pipeline,
    parse_beam_stage,
    run_and_log_counters,
)
from pipeline.registry import RegistryError, resolve_model_dir
from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    EXIT_BAD_INPUT,
    EXIT_DRIFT,
    PARQUET_SUFFIX,
    REASON_COLUMN,
    SCORE_STAGE,
    SCORED_PART_PREFIX,
    STATS_FILE,
    TRAINING_PROFILE_FILE,
)
from transforms.corpus_io import CorpusError, add_format_flags, format_for, passthrough_schema
from transforms.drift import DRIFT, compare, scoring_profile
from transforms.score_graph import (
    DEAD_LETTERED,
    PROFILE,
    READ,
    SCORED,
    WRITTEN_PREFIX,
    ScoreParquet,
    ScoreSettings,
)
from transforms.scoring import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_DEAD_LETTER_FRACTION,
    METRICS_NAMESPACE,
    ScoringModel,
    is_text_type,
)
from transforms.stats import score_stats

_LOG = logging.getLogger(__name__)


class ScoreInputError(ValueError):
    """Bad input found before any pipeline work; the CLI prints it and exits EXIT_BAD_INPUT."""


class ScoreOptions(argparse.Namespace):
    """The scoring stage's settings: one attribute per flag of `build_parser()`. Beam's own
    flags (--runner, ...) are parsed apart, into PipelineOptions (`parse`)."""

    model_dir: str
    model_version: int | None
    input: list[str]
    format: str
    csv_delimiter: str | None
    output: str
    text_column: str
    id_column: str | None
    batch_size: int
    columns: str | None
    threshold: float | None
    max_dead_letter_fraction: float
    fail_on_drift: bool


def build_parser() -> argparse.ArgumentParser:
    """The stage's own flags, the one source of them (the CLI, `textclf run`, the templates)."""
    parser = argparse.ArgumentParser(
        prog="textclf score",
        description="Apply a textclf model to CSV, JSONL or Parquet files with Apache Beam, "
        "batch by batch; the scores are Parquet.",
        epilog=BEAM_FLAGS_HELP,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model_dir",
        required=True,
        help="a finished training-stage model directory, or a model registry root (its "
        "CHAMPION version is used; see --model_version); required",
    )
    parser.add_argument(
        "--model_version",
        type=int,
        default=None,
        help="with a registry root as --model_dir: score with this version instead of the "
        "champion (default: the champion)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        help="CSV, JSONL or Parquet file pattern(s), local or any Beam filesystem (gs://...); "
        "read as preprocess reads them (see --format); required",
    )
    add_format_flags(parser)  # --format, --csv_delimiter: as preprocess declares them
    parser.add_argument(
        "--output",
        required=True,
        help="output directory PREFIX/: part-*.parquet, dead_letter-*.parquet, stats.json; "
        "required",
    )
    parser.add_argument(
        "--text_column", required=True, help="the column holding the text to classify; required"
    )
    parser.add_argument(
        "--id_column",
        default=None,
        help="a row id column, always kept in the outputs (default: none)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="rows per model call (default %(default)s)",
    )
    parser.add_argument(
        "--columns",
        default=None,
        help="comma-separated pass-through columns to keep (default: all input columns)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label only: a class is predicted when its probability >= this, in "
        "(0, 1) (default: the model's own threshold from model_card.json, 0.5 if absent)",
    )
    parser.add_argument(
        "--max_dead_letter_fraction",
        type=float,
        default=DEFAULT_MAX_DEAD_LETTER_FRACTION,
        help="fail the job (exit 1, nothing published) when more than this fraction of the "
        "rows read were dead-lettered because the model call failed on them, in [0, 1] "
        "(default %(default)s; rows with unusable text do not count)",
    )
    parser.add_argument(
        "--fail_on_drift",
        action="store_true",
        help="exit 3 when the scored data drifted from the model's training data (stats.json "
        "'drift', see docs/DESIGN.md); the output is written and complete either way (default: "
        "off, drift is only logged as warnings)",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[ScoreOptions, PipelineOptions]:
    """The stage's options and Beam's, from one pass over `argv` (see pipeline/options.py)."""
    return parse_beam_stage(build_parser(), argv, ScoreOptions())


# ---------------------------------------------------------------------------------------------
# Checks made before any Beam work.


def _match_inputs(patterns: Sequence[str]) -> list[str]:
    files = []
    for pattern in patterns:
        try:
            matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        except Exception as err:  # noqa: BLE001 - any filesystem error means "no usable input"
            raise ScoreInputError(f"cannot list input '{pattern}': {err}") from err
        if not matched:
            raise ScoreInputError(
                f"no input files match '{pattern}'; pass CSV, JSONL or Parquet files or a glob "
                "such as 'data/*.parquet'"
            )
        magic = [path for path in matched if glob.has_magic(path.rsplit("/", 1)[-1])]
        if magic:  # Beam's readers match each file's name again, as a pattern
            raise ScoreInputError(
                f"cannot read '{magic[0]}': its name holds a glob character (*, ? or [), which "
                "Beam's file readers take as a pattern; rename it"
            )
        files.extend(sorted(matched))
    return list(dict.fromkeys(files))


def _formats(files: Sequence[str], fmt: str) -> dict[str, str]:
    """{file: its format}: `fmt`, or from each file's extension for "auto" (as preprocess)."""
    try:
        return {path: format_for(path, None if fmt == "auto" else fmt) for path in files}
    except CorpusError as err:
        raise ScoreInputError(str(err)) from None


def _read_schema(path: str, fmt: str = "parquet", csv_delimiter: str | None = None) -> pa.Schema:
    """The file's columns as score keeps them: a Parquet footer's schema; a CSV header's
    columns as strings, a JSONL file's keys (corpus_io.passthrough_schema)."""
    try:
        if fmt != "parquet":
            return passthrough_schema(path, fmt, csv_delimiter)
        with FileSystems.open(path) as f:
            return pq.read_schema(f)
    except Exception as err:  # noqa: BLE001
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ScoreInputError(f"cannot read {path} as {fmt}: {first}") from err


def _passthrough_schema(
    files: Sequence[str],
    schemas: Sequence[pa.Schema],
    text_column: str,
    id_column: str | None,
    columns: Sequence[str] | None,
    model: ScoringModel,
) -> pa.Schema:
    first = schemas[0]
    wanted = list(columns) if columns else list(first.names)
    if id_column and id_column not in wanted:
        wanted.insert(0, id_column)
    for path, schema in zip(files, schemas, strict=True):
        names = set(schema.names)
        for role, column in [("text", text_column), ("id", id_column)] + [
            ("pass-through", c) for c in wanted
        ]:
            if column and column not in names:
                raise ScoreInputError(
                    f"{role} column '{column}' not found in {path}; columns are: "
                    f"{', '.join(schema.names)}"
                )
        text_type = schema.field(text_column).type
        if not is_text_type(text_type):
            raise ScoreInputError(
                f"text column '{text_column}' in {path} has type {text_type}, not string; "
                "pass --text_column naming a string column"
            )
        for column in wanted:
            if schema.field(column).type != first.field(column).type:
                raise ScoreInputError(
                    f"column '{column}' is {first.field(column).type} in {files[0]} but "
                    f"{schema.field(column).type} in {path}; score them separately or "
                    "leave the column out with --columns"
                )
    produced = {f.name for f in model.prediction_fields()} | {REASON_COLUMN}
    clashes = sorted(produced.intersection(wanted))
    if clashes:
        raise ScoreInputError(
            f"input column(s) {', '.join(clashes)} would be overwritten by the scorer's output; "
            "leave them out with --columns"
        )
    return pa.schema([first.field(c) for c in wanted])


def _training_profile(model_dir: str) -> tuple[dict | None, str | None]:
    """The model directory's training_profile.json, or None and why there is none. A profile
    that cannot be read is logged and leaves drift unmeasured: it never stops the scoring."""
    path = FileSystems.join(model_dir, TRAINING_PROFILE_FILE)
    if not FileSystems.exists(path):
        return None, (
            f"{path} does not exist (a model trained before textclf wrote it); retrain the "
            "model to measure drift"
        )
    try:
        profile = outputs.read_json(path)
        if not isinstance(profile, dict):
            raise ValueError("not a JSON object")
    except Exception as err:  # noqa: BLE001 - any unreadable profile: drift is not measured
        reason = f"cannot read {path}: {err}"
        _LOG.warning("drift not measured: %s", reason)
        return None, reason
    return profile, None


def _load_model_info(model_dir: str) -> ScoringModel:
    """The model to score with, from a finished model directory with a SavedModel and classes."""
    model = ModelOutput(model_dir)
    try:
        model.check_complete()
    except IncompleteOutput as err:
        raise ScoreInputError(str(err)) from None
    return model.scoring_model


# ---------------------------------------------------------------------------------------------
# The pipeline.


def build_pipeline(
    p: beam.Pipeline,
    stage: ScoreSettings,
    output: str,
    header: dict,
    max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION,
    training_profile: dict | None = None,
    no_profile_reason: str | None = None,
) -> None:
    """`ScoreParquet(stage)` (writing under `stage.output_dir`, the staging directory), then the
    job's last step, `Finalize`: `finalize` to `output`, with every write's result as a side
    input.

    The last step runs once every write has finished, so the job itself finalizes the output: a
    Dataflow/Flex Template launch that returns before the job ends still gets stats.json and
    _SUCCESS last.
    """
    results = p | "ScoreParquet" >> ScoreParquet(stage)
    writes = {
        name: beam.pvalue.AsList(pcoll)
        for name, pcoll in results.items()
        if name.startswith(WRITTEN_PREFIX)
    }
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize"
        >> beam.Map(
            finalize,
            beam.pvalue.AsSingleton(results[READ]),
            beam.pvalue.AsSingleton(results[SCORED]),
            beam.pvalue.AsSingleton(results[DEAD_LETTERED]),
            staging=stage.output_dir,
            output=output,
            header=header,
            max_dead_letter_fraction=max_dead_letter_fraction,
            tokens=beam.pvalue.AsSingleton(results[PROFILE]),
            training_profile=training_profile,
            no_profile_reason=no_profile_reason,
            **writes,
        )
    )


def _rows_in_files(pattern: str) -> int:
    def rows(path):
        with FileSystems.open(path) as f:
            return pq.read_metadata(f).num_rows

    paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(rows, paths))


def _check_counts(staging: str, stats: dict) -> None:
    """rows read == scored + dead-lettered, and the Parquet footers hold exactly those rows."""
    if stats["rows_read"] != stats["rows_scored"] + stats["rows_dead_lettered"]:
        raise RuntimeError(
            f"row accounting failed: read {stats['rows_read']}, scored {stats['rows_scored']}, "
            f"dead-lettered {stats['rows_dead_lettered']}; nothing was published"
        )
    for key, prefix in (
        ("rows_scored", SCORED_PART_PREFIX),
        ("rows_dead_lettered", DEAD_LETTER_PREFIX),
    ):
        n = _rows_in_files(FileSystems.join(staging, f"{prefix}-*{PARQUET_SUFFIX}"))
        if stats[key] != n:
            raise RuntimeError(
                f"{key} is {stats[key]} but the {prefix}-* files hold {n} rows; "
                "nothing was published"
            )


def _footer_digest(path: str) -> str:
    """A Parquet file's footer (schema, row groups, column statistics, sizes), digested: what
    orders the shards, read without the data pages."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(-8, os.SEEK_END)
        tail = f.read(8)
        f.seek(-8 - int.from_bytes(tail[:4], "little"), os.SEEK_END)
        return hashlib.sha256(f.read()).hexdigest()


def _file_digest(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _order_shards(staging: str) -> None:
    """Number each prefix's part files by their content, not by which bundle finished first, so
    a rerun on the same runner settings names the same files the same way: by footer digest,
    and by the whole file's digest where two footers are the same (values too long for column
    statistics). The files pass through `<prefix>-unordered-<random>-N` names, which the count check and
    a retried Finalize still match."""
    for prefix in (SCORED_PART_PREFIX, DEAD_LETTER_PREFIX):
        pattern = FileSystems.join(staging, f"{prefix}-*{PARQUET_SUFFIX}")
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        with ThreadPoolExecutor(8) as pool:
            footers = list(pool.map(_footer_digest, paths))
        tied = {d for d in footers if footers.count(d) > 1}
        keys = [
            (d, _file_digest(p) if d in tied else "", p)
            for d, p in zip(footers, paths, strict=True)
        ]
        ordered = [p for *_, p in sorted(keys)]
        n, token = len(ordered), uuid.uuid4().hex[:8]  # fresh names: a retry may find old ones
        unordered = [
            FileSystems.join(staging, f"{prefix}-unordered-{token}-{i:05d}{PARQUET_SUFFIX}")
            for i in range(n)
        ]
        final = [
            FileSystems.join(staging, f"{prefix}-{i:05d}-of-{n:05d}{PARQUET_SUFFIX}")
            for i in range(n)
        ]
        if ordered == final:
            continue
        FileSystems.rename(ordered, unordered)  # two steps: the new names collide with the old
        FileSystems.rename(unordered, final)


def _check_model_call_failures(stats: dict, max_fraction: float) -> None:
    """At most `max_fraction` of the rows read were dead-lettered because the model call failed
    on them (rows with unusable text are the input's fault, not the model's: not counted)."""
    failed, read = stats["rows_failed_model_call"], stats["rows_read"]
    if read and failed / read > max_fraction:
        raise RuntimeError(
            f"model call failed for {failed} of {read} rows read ({failed / read:.2%}), more "
            f"than --max_dead_letter_fraction {max_fraction}; nothing was published (the "
            "workers' logs name the errors; raise the flag to accept these dead letters)"
        )


def finalize(
    _,
    read: dict,
    scored: dict,
    dead: dict,
    staging: str,
    output: str,
    header: dict,
    max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION,
    tokens: dict | None = None,
    training_profile: dict | None = None,
    no_profile_reason: str | None = None,
    **written,
) -> None:
    """The job's last step: check the counts against the written Parquet footers and the rows
    the model call failed on against `max_dead_letter_fraction`, write stats.json and move the
    staging directory onto `output` with _SUCCESS last. Raises (and writes no _SUCCESS) when
    the counts disagree or too many model calls failed. `read`, `scored` and `dead` are
    `ScoreParquet`'s table summaries, `tokens` its summed input profile ({} or None: the model
    has no profile outputs), `written` its writes' results (they only order this step after
    the writes). stats.json gets `profile` (the scored rows') and `drift` (that profile against
    `training_profile`; unavailable, with `no_profile_reason`, without one); each drift warning
    is logged here, where a Dataflow job's log shows it."""
    stats = score_stats(header, read, scored, dead)
    stats["profile"] = scoring_profile(
        tokens, stats["rows_scored"], stats["label_counts"], bool(header.get("multi_label"))
    )
    if training_profile is None:
        reason = no_profile_reason or "no training profile was given"
        stats["drift"] = {"available": False, "reason": reason}
    else:
        stats["drift"] = compare(training_profile, stats["profile"])
    _check_counts(staging, stats)
    _check_model_call_failures(stats, max_dead_letter_fraction)
    _order_shards(staging)
    outputs.write_json(FileSystems.join(staging, STATS_FILE), stats)
    outputs.finalize(staging, output, SCORE_STAGE)
    for warning in stats["drift"].get("warnings", []):
        _LOG.warning("drift: %s", warning)


def score(
    model_dir: str,
    inputs: Sequence[str],
    output: str,
    text_column: str,
    id_column: str | None = None,
    columns: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float | None = None,
    max_dead_letter_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION,
    beam_args: Sequence[str] | PipelineOptions | None = None,
    model_version: int | None = None,
    format: str = "auto",
    csv_delimiter: str | None = None,
) -> dict:
    """Score `inputs` with the model in `model_dir` into the directory `output`; return stats.

    `model_dir` may be a model registry root (pipeline/registry.py): its champion scores, or
    version `model_version` when given; stats.json names the version (`registry_version`).
    `inputs` are CSV, JSONL or Parquet files of `format` ("auto": from each file's extension),
    read as preprocess reads them (`csv_delimiter`: None for a tab in .tsv files, else a comma).

    `threshold` None means the model's own multi-label threshold (model_card.json). The job
    fails in its last step, publishing nothing, when more than `max_dead_letter_fraction` of
    the rows read were dead-lettered because the model call failed on them. When the
    runner returns before the job ends (a template launch), returns {"submitted": True, ...}:
    the job finalizes the output itself. Raises ScoreInputError (before any Beam work) for a bad
    model directory, inputs or columns. Drift never fails this call: stats' `drift` says whether
    it was found, and `main` turns that into EXIT_DRIFT under --fail_on_drift.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not model_dir or not inputs or not output or not text_column:
        raise ScoreInputError("--model_dir, --input, --output and --text_column are required")
    if batch_size < 1:
        raise ScoreInputError(f"--batch_size must be at least 1, got {batch_size}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ScoreInputError(f"--threshold must lie strictly between 0 and 1, got {threshold}")
    if not 0.0 <= max_dead_letter_fraction <= 1.0:  # also refuses nan
        raise ScoreInputError(
            "--max_dead_letter_fraction must lie between 0 and 1 (both allowed), got "
            f"{max_dead_letter_fraction}"
        )
    model_dir = model_dir.rstrip("/")
    try:
        outputs.check_replaceable(output, SCORE_STAGE)
        registry_root = model_dir
        model_dir, registry_version = resolve_model_dir(model_dir, model_version)
    except (outputs.OutputNotReplaceable, RegistryError) as err:
        raise ScoreInputError(str(err)) from None
    if registry_version is None:
        registry_root = None
    else:
        _LOG.info("score: registry %s, version %d: %s", registry_root, registry_version, model_dir)
    model = _load_model_info(model_dir)
    training_profile, no_profile_reason = _training_profile(model_dir)
    files = _match_inputs(inputs)
    formats = _formats(files, format)
    with ThreadPoolExecutor(8) as pool:
        schemas = list(
            pool.map(lambda path: _read_schema(path, formats[path], csv_delimiter), files)
        )
    passthrough = _passthrough_schema(files, schemas, text_column, id_column, columns, model)

    header = {
        "model_dir": model_dir,
        "model_version": model.model_version,
        "registry": registry_root,
        "registry_version": registry_version,
        "multi_label": model.multi_label,
        "threshold": model.decision_threshold(threshold),
        "inputs": list(inputs),
        "input_files": len(files),
        "text_column": text_column,
        "id_column": id_column,
        "columns": passthrough.names,
        "batch_size": batch_size,
        "max_dead_letter_fraction": max_dead_letter_fraction,
    }
    if isinstance(beam_args, PipelineOptions):  # already parsed (main)
        options = beam_args
    else:
        options = PipelineOptions(list(beam_args or []))
    staging = outputs.staging_dir(output)
    started = outputs.now()
    try:
        p = make_pipeline(options)
        delimited = tuple((path, fmt) for path, fmt in formats.items() if fmt != "parquet")
        parquet = [path for path, fmt in formats.items() if fmt == "parquet"]
        if delimited:  # a CSV/JSONL row may lack a value that a Parquet footer says is required
            passthrough = pa.schema([field.with_nullable(True) for field in passthrough])
        stage = ScoreSettings(
            # Parquet files are read by pattern, unless a pattern also matches CSV or JSONL.
            inputs=tuple(dict.fromkeys(inputs)) if not delimited else (),
            parquet_files=tuple(parquet) if delimited else (),
            delimited=delimited,
            csv_delimiter=csv_delimiter,
            output_dir=staging,
            model=model,
            text_column=text_column,
            passthrough=passthrough,
            batch_size=batch_size,
            threshold=threshold,
        )
        build_pipeline(
            p,
            stage,
            output,
            header,
            max_dead_letter_fraction,
            training_profile=training_profile,
            no_profile_reason=no_profile_reason,
        )
        run_and_log_counters(p, _LOG, (METRICS_NAMESPACE,))
    except BaseException:
        outputs.discard(staging)
        raise
    if not outputs.completed_since(output, started):
        # A template launch (or any runner that returns before the job ends): the job itself
        # finalizes the output; there is nothing of this run's to read back here yet (an older
        # output may still be there).
        _LOG.info("score: job submitted; %s appears when it finishes", output)
        return {"submitted": True, "output": output}
    stats = outputs.read_json(FileSystems.join(output, STATS_FILE))
    _LOG.info(
        "scored %d rows (%d dead-lettered) into %s",
        stats["rows_scored"],
        stats["rows_dead_lettered"],
        output,
    )
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_options = parse(sys.argv[1:] if argv is None else argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        stats = score(
            args.model_dir,
            args.input,
            args.output,
            args.text_column,
            id_column=args.id_column,
            columns=columns,
            batch_size=args.batch_size,
            threshold=args.threshold,
            max_dead_letter_fraction=args.max_dead_letter_fraction,
            beam_args=beam_options,
            model_version=args.model_version,
            format=args.format,
            csv_delimiter=args.csv_delimiter,
        )
    except ScoreInputError as err:
        print(f"textclf score: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if stats.get("submitted"):
        print(f"job submitted; {args.output} gets _SUCCESS when it finishes")
        return 0
    print(
        f"scored {stats['rows_scored']} rows, dead-lettered {stats['rows_dead_lettered']} "
        f"(of {stats['rows_read']} read) into {args.output}"
    )
    drift = stats.get("drift") or {}
    if args.fail_on_drift and drift.get("drifted"):
        print(f"textclf score: drift: {drift_summary(drift)}", file=sys.stderr)
        return EXIT_DRIFT
    return 0


def drift_summary(drift: dict) -> str:
    """One line: the measures that drifted, with their values and limits (stats.json 'drift')."""
    drifted = [
        f"{name} {m['measure']} {m['value']:g} (drift at {m['drift_at']:g})"
        for name, m in sorted(drift.get("measures", {}).items())
        if m.get("status") == DRIFT
    ]
    return "; ".join(drifted) + "; the output is complete, its stats.json 'drift' has the figures"


if __name__ == "__main__":
    sys.exit(main())
