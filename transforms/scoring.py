"""Batched inference over Arrow tables: the `ScoreRecordBatches` PTransform and what it needs.

This module owns applying an exported text classifier (the training stage's `saved_model/` with its
raw-text `serving_default` signature, see docs/DESIGN.md Stage 2) to a PCollection of
`pyarrow.Table`s: splitting rows with unusable text off to a dead-letter table, calling the
signature once per `batch_size` slice, and appending the prediction columns with numpy/pyarrow
vectorised code (no Python loop over rows). A slice whose call raises is bisected until the rows
that fail on their own are found; only those are dead-lettered (`model_call_failure_reason`), the
rest are scored. The same calls give each scored row's token counts (for a model that returns
them), summed per input table into an input profile for the drift check (transforms/drift.py).
The model is loaded once per worker process through
`apache_beam.utils.shared.Shared`. It also owns `TextclfModelHandler`, the same model and the same
prediction rule behind Beam's `RunInference` contract, for users who score raw strings inside their
own pipelines. It does not parse flags, match files, read or write Parquet, or decide where outputs
go: `pipeline/score.py` does that.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared

from transforms import arrow_coders  # noqa: F401  (registers the Arrow coders)
from transforms.arrow_types import is_text_type
from transforms.contracts import (
    DEAD_LETTER_TAG,
    LABELS_TXT,
    MODEL_CARD_FILE,
    MODEL_VERSION_COLUMN,
    OUT_LABELS,
    OUT_NUM_TOKENS,
    OUT_OOV_TOKENS,
    OUT_PROBABILITIES,
    OUT_WINDOW_TOKENS,
    PREDICTED_LABEL_COLUMN,
    PREDICTED_LABELS_COLUMN,
    PROBABILITIES_COLUMN,
    REASON_COLUMN,
    REASON_MODEL_CALL_FAILED,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NOT_STRING,
    REASON_TEXT_NULL,
    SAVED_MODEL_DIR,
    SAVED_MODEL_PB,
    SCORE_COLUMN,
    SERVING_INPUT,
    SERVING_SIGNATURE,
)
from transforms.drift import length_histogram

_LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "textclf.score"
DEFAULT_BATCH_SIZE = 1024
DEFAULT_THRESHOLD = 0.5  # a multi-label model whose card names no threshold
# At most this fraction of the rows read may be dead-lettered because the model call failed on
# them (pipeline/score.py's --max_dead_letter_fraction, checked when the job finalizes).
DEFAULT_MAX_DEAD_LETTER_FRACTION = 0.01
MAX_ERROR_MESSAGE_CHARS = 200  # of the error message's first line, in a dead-letter reason
# The tagged output of `ScoreTablesFn`'s input profile: one dict per input table, summed by
# `tfrecords.merge_stats` ({"rows", "length_counts" (transforms/drift.py bins), "window_tokens",
# "oov_tokens"}), for a model whose signature returns the profile outputs.
PROFILE_TAG = "profile"
PROFILE_OUTPUTS = (OUT_NUM_TOKENS, OUT_WINDOW_TOKENS, OUT_OOV_TOKENS)


@dataclass(frozen=True)
class ScoringModel:
    """What the scorer needs to know about a model directory, read once at pipeline build time.

    `threshold` is the model's own multi-label decision threshold (the one its serving signature
    applies); None for a single-label model.
    """

    model_dir: str
    label_names: tuple[str, ...]
    multi_label: bool
    model_version: str
    threshold: float | None = None

    @classmethod
    def from_model_dir(cls, model_dir: str) -> ScoringModel:
        """Read labels.txt and model_card.json (any Beam filesystem); no TensorFlow needed.

        `multi_label` and `threshold` come from the card's top level, or its `head` (cards
        written before those keys existed). Only a model without either loads the SavedModel to
        read the head off the signature (a `labels` output means multi-label); its threshold is
        then DEFAULT_THRESHOLD and its version the model directory's name.
        """
        model_dir = model_dir.rstrip("/")
        with FileSystems.open(FileSystems.join(model_dir, LABELS_TXT)) as f:
            label_names = tuple(line for line in f.read().decode("utf-8").splitlines() if line)
        card_path = FileSystems.join(model_dir, MODEL_CARD_FILE)
        card = {}
        if FileSystems.exists(card_path):
            with FileSystems.open(card_path) as f:
                card = json.loads(f.read().decode("utf-8"))
        head = card.get("head") or {}
        multi_label = card.get("multi_label", head.get("multi_label"))
        if multi_label is None:
            multi_label = OUT_LABELS in _load_signature(model_dir).structured_outputs
        threshold = None
        if multi_label:
            threshold = card.get("threshold", head.get("threshold"))
            threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        version = card.get("model_version") or os.path.basename(model_dir)
        return cls(model_dir, label_names, bool(multi_label), str(version), threshold)

    def decision_threshold(self, override: float | None = None) -> float | None:
        """The multi-label threshold to score with: `override`, else the model's own; None for
        a single-label model."""
        if not self.multi_label:
            return None
        if override is not None:
            return override
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    def prediction_fields(self) -> list[pa.Field]:
        label_field = (
            pa.field(PREDICTED_LABELS_COLUMN, pa.list_(pa.string()))
            if self.multi_label
            else pa.field(PREDICTED_LABEL_COLUMN, pa.string())
        )
        return [
            label_field,
            pa.field(SCORE_COLUMN, pa.float32()),
            pa.field(PROBABILITIES_COLUMN, pa.list_(pa.float32())),
            pa.field(MODEL_VERSION_COLUMN, pa.string()),
        ]

    def prediction_column(self) -> str:
        return PREDICTED_LABELS_COLUMN if self.multi_label else PREDICTED_LABEL_COLUMN


def scored_schema(passthrough: pa.Schema, model: ScoringModel) -> pa.Schema:
    """The scored Parquet's schema: the pass-through columns unchanged, then the predictions."""
    return pa.schema([*passthrough, *model.prediction_fields()])


def dead_letter_schema(passthrough: pa.Schema) -> pa.Schema:
    return pa.schema([*passthrough, pa.field(REASON_COLUMN, pa.string(), nullable=False)])


def saved_model_path(model_dir: str) -> str:
    """The SavedModel of a model directory: `model_dir` itself when it holds saved_model.pb (a
    registry version, TF Serving's layout), else its saved_model/ (what `textclf train` writes)."""
    model_dir = model_dir.rstrip("/")
    if FileSystems.exists(FileSystems.join(model_dir, SAVED_MODEL_PB)):
        return model_dir
    return FileSystems.join(model_dir, SAVED_MODEL_DIR)


def _load_signature(model_dir: str):
    import tensorflow as tf  # imported here so building a pipeline does not pay for TensorFlow

    return tf.saved_model.load(saved_model_path(model_dir)).signatures[SERVING_SIGNATURE]


class LoadedModel:
    """A loaded serving signature; one per worker process, shared by every DoFn instance.

    A plain class (not a dict or tuple) because `Shared` keeps weak references to what it holds.
    """

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(saved_model_path(model_dir))
        self.signature = self._loaded.signatures[SERVING_SIGNATURE]
        # Models exported before the profile outputs existed (or by other tools) lack them.
        self.profiles = set(PROFILE_OUTPUTS) <= set(self.signature.structured_outputs)

    def probabilities(self, texts: pa.Array) -> np.ndarray:
        """float32[len(texts), K]: `outputs(texts)`'s probabilities."""
        return self.outputs(texts)[OUT_PROBABILITIES]

    def outputs(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """One signature call over a plain `string` array with no nulls: the probabilities
        float32[len(texts), K] and, when `profiles`, the PROFILE_OUTPUTS int64[len(texts)].

        The strings reach TensorFlow as one blob plus offsets, cut apart by `tf.strings.substr`,
        so no Python object is made per row.
        """
        tf = self._tf
        offsets = np.frombuffer(
            texts.buffers()[1], dtype=np.int32, count=len(texts) + 1, offset=texts.offset * 4
        )
        first = int(offsets[0])
        blob = tf.constant(memoryview(texts.buffers()[2])[first : int(offsets[-1])].tobytes())
        batch = tf.strings.substr(blob, offsets[:-1] - first, np.diff(offsets))
        result = self.signature(**{SERVING_INPUT: batch})
        names = (OUT_PROBABILITIES, *PROFILE_OUTPUTS) if self.profiles else (OUT_PROBABILITIES,)
        return {name: result[name].numpy() for name in names}


def input_profile(chunks: Sequence[dict[str, np.ndarray]]) -> dict | None:
    """The profile figures of scored rows from `LoadedModel.outputs` results (None when they
    hold no profile outputs): rows, rows per token-length bin, window and OOV token sums."""
    if not chunks or OUT_NUM_TOKENS not in chunks[0]:
        return None

    def column(name):
        return np.concatenate([c[name] for c in chunks]) if len(chunks) > 1 else chunks[0][name]

    num_tokens = column(OUT_NUM_TOKENS)
    return {
        "rows": len(num_tokens),
        "length_counts": length_histogram(num_tokens),
        "window_tokens": int(column(OUT_WINDOW_TOKENS).sum()),
        "oov_tokens": int(column(OUT_OOV_TOKENS).sum()),
    }


def _as_plain_strings(text) -> pa.Array:
    """A text column (any string-like Arrow type, chunked or not) as one plain `string` array."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    if pa.types.is_dictionary(text.type):
        text = text.dictionary_decode()
    if not pa.types.is_string(text.type):
        text = text.cast(pa.string())
    return text


def unusable_text_reasons(text: pa.Array) -> pa.Array:
    """Per row: null where the text can be scored, else the dead-letter reason (vectorised).

    Empty and whitespace-only (Unicode) texts are both REASON_TEXT_EMPTY, as in preprocess.
    """
    # binary_length reads the offsets only; utf8_is_space stops at the first non-space character
    # (and is false for ""), so no trimmed copy of the column is made.
    empty = pc.or_(pc.equal(pc.binary_length(text), 0), pc.utf8_is_space(text))
    return pc.if_else(
        pc.is_null(text),
        pa.scalar(REASON_TEXT_NULL),
        pc.if_else(empty, pa.scalar(REASON_TEXT_EMPTY), pa.scalar(None, pa.string())),
    )


def _error_headline(error: BaseException) -> str:
    """The first line of `error`'s message that says what went wrong.

    TensorFlow wraps an op's error from a graph function as "Graph execution error:", "Detected
    at node N defined at (most recent call last):", the node's stack (indented lines, or
    "<stack traces unavailable>"), maybe "Node: 'N'", then the op's own message: those
    preamble lines are skipped. Otherwise it is the first non-blank line.
    """
    message = getattr(error, "message", None)  # TensorFlow's OpError: without the node def
    lines = (message if isinstance(message, str) else str(error)).splitlines()
    if lines and lines[0].strip().startswith("Graph execution error"):
        preamble = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
        lines = [
            line
            for line in lines
            if line[:1].strip() and not line.startswith((*preamble, "Node: "))
        ] or lines
    return next((line.strip() for line in lines if line.strip()), "")


def model_call_failure_reason(error: BaseException, model_version: str) -> str:
    """The dead-letter reason of a row the model call failed on:
    "model call failed (model_version V): ErrorType: <the message's first line>", that line cut
    to MAX_ERROR_MESSAGE_CHARS. The model version is part of the reason (not a dead-letter
    column), so every dead-letter file keeps one schema whatever its reasons."""
    line = _error_headline(error)
    if len(line) > MAX_ERROR_MESSAGE_CHARS:
        line = line[: MAX_ERROR_MESSAGE_CHARS - 3] + "..."
    return (
        f"{REASON_MODEL_CALL_FAILED} (model_version {model_version}): "
        f"{type(error).__name__}: {line}"
    )


def prediction_arrays(
    probabilities: np.ndarray, model: ScoringModel, threshold: float | None = None
) -> list[pa.Array]:
    """The prediction columns, in `ScoringModel.prediction_fields()` order, from probabilities.

    Multi-label: a class is predicted when its probability >= `threshold` (None: the model's own).
    """
    rows, num_classes = probabilities.shape
    names = pa.array(model.label_names, pa.string())
    if model.multi_label:
        chosen = probabilities >= model.decision_threshold(threshold)
        _, classes = np.nonzero(chosen)  # row-major, so classes come grouped by row, in index order
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(chosen.sum(axis=1), out=offsets[1:])
        label_column = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(classes)))
    else:
        label_column = names.take(pa.array(np.argmax(probabilities, axis=1)))
    flat = pa.array(np.ascontiguousarray(probabilities, dtype=np.float32).reshape(-1))
    probability_column = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * num_classes + 1, num_classes, dtype=np.int32)), flat
    )
    return [
        label_column,
        pa.array(probabilities.max(axis=1, initial=0.0).astype(np.float32)),
        probability_column,
        pa.repeat(pa.scalar(model.model_version, pa.string()), rows),
    ]


class ScoreTablesFn(beam.DoFn):
    """Scores each input table; the main output is the scored table, `dead_letter` the rest.

    One output table per input table (a Parquet row group in, a row group out), so output row
    groups keep the input's size however small `batch_size` is.

    A `batch_size` slice whose model call raises (any exception) is split in halves, and each
    failing half again, until the rows that fail alone are isolated (2k - 1 calls for k rows if
    all fail, about 2 log2(batch_size) per isolated row otherwise). Those rows are dead-lettered
    with `model_call_failure_reason`; the others are scored in their order, as if nothing failed.
    Counters `rows_failed_model_call` and `model_calls_failed` (calls that raised) count them.

    When the signature returns the profile outputs, each input table's scored rows also give one
    `input_profile` dict on the PROFILE_TAG output (from the same calls: no extra pass).
    """

    def __init__(
        self,
        model: ScoringModel,
        text_column: str,
        passthrough: pa.Schema,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threshold: float | None = None,
    ):
        self._model = model
        self._text_column = text_column
        self._passthrough = passthrough
        self._scored_schema = scored_schema(passthrough, model)
        self._dead_schema = dead_letter_schema(passthrough)
        self._batch_size = batch_size
        self._threshold = threshold
        self._shared_handle = shared.Shared()
        self._rows_scored = Metrics.counter(METRICS_NAMESPACE, "rows_scored")
        self._rows_dead = Metrics.counter(METRICS_NAMESPACE, "rows_dead_lettered")
        self._batches = Metrics.counter(METRICS_NAMESPACE, "batches")
        self._rows_failed = Metrics.counter(METRICS_NAMESPACE, "rows_failed_model_call")
        self._calls_failed = Metrics.counter(METRICS_NAMESPACE, "model_calls_failed")
        self._load_ms = Metrics.distribution(METRICS_NAMESPACE, "model_load_ms")

    def setup(self):
        def load():
            start = time.monotonic()
            loaded = LoadedModel(self._model.model_dir)
            self._load_ms.update(int((time.monotonic() - start) * 1000))
            return loaded

        self._loaded = self._shared_handle.acquire(load, tag=self._model.model_dir)

    def process(self, table: pa.Table) -> Iterable:
        passthrough = table.select(self._passthrough.names)
        if not passthrough.schema.equals(self._passthrough):
            passthrough = passthrough.cast(self._passthrough)
        text = table.column(self._text_column)
        if not is_text_type(text.type):
            reasons = pa.repeat(pa.scalar(REASON_TEXT_NOT_STRING), table.num_rows)
            yield from self._dead_letter(passthrough, reasons)
            return
        text = _as_plain_strings(text)
        reasons = unusable_text_reasons(text)
        if reasons.null_count != len(reasons):
            usable = pc.is_null(reasons)
            yield from self._dead_letter(
                passthrough.filter(pc.invert(usable)), reasons.filter(pc.invert(usable))
            )
            passthrough, text = passthrough.filter(usable), text.filter(usable)
        if passthrough.num_rows == 0:
            return
        chunks, failed = [], []
        for start in range(0, len(text), self._batch_size):
            batch = text.slice(start, self._batch_size)
            try:
                chunks.append(self._loaded.outputs(batch))
            except Exception as err:  # noqa: BLE001 - any failure of the call: isolate its rows
                _LOG.warning(
                    "model call failed on %d rows; bisecting to find the failing rows: %s",
                    len(batch),
                    model_call_failure_reason(err, self._model.model_version),
                )
                chunks.extend(self._bisect(batch, start, err, failed))
            self._batches.inc()
        if failed:
            # Rare path: dead-letter the rows the model call failed on, keep the rest in order.
            rows, reasons = zip(*failed)
            yield from self._dead_letter(passthrough.take(pa.array(rows)), pa.array(reasons))
            self._rows_failed.inc(len(rows))
            ok = np.ones(passthrough.num_rows, dtype=bool)
            ok[list(rows)] = False
            passthrough = passthrough.filter(pa.array(ok))
            if passthrough.num_rows == 0:
                return
        probs = [c[OUT_PROBABILITIES] for c in chunks]
        probabilities = np.concatenate(probs) if len(probs) > 1 else probs[0]
        profile = input_profile(chunks)
        if profile is not None:
            yield beam.pvalue.TaggedOutput(PROFILE_TAG, profile)
        columns = [
            *passthrough.columns,
            *prediction_arrays(probabilities, self._model, self._threshold),
        ]
        self._rows_scored.inc(passthrough.num_rows)
        yield pa.Table.from_arrays(columns, schema=self._scored_schema)

    def _bisect(self, texts: pa.Array, start: int, error: Exception, failed: list) -> list:
        """`texts` (rows `start`... of the usable text) failed one model call with `error`:
        call each half in turn, splitting again whichever fails, down to single rows. Returns
        the outputs of the rows that scored, in row order (one `LoadedModel.outputs` dict per
        successful call); appends (row, reason) to `failed` for each row that fails on its own."""
        self._calls_failed.inc()
        if len(texts) == 1:
            failed.append((start, model_call_failure_reason(error, self._model.model_version)))
            return []
        half = len(texts) // 2
        chunks = []
        for offset, length in ((0, half), (half, len(texts) - half)):
            part = texts.slice(offset, length)
            try:
                chunks.append(self._loaded.outputs(part))
            except Exception as err:  # noqa: BLE001
                chunks.extend(self._bisect(part, start + offset, err, failed))
        return chunks

    def _dead_letter(self, passthrough: pa.Table, reasons: pa.Array):
        if passthrough.num_rows:
            self._rows_dead.inc(passthrough.num_rows)
            table = pa.Table.from_arrays([*passthrough.columns, reasons], schema=self._dead_schema)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, table)


class ScoreRecordBatches(beam.PTransform):
    """PCollection[pa.Table] -> {'scored': PCollection[pa.Table], 'dead_letter': ...,
    'profile': PCollection[dict]} (`ScoreTablesFn`'s per-table input profiles; empty for a
    model without the profile outputs).

    Input tables hold `text_column` and every column of `passthrough`; scored tables have the
    schema `scored_schema(passthrough, model)`, dead-letter tables `dead_letter_schema(passthrough)`.
    `threshold` overrides the multi-label model's own decision threshold (None: keep it).
    """

    def __init__(
        self,
        model: ScoringModel,
        text_column: str,
        passthrough: pa.Schema,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threshold: float | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._fn = ScoreTablesFn(model, text_column, passthrough, batch_size, threshold)

    def expand(self, tables):
        results = tables | "ScoreTables" >> beam.ParDo(self._fn).with_output_types(
            pa.Table
        ).with_outputs(DEAD_LETTER_TAG, PROFILE_TAG, main="scored")
        return {
            "scored": results.scored,
            DEAD_LETTER_TAG: results[DEAD_LETTER_TAG],
            PROFILE_TAG: results[PROFILE_TAG],
        }


class SummarizeTables(beam.CombineFn):
    """Rows in a PCollection of tables, and optionally the counts of one column's values.

    Counting from the tables themselves (not from metrics) is what lets stats.json check that rows
    read == rows scored + rows dead-lettered. A list column's values are counted one by one.
    """

    def __init__(self, count_column: str | None = None):
        self._count_column = count_column

    def create_accumulator(self):
        return {"rows": 0, "counts": {}}

    def add_input(self, acc, table: pa.Table):
        acc["rows"] += table.num_rows
        if self._count_column is not None and table.num_rows:
            values = table.column(self._count_column)
            if pa.types.is_list(values.type):
                values = pc.list_flatten(values)
            for item in pc.value_counts(values).to_pylist():  # one entry per distinct value
                key = "null" if item["values"] is None else item["values"]
                acc["counts"][key] = acc["counts"].get(key, 0) + item["counts"]
        return acc

    def merge_accumulators(self, accumulators: Sequence[dict]):
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["rows"] += acc["rows"]
            for key, n in acc["counts"].items():
                merged["counts"][key] = merged["counts"].get(key, 0) + n
        return merged

    def extract_output(self, acc):
        return acc


class UnusableTextError(ValueError):
    """An element `TextclfModelHandler` cannot score: not a str, None, empty or whitespace-only
    (the texts `textclf score` dead-letters). Raised for the whole batch, so RunInference's
    `with_exception_handling()` sends that batch to `failed_inferences`."""


def _unusable_text_error(batch: Sequence, index: int, reason: str) -> UnusableTextError:
    shown = repr(batch[index])
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return UnusableTextError(
        f"TextclfModelHandler: element {index} of a batch of {len(batch)}: {reason} ({shown}); "
        "RunInference's elements must be non-empty str texts ((key, text) pairs under "
        "KeyedModelHandler): filter or fix such elements before RunInference"
    )


def text_array(batch: Sequence) -> pa.Array:
    """The elements of a RunInference batch as one plain Arrow `string` array, ready for
    `LoadedModel.outputs`; UnusableTextError naming the first element `textclf score` would
    dead-letter (a non-str, None, empty or whitespace-only text: `unusable_text_reasons`)."""
    try:
        texts = pa.array(batch)
    except (TypeError, ValueError, OverflowError, pa.ArrowException):
        texts = None  # mixed types Arrow cannot put in one column: found below
    if texts is None or not (
        pa.types.is_string(texts.type)
        or pa.types.is_large_string(texts.type)
        or pa.types.is_null(texts.type)  # every element None: reported as null text below
    ):
        for index, text in enumerate(batch):  # the error path only
            if text is not None and not isinstance(text, str):
                raise _unusable_text_error(
                    batch, index, f"{REASON_TEXT_NOT_STRING} but {type(text).__name__}"
                )
        raise UnusableTextError(f"TextclfModelHandler: a batch that is not text: {texts!r:.200}")
    texts = _as_plain_strings(texts)
    reasons = unusable_text_reasons(texts)
    if reasons.null_count != len(reasons):
        index = pc.index(pc.is_valid(reasons), True).as_py()
        raise _unusable_text_error(batch, index, reasons[index].as_py())
    return texts


class TextclfModelHandler(ModelHandler[str, PredictionResult, LoadedModel]):
    """Beam's `ModelHandler` for a textclf model directory: `RunInference` over raw text strings.

    `model_dir` is what `textclf train` writes (`saved_model/`, labels.txt, model_card.json) or a
    registry version directory (the SavedModel's files directly inside, as
    `pipeline.registry.resolve_model_dir` returns for a registry root). labels.txt and
    model_card.json are read here, at pipeline build time; the SavedModel is loaded by
    `load_model`, which RunInference calls once per worker process (through `Shared`).

    Each batch is one call of the serving signature (`LoadedModel.probabilities`, the texts as
    one Arrow array), and its predictions come from `prediction_arrays`, the code `textclf score`
    uses, so a text gets the same label(s) and probabilities (to the last bit or so: batches
    differ) as in the scored Parquet. Each element yields
    `PredictionResult(example=text, inference=..., model_id=<model_card.json's model_version>)`
    whose `inference` is a dict keyed like the scored Parquet's prediction columns:

        "predicted_label": str            single-label: the argmax class, or
        "predicted_labels": list[str]     multi-label: the classes with probability >= threshold
        "score": float                    the top probability
        "probabilities": np.ndarray       float32[K], in labels.txt order
        "model_version": str              as model_id

    `threshold` overrides a multi-label model's own threshold (model_card.json), in (0, 1), as
    `textclf score --threshold`; a single-label model ignores it. `min_batch_size` and
    `max_batch_size` are RunInference's batching hints (`batch_elements_kwargs`); the default
    largest batch is DEFAULT_BATCH_SIZE, score's rows per call. A batch holding an element that
    score would dead-letter (not a str, None, empty or whitespace-only) raises UnusableTextError
    before the model is called; under `RunInference(...).with_exception_handling()` that batch
    goes to `failed_inferences` (Beam's dead-letter output is per batch) and other batches score.
    Keys pass through `KeyedModelHandler(TextclfModelHandler(model_dir))`.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        threshold: float | None = None,
        min_batch_size: int | None = None,
        max_batch_size: int | None = DEFAULT_BATCH_SIZE,
    ):
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        for name, size in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be at least 1, got {size}")
        if min_batch_size is not None and max_batch_size is not None:
            if min_batch_size > max_batch_size:
                raise ValueError(
                    f"min_batch_size {min_batch_size} is above max_batch_size {max_batch_size}"
                )
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.model = ScoringModel.from_model_dir(model_dir)
        self._threshold = threshold
        label_column = self.model.prediction_column()
        self._keys = (label_column, *(f.name for f in self.model.prediction_fields()[1:]))

    def load_model(self) -> LoadedModel:
        return LoadedModel(self.model.model_dir)

    def run_inference(
        self,
        batch: Sequence[str],
        model: LoadedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        if not len(batch):
            return []
        texts = text_array(batch)  # before the model: a bad batch fails the same way always
        probabilities = model.probabilities(texts)
        labels, scores, _, _ = prediction_arrays(probabilities, self.model, self._threshold)
        version = self.model.model_version
        label_key, score_key, probabilities_key, version_key = self._keys
        return [
            PredictionResult(
                text,
                {
                    label_key: label,
                    score_key: score,
                    probabilities_key: row,
                    version_key: version,
                },
                version,
            )
            for text, label, score, row in zip(
                batch, labels.to_pylist(), scores.to_pylist(), probabilities, strict=True
            )
        ]

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                "TextclfModelHandler takes no inference_args (the serving signature has one "
                f"input, the texts); got {sorted(inference_args)}"
            )
