"""`textclf preprocess`: a text corpus -> padded, split, gzipped TFRecords plus the transform graph.

Reads CSV / JSON Lines / Parquet with `transforms.corpus_io`, validates rows (dead letters with
reasons), runs tf.Transform (`transforms.text_preprocessing`) to build the vocabulary over the
whole corpus and map text to fixed-length id sequences, splits train/eval by a stable hash, and
writes the directory described in docs/DESIGN.md (stage 1) through a staging directory, with
`_SUCCESS` last. This module owns the flags, the before-any-work checks and the wiring; the work
itself lives in `transforms/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import outputs
from pipeline.options import allow_shared_flags, make_pipeline, run_and_log_counters
from transforms.contracts import (
    CONFIG_FILE,
    DEAD_LETTER_PREFIX,
    EVAL,
    EXIT_BAD_INPUT,
    LABEL_VOCAB_NAME,
    PREPROCESS_METRICS,
    PREPROCESS_STAGE,
    RAW_LABEL_KEY,
    SPLIT_KEY,
    SPLITS,
    STATS_FILE,
    TEXT_KEY,
    TFRECORD_SUFFIX,
    TIMINGS_FILE,
    TOKEN_VOCAB_NAME,
    TRAIN,
    TRANSFORM_FN_DIR,
)

_LOG = logging.getLogger("textclf.preprocess")


class PreprocessOptions(PipelineOptions):
    """The preprocess stage's flags; Beam's own flags (--runner, ...) live beside them."""

    # Checked in parse(), not by argparse: see _add_argparse_args.
    REQUIRED_FLAGS = ("input", "output_dir")

    @classmethod
    def _add_argparse_args(cls, parser):
        allow_shared_flags(parser)  # --input: see pipeline/options.py
        parser.add_argument(
            "--input",
            nargs="+",
            action="extend",
            metavar="PATTERN",
            help="input file patterns (local paths or any Beam filesystem URI); required",
        )
        parser.add_argument(
            "--output_dir",
            help="output directory; written to a staging dir, then finalized; required",
        )
        parser.add_argument("--text_column", default="text", help="column holding the text")
        parser.add_argument("--label_column", default="label", help="column holding the label(s)")
        parser.add_argument(
            "--id_column",
            default=None,
            help="optional column whose value decides the split (else the text)",
        )
        parser.add_argument(
            "--format",
            default="auto",
            choices=("auto", "csv", "jsonl", "parquet"),
            help="input format (default: from each file's extension)",
        )
        parser.add_argument(
            "--csv_delimiter",
            default=None,
            help="CSV field delimiter (default: a tab for .tsv files, else a comma)",
        )
        parser.add_argument(
            "--multi_label",
            action="store_true",
            help="several labels per row (list column or --label_delimiter)",
        )
        parser.add_argument(
            "--label_delimiter",
            default=None,
            help="multi-label: split string label cells on this delimiter",
        )
        parser.add_argument(
            "--max_tokens",
            type=int,
            default=20000,
            help="vocabulary size cap, most frequent first (0: no cap)",
        )
        parser.add_argument(
            "--min_frequency", type=int, default=1, help="drop tokens seen fewer times than this"
        )
        parser.add_argument(
            "--sequence_length",
            type=int,
            default=100,
            help="pad/truncate every text to this many token ids",
        )
        parser.add_argument(
            "--num_oov_buckets",
            type=int,
            default=1,
            help="hash buckets for out-of-vocabulary tokens",
        )
        parser.add_argument(
            "--eval_fraction",
            type=float,
            default=0.1,
            help="fraction of rows in the eval split (stable hash)",
        )
        parser.add_argument(
            "--lowercase",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="lowercase text (Unicode) before tokenizing",
        )
        parser.add_argument(
            "--strip_punctuation",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="turn Unicode punctuation and symbols into spaces (e-mail -> e mail)",
        )
        parser.add_argument(
            "--vocabulary_path",
            default="fast",
            choices=("fast", "textbook"),
            help="vocabulary analyzer: pyarrow-counted (fast) or "
            "tft.compute_and_apply_vocabulary (textbook); same output",
        )
        parser.add_argument(
            "--batch_rows",
            type=int,
            default=8192,
            help="rows per record batch handed to tf.Transform",
        )


def _settings(opts: PreprocessOptions):
    from transforms.text_preprocessing import TextSettings

    return TextSettings(
        sequence_length=opts.sequence_length,
        max_tokens=opts.max_tokens,
        min_frequency=opts.min_frequency,
        num_oov_buckets=opts.num_oov_buckets,
        lowercase=opts.lowercase,
        strip_punctuation=opts.strip_punctuation,
        multi_label=opts.multi_label,
        fast_vocabulary=opts.vocabulary_path == "fast",
    )


def _spec(opts: PreprocessOptions):
    from transforms.corpus_io import CorpusSpec

    return CorpusSpec(
        patterns=tuple(opts.input),
        format=opts.format,
        text_column=opts.text_column,
        label_column=opts.label_column,
        id_column=opts.id_column,
        multi_label=opts.multi_label,
        label_delimiter=opts.label_delimiter,
        eval_fraction=opts.eval_fraction,
        csv_delimiter=opts.csv_delimiter,
    )


def check_settings(opts: PreprocessOptions) -> None:
    from transforms.corpus_io import CorpusError

    if opts.sequence_length < 1:
        raise CorpusError("--sequence_length must be at least 1")
    if opts.max_tokens < 0 or opts.min_frequency < 1:
        raise CorpusError("--max_tokens must be >= 0 (0: no cap) and --min_frequency >= 1")
    if opts.num_oov_buckets < 1:
        # With none, tf.Transform maps unknown tokens to -1, which the +1 shift makes padding.
        raise CorpusError("--num_oov_buckets must be at least 1 (unknown tokens need an id)")
    if not 0.0 <= opts.eval_fraction < 1.0:
        raise CorpusError("--eval_fraction must be in [0, 1)")
    if opts.label_delimiter and not opts.multi_label:
        raise CorpusError("--label_delimiter only makes sense with --multi_label")
    if opts.batch_rows < 1:
        raise CorpusError("--batch_rows must be at least 1")


def _tensor_adapter_config(multi_label: bool):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.tfxio import tensor_adapter

    from transforms.corpus_io import tft_input_schema

    rep = schema_pb2.TensorRepresentation

    def dense(column):
        return rep(dense_tensor=rep.DenseTensor(column_name=column, shape=schema_pb2.FixedShape()))

    label = (
        rep(varlen_sparse_tensor=rep.VarLenSparseTensor(column_name=RAW_LABEL_KEY))
        if multi_label
        else dense(RAW_LABEL_KEY)
    )
    return tensor_adapter.TensorAdapterConfig(
        tft_input_schema(), {TEXT_KEY: dense(TEXT_KEY), RAW_LABEL_KEY: label}
    )


# Text bytes per record batch, at most (a single longer row still makes its own batch): rows of
# very long documents would otherwise make batches, and the graph's tensors, of gigabytes.
MAX_BATCH_TEXT_BYTES = 32 << 20


def _text_bytes(column) -> np.ndarray | None:
    """Bytes of text per row, or None for a column type that has no byte length."""
    try:
        return pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return None


def _rebatch(batch, rows: int, text_column: str, max_bytes: int = MAX_BATCH_TEXT_BYTES):
    """Record batches of at most `rows` rows and `max_bytes` of text (CSV/JSONL come in 4 MiB
    blocks, Parquet in `rows`-row batches of row groups)."""
    sizes = _text_bytes(batch.column(text_column)) if text_column in batch.schema.names else None
    ends = np.cumsum(sizes) if sizes is not None else None
    start, n = 0, batch.num_rows
    while start < n:
        end = min(start + rows, n)
        if ends is not None:
            before = ends[start - 1] if start else 0
            end = max(start + 1, min(end, int(np.searchsorted(ends, before + max_bytes, "right"))))
        yield batch.slice(start, end - start)
        start = end


def _vocabulary_size(transform_fn_dir: str) -> int:
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{transform_fn_dir}/assets/{TOKEN_VOCAB_NAME}", "rb") as f:
        return sum(1 for line in f.read().split(b"\n") if line)


def _parse_error_stats(record: dict) -> dict:
    return {"rows_read": 1, "dead_lettered": {record["reason"]: 1}}


BUNDLES_DIR = "_bundle_files"  # in the staging dir: each bundle's file, until Finalize names them


def build_pipeline(
    p: beam.Pipeline,
    spec,
    files: dict,
    settings,
    staging: str,
    batch_rows: int,
    temp_dir: str,
    finalize_args: dict,
) -> None:
    """The stage's graph: read twice (analyze, transform: nothing held in memory), write each
    bundle's records to its own file, then `finalize` (name the files, stats.json,
    preprocess_config.json, move into place, _SUCCESS).

    Every write and statistic is produced inside the transform pass's fused stage; the only
    stages after it are the statistics' combines and Finalize, whose side inputs are all of
    them (so it runs last, inside the job).
    """
    import tensorflow_transform.beam as tft_beam

    from transforms import corpus_io, tfrecords
    from transforms.text_preprocessing import make_preprocessing_fn

    adapter = _tensor_adapter_config(settings.multi_label)
    preprocessing_fn = make_preprocessing_fn(settings)

    def read(label: str):
        raw = p | f"ReadCorpus[{label}]" >> corpus_io.ReadCorpus(spec, files, batch_rows)
        rows = (
            raw["batches"]
            | f"Rebatch[{label}]"
            >> beam.FlatMap(_rebatch, batch_rows, spec.text_column).with_output_types(
                pa.RecordBatch
            )
            | f"ValidateAndSplit[{label}]"
            >> beam.ParDo(corpus_io.ValidateAndSplit(spec, for_analysis=label == "analyze"))
            .with_output_types(pa.RecordBatch)
            .with_outputs(corpus_io.DEAD_LETTER_TAG, corpus_io.STATS_TAG, main="rows")
        )
        return raw, rows

    _, analysis_rows = read("analyze")
    raw, rows = read("transform")
    with tft_beam.Context(temp_dir=temp_dir, passthrough_keys={SPLIT_KEY}):
        transform_fn = (analysis_rows.rows, adapter) | "AnalyzeCorpus" >> tft_beam.AnalyzeDataset(
            preprocessing_fn
        )
        transformed, _ = (
            (rows.rows, adapter),
            transform_fn,
        ) | "TransformCorpus" >> tft_beam.TransformDataset(output_record_batches=True)
        transform_fn_written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
            staging
        )
    encoded = transformed | "SplitAndEncode" >> beam.ParDo(tfrecords.SplitAndEncode()).with_outputs(
        TRAIN, EVAL, tfrecords.STATS_TAG
    )
    bundles = f"{staging}/{BUNDLES_DIR}"
    side = {"transform_fn": beam.pvalue.AsList(transform_fn_written)}
    for split in SPLITS:
        side[f"files_{split}"] = beam.pvalue.AsList(
            encoded[split]
            | f"Write[{split}]"
            >> beam.ParDo(
                tfrecords.WriteBundleFiles(
                    f"{bundles}/{split}",
                    tfrecords.tfrecord_batch,
                    tfrecords.example_order_key,
                    gzip=True,
                )
            )
        )
    # Dead letters are written where they are found (no Flatten, which would cut the fused
    # stages), and so are counted: by the reader (unparseable rows) and by ValidateAndSplit.
    dead_sources = {"invalid": rows[corpus_io.DEAD_LETTER_TAG]}
    stats_sources = {"read": rows[corpus_io.STATS_TAG], "write": encoded[tfrecords.STATS_TAG]}
    if corpus_io.DEAD_LETTER_TAG in raw:
        dead_sources["unparsed"] = raw[corpus_io.DEAD_LETTER_TAG]
        stats_sources["unparsed"] = raw[corpus_io.DEAD_LETTER_TAG] | "CountParseErrors" >> (
            beam.Map(_parse_error_stats)
        )
    for name, pcoll in dead_sources.items():
        side[f"dead_letter_files_{name}"] = beam.pvalue.AsList(
            pcoll
            | f"WriteDeadLetters[{name}]"
            >> beam.ParDo(
                tfrecords.WriteBundleFiles(
                    f"{bundles}/dead_letter",
                    tfrecords.json_line,
                    tfrecords.json_line_key,
                    gzip=False,
                )
            )
        )
    # Each source is combined where it is produced (a lifted combine); flattening the per-batch
    # dicts first would make the runner hold all of them until the end.
    for name, pcoll in stats_sources.items():
        side[f"stats_{name}"] = beam.pvalue.AsList(
            pcoll
            | f"MergeStats[{name}]"
            >> beam.CombineGlobally(tfrecords.merge_stats).without_defaults()
        )
    # The last step runs once every write has finished (its side inputs are their results), so
    # the output is finalized by the job itself: a Dataflow/Flex Template launch that returns
    # before the job ends still gets a complete directory with _SUCCESS last.
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize, **finalize_args, **side)
    )


def _side(side: dict, prefix: str) -> list:
    return [item for key, items in sorted(side.items()) if key.startswith(prefix) for item in items]


NO_ROWS = "no rows to preprocess"


class NoRowsToPreprocess(ValueError):
    """Raised by the job's last step when no row was written: nothing is published. The stage
    reports it as bad input (exit 2); the runner carries only its message across processes."""


def finalize(
    _,
    staging: str,
    output_dir: str,
    settings,
    config: dict,
    started: float,
    tft_temp: str | None,
    **side,
) -> None:
    """The job's last step: check that every row is in a file or dead-lettered, give the bundle
    files their shard names, write stats.json and the config, and move the staging directory
    into place with _SUCCESS last. `side` holds the side inputs `build_pipeline` names."""
    from transforms.tfrecords import length_quantiles, merge_stats, publish_bundle_files

    counts = merge_stats(_side(side, "stats_"))
    split_files = {split: side[f"files_{split}"] for split in SPLITS}
    dead_files = _side(side, "dead_letter_files_")
    transform_dir = f"{staging}/{TRANSFORM_FN_DIR}"
    vocab_size = _vocabulary_size(transform_dir)
    label_vocabulary = [
        line
        for line in outputs.read_text(f"{transform_dir}/assets/{LABEL_VOCAB_NAME}").split("\n")
        if line
    ]
    written_rows = {s: counts.get("rows_written", {}).get(s, 0) for s in SPLITS}
    dead = counts.get("dead_lettered", {})
    rows_read = counts.get("rows_read", 0)
    histogram = {int(k): v for k, v in counts.get("length_histogram", {}).items()}
    ids = counts.get("id_histogram", np.zeros(1, np.int64))
    window = int(ids[1:].sum())  # every id but padding, in the first sequence_length tokens
    oov = int(ids[vocab_size + 1 :].sum())
    elapsed = time.time() - started
    in_files = {s: sum(w[1] for w in split_files[s]) for s in SPLITS}
    in_dead_files = sum(w[1] for w in dead_files)
    stats = {
        "rows_read": rows_read,
        "rows_written": written_rows,
        "rows_dead_lettered": sum(dead.values()),
        "dead_letter_reasons": dead,
        "rows_accounted": rows_read == sum(written_rows.values()) + sum(dead.values())
        and in_files == written_rows
        and in_dead_files == sum(dead.values()),
        "label_counts": counts.get("labels", {}),
        "token_length_quantiles": length_quantiles(histogram),
        "rows_truncated": sum(v for k, v in histogram.items() if k > settings.sequence_length),
        "vocab_size": vocab_size,
        "oov_rate": oov / window if window else 0.0,
        "num_classes": len(label_vocabulary),
    }
    timings = {
        "seconds": round(elapsed, 2),
        "docs_per_second": round(rows_read / elapsed, 1) if elapsed else None,
    }
    config = dict(
        dataclasses.asdict(settings),
        **config,
        vocab_size=vocab_size,
        id_vocabulary_size=1 + vocab_size + settings.num_oov_buckets,
        num_classes=len(label_vocabulary),
        label_vocabulary=label_vocabulary,
    )
    if not sum(written_rows.values()):
        raise NoRowsToPreprocess(
            f"{NO_ROWS}: {rows_read} rows read, all dead-lettered ("
            + ", ".join(f"{reason}: {n}" for reason, n in sorted(dead.items()))
            + ")"
            if rows_read
            else f"{NO_ROWS}: the input holds no data rows"
        )
    if not stats["rows_accounted"]:
        # A bug guard, not a data problem: never publish an output that lost rows.
        raise RuntimeError(
            f"rows do not add up: read {rows_read}, counted as written {written_rows} "
            f"(in files: {in_files}), dead-lettered {sum(dead.values())} "
            f"(in files: {in_dead_files}); nothing was published"
        )
    for split in SPLITS:
        publish_bundle_files(split_files[split], f"{staging}/{split}", TFRECORD_SUFFIX, gzip=True)
    publish_bundle_files(dead_files, f"{staging}/{DEAD_LETTER_PREFIX}", ".jsonl", gzip=False)
    outputs.discard(f"{staging}/{BUNDLES_DIR}")  # what is left: files of retried bundles
    outputs.write_json(f"{staging}/{STATS_FILE}", stats)
    outputs.write_json(f"{staging}/{TIMINGS_FILE}", timings)
    outputs.write_json(f"{staging}/{CONFIG_FILE}", config)
    outputs.discard(tft_temp)
    outputs.finalize(staging, output_dir, PREPROCESS_STAGE)


def preprocess(opts: PreprocessOptions, beam_options: PipelineOptions) -> dict:
    """Check inputs, run the pipeline, finalize the output; return stats.json's content.

    Raises transforms.corpus_io.CorpusError (before any pipeline work) for unusable input.
    """
    from transforms.corpus_io import CorpusError, inspect_corpus

    check_settings(opts)
    try:
        outputs.check_replaceable(opts.output_dir, PREPROCESS_STAGE)
    except outputs.OutputNotReplaceable as err:
        raise CorpusError(str(err)) from None
    spec, settings = _spec(opts), _settings(opts)
    files = inspect_corpus(spec)
    _LOG.info("preprocess: %d input file(s) -> %s", len(files), opts.output_dir)
    staging = outputs.staging_dir(opts.output_dir)
    temp_location = beam_options.view_as(
        beam.options.pipeline_options.GoogleCloudOptions
    ).temp_location
    # One folder per run: tf.Transform writes named vocabularies there without a run id, so two
    # jobs sharing --temp_location would otherwise read each other's label vocabulary.
    run_id = uuid.uuid4().hex
    temp_dir = (
        f"{temp_location.rstrip('/')}/textclf-tft-{run_id}"
        if temp_location
        else f"{staging}/_tft_tmp"
    )
    config = dict(
        input=list(opts.input),
        files=sorted(files),
        text_column=spec.text_column,
        label_column=spec.label_column,
        id_column=spec.id_column,
        label_delimiter=spec.label_delimiter,
        eval_fraction=spec.eval_fraction,
    )
    finalize_args = dict(
        staging=staging,
        output_dir=opts.output_dir,
        settings=settings,
        config=config,
        started=time.time(),
        tft_temp=temp_dir,
    )
    started = outputs.now()
    try:
        p = make_pipeline(beam_options, threads_by_default=True)
        build_pipeline(p, spec, files, settings, staging, opts.batch_rows, temp_dir, finalize_args)
        run_and_log_counters(p, _LOG, (PREPROCESS_METRICS,))
    except BaseException as err:
        outputs.discard(staging)
        outputs.discard(temp_dir)
        # Runners re-raise a step's error wrapped, often as text from another process.
        found = re.search(rf"{NO_ROWS}: [^\n'\"\[]*", str(err))
        if found:
            raise CorpusError(found.group(0).rstrip(". ")) from None
        raise
    if not outputs.completed_since(opts.output_dir, started):
        # A template launch (or any runner that returns before the job ends): the job itself
        # finalizes the output; there is nothing of this run's to read back here yet (an older
        # output may still be there).
        _LOG.info("preprocess: job submitted; %s appears when it finishes", opts.output_dir)
        return {"submitted": True, "output_dir": opts.output_dir}
    stats = outputs.read_json(f"{opts.output_dir}/{STATS_FILE}")
    _LOG.info(
        "preprocess: %d rows read, %s written, %d dead-lettered in %.1fs",
        stats["rows_read"],
        stats["rows_written"],
        stats["rows_dead_lettered"],
        outputs.read_json(f"{opts.output_dir}/{TIMINGS_FILE}")["seconds"],
    )
    return stats


def parse(argv: list[str]) -> tuple[PreprocessOptions, PipelineOptions]:
    parser = argparse.ArgumentParser(
        prog="textclf preprocess",
        description="Corpus (CSV, JSONL, Parquet) -> padded, split, gzipped TFRecords and the "
        "tf.Transform graph. Unknown flags are Beam pipeline options (--runner, ...).",
    )
    PreprocessOptions._add_argparse_args(parser)
    known, beam_args = parser.parse_known_args(argv)
    missing = [f"--{name}" for name in PreprocessOptions.REQUIRED_FLAGS if not getattr(known, name)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    own = [a for a in argv if a not in beam_args]
    options = PipelineOptions(beam_args + own)
    return options.view_as(PreprocessOptions), options


def main(argv: list[str]) -> int:
    from transforms.corpus_io import CorpusError

    opts, options = parse(argv)
    try:
        stats = preprocess(opts, options)
    except CorpusError as err:
        print(f"textclf preprocess: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(stats, indent=2))
    return 0
