"""`textclf preprocess`: a text corpus -> padded, split, gzipped TFRecords plus the transform graph.

Reads CSV / JSON Lines / Parquet with `transforms.corpus_io`, validates rows (dead letters with
reasons), runs tf.Transform (`transforms.text_preprocessing`) to build the vocabulary over the
whole corpus and map text to fixed-length id sequences (and, with `--features sequence,tfidf`,
to bag-of-n-grams TF-IDF ids and weights), splits train/eval by a stable hash, and writes the directory described in docs/DESIGN.md (stage 1) through a staging directory, with
`_SUCCESS` last. This module owns the flags, the before-any-work checks and the job's last step
(`finalize`: shard names, stats.json, the config, publishing); the graph before it is
`transforms.preprocess_graph.PreprocessCorpus`, and the work itself lives in `transforms/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import outputs
from pipeline.options import (
    BEAM_FLAGS_HELP,
    make_pipeline,
    parse_beam_stage,
    run_and_log_counters,
)
from transforms.contracts import (
    CONFIG_FILE,
    DEAD_LETTER_PREFIX,
    EXIT_BAD_INPUT,
    FEATURE_SEQUENCE,
    FEATURE_TFIDF,
    LABEL_VOCAB_NAME,
    NGRAM_VOCAB_NAME,
    PREPROCESS_METRICS,
    PREPROCESS_STAGE,
    SPLITS,
    STATS_FILE,
    TFRECORD_SUFFIX,
    TIMINGS_FILE,
    TOKEN_VOCAB_NAME,
    TRANSFORM_FN_DIR,
)

_LOG = logging.getLogger("textclf.preprocess")


class PreprocessOptions(argparse.Namespace):
    """The preprocess stage's settings: one attribute per flag of `build_parser()`. Beam's own
    flags (--runner, ...) are parsed apart, into PipelineOptions (`parse`)."""

    input: list[str]
    output_dir: str
    text_column: str
    label_column: str
    id_column: str | None
    format: str
    csv_delimiter: str | None
    multi_label: bool
    label_delimiter: str | None
    max_tokens: int
    min_frequency: int
    sequence_length: int
    num_oov_buckets: int
    eval_fraction: float
    lowercase: bool
    strip_punctuation: bool
    vocabulary_path: str
    batch_rows: int
    features: str
    ngram_max: int
    tfidf_max_tokens: int
    tfidf_min_frequency: int


def build_parser() -> argparse.ArgumentParser:
    """The stage's own flags, the one source of them (the CLI, `textclf run`, the templates)."""
    from transforms.corpus_io import add_format_flags

    parser = argparse.ArgumentParser(
        prog="textclf preprocess",
        description="Corpus (CSV, JSONL, Parquet) -> padded, split, gzipped TFRecords and the "
        "tf.Transform graph.",
        epilog=BEAM_FLAGS_HELP,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        metavar="PATTERN",
        required=True,
        help="input file patterns (local paths or any Beam filesystem URI); required",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        help="output directory; written to a staging dir, then finalized; required",
    )
    parser.add_argument(
        "--text_column", default="text", help="column holding the text (default: %(default)s)"
    )
    parser.add_argument(
        "--label_column", default="label", help="column holding the label(s) (default: %(default)s)"
    )
    parser.add_argument(
        "--id_column",
        default=None,
        help="column whose value decides the split (default: none, the text decides)",
    )
    add_format_flags(parser)  # --format, --csv_delimiter: as score declares them
    parser.add_argument(
        "--multi_label",
        action="store_true",
        help="several labels per row (list column or --label_delimiter); off by default",
    )
    parser.add_argument(
        "--label_delimiter",
        default=None,
        help="multi-label: split string label cells on this (default: none: a cell is one label)",
    )
    parser.add_argument(
        "--max_tokens",
        type=int,
        default=20000,
        help="vocabulary size cap, most frequent first (0: no cap; default: %(default)s)",
    )
    parser.add_argument(
        "--min_frequency",
        type=int,
        default=1,
        help="drop tokens seen fewer times than this (default: %(default)s)",
    )
    parser.add_argument(
        "--sequence_length",
        type=int,
        default=100,
        help="pad/truncate every text to this many token ids (default: %(default)s)",
    )
    parser.add_argument(
        "--num_oov_buckets",
        type=int,
        default=1,
        help="hash buckets for out-of-vocabulary tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--eval_fraction",
        type=float,
        default=0.1,
        help="fraction of rows in the eval split, by a stable hash (default: %(default)s)",
    )
    parser.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lowercase text (Unicode) before tokenizing (default: on; --no-lowercase keeps case)",
    )
    parser.add_argument(
        "--strip_punctuation",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="turn Unicode punctuation and symbols into spaces (e-mail -> e mail); off by default",
    )
    parser.add_argument(
        "--vocabulary_path",
        default="fast",
        choices=("fast", "textbook"),
        help="vocabulary analyzer: pyarrow-counted (fast) or "
        "tft.compute_and_apply_vocabulary (textbook); same output (default: %(default)s)",
    )
    parser.add_argument(
        "--batch_rows",
        type=int,
        default=8192,
        help="rows per record batch handed to tf.Transform (default: %(default)s)",
    )
    parser.add_argument(
        "--features",
        default=FEATURE_SEQUENCE,
        help=f"comma-separated feature sets to write: {FEATURE_SEQUENCE} (token_ids, num_tokens; "
        f"required) and {FEATURE_TFIDF} (bag-of-n-grams TF-IDF ids and weights) "
        f"(default: {FEATURE_SEQUENCE})",
    )
    parser.add_argument(
        "--ngram_max",
        type=int,
        default=2,
        help="tfidf: n-grams of 1 to this many tokens, over the whole text (default: 2)",
    )
    parser.add_argument(
        "--tfidf_max_tokens",
        type=int,
        default=100000,
        help="tfidf: keep this many n-grams, most frequent first; the rest share one OOV id "
        "(default: 100000)",
    )
    parser.add_argument(
        "--tfidf_min_frequency",
        type=int,
        default=2,
        help="tfidf: drop n-grams seen fewer times than this in the corpus (default: 2)",
    )
    return parser


def parse(argv: Sequence[str]) -> tuple[PreprocessOptions, PipelineOptions]:
    """The stage's options and Beam's, from one pass over `argv` (see pipeline/options.py)."""
    return parse_beam_stage(build_parser(), argv, PreprocessOptions())


def parse_features(value: str) -> tuple[str, ...]:
    """`--features` -> the feature sets in their canonical order; CorpusError (exit 2) for an
    unknown name or a list without `sequence` (the seed model and the drift profile read it)."""
    from transforms.corpus_io import CorpusError
    from transforms.text_preprocessing import FEATURES

    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(FEATURES))
    if unknown:
        raise CorpusError(
            f"--features: unknown feature set {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(FEATURES)}"
        )
    if FEATURE_SEQUENCE not in names:
        raise CorpusError(
            f"--features must include {FEATURE_SEQUENCE} (the model and the drift profile read "
            f"token_ids); e.g. --features {FEATURE_SEQUENCE},{FEATURE_TFIDF}"
        )
    return tuple(name for name in FEATURES if name in names)


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
        features=parse_features(opts.features),
        ngram_max=opts.ngram_max,
        tfidf_max_tokens=opts.tfidf_max_tokens,
        tfidf_min_frequency=opts.tfidf_min_frequency,
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
    parse_features(opts.features)
    if opts.ngram_max < 1:
        raise CorpusError("--ngram_max must be at least 1 (1: single tokens only)")
    if opts.tfidf_max_tokens < 1 or opts.tfidf_min_frequency < 1:
        raise CorpusError("--tfidf_max_tokens and --tfidf_min_frequency must be at least 1")


def build_pipeline(p: beam.Pipeline, stage, finalize_args: dict) -> None:
    """The stage's graph, `PreprocessCorpus(stage)` (a `PreprocessSettings`), then its last step,
    `Finalize`: `finalize(**finalize_args)` with every write's result as a side input.

    The last step runs once every write has finished, so the output is finalized by the job
    itself: a Dataflow/Flex Template launch that returns before the job ends still gets a
    complete directory with _SUCCESS last.
    """
    from transforms.preprocess_graph import PreprocessCorpus

    written = p | "PreprocessCorpus" >> PreprocessCorpus(stage)
    side = {name: beam.pvalue.AsList(pcoll) for name, pcoll in written.items()}
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.Map(finalize, **finalize_args, **side)
    )


def _side(side: dict, prefix: str) -> list:
    """The items of every side input whose name starts with `prefix`, in name order."""
    return [item for key, items in sorted(side.items()) if key.startswith(prefix) for item in items]


def _vocabulary_size(transform_fn_dir: str, name: str = TOKEN_VOCAB_NAME) -> int:
    import tensorflow as tf

    with tf.io.gfile.GFile(f"{transform_fn_dir}/assets/{name}", "rb") as f:
        return sum(1 for line in f.read().split(b"\n") if line)


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
    into place with _SUCCESS last. `side` holds the side inputs `build_pipeline` names (the
    outputs of `transforms.preprocess_graph.PreprocessCorpus`)."""
    from transforms.preprocess_graph import (
        BUNDLES_DIR,
        DEAD_LETTER_FILES_PREFIX,
        FILES_PREFIX,
        STATS_PREFIX,
    )
    from transforms.stats import preprocess_stats, preprocess_timings
    from transforms.tfrecords import merge_stats, publish_bundle_files

    counts = merge_stats(_side(side, STATS_PREFIX))
    split_files = {split: side[f"{FILES_PREFIX}{split}"] for split in SPLITS}
    dead_files = _side(side, DEAD_LETTER_FILES_PREFIX)
    transform_dir = f"{staging}/{TRANSFORM_FN_DIR}"
    vocab_size = _vocabulary_size(transform_dir)
    label_vocabulary = [
        line
        for line in outputs.read_text(f"{transform_dir}/assets/{LABEL_VOCAB_NAME}").split("\n")
        if line
    ]
    in_files = {s: sum(w[1] for w in split_files[s]) for s in SPLITS}
    in_dead_files = sum(w[1] for w in dead_files)
    stats = preprocess_stats(
        counts,
        sequence_length=settings.sequence_length,
        vocab_size=vocab_size,
        num_classes=len(label_vocabulary),
        records_in_files=in_files,
        dead_letters_in_files=in_dead_files,
    )
    rows_read, written_rows, dead = (
        stats["rows_read"],
        stats["rows_written"],
        stats["dead_letter_reasons"],
    )
    timings = preprocess_timings(rows_read, time.time() - started)
    config = dict(
        settings.config(),
        **config,
        vocab_size=vocab_size,
        id_vocabulary_size=1 + vocab_size + settings.num_oov_buckets,
        num_classes=len(label_vocabulary),
        label_vocabulary=label_vocabulary,
    )
    if settings.tfidf:
        config["ngram_vocab_size"] = _vocabulary_size(transform_dir, NGRAM_VOCAB_NAME)
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
    from transforms.preprocess_graph import PreprocessSettings

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
        format=spec.format,  # with csv_delimiter: how `textclf promote` re-reads the eval split
        csv_delimiter=spec.csv_delimiter,
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
        build_pipeline(
            p,
            PreprocessSettings(
                corpus=spec,
                files=files,
                text=settings,
                output_dir=staging,
                temp_dir=temp_dir,
                batch_rows=opts.batch_rows,
            ),
            finalize_args,
        )
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


def main(argv: Sequence[str]) -> int:
    from transforms.corpus_io import CorpusError

    opts, options = parse(argv)
    try:
        stats = preprocess(opts, options)
    except CorpusError as err:
        print(f"textclf preprocess: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(stats, indent=2))
    return 0
