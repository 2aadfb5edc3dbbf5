"""The preprocess stage's Beam graph: `PreprocessCorpus`, and the glue its pieces need.

`PreprocessCorpus(PreprocessSettings)` reads the corpus twice (once for tf.Transform's analysis,
once for the transform pass: nothing is held in memory), validates and splits the rows, builds
the vocabularies, maps text to ids, and writes each bundle's tf.Examples and dead letters to its
own file under `output_dir`, with the transform graph beside them. It returns what was written
(bundle files, the transform graph) and the merged per-source statistics: the side inputs of the
job's last step, which names the files, writes stats.json and publishes the directory; that step
(`pipeline/preprocess.py`) is policy and lives there. Also here: `rebatch` (record batches
bounded by rows and text bytes) and `tensor_adapter_config` (how tf.Transform reads those
batches). The pieces themselves are in `corpus_io`, `text_preprocessing` and `tfrecords`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_transform.beam as tft_beam

from transforms import corpus_io, tfrecords
from transforms.contracts import (
    DEAD_LETTER_TAG,
    EVAL,
    RAW_LABEL_KEY,
    SPLIT_KEY,
    SPLITS,
    TEXT_KEY,
    TRAIN,
)
from transforms.corpus_io import CorpusSpec
from transforms.progress import LogProgress
from transforms.text_preprocessing import TextSettings, make_preprocessing_fn

# In the output directory: each bundle's file, until the job's last step names them.
BUNDLES_DIR = "_bundle_files"

# Text bytes per record batch, at most (a single longer row still makes its own batch): rows of
# very long documents would otherwise make batches, and the graph's tensors, of gigabytes.
MAX_BATCH_TEXT_BYTES = 32 << 20

# Prefixes of the keys `PreprocessCorpus` returns, one key per source (see its docstring).
FILES_PREFIX = "files_"
DEAD_LETTER_FILES_PREFIX = "dead_letter_files_"
STATS_PREFIX = "stats_"
TRANSFORM_FN_KEY = "transform_fn"


@dataclasses.dataclass(frozen=True)
class PreprocessSettings:
    """What `PreprocessCorpus` needs: the corpus, its files, the text settings and where to write.

    `files` maps each input path to its format (`corpus_io.inspect_corpus`); `output_dir` is where
    `transform_fn/` and the bundle files go (the stage's staging directory); `temp_dir` is
    tf.Transform's scratch folder; `batch_rows` caps the rows per record batch.
    """

    corpus: CorpusSpec
    files: dict[str, str]
    text: TextSettings
    output_dir: str
    temp_dir: str
    batch_rows: int = 8192


def tensor_adapter_config(multi_label: bool):
    """How tf.Transform reads `corpus_io.tft_input_schema()` batches: text and split as dense
    scalars, the label dense (single-label) or as a sparse list (multi-label)."""
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.tfxio import tensor_adapter

    rep = schema_pb2.TensorRepresentation

    def dense(column):
        return rep(dense_tensor=rep.DenseTensor(column_name=column, shape=schema_pb2.FixedShape()))

    label = (
        rep(varlen_sparse_tensor=rep.VarLenSparseTensor(column_name=RAW_LABEL_KEY))
        if multi_label
        else dense(RAW_LABEL_KEY)
    )
    return tensor_adapter.TensorAdapterConfig(
        corpus_io.tft_input_schema(), {TEXT_KEY: dense(TEXT_KEY), RAW_LABEL_KEY: label}
    )


def text_bytes(column) -> np.ndarray | None:
    """Bytes of text per row (null: 0), or None for a column type that has no byte length."""
    try:
        return pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return None


def rebatch(
    batch: pa.RecordBatch, rows: int, text_column: str, max_bytes: int = MAX_BATCH_TEXT_BYTES
) -> Iterator[pa.RecordBatch]:
    """Slices of `batch` of at most `rows` rows and `max_bytes` of text, in order (CSV/JSONL come
    in 4 MiB blocks, Parquet in `rows`-row batches of row groups); a longer row stands alone."""
    sizes = text_bytes(batch.column(text_column)) if text_column in batch.schema.names else None
    ends = np.cumsum(sizes) if sizes is not None else None
    start, n = 0, batch.num_rows
    while start < n:
        end = min(start + rows, n)
        if ends is not None:
            before = ends[start - 1] if start else 0
            end = max(start + 1, min(end, int(np.searchsorted(ends, before + max_bytes, "right"))))
        yield batch.slice(start, end - start)
        start = end


def parse_error_stats(record: dict) -> dict:
    """A reader's dead letter (an unparseable row) -> its share of the statistics."""
    return {"rows_read": 1, "dead_lettered": {record["reason"]: 1}}


class ReadValidRows(beam.PTransform):
    """Files -> tf.Transform input batches ('rows'), dead letters and per-batch statistics.

    Returns (raw, rows): `ReadCorpus`'s outputs (its 'batches' and, for CSV/JSONL, the rows it
    could not parse) and `ValidateAndSplit`'s ('rows', DEAD_LETTER_TAG, STATS_TAG)."""

    def __init__(self, settings: PreprocessSettings, for_analysis: bool):
        super().__init__()
        self._settings = settings
        self._for_analysis = for_analysis

    def expand(self, pbegin):
        s = self._settings
        raw = pbegin | "ReadCorpus" >> corpus_io.ReadCorpus(s.corpus, s.files, s.batch_rows)
        corpus_pass = "analyze" if self._for_analysis else "transform"
        rows = (
            raw["batches"]
            | "LogDocumentsRead" >> LogProgress(f"preprocess[{corpus_pass}]", "documents read")
            | "Rebatch"
            >> beam.FlatMap(rebatch, s.batch_rows, s.corpus.text_column).with_output_types(
                pa.RecordBatch
            )
            | "ValidateAndSplit"
            >> beam.ParDo(corpus_io.ValidateAndSplit(s.corpus, for_analysis=self._for_analysis))
            .with_output_types(pa.RecordBatch)
            .with_outputs(DEAD_LETTER_TAG, corpus_io.STATS_TAG, main="rows")
        )
        return raw, rows


class PreprocessCorpus(beam.PTransform):
    """PBegin -> {name: PCollection}: the preprocess stage up to, not including, its last step.

    Returns, keyed for the last step's side inputs:
    - `transform_fn`: WriteTransformFn's result (`output_dir/transform_fn/` is complete);
    - `files_train`, `files_eval`: (path, records, order digest) of each bundle's gzipped
      TFRecord file under `output_dir/_bundle_files/<split>/`;
    - `dead_letter_files_invalid` (and `_unparsed` for CSV/JSONL input): the same for the
      dead-letter JSON-lines files;
    - `stats_read`, `stats_write` (and `stats_unparsed`): one merged statistics dict each.

    Every write and statistic is produced inside the transform pass's fused stage; the only
    stages after it are the statistics' combines.
    """

    def __init__(self, settings: PreprocessSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        s = self._settings
        adapter = tensor_adapter_config(s.text.multi_label)
        _, analysis = pbegin | "Read[analyze]" >> ReadValidRows(s, for_analysis=True)
        raw, rows = pbegin | "Read[transform]" >> ReadValidRows(s, for_analysis=False)
        with tft_beam.Context(temp_dir=s.temp_dir, passthrough_keys={SPLIT_KEY}):
            transform_fn = (analysis.rows, adapter) | "AnalyzeCorpus" >> tft_beam.AnalyzeDataset(
                make_preprocessing_fn(s.text)
            )
            transformed, _ = (
                (rows.rows, adapter),
                transform_fn,
            ) | "TransformCorpus" >> tft_beam.TransformDataset(output_record_batches=True)
            transform_fn_written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
                s.output_dir
            )
        encoded = transformed | "SplitAndEncode" >> beam.ParDo(
            tfrecords.SplitAndEncode()
        ).with_outputs(TRAIN, EVAL, tfrecords.STATS_TAG)
        dead, stats = _dead_letters_and_stats(raw, rows, encoded)
        return {
            TRANSFORM_FN_KEY: transform_fn_written,
            **{
                f"{FILES_PREFIX}{split}": encoded[split]
                | f"Write[{split}]"
                >> self._write_bundles(
                    split, tfrecords.tfrecord_batch, tfrecords.example_order_key, gzip=True
                )
                for split in SPLITS
            },
            # Dead letters are written where they are found (no Flatten, which would cut the
            # fused stages): by the reader (unparseable rows) and by ValidateAndSplit.
            **{
                f"{DEAD_LETTER_FILES_PREFIX}{name}": pcoll
                | f"WriteDeadLetters[{name}]"
                >> self._write_bundles(
                    "dead_letter", tfrecords.json_line, tfrecords.json_line_key, gzip=False
                )
                for name, pcoll in dead.items()
            },
            # Each source is combined where it is produced (a lifted combine); flattening the
            # per-batch dicts first would make the runner hold all of them until the end.
            **{
                f"{STATS_PREFIX}{name}": pcoll
                | f"MergeStats[{name}]"
                >> beam.CombineGlobally(tfrecords.merge_stats).without_defaults()
                for name, pcoll in stats.items()
            },
        }

    def _write_bundles(self, name: str, encode, order_key, gzip: bool) -> beam.ParDo:
        """Each bundle's records into one file under `_bundle_files/<name>/` (WriteBundleFiles)."""
        directory = f"{self._settings.output_dir}/{BUNDLES_DIR}/{name}"
        return beam.ParDo(tfrecords.WriteBundleFiles(directory, encode, order_key, gzip=gzip))


def _dead_letters_and_stats(raw: dict, rows, encoded) -> tuple[dict, dict]:
    """The dead-letter and statistics sources by name; the reader's unparseable rows (CSV/JSONL
    input only) are both, counted by `CountParseErrors`."""
    dead = {"invalid": rows[DEAD_LETTER_TAG]}
    stats = {"read": rows[corpus_io.STATS_TAG], "write": encoded[tfrecords.STATS_TAG]}
    if DEAD_LETTER_TAG in raw:
        dead["unparsed"] = raw[DEAD_LETTER_TAG]
        stats["unparsed"] = raw[DEAD_LETTER_TAG] | "CountParseErrors" >> beam.Map(parse_error_stats)
    return dead, stats
