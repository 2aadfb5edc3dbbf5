"""The promotion gate's library: the evaluation rows, both models' figures on them, the decision.

`eval_split_rows(data_dir)` recovers a finished preprocess output's eval split as raw rows: it
re-reads the input files its preprocess_config.json names with the preprocess stage's own reader,
validation and split rule (`transforms.preprocess_graph.ReadValidRows`: `ReadCorpus`,
`ValidateAndSplit`, `split_of`) on a small Beam pipeline, and checks the count against the eval
rows stats.json says were written. `fixed_set_rows(...)` reads a fixed evaluation set the same
way, every valid row kept. `model_figures` scores a model on those rows in process with the
scorer's own code (`transforms.scoring.LoadedModel`, `prediction_arrays`) and `label_metrics`
compares the predictions with the labels by label NAME (two models may have different label
vocabularies; a row whose label a model does not know is wrong for it), through
transforms/evaluation.py's arithmetic. `decide` is the rule. This module reads, never writes a
registry or an output; pipeline/promote.py is the command that publishes.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline import outputs
from pipeline.artifacts import PreprocessOutput
from pipeline.options import make_pipeline
from transforms.contracts import EVAL, RAW_LABEL_KEY, SPLIT_KEY, TEXT_KEY
from transforms.corpus_io import add_format_flags

_LOG = logging.getLogger("textclf.promote")

METRICS = ("accuracy", "macro_f1")
SCORING_BATCH_SIZE = 1024
# Figures within this of the bar pass it: `a >= b - t` must not fail on float rounding alone.
_EPSILON = 1e-12
# The column of predictions whose name is none of the evaluation rows' labels. Label names
# cannot hold a line break (preprocess dead-letters them), so this never clashes with one.
_OTHER = "\n(not an evaluation label)"
ROWS_SCHEMA = pa.schema([("text", pa.string()), ("labels", pa.list_(pa.string()))])


class GateError(ValueError):
    """The gate cannot decide with what it was given (no rows, mismatched models, a bad
    setting); the one-line message says what to do. `textclf promote` exits 2 with it."""


@dataclasses.dataclass(frozen=True)
class EvalRows:
    """The evaluation rows: `table` has a string `text` and a list<string> `labels` column
    (one name per row single-label); `source` says in words where they came from."""

    table: pa.Table
    multi_label: bool
    source: str
    files: tuple[str, ...]

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def describe(self) -> dict:
        """The decision's `eval` entry."""
        return {"source": self.source, "files": list(self.files), "rows": self.rows}


# -- the rows ----------------------------------------------------------------------------------


def _labeled_table(batch: pa.RecordBatch, split: str | None):
    """ValidateAndSplit's tf.Transform input batch -> a ROWS_SCHEMA table of `split`'s rows
    (every row when `split` is None)."""
    text = batch.column(TEXT_KEY).flatten()
    labels = batch.column(RAW_LABEL_KEY)
    if split is not None:
        keep = pc.equal(batch.column(SPLIT_KEY).flatten(), split)
        text, labels = text.filter(keep), labels.filter(keep)
    if len(text):
        yield pa.Table.from_arrays(
            [text, labels.cast(ROWS_SCHEMA.field("labels").type)], schema=ROWS_SCHEMA
        )


def read_valid_rows(
    spec, files: dict[str, str], split: str | None, beam_options: PipelineOptions | None = None
) -> pa.Table:
    """The rows of `files` that the preprocess stage would keep, as a ROWS_SCHEMA table; only
    `split`'s (by its split rule) unless `split` is None. Runs a Beam pipeline (the in-process
    FnApiRunner unless `beam_options` names a runner) whose rows pass through Parquet files
    under --temp_location, or a local temp folder."""
    from transforms.preprocess_graph import PreprocessSettings, ReadValidRows
    from transforms.text_preprocessing import TextSettings

    beam_options = beam_options or PipelineOptions([])
    temp_location = beam_options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        folder = f"{temp_location.rstrip('/')}/textclf-promote-{uuid.uuid4().hex}"
    else:
        import tempfile

        folder = tempfile.mkdtemp(prefix="textclf-promote-")
    # ReadValidRows reads only the corpus, its files and batch_rows: the same read as preprocess.
    settings = PreprocessSettings(
        corpus=spec,
        files=files,
        text=TextSettings(multi_label=spec.multi_label),
        output_dir=folder,
        temp_dir=folder,
    )
    try:
        p = make_pipeline(beam_options)
        _, rows = p | "ReadValidRows" >> ReadValidRows(settings, for_analysis=False)
        _ = (
            rows.rows
            | f"Keep[{split or 'all'}]"
            >> beam.FlatMap(_labeled_table, split).with_output_types(pa.Table)
            | "WriteRows"
            >> beam.io.WriteToParquetBatched(
                f"{folder}/rows", ROWS_SCHEMA, file_name_suffix=".parquet"
            )
        )
        p.run().wait_until_finish()
        parts = sorted(
            m.path for m in FileSystems.match([f"{folder}/rows*.parquet"])[0].metadata_list
        )
        tables = []
        for path in parts:
            with FileSystems.open(path) as f:
                tables.append(pq.read_table(f))
        return pa.concat_tables(tables) if tables else ROWS_SCHEMA.empty_table()
    finally:
        outputs.discard(folder)


def eval_split_rows(data_dir: str, beam_options: PipelineOptions | None = None) -> EvalRows:
    """The raw rows of a finished preprocess output's eval split, re-read from the input files
    its preprocess_config.json names, with the settings it records. GateError when they cannot
    be read, or when their count differs from stats.json's eval rows (the files changed since,
    or were read with a --format/--csv_delimiter that the config does not record)."""
    from transforms.corpus_io import CorpusError, CorpusSpec, inspect_corpus

    data = PreprocessOutput(data_dir).check_complete()
    config = data.config
    expected = data.rows(EVAL)
    if not expected:
        raise GateError(
            f"{data_dir} has no eval rows (eval_fraction {config.get('eval_fraction')}); pass a "
            f"fixed evaluation set with --eval_input"
        )
    files = config.get("files") or config.get("input") or []
    spec = CorpusSpec(
        patterns=tuple(files),
        format=config.get("format") or "auto",
        text_column=config.get("text_column", "text"),
        label_column=config.get("label_column", "label"),
        id_column=config.get("id_column"),
        multi_label=bool(config["multi_label"]),
        label_delimiter=config.get("label_delimiter"),
        eval_fraction=float(config.get("eval_fraction", 0.1)),
        csv_delimiter=config.get("csv_delimiter"),
    )
    try:
        formats = inspect_corpus(spec)
    except CorpusError as err:
        raise GateError(
            f"cannot re-read the eval split of {data_dir} from its inputs: {err}; pass a fixed "
            f"evaluation set with --eval_input"
        ) from None
    table = read_valid_rows(spec, formats, EVAL, beam_options)
    if table.num_rows != expected:
        raise GateError(
            f"re-reading the inputs of {data_dir} gave {table.num_rows} eval rows, but its "
            f"stats.json says {expected} were written: the input files changed since (or need a "
            f"--format/--csv_delimiter that preprocess_config.json does not record); pass a "
            f"fixed evaluation set with --eval_input"
        )
    return EvalRows(table, spec.multi_label, f"eval split of {data_dir}", tuple(sorted(formats)))


def fixed_set_rows(
    patterns: list[str],
    text_column: str,
    label_column: str,
    multi_label: bool,
    label_delimiter: str | None = None,
    format: str = "auto",
    csv_delimiter: str | None = None,
    beam_options: PipelineOptions | None = None,
) -> EvalRows:
    """Every valid row of a fixed evaluation set (the preprocess stage's readers and row checks,
    no split). CorpusError for patterns matching nothing or missing columns; GateError when no
    row is valid."""
    from transforms.corpus_io import CorpusError, CorpusSpec, inspect_corpus

    if label_delimiter and not multi_label:
        raise CorpusError("--label_delimiter only makes sense for a multi-label candidate")
    spec = CorpusSpec(
        patterns=tuple(patterns),
        format=format,
        text_column=text_column,
        label_column=label_column,
        multi_label=multi_label,
        label_delimiter=label_delimiter,
        eval_fraction=0.0,
        csv_delimiter=csv_delimiter,
    )
    formats = inspect_corpus(spec)
    table = read_valid_rows(spec, formats, None, beam_options)
    if not table.num_rows:
        raise GateError(
            f"the evaluation set {' '.join(patterns)} has no valid rows (every row lacks a text "
            f"or a label); check --text_column and --label_column"
        )
    return EvalRows(
        table, multi_label, f"evaluation set {' '.join(patterns)}", tuple(sorted(formats))
    )


def add_reading_flags(parser, applies_to: str = "") -> None:
    """The flags that say how to read labelled files (`textclf promote --eval_input`, `textclf
    evaluate --input`): columns, label delimiter, format, CSV delimiter, as preprocess names them.
    `applies_to` prefixes each help text (e.g. "--eval_input: ")."""
    for flag, default, what in (
        ("--text_column", "text", "column holding the text (default: text)"),
        ("--label_column", "label", "column holding the label(s) (default: label)"),
        ("--label_delimiter", None, "multi-label model: split string label cells on this "
         "delimiter (default: none; list columns need none)"),
    ):  # fmt: skip
        parser.add_argument(flag, default=default, help=applies_to + what)
    add_format_flags(parser, applies_to)


def rows_from_files(
    patterns: list[str], opts, multi_label: bool, beam_options: PipelineOptions | None = None
) -> EvalRows:
    """`fixed_set_rows` of `patterns`, read as the `add_reading_flags` flags in `opts` say."""
    return fixed_set_rows(
        patterns,
        opts.text_column,
        opts.label_column,
        multi_label,
        label_delimiter=opts.label_delimiter,
        format=opts.format,
        csv_delimiter=opts.csv_delimiter,
        beam_options=beam_options,
    )


# -- the figures -------------------------------------------------------------------------------


def _plain(array) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _multi_hot(lists: pa.Array, names: pa.Array, width: int) -> np.ndarray:
    """float32[rows, width]: column i for names[i], the last column for any other name."""
    index = pc.fill_null(pc.index_in(lists.flatten(), value_set=names), width - 1)
    parents = pc.list_parent_indices(lists).to_numpy()
    out = np.zeros((len(lists), width), np.float32)
    out[parents, index.to_numpy()] = 1.0
    return out


def label_metrics(
    true_labels: pa.Array,
    predicted: pa.Array,
    model_labels: list[str],
    multi_label: bool,
    detail: bool = False,
) -> dict:
    """accuracy (multi-label: the exact-match ratio), macro_f1 and rows, by label name.

    `true_labels` is list<string> (one name per row single-label); `predicted` is the scorer's
    label column (string single-label, list<string> multi-label). The classes are the labels
    the rows hold: macro_f1 averages their F1, so both models are averaged over the same
    classes; a predicted name outside them counts against the row it is predicted for.
    `unknown_label_rows` counts rows with a label `model_labels` lacks (wrong by construction).
    With `detail`, also `per_class` (the rows' classes) and, single-label, `labels` and
    `confusion_matrix` (rows: true class; columns: the same classes, then any other prediction).
    """
    true_labels, predicted = _plain(true_labels), _plain(predicted)
    from transforms.evaluation import multi_label_metrics, single_label_metrics

    flat = true_labels.flatten()
    names = sorted(set(pc.unique(flat).to_pylist()))
    value_set = pa.array(names, pa.string())
    width = len(names) + 1  # + _OTHER
    unknown = pc.invert(pc.is_in(flat, value_set=pa.array(list(model_labels), pa.string())))
    parents = pc.list_parent_indices(true_labels).to_numpy()
    unknown_rows = int(np.unique(parents[unknown.to_numpy(zero_copy_only=False)]).size)
    if multi_label:
        figures = multi_label_metrics(
            _multi_hot(true_labels, value_set, width),
            _multi_hot(predicted, value_set, width),
            [*names, _OTHER],
            threshold=0.5,  # the predictions are already 0/1, at the model's own threshold
        )
        accuracy = figures["subset_accuracy"]
    else:
        y_true = pc.index_in(flat, value_set=value_set).to_numpy()
        y_pred = pc.fill_null(pc.index_in(predicted, value_set=value_set), width - 1).to_numpy()
        figures = single_label_metrics(
            y_true, np.eye(width, dtype=np.float32)[y_pred], [*names, _OTHER]
        )
        accuracy = figures["accuracy"]
    per_class = figures["per_class"]
    result = {
        "accuracy": float(accuracy),
        "macro_f1": float(np.mean([per_class[n]["f1"] for n in names])) if names else 0.0,
        "rows": len(true_labels),
        "unknown_label_rows": unknown_rows,
    }
    if detail:
        result["per_class"] = {n: per_class[n] for n in names}
        if not multi_label:
            result["labels"] = names
            result["confusion_matrix"] = [row for row in figures["confusion_matrix"][: len(names)]]
    return result


def model_figures(
    model_dir: str, rows: EvalRows, batch_size: int = SCORING_BATCH_SIZE, detail: bool = False
) -> dict:
    """Score `rows` with the model in `model_dir` (a train output or a registry version) in
    process, with the scorer's code, and return `label_metrics` of its predictions. GateError
    when the model's head (single/multi-label) differs from the rows'."""
    from transforms.scoring import LoadedModel, ScoringModel, prediction_arrays

    model = ScoringModel.from_model_dir(model_dir)
    if model.multi_label != rows.multi_label:
        kind = {True: "multi-label", False: "single-label"}
        raise GateError(
            f"{model_dir} is a {kind[model.multi_label]} model but the evaluation rows are "
            f"{kind[rows.multi_label]}; their figures are not comparable: evaluate on rows of "
            f"the model's own kind (or publish it to another registry)"
        )
    loaded = LoadedModel(model_dir)
    texts = _plain(rows.table.column("text"))
    chunks = [
        loaded.probabilities(texts.slice(start, batch_size))
        for start in range(0, len(texts), batch_size)
    ]
    probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(model.label_names)))
    predicted = prediction_arrays(probabilities, model)[0]
    figures = label_metrics(
        rows.table.column("labels"), predicted, list(model.label_names), rows.multi_label, detail
    )
    _LOG.info(
        "%s (model_version %s) on %d rows: accuracy %.4f, macro_f1 %.4f",
        model_dir,
        model.model_version,
        figures["rows"],
        figures["accuracy"],
        figures["macro_f1"],
    )
    return figures


def evaluate_models(
    candidate_dir: str, champion_dir: str | None, rows: EvalRows
) -> tuple[dict, dict | None]:
    """Both models' figures on the same rows with the same code; None for no champion."""
    candidate = model_figures(candidate_dir, rows)
    champion = model_figures(champion_dir, rows) if champion_dir is not None else None
    return candidate, champion


# -- the rule ----------------------------------------------------------------------------------


def check_rule(metric: str, tolerance: float, floor: float) -> None:
    """GateError (one line) for a metric the gate does not know, or a bound out of range."""
    if metric not in METRICS:
        raise GateError(f"--metric {metric!r} is not one of: {', '.join(METRICS)}")
    if not 0.0 <= tolerance <= 1.0:
        raise GateError(f"--tolerance must be in [0, 1], got {tolerance}")
    if not 0.0 <= floor <= 1.0:
        raise GateError(f"--floor must be in [0, 1], got {floor}")


def decide(
    metric: str,
    candidate: float,
    champion: float | None,
    champion_version: int | None,
    tolerance: float,
    floor: float,
) -> tuple[bool, str]:
    """(promoted, reason): promoted iff `candidate` >= `floor` and, when there is a champion,
    `candidate` >= `champion` - `tolerance`. The reason is one sentence with the figures."""
    above_floor = candidate >= floor - _EPSILON
    floor_words = f"floor {floor:.4f}"
    if champion is None:
        if above_floor:
            return True, f"{metric} {candidate:.4f} >= {floor_words}, and there is no champion yet"
        return False, f"{metric} {candidate:.4f} < {floor_words} (there is no champion yet)"
    bar = f"champion v{champion_version}'s {champion:.4f} - {tolerance:.4f}"
    keeps_up = candidate >= champion - tolerance - _EPSILON
    if above_floor and keeps_up:
        return True, f"{metric} {candidate:.4f} >= {bar} and >= {floor_words}"
    failed = [f"< {floor_words}"] if not above_floor else []
    failed += [f"< {bar}"] if not keeps_up else []
    return False, f"{metric} {candidate:.4f} " + " and ".join(failed)
