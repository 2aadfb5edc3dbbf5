"""The score stage's Beam graph: `ScoreParquet`, Parquet files in, scored Parquet part files out.

`ScoreParquet(ScoreSettings)` reads the input patterns as Arrow tables (only the needed columns),
scores them with `scoring.ScoreRecordBatches`, writes the scored rows and the dead letters as
Parquet part files under `output_dir`, and summarizes the tables read, scored and dead-lettered
and the scored rows' input profile (token lengths, OOV tokens: the drift check's figures).
It returns those write results and summaries: the side inputs of the job's last step, which
checks the counts against the files, numbers the shards, writes stats.json and publishes the
directory; that step (`pipeline/score.py`) is policy and lives there.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_TAG,
    PARQUET_SUFFIX,
    REASON_COLUMN,
    SCORED_PART_PREFIX,
)
from transforms.corpus_io import ReadDelimitedFiles, conform_rows, unparsed_reason
from transforms.progress import LogProgress
from transforms.scoring import (
    DEFAULT_BATCH_SIZE,
    PROFILE_TAG,
    ScoreRecordBatches,
    ScoringModel,
    SummarizeTables,
    dead_letter_schema,
    scored_schema,
)
from transforms.tfrecords import merge_stats

# Keys of what `ScoreParquet` returns: three table summaries ({"rows", "counts"}, one element
# each), the summed input profile (PROFILE, one element: {} for a model without the profile
# outputs) and the file names of each write (WRITTEN_PREFIX + a number).
READ, SCORED, DEAD_LETTERED, PROFILE = "read", "scored", "dead_lettered", PROFILE_TAG
WRITTEN_PREFIX = "written_"


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """What `ScoreParquet` needs: the inputs, the model, the columns and where to write.

    `inputs` are Parquet file patterns (each read once); `delimited` CSV and JSONL files, as
    (path, format) pairs, read with `corpus_io`'s readers (`csv_delimiter`: None for a tab in
    .tsv files, else a comma); `output_dir` is where the part files go (the stage's staging
    directory); `passthrough` is the schema of the columns copied to both outputs; `threshold`
    overrides a multi-label model's own threshold (None: keep it).
    """

    inputs: tuple[str, ...]
    output_dir: str
    model: ScoringModel
    text_column: str
    passthrough: pa.Schema
    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float | None = None
    delimited: tuple[tuple[str, str], ...] = ()
    csv_delimiter: str | None = None
    # Parquet files matched beside CSV/JSONL ones: read by one transform over the file list.
    parquet_files: tuple[str, ...] = ()


class ScoreParquet(beam.PTransform):
    """PBegin -> {name: PCollection}: the score stage up to, not including, its last step.

    Returns `read`, `scored`, `dead_lettered` (one `SummarizeTables` summary each: rows, and
    the predicted labels or dead-letter reasons counted), `profile` (the scored rows' input
    profiles summed: {"rows", "length_counts", "window_tokens", "oov_tokens"}, or {}) and
    `written_0` (scored part files),
    `written_1` (dead-letter part files), named `<prefix>-SSSSS-of-NNNNN.parquet` by Beam's sink.
    """

    def __init__(self, settings: ScoreSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        s = self._settings
        read_columns = list(dict.fromkeys([*s.passthrough.names, s.text_column]))
        tables = [
            pbegin
            | f"ReadParquet[{i}]"
            >> beam.io.ReadFromParquetBatched(pattern, columns=read_columns).with_output_types(
                pa.Table
            )
            for i, pattern in enumerate(s.inputs)
        ]
        if s.parquet_files:  # one transform, however many files
            tables.append(
                pbegin
                | "ParquetFiles" >> beam.Create(list(s.parquet_files))
                | "ReadParquetFiles"
                >> beam.io.ReadAllFromParquetBatched(columns=read_columns).with_output_types(
                    pa.Table
                )
            )
        unreadable = []  # dead-letter tables of the rows the readers reject, before scoring
        for fmt in sorted({fmt for _, fmt in s.delimited}):
            read, rejected = pbegin | f"Read[{fmt}]" >> _ReadDelimited(s, fmt)
            tables.append(read)
            unreadable.append(rejected)
        tables = tables | "FlattenInputs" >> beam.Flatten().with_output_types(pa.Table)
        tables = tables | "LogRowsRead" >> LogProgress("score", "rows read")
        results = tables | "Score" >> ScoreRecordBatches(
            s.model, s.text_column, s.passthrough, s.batch_size, s.threshold
        )
        scored, dead = results["scored"], results[DEAD_LETTER_TAG]
        read_tables = tables
        if unreadable:
            dead = (dead, *unreadable) | "FlattenDeadLetters" >> beam.Flatten()
            read_tables = (tables, *unreadable) | "FlattenRead" >> beam.Flatten()
        return {
            f"{WRITTEN_PREFIX}0": scored
            | "WriteScored"
            >> self._write(SCORED_PART_PREFIX, scored_schema(s.passthrough, s.model)),
            f"{WRITTEN_PREFIX}1": dead
            | "WriteDeadLetter"
            >> self._write(DEAD_LETTER_PREFIX, dead_letter_schema(s.passthrough)),
            READ: read_tables | "CountRead" >> beam.CombineGlobally(SummarizeTables()),
            SCORED: scored
            | "CountScored" >> beam.CombineGlobally(SummarizeTables(s.model.prediction_column())),
            DEAD_LETTERED: dead
            | "CountDeadLetter" >> beam.CombineGlobally(SummarizeTables(REASON_COLUMN)),
            PROFILE: results[PROFILE_TAG] | "SumProfile" >> beam.CombineGlobally(merge_stats),
        }

    def _write(self, prefix: str, schema: pa.Schema) -> beam.PTransform:
        """Tables -> snappy Parquet part files `<output_dir>/<prefix>-*.parquet`."""
        return beam.io.WriteToParquetBatched(
            FileSystems.join(self._settings.output_dir, prefix),
            schema,
            codec="snappy",
            file_name_suffix=PARQUET_SUFFIX,
        )


class _ReadDelimited(beam.PTransform):
    """PBegin -> (tables to score, dead-letter tables): the `fmt` files of `settings.delimited`
    read by `corpus_io.ReadDelimitedFiles`, each batch made to fit the pass-through schema by
    `corpus_io.conform_rows`. A row the reader could not parse is one dead-letter row with null
    columns and `corpus_io.unparsed_reason` as its reason; a row with a cell that does not fit
    (bytes that are not UTF-8, a JSONL value of another type) is dead-lettered with its columns.
    """

    def __init__(self, settings: ScoreSettings, fmt: str):
        super().__init__()
        self._settings = settings
        self._fmt = fmt

    def expand(self, pbegin):
        s, fmt = self._settings, self._fmt
        columns = list(dict.fromkeys([*s.passthrough.names, s.text_column]))
        json_types = None
        if fmt == "jsonl":
            json_types = {f.name: f.type for f in s.passthrough}
            json_types[s.text_column] = pa.string()
        read = (
            pbegin
            | "ListFiles" >> beam.Create(sorted(p for p, f in s.delimited if f == fmt))
            | "ReadFiles" >> ReadDelimitedFiles(fmt, columns, s.csv_delimiter, json_types)
        )
        conformed = read["batches"] | "Conform" >> beam.ParDo(
            _ConformRows(s.passthrough, s.text_column)
        ).with_output_types(pa.Table).with_outputs(DEAD_LETTER_TAG, main="tables")
        unparsed = read[DEAD_LETTER_TAG] | "Unparsed" >> beam.Map(
            _unparsed_table, dead_letter_schema(s.passthrough)
        )
        rejected = (conformed[DEAD_LETTER_TAG], unparsed) | "FlattenRejected" >> beam.Flatten()
        return conformed.tables, rejected


class _ConformRows(beam.DoFn):
    """A reader's record batch -> the table to score (main output) and its rows that cannot be
    kept, as one dead-letter table (DEAD_LETTER_TAG)."""

    def __init__(self, passthrough: pa.Schema, text_column: str):
        self._passthrough = passthrough
        self._text_column = text_column

    def process(self, batch: pa.RecordBatch):
        table, reasons = conform_rows(batch, self._passthrough, self._text_column)
        bad = ~np.equal(reasons, None)
        if bad.any():
            rows = table.filter(pa.array(bad)).select(self._passthrough.names)
            reason = pa.array(list(reasons[bad]), pa.string())
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                pa.Table.from_arrays(
                    [*rows.columns, reason], schema=dead_letter_schema(self._passthrough)
                ),
            )
            table = table.filter(pa.array(~bad))
        if table.num_rows:
            yield table


def _unparsed_table(record: dict, schema: pa.Schema) -> pa.Table:
    """One row the reader could not parse -> a one-row dead-letter table: null columns, and
    where and why in the reason."""
    arrays = [pa.nulls(1, f.type) for f in schema if f.name != REASON_COLUMN]
    arrays.append(pa.array([unparsed_reason(record)], pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema)
