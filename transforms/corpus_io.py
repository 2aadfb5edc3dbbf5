"""Reading text corpora (CSV, JSON Lines, Parquet) as Arrow record batches, and checking them.

`ReadCorpus` yields `pyarrow.RecordBatch`es holding just the columns the job needs, read by
pyarrow's streaming readers (CSV, JSON) or Beam's `ReadFromParquetBatched` (Parquet, with column
projection pushed to the file); never per-row dicts. `ValidateAndSplit` turns each raw batch into
the tf.Transform input batch (text, raw_label, split as 1-element list columns, which is how
tfx_bsl's TensorAdapter takes dense values) and sends unusable rows to a dead-letter output with
the reason. `inspect_corpus` is the before-any-work check used by the pipeline module.

This module owns the file formats and row-level validity; the split rule is a stable hash
(TensorFlow's Fingerprint64 of the text, or of an id column) so reruns give the same split.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import arrow_coders  # noqa: F401  (registers the Arrow coders)
from transforms.arrow_types import is_text_or_bytes_type
from transforms.contracts import (
    DEAD_LETTER_TAG,
    EVAL,
    PREPROCESS_METRICS,
    RAW_LABEL_KEY,
    REASON_LABEL_LINE_BREAK,
    REASON_LABEL_MISSING,
    REASON_LABEL_NOT_UTF8,
    REASON_TEXT_EMPTY,
    REASON_TEXT_NOT_UTF8,
    REASON_TEXT_NULL,
    SPLIT_KEY,
    TEXT_KEY,
    TRAIN,
)

FORMATS = ("csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
STATS_TAG = "stats"
_SPLIT_BUCKETS = 10_000
_READ_BLOCK_BYTES = 4 << 20
# A row (or CSV header) that does not fit in a block is read again with a block this many times
# larger, up to the file's size or pyarrow's limit (block_size is an int32).
_BLOCK_GROWTH = 4
_MAX_BLOCK_BYTES = (1 << 31) - 1
_FALLBACK_BATCH_ROWS = 4096


class CorpusError(ValueError):
    """The corpus cannot be used as given; the message says what was wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """Where the corpus is and how to read it; plain values so it pickles to workers."""

    patterns: tuple[str, ...]
    format: str
    text_column: str
    label_column: str
    id_column: str | None = None
    multi_label: bool = False
    label_delimiter: str | None = None
    eval_fraction: float = 0.1
    csv_delimiter: str | None = None  # None: a tab for .tsv files, a comma otherwise

    @property
    def columns(self) -> list[str]:
        cols = [self.text_column, self.label_column]
        if self.id_column and self.id_column not in cols:
            cols.append(self.id_column)
        return cols


def format_for(path: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    name = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(name)[1].lower()
    if ext not in _EXTENSIONS:
        raise CorpusError(
            f"cannot tell the format of '{path}' from its extension; pass "
            f"--format {'|'.join(FORMATS)}"
        )
    return _EXTENSIONS[ext]


def add_format_flags(parser, applies_to: str = "") -> None:
    """`--format` and `--csv_delimiter` on an argparse parser: how a stage reads its input files
    (CSV, JSONL, Parquet), the one definition that preprocess, score, promote and evaluate all
    declare. `applies_to` prefixes each help text (e.g. "--eval_input: ")."""
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMATS),
        help=applies_to + "input format (default: from each file's extension)",
    )
    parser.add_argument(
        "--csv_delimiter",
        default=None,
        help=applies_to + "CSV field delimiter (default: a tab for .tsv files, else a comma)",
    )


def csv_delimiter_for(path: str, spec: CorpusSpec) -> str:
    return _delimiter_for(path, spec.csv_delimiter)


def _delimiter_for(path: str, csv_delimiter: str | None) -> str:
    if csv_delimiter:
        return csv_delimiter
    name = path[:-3] if path.endswith(".gz") else path
    return "\t" if name.lower().endswith(".tsv") else ","


def _csv_options(csv_delimiter: str | None, columns: list[str], path: str):
    read = pacsv.ReadOptions(block_size=_READ_BLOCK_BYTES)
    parse = pacsv.ParseOptions(
        delimiter=_delimiter_for(path, csv_delimiter), newlines_in_values=True
    )
    # Text and labels stay bytes here so a bad byte fails one row (dead letter), not the file.
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={c: pa.binary() for c in columns},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def _open(path: str):
    """A readable binary file object; `.gz` files are decompressed on the fly.

    gzip.GzipFile rather than Beam's CompressedFile, which pyarrow's readers take for closed.
    """
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return _GzipReader(raw) if path.endswith(".gz") else raw


class _GzipReader(gzip.GzipFile):
    """gzip.GzipFile that also closes the file it reads from (GzipFile leaves it open)."""

    def __init__(self, raw):
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _read_fully(f, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the file."""
    parts, left = [], size
    while left > 0:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _has_complete_line(head: bytes) -> bool:
    """Whether `head` holds a whole non-blank line (one that a newline ends)."""
    return any(line.strip() for line in head.split(b"\n")[:-1])


def _block_too_small(err: Exception) -> bool:
    """Whether pyarrow's CSV/JSON reader failed because a row did not fit in its block.

    Their readers cut the input into blocks of `block_size` bytes and need each row (and the
    CSV header) to end within the block after the one it starts in. pyarrow has no option to
    grow the block by itself: a longer row fails the whole read with "straddling object
    straddles two block boundaries (try to increase block size?)", a CSV header longer than a
    block with "Empty CSV file or block: cannot infer number of columns". Hence the retries
    written here, with a larger block_size (pyarrow's own knob).
    """
    message = str(err)
    return "block size" in message or "Empty CSV file or block" in message


def _grown_block(block: int, limit: int) -> int | None:
    grown = min(block * _BLOCK_GROWTH, limit, _MAX_BLOCK_BYTES)
    return grown if grown > block else None


def _position(f) -> int:
    """How far a reader got into `f` (uncompressed bytes for .gz); unknown counts as far."""
    try:
        return f.tell()
    except (OSError, ValueError, AttributeError):
        return _MAX_BLOCK_BYTES


def read_sample_schema(path: str, fmt: str, spec: CorpusSpec) -> pa.Schema:
    """The schema of a file as this module would read it (first block only for CSV/JSONL).

    The first block grows (like the reader's, see `_block_too_small`) until it holds the CSV
    header or a complete JSONL line, so a header or first line of any size is checked.
    """
    return _sample_schema(path, fmt, spec.csv_delimiter)


def _sample_schema(path: str, fmt: str, csv_delimiter: str | None) -> pa.Schema:
    if fmt == "parquet":
        with FileSystems.open(path) as f:
            return pq.read_schema(f)
    block = _READ_BLOCK_BYTES
    with _open(path) as f:
        head = _read_fully(f, block)
        if fmt == "csv":
            # Malformed rows are the reader's business (dead letters), not a reason to refuse
            # the file; so is the head's last row, which the block may cut.
            parse = pacsv.ParseOptions(
                delimiter=_delimiter_for(path, csv_delimiter),
                newlines_in_values=True,
                invalid_row_handler=lambda row: "skip",
            )
            while True:
                read = pacsv.ReadOptions(block_size=max(block, 1))
                try:
                    return pacsv.open_csv(
                        io.BytesIO(head), read_options=read, parse_options=parse
                    ).schema
                except pa.ArrowInvalid as err:
                    grown = _grown_block(block, _MAX_BLOCK_BYTES)
                    if len(head) < block or not _block_too_small(err) or grown is None:
                        raise
                head += _read_fully(f, grown - len(head))
                block = grown
        while len(head) == block and not _has_complete_line(head):
            grown = _grown_block(block, _MAX_BLOCK_BYTES)
            if grown is None:
                break
            head += _read_fully(f, grown - len(head))
            block = grown
    # JSONL: parse the complete lines of the first block with Python, to see the types users meant.
    fields: dict[str, set] = {}
    for line in head.split(b"\n")[:-1] or head.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                fields.setdefault(key, set()).add(type(value).__name__)
    type_of = {
        "str": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "list": pa.list_(pa.string()),
        "dict": pa.struct([]),
        "NoneType": pa.null(),
    }
    schema_fields = []
    for key, kinds in fields.items():
        kinds.discard("NoneType")
        kind = sorted(kinds)[0] if len(kinds) == 1 else ("str" if "str" in kinds else "NoneType")
        schema_fields.append(pa.field(key, type_of.get(kind, pa.string())))
    return pa.schema(schema_fields)


def _is_label_scalar(t: pa.DataType) -> bool:
    return (
        is_text_or_bytes_type(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_dictionary(t)
    )


def _is_label_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_label_scalar(t.value_type)


def inspect_corpus(spec: CorpusSpec) -> dict:
    """Check files, columns and types before any pipeline work; return {file: format}.

    Raises CorpusError with a one-line message that names the file and what to do.
    """
    files: dict[str, str] = {}
    for pattern, result in zip(spec.patterns, FileSystems.match(list(spec.patterns))):
        matched = [m.path for m in result.metadata_list]
        if not matched:
            raise CorpusError(f"no input file matches '{pattern}'")
        for path in matched:
            files[path] = format_for(path, spec.format if spec.format != "auto" else None)
    for path, fmt in files.items():
        try:
            schema = read_sample_schema(path, fmt, spec)
        except (OSError, pa.ArrowException) as err:
            raise CorpusError(f"cannot read {path} as {fmt}: {str(err).splitlines()[0]}") from err
        names = schema.names
        for role, column in (
            ("text", spec.text_column),
            ("label", spec.label_column),
            ("id", spec.id_column),
        ):
            if column and column not in names:
                if fmt == "jsonl" and not names:
                    raise CorpusError(f"{path} has no JSON object lines in its first block")
                raise CorpusError(
                    f"{role} column '{column}' not found in {path}; columns are: "
                    f"{', '.join(names) or '(none)'}"
                )
        if fmt == "csv":
            continue  # every CSV cell is text; its labels and ids are read as strings
        text_type = schema.field(spec.text_column).type
        if not is_text_or_bytes_type(text_type):
            raise CorpusError(
                f"text column '{spec.text_column}' in {path} holds {text_type}, "
                "not text; choose a string column with --text_column"
            )
        label_type = schema.field(spec.label_column).type
        if _is_label_list(label_type):
            if not spec.multi_label:
                raise CorpusError(
                    f"label column '{spec.label_column}' in {path} holds lists "
                    f"({label_type}); pass --multi_label for multi-label data"
                )
        elif not _is_label_scalar(label_type):
            raise CorpusError(
                f"label column '{spec.label_column}' in {path} holds {label_type}; "
                "labels must be strings, integers, booleans or (multi-label) lists"
            )
    return files


# -- Whole rows for score's pass-through: every column kept, one schema for every file. --------

_JSON_PASSTHROUGH_TYPES = (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.list_(pa.string()))


def passthrough_schema(path: str, fmt: str, csv_delimiter: str | None = None) -> pa.Schema:
    """The columns and types a CSV or JSONL file's rows are kept with (score's pass-through).

    CSV: every column of the header, as strings (an empty cell is an empty string). JSONL: every
    key of the first block's objects, typed as `read_sample_schema` sees them where that is a
    string, int64, float64, bool or list<string>; keys whose values are objects, only nulls or
    of mixed kinds are strings holding each value's JSON text. Raises CorpusError for a JSONL
    file without a JSON object line in its first block, pyarrow's errors for an empty CSV file.
    """
    schema = _sample_schema(path, fmt, csv_delimiter)
    if fmt == "csv":
        return pa.schema([pa.field(name, pa.string()) for name in schema.names])
    if not schema.names:
        raise CorpusError(f"{path} has no JSON object lines in its first block")
    return pa.schema(
        [
            pa.field(f.name, f.type if f.type in _JSON_PASSTHROUGH_TYPES else pa.string())
            for f in schema
        ]
    )


_UNPARSED_ROW_CHARS = 200  # of an unparsed row's text, in its dead-letter reason


def unparsed_reason(record: dict) -> str:
    """A reader's dead letter (a row that could not be parsed, so has no columns) as one line
    that says why, where and what: `malformed CSV row (in data.csv, expected 2 fields, found
    3): "1,a,b"` (pyarrow gives no line number when values may hold line breaks), `invalid
    JSON line (in data.jsonl, line 7: Expecting value: ...): "{oops"`; the row's text is a
    JSON string cut to its first 200 characters."""
    text = (record.get("row") or {}).get("line") or ""
    text = text.rstrip("\r\n")
    if len(text) > _UNPARSED_ROW_CHARS:
        text = text[: _UNPARSED_ROW_CHARS - 3] + "..."
    return f"{record['reason']} (in {record['source']}, {record['detail']}): {json.dumps(text)}"


def conform_rows(
    batch: pa.RecordBatch, schema: pa.Schema, text_column: str
) -> tuple[pa.Table, np.ndarray]:
    """A reader batch -> (a table of `schema`'s columns, then `text_column` if not among them;
    per row, None or why the row cannot be kept). CSV bytes become strings (text that is not
    UTF-8: REASON_TEXT_NOT_UTF8; another column: "column 'c' is not valid UTF-8"); a JSONL value
    that does not fit its column's type is "column 'c' does not hold <type>". A bad cell is
    null in the table; the caller dead-letters its row. A column the batch lacks is all null.
    """
    n = batch.num_rows
    reasons = np.full(n, None, dtype=object)
    fields = list(schema)
    if text_column not in schema.names:
        fields.append(pa.field(text_column, pa.string()))
    # The text column first: its reason wins over another column's.
    order = sorted(range(len(fields)), key=lambda i: fields[i].name != text_column)
    arrays: list = [None] * len(fields)
    for i in order:
        field = fields[i]
        if field.name in batch.schema.names:
            array, bad, why = _conform_column(batch.column(field.name), field.type)
        else:
            array, bad, why = pa.nulls(n, field.type), np.zeros(n, bool), None
        if bad.any():
            if field.name == text_column and why == "utf8":
                reason = REASON_TEXT_NOT_UTF8
            elif why == "utf8":
                reason = f"column '{field.name}' is not valid UTF-8"
            else:
                reason = f"column '{field.name}' does not hold {field.type}"
            reasons[bad & np.equal(reasons, None)] = reason
        arrays[i] = array
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), reasons


def _conform_column(arr, to: pa.DataType) -> tuple[pa.Array, np.ndarray, str | None]:
    """`arr` as type `to`: (array, mask of values that could not be converted (null in the
    array), "utf8" or "type": what was wrong with them)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if arr.type.equals(to):
        return arr, np.zeros(n, bool), None
    if pa.types.is_string(to) and is_text_or_bytes_type(arr.type):
        strings, bad = _as_string(arr)
        return strings, bad, "utf8"
    if pa.types.is_string(to) and pa.types.is_nested(arr.type):
        # Rare path (objects in a JSONL column): each value's JSON text.
        values = [None if v is None else json.dumps(v) for v in arr.to_pylist()]
        return pa.array(values, pa.string()), np.zeros(n, bool), None
    try:
        return arr.cast(to), np.zeros(n, bool), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    # Rare path: a value that does not fit (a JSONL line the fast reader could not type).
    values, bad = [], np.zeros(n, bool)
    for i, value in enumerate(arr.to_pylist()):
        try:
            values.append(pa.array([value], arr.type).cast(to)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values.append(None)
            bad[i] = True
    return pa.array(values, to), bad, "type"


class _ReadDelimitedFile(beam.DoFn):
    """One CSV or JSONL file -> record batches of `columns`, streamed block by block.

    A row larger than the read block (4 MiB) is read by reading the file again with a larger
    block (`_read_growing`). A JSONL file that pyarrow cannot parse as a whole for another reason
    (a bad line, a bad byte, a type that changes mid-file, a value that does not fit
    `json_types`) is re-read line by line from where the fast reader stopped; bad lines become
    dead letters instead of failing the job. CSV cells are read as bytes; JSONL values with
    pyarrow's inferred types, or `json_types` ({column: Arrow type}) where given.
    """

    def __init__(
        self,
        fmt: str,
        columns: list[str],
        csv_delimiter: str | None = None,
        json_types: dict[str, pa.DataType] | None = None,
    ):
        self._fmt = fmt
        self._columns = list(columns)
        self._csv_delimiter = csv_delimiter
        self._json_types = json_types

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        # A .gz file's size on disk says nothing of its rows: only pyarrow's limit bounds those.
        size = None if path.endswith(".gz") else readable.metadata.size_in_bytes
        if self._fmt == "csv":
            yield from self._read_growing(path, size, self._csv_blocks(path), on_error=None)
        else:
            columns = self._columns
            yield from self._read_growing(
                path,
                size,
                self._jsonl_blocks(columns, self._json_types),
                on_error=lambda done: self._read_jsonl_by_line(path, columns, skip=done),
            )

    def _csv_blocks(self, path):
        read, parse, convert = _csv_options(self._csv_delimiter, self._columns, path)

        def read_blocks(f, block_size: int, use_threads: bool):
            bad_rows = []

            def on_invalid_row(row):
                bad_rows.append(row)
                return "skip"

            read.block_size, read.use_threads = block_size, use_threads
            parse_rows = pacsv.ParseOptions(
                delimiter=parse.delimiter,
                newlines_in_values=True,
                invalid_row_handler=on_invalid_row,
            )
            for batch in pacsv.open_csv(
                f, read_options=read, parse_options=parse_rows, convert_options=convert
            ):
                yield batch
                yield from self._dead_rows(path, bad_rows)
            yield from self._dead_rows(path, bad_rows)

        return read_blocks

    @staticmethod
    def _jsonl_blocks(columns, json_types=None):
        parse = None
        if json_types:
            parse = pajson.ParseOptions(
                explicit_schema=pa.schema(list(json_types.items())),
                unexpected_field_behavior="ignore",
            )

        def read_blocks(f, block_size: int, use_threads: bool):
            read = pajson.ReadOptions(block_size=block_size, use_threads=use_threads)
            for batch in pajson.open_json(f, read_options=read, parse_options=parse):
                yield _select(batch, columns)

        return read_blocks

    def _read_growing(self, path, size, read_blocks, on_error):
        """What `read_blocks(file, block_size, use_threads)` yields (record batches and dead
        letters, each in file order), read again with a larger block while a row does not fit.

        pyarrow's streaming readers cannot be resumed at a row, nor told to grow their block
        (see `_block_too_small`), so a retry reads the file again from its start (a fresh
        reader, pyarrow's own parsing) and hands on only what the failed read had not: it skips
        as many rows and dead letters as were already handed on. The same bytes give the same
        rows in the same order whatever the block size, so no row is lost or handed on twice.
        Ordinary files are read once with the 4 MiB block, as before. Only a file with a larger
        row pays for the re-reads, fewer for the block growing 4x each time; those re-reads run
        serially (use_threads=False: no read-ahead of several large blocks), so memory stays
        near a block and a batch. An Arrow error that a larger block cannot help goes to
        `on_error(rows handed on)` (the JSONL line-by-line reader), or is raised when it is None.
        """
        block = _READ_BLOCK_BYTES
        limit = _MAX_BLOCK_BYTES if size is None else max(size + 1, block)
        rows_done = dead_done = 0
        while True:
            rows_skip, dead_skip = rows_done, dead_done
            failed = None
            with _open(path) as f:
                try:
                    for item in read_blocks(f, block, block == _READ_BLOCK_BYTES):
                        if isinstance(item, pa.RecordBatch):
                            if rows_skip >= item.num_rows:
                                rows_skip -= item.num_rows
                                continue
                            if rows_skip:
                                item, rows_skip = item.slice(rows_skip), 0
                            rows_done += item.num_rows
                        elif dead_skip:
                            dead_skip -= 1
                            continue
                        else:
                            dead_done += 1
                        yield item
                    break
                except pa.ArrowException as err:
                    grown = _grown_block(block, limit) if _block_too_small(err) else None
                    # A read that ended before a full block saw the whole file: a larger block
                    # would read the same.
                    if grown is not None and _position(f) >= block:
                        block = grown
                        continue
                    if on_error is None:
                        raise
                    failed = err
            if failed is not None:
                yield from on_error(rows_done)
                break

    def _dead_rows(self, path, bad_rows):
        while bad_rows:
            row = bad_rows.pop(0)
            where = f"line {row.number}: " if row.number is not None else ""
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                {
                    "source": path,
                    "row": {"line": row.text},
                    "reason": "malformed CSV row",
                    "detail": f"{where}expected {row.expected_columns} fields, "
                    f"found {row.actual_columns}",
                },
            )

    def _read_jsonl_by_line(self, path, columns, skip):
        rows, seen = [], 0
        with _open(path) as f:
            # Beam's compressed files have readline but are not iterable.
            for number, raw in enumerate(iter(f.readline, b""), start=1):
                if not raw.strip():
                    continue
                seen += 1
                if seen <= skip:
                    continue
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError("line is not a JSON object")
                except ValueError as err:
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTER_TAG,
                        {
                            "source": path,
                            "row": {"line": raw.decode("utf-8", "replace")},
                            "reason": "invalid JSON line",
                            "detail": f"line {number}: {err}",
                        },
                    )
                    continue
                rows.append({c: obj.get(c) for c in columns})
                if len(rows) >= _FALLBACK_BATCH_ROWS:
                    yield _rows_to_batch(rows, columns)
                    rows = []
        if rows:
            yield _rows_to_batch(rows, columns)


def _rows_to_batch(rows: list[dict], columns: list[str]) -> pa.RecordBatch:
    """Slow path only (a JSONL file pyarrow refused): cells keep their JSON types as strings."""
    arrays = []
    for c in columns:
        values = [r[c] for r in rows]
        if any(isinstance(v, list) for v in values):
            arrays.append(
                pa.array(
                    [
                        None
                        if v is None
                        else [str(x) for x in v]
                        if isinstance(v, list)
                        else [str(v)]
                        for v in values
                    ],
                    pa.list_(pa.string()),
                )
            )
        else:
            arrays.append(
                pa.array(
                    [
                        None if v is None else v if isinstance(v, str) else json.dumps(v)
                        for v in values
                    ],
                    pa.string(),
                )
            )
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _select(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    arrays = [
        batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows) for c in columns
    ]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _parquet_row_groups(path: str):
    """A Parquet file -> (path, row group index) for each row group: the unit of parallelism."""
    with FileSystems.open(path) as f:
        groups = pq.ParquetFile(f).metadata.num_row_groups
    for index in range(groups):
        yield path, index


class _ReadParquetRowGroup(beam.DoFn):
    """(path, row group) -> record batches of the needed columns, at most `batch_rows` rows."""

    def __init__(self, columns: list[str], batch_rows: int):
        self._columns = columns
        self._batch_rows = batch_rows

    def process(self, element):
        path, index = element
        with FileSystems.open(path) as f:
            yield from pq.ParquetFile(f).iter_batches(
                batch_size=self._batch_rows, row_groups=[index], columns=self._columns
            )


class _SpreadByKey(beam.PTransform):
    """What `beam.Reshuffle` does here (a fusion break, so that read units spread over workers),
    keyed by each unit's own name instead of a random number: the same input gives the same
    bundles on the same runner, hence the same files in the same order, and training that
    reads them is reproducible."""

    def __init__(self, key):
        super().__init__()
        self._key = key

    def expand(self, pcoll):
        key = self._key
        return (
            pcoll
            | "Key" >> beam.Map(lambda unit: (key(unit), unit))
            | "Group" >> beam.GroupByKey()
            | "Units" >> beam.FlatMap(lambda keyed: keyed[1])
        )


class ReadDelimitedFiles(beam.PTransform):
    """PCollection of CSV or JSONL paths (all `fmt`) -> {'batches': record batches of `columns`,
    DEAD_LETTER_TAG: the rows that could not be parsed, as `{"source", "row", "reason",
    "detail"}` dicts}; one file at a time per worker, files spread by name (`_ReadDelimitedFile`).
    """

    def __init__(
        self,
        fmt: str,
        columns: list[str],
        csv_delimiter: str | None = None,
        json_types: dict[str, pa.DataType] | None = None,
    ):
        super().__init__()
        self._read = _ReadDelimitedFile(fmt, columns, csv_delimiter, json_types)
        self._fmt = fmt

    def expand(self, paths):
        fmt = self._fmt
        read = (
            paths
            | f"Match[{fmt}]" >> fileio.MatchAll()
            | f"Open[{fmt}]" >> fileio.ReadMatches()
            | f"Spread[{fmt}]" >> _SpreadByKey(lambda readable: readable.metadata.path)
            | f"Read[{fmt}]"
            >> beam.ParDo(self._read)
            .with_output_types(pa.RecordBatch)
            .with_outputs(DEAD_LETTER_TAG, main="batches")
        )
        return {"batches": read.batches, DEAD_LETTER_TAG: read[DEAD_LETTER_TAG]}


class ReadCorpus(beam.PTransform):
    """Files -> PCollection of raw `pyarrow.RecordBatch` (spec.columns), plus dead letters.

    Parquet files are read row group by row group (the unit Beam's own Parquet source splits
    on), CSV and JSONL file by file with pyarrow's streaming readers; both hand on record
    batches of at most `batch_rows` rows (CSV/JSONL: one 4 MiB block, or a larger one in a file
    with a row that does not fit in 4 MiB), so memory is bounded by a batch, not a file.
    Returns a dict of PCollections: 'batches' and, when there are CSV or JSONL files,
    DEAD_LETTER_TAG (rows that could not be parsed).
    """

    def __init__(self, spec: CorpusSpec, files: dict[str, str], batch_rows: int = 8192):
        super().__init__()
        self._spec = spec
        self._files = files
        self._batch_rows = batch_rows

    def expand(self, pbegin):
        spec = self._spec
        batches, dead = [], []
        for fmt in sorted(set(self._files.values())):
            paths = pbegin | f"ListFiles[{fmt}]" >> beam.Create(
                sorted(p for p, f in self._files.items() if f == fmt)
            )
            if fmt == "parquet":
                batches.append(
                    paths
                    | "ListRowGroups" >> beam.FlatMap(_parquet_row_groups)
                    | "SpreadRowGroups" >> _SpreadByKey(lambda group: f"{group[0]}#{group[1]}")
                    | "ReadRowGroup"
                    >> beam.ParDo(
                        _ReadParquetRowGroup(spec.columns, self._batch_rows)
                    ).with_output_types(pa.RecordBatch)
                )
                continue
            read = paths | f"Read[{fmt}]" >> ReadDelimitedFiles(
                fmt, spec.columns, spec.csv_delimiter
            )
            batches.append(read["batches"])
            dead.append(read[DEAD_LETTER_TAG])
        out = {
            "batches": batches
            | "FlattenBatches" >> beam.Flatten().with_output_types(pa.RecordBatch)
        }
        if dead:  # only CSV/JSONL files have rows that cannot be parsed
            out[DEAD_LETTER_TAG] = dead | "FlattenParseErrors" >> beam.Flatten()
        return out


def tft_input_schema() -> pa.Schema:
    """The Arrow schema of ValidateAndSplit's output, which tf.Transform's adapter reads.

    Labels are list<string> for single- and multi-label data alike; the tensor representation
    (dense scalar or sparse) is what differs, chosen by preprocess_graph.tensor_adapter_config."""
    return pa.schema(
        [
            (TEXT_KEY, pa.list_(pa.string())),
            (RAW_LABEL_KEY, pa.list_(pa.string())),
            (SPLIT_KEY, pa.list_(pa.string())),
        ]
    )


def _as_string(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Cast to utf8; returns (strings, mask of rows whose bytes are not valid UTF-8)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string()), np.zeros(len(arr), bool)
    if pa.types.is_string(arr.type):
        return arr, np.zeros(len(arr), bool)
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string()), np.zeros(len(arr), bool)
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        try:
            return arr.cast(pa.string()), np.zeros(len(arr), bool)
        except pa.ArrowInvalid:
            # Rare path: find the bad rows one by one, blank them, cast the rest in one go.
            bad = np.array([v is not None and not _valid_utf8(v) for v in arr.to_pylist()])
            cleaned = pc.if_else(pa.array(bad), pa.nulls(len(arr), arr.type), arr)
            return cleaned.cast(pa.string()), bad
    return arr.cast(pa.string()), np.zeros(len(arr), bool)


def _valid_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _to_label_lists(arr: pa.Array, delimiter: str | None) -> pa.Array:
    """Multi-label cells -> list<string> without empty names; null -> empty list."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        values, _ = _as_string(arr.flatten())
        lists = pa.ListArray.from_arrays(
            arr.offsets.cast(pa.int32()) if pa.types.is_large_list(arr.type) else arr.offsets,
            values,
        )
        lists = pc.if_else(arr.is_null(), pa.nulls(len(arr), lists.type), lists)
    else:
        strings, _ = _as_string(arr)
        if delimiter:
            lists = pc.split_pattern(strings, pattern=delimiter)
        else:
            lists = pa.ListArray.from_arrays(
                pa.array(np.arange(len(strings) + 1, dtype=np.int32)), strings
            )
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    parents = pc.list_parent_indices(lists)
    values = pc.utf8_trim_whitespace(lists.flatten())
    keep = pc.and_kleene(pc.is_valid(values), pc.greater(pc.utf8_length(values), 0))
    keep = pc.fill_null(keep, False)
    values, parents = pc.filter(values, keep), pc.filter(parents, keep)
    counts = (
        np.bincount(parents.to_numpy(), minlength=len(lists))
        if len(parents)
        else np.zeros(len(lists), np.int64)
    )
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _singletons(values: pa.Array) -> pa.Array:
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def _has_line_break(names: pa.Array) -> np.ndarray:
    """Label names with a line break inside: a vocabulary file (one name per line) cannot hold
    them, and tf.Transform's vocabularies leave them out, which would leave the row unlabeled."""
    found = pc.fill_null(pc.match_substring_regex(names, r"[\n\r]"), False)
    return found.to_numpy(zero_copy_only=False)


def split_of(keys: pa.Array, eval_fraction: float) -> np.ndarray:
    """True for rows that go to eval: Fingerprint64(key) mod 10000 < fraction * 10000."""
    import tensorflow as tf

    buckets = tf.strings.to_hash_bucket_fast(
        keys.to_numpy(zero_copy_only=False), _SPLIT_BUCKETS
    ).numpy()
    return buckets < int(round(eval_fraction * _SPLIT_BUCKETS))


class ValidateAndSplit(beam.DoFn):
    """Raw batch -> tf.Transform input batch; bad rows -> dead letters; counts -> stats.

    With `for_analysis`, the same rows are kept but nothing else is computed: tf.Transform's
    analysis needs neither the split nor the counts (the transform pass reports those).
    """

    def __init__(self, spec: CorpusSpec, for_analysis: bool = False):
        self._spec = spec
        self._for_analysis = for_analysis
        self._rows_read = Metrics.counter(PREPROCESS_METRICS, "rows_read")
        self._rows_dead = Metrics.counter(PREPROCESS_METRICS, "rows_dead_lettered")

    def process(self, batch: pa.RecordBatch):
        spec = self._spec
        n = batch.num_rows
        if n == 0:
            return
        text, bad_bytes = _as_string(batch.column(spec.text_column))
        reasons = np.full(n, None, dtype=object)
        reasons[bad_bytes] = REASON_TEXT_NOT_UTF8
        text_null = pc.is_null(text).to_numpy(zero_copy_only=False) & ~bad_bytes
        reasons[text_null] = REASON_TEXT_NULL
        empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
        reasons[empty.to_numpy(zero_copy_only=False)] = REASON_TEXT_EMPTY
        raw_label = batch.column(spec.label_column)
        if spec.multi_label:
            labels = _to_label_lists(raw_label, spec.label_delimiter)
            broken = _has_line_break(labels.flatten())
            rows_broken = np.bincount(
                pc.list_parent_indices(labels).to_numpy()[broken], minlength=n
            ).astype(bool)
            reasons[rows_broken & np.equal(reasons, None)] = REASON_LABEL_LINE_BREAK
        else:
            label_str, bad_label = _as_string(raw_label)
            label_str = pc.utf8_trim_whitespace(label_str)
            missing = pc.fill_null(pc.equal(pc.utf8_length(label_str), 0), True)
            missing = missing.to_numpy(zero_copy_only=False)
            no_reason = np.equal(reasons, None)
            reasons[missing & no_reason] = REASON_LABEL_MISSING
            reasons[bad_label & no_reason] = REASON_LABEL_NOT_UTF8
            reasons[_has_line_break(label_str) & np.equal(reasons, None)] = REASON_LABEL_LINE_BREAK
            labels = _singletons(pc.fill_null(label_str, ""))
        bad = ~np.equal(reasons, None)
        stats = {"rows_read": n, "dead_lettered": {}}
        if not self._for_analysis:
            self._rows_read.inc(n)
            self._rows_dead.inc(int(bad.sum()))
        if bad.any() and not self._for_analysis:
            bad_idx = np.flatnonzero(bad)
            rows = _select(batch, spec.columns).take(pa.array(bad_idx)).to_pylist()
            for row, reason in zip(rows, reasons[bad_idx]):
                stats["dead_lettered"][reason] = stats["dead_lettered"].get(reason, 0) + 1
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, {"row": row, "reason": reason})
        good = pa.array(~bad)
        text, labels = pc.filter(text, good), pc.filter(labels, good)
        if len(text) == 0:
            yield beam.pvalue.TaggedOutput(STATS_TAG, stats)
            return
        if self._for_analysis:
            split = pa.nulls(len(text), pa.string())
            yield pa.RecordBatch.from_arrays(
                [_singletons(text), labels, _singletons(split)], schema=tft_input_schema()
            )
            return
        if spec.id_column:
            keys, _ = _as_string(pc.filter(batch.column(spec.id_column), good))
            keys = pc.fill_null(keys, "")
        else:
            keys = text
        is_eval = split_of(keys, spec.eval_fraction)
        split = pa.array(np.where(is_eval, EVAL, TRAIN))
        stats["labels"] = _label_counts(labels, split)
        yield beam.pvalue.TaggedOutput(STATS_TAG, stats)
        yield pa.RecordBatch.from_arrays(
            [_singletons(text), labels, _singletons(split)], schema=tft_input_schema()
        )


def _label_counts(labels: pa.ListArray, split: pa.Array) -> dict:
    parents = pc.list_parent_indices(labels)
    table = pa.table({"split": pc.take(split, parents), "label": labels.flatten()})
    grouped = table.group_by(["split", "label"]).aggregate([("label", "count")])
    out: dict = {}
    for s, label, count in zip(*(grouped.column(i).to_pylist() for i in range(3))):
        out.setdefault(s, {})[label] = count
    return out
