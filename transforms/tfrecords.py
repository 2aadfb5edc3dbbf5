"""Transformed record batches -> per-split serialized tf.Examples, bundle files, statistics.

`SplitAndEncode` takes tf.Transform's output batches (with the pass-through `split` column),
encodes each batch's rows as tf.Examples once with `encode_example_array` (vectorised with numpy
and Arrow, the same bytes in every process), and emits one tagged output per split, its rows'
records. It also emits a small statistics dict per batch (token lengths, OOV ids) that
preprocess folds with the reader's counts into the numbers of stats.json.
`WriteBundleFiles` writes each bundle's records (TFRecord framing, gzip) or JSON lines into one
temp file and reports it; `publish_bundle_files` gives the reported files their shard names.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import struct
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.contracts import (
    NUM_TOKENS_KEY,
    PREPROCESS_METRICS,
    SPLIT_KEY,
    SPLITS,
    TOKEN_IDS_KEY,
)
from transforms.corpus_io import STATS_TAG

_crc32c = tfrecordio._default_crc32c_fn  # Beam's own choice: google-crc32c, snappy or crcmod


class SplitAndEncode(beam.DoFn):
    """(RecordBatch, passthrough) from TransformDataset -> TaggedOutput(split, [example bytes]).

    Takes no side input on purpose: one would cut the fused transform -> encode -> write stage in
    two, and every transformed batch would be pickled between them. The OOV count is derived at
    the end from the id histogram instead.
    """

    def __init__(self):
        self._written = {
            s: Metrics.counter(PREPROCESS_METRICS, f"rows_written_{s}") for s in SPLITS
        }

    def process(self, element):
        batch = element[0] if isinstance(element, tuple) else element
        split = batch.column(SPLIT_KEY).flatten().to_numpy(zero_copy_only=False)
        features = batch.drop_columns([SPLIT_KEY])
        ids = features.column(TOKEN_IDS_KEY).flatten().to_numpy()
        lengths = features.column(NUM_TOKENS_KEY).flatten().to_numpy()
        values, counts = np.unique(lengths, return_counts=True)
        yield beam.pvalue.TaggedOutput(
            STATS_TAG,
            {
                "id_histogram": np.bincount(ids),
                "length_histogram": dict(zip(values.tolist(), counts.tolist())),
                "rows_written": {s: int((split == s).sum()) for s in SPLITS},
            },
        )
        if not batch.num_rows:
            return
        # Encoded once, then split: the encoded rows are a few times smaller than the columns.
        encoded = encode_example_array(features)
        for name in SPLITS:
            mask = split == name
            if mask.any():
                self._written[name].inc(int(mask.sum()))
                part = encoded.filter(pa.array(mask)) if not mask.all() else encoded
                yield beam.pvalue.TaggedOutput(name, part.to_pylist())


_EMPTY = pa.scalar(b"", pa.large_binary())
# Field keys (field number << 3 | wire type 2) of the messages a tf.train.Example is made of.
_FIELD_1, _FIELD_2, _INT64_LIST, _FLOAT_LIST = b"\x0a", b"\x12", b"\x1a", b"\x12"


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf base-128 varints of integer `values` (a negative int64 as its uint64, as protobuf
    writes it): (the bytes of all of them in order, each one's byte count).

    Each value's byte count comes first, so its place in the output is known; then byte k of the
    values still that long is written in one scatter per k (most token ids and paddings take one
    byte, so later rounds touch few values).
    """
    v = np.ascontiguousarray(values).astype(np.int64, copy=False).view(np.uint64)
    if not v.size:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    top = int(v.max())
    width = max(1, (top.bit_length() + 6) // 7)
    if width == 1:
        return v.astype(np.uint8), np.ones(v.size, np.int64)
    unsigned = np.uint32 if top < 2**32 else np.uint64
    rest = v.astype(unsigned)
    nbytes = np.ones(v.size, np.uint8)
    for k in range(1, width):
        nbytes += rest >= unsigned(1 << (7 * k))
    ends = np.cumsum(nbytes, dtype=np.int64)
    out = np.empty(int(ends[-1]), np.uint8)
    at = ends - nbytes  # where each value's next byte goes
    left = nbytes  # bytes still to write, of the values in `rest`
    while True:
        more = left > 1
        byte = rest.astype(np.uint8)  # the low 8 bits; the 8th is the continuation bit's place
        byte &= np.uint8(0x7F)
        byte |= more.view(np.uint8) << np.uint8(7)
        out[at] = byte
        more = np.flatnonzero(more)
        if not more.size:
            return out, nbytes.astype(np.int64)
        rest, at, left = rest[more] >> unsigned(7), at[more] + 1, left[more] - np.uint8(1)


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A large_binary array over `data`, cut into pieces of `lengths` bytes."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _varint_size(values: np.ndarray) -> np.ndarray:
    return _varints(values)[1]


def _header(key: bytes, lengths: np.ndarray) -> pa.Array:
    """Each row's `key` byte and varint length: the head of a length-delimited field."""
    return pc.binary_join_element_wise(
        pa.scalar(key, pa.large_binary()), _binary(*_varints(lengths)), _EMPTY
    )


def _packed_values(column: pa.Array) -> tuple[bytes, pa.Array, np.ndarray]:
    """A list<integer> or list<floating> column -> (the Feature field key for its kind, each row's
    packed values, their byte lengths)."""
    column = column.cast(pa.large_list(column.type.value_type))
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    if pa.types.is_integer(column.type.value_type):
        data, nbytes = _varints(values)
        ends = np.zeros(len(nbytes) + 1, np.int64)
        np.cumsum(nbytes, out=ends[1:])
        return _INT64_LIST, _binary(data, np.diff(ends[offsets])), np.diff(ends[offsets])
    if pa.types.is_floating(column.type.value_type):
        data = np.ascontiguousarray(values, dtype="<f4").view(np.uint8)
        lengths = np.diff(offsets) * 4
        return _FLOAT_LIST, _binary(data, lengths), lengths
    raise TypeError(f"tf.Example encoding of {column.type} is not supported")


def encode_example_array(batch: pa.RecordBatch) -> pa.Array:
    """Record batch of list<int64>/list<float32> columns -> one serialized tf.train.Example per row
    (a large_binary array), the same bytes for the same rows in every process.

    tfx_bsl's `RecordBatchToExamples` (protobuf's C++ map) writes the feature map in an order
    that differs between processes, so reruns gave TFRecords with other bytes. This writes the
    wire format itself, vectorised over the batch with numpy and Arrow, in the order protobuf's
    deterministic serialization uses (keys by bytes, a key before its extensions... longer
    first); tests/transforms/test_tfrecords.py holds it equal to
    `SerializeToString(deterministic=True)`. Per row: Example.features -> Features.feature map
    entries {key, value: Feature{int64_list|float_list{packed value}}}.
    """
    pieces, total = [], np.zeros(batch.num_rows, np.int64)
    for name in sorted(batch.schema.names, key=lambda n: n.encode("utf-8") + b"\xff"):
        kind, packed, packed_len = _packed_values(batch.column(name))
        key = name.encode("utf-8")
        key_field = _FIELD_1 + bytes(_varints(np.array([len(key)]))[0]) + key
        # An empty packed list writes nothing; the Feature still names its kind.
        list_len = np.where(packed_len > 0, 1 + _varint_size(packed_len) + packed_len, 0)
        list_head = _header(_FIELD_1, packed_len)
        if not packed_len.all():
            list_head = pc.if_else(pa.array(packed_len > 0), list_head, _EMPTY)
        feature_len = 1 + _varint_size(list_len) + list_len
        entry_len = len(key_field) + 1 + _varint_size(feature_len) + feature_len
        pieces += [
            _header(_FIELD_1, entry_len),  # Features.feature (a map entry)
            pa.scalar(key_field, pa.large_binary()),  # entry.key
            _header(_FIELD_2, feature_len),  # entry.value: the Feature
            _header(kind, list_len),  # Feature.int64_list or float_list
            list_head,  # Int64List/FloatList.value, packed
            packed,
        ]
        total += 1 + _varint_size(entry_len) + entry_len
    return pc.binary_join_element_wise(_header(_FIELD_1, total), *pieces, _EMPTY)


class _FastGzipWriter:
    """A gzip stream at compression level 1 over a raw Beam file handle, compressed and written
    by one background thread.

    Beam's compressed files use zlib's default level (6); on token-id records level 1 is several
    times faster for slightly larger files. zlib and file writes release the GIL, so the thread
    overlaps them with the next batch's TensorFlow and Arrow work; one thread keeps the order.
    """

    _MAX_PENDING = 4  # batches queued for compression before `write` waits

    def __init__(self, raw):
        self._raw = raw
        self._zip = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: collections.deque = collections.deque()

    def _compress_and_write(self, data: bytes) -> None:
        self._raw.write(self._zip.compress(data))

    def write(self, data: bytes) -> None:
        while len(self._pending) >= self._MAX_PENDING:
            self._pending.popleft().result()  # re-raises a failed write here
        self._pending.append(self._pool.submit(self._compress_and_write, data))

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
            self._raw.write(self._zip.flush())
        finally:
            self._pool.shutdown(wait=True)
            self._raw.close()


_pack_u32 = struct.Struct("<I").pack


def _masked_crc(data: bytes) -> bytes:
    crc = _crc32c(data)
    return _pack_u32((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_records(records: list[bytes]) -> bytes:
    """TFRecord framing of a batch (length, masked CRC32C of the length, data, masked CRC32C of
    the data), as Beam's `_TFRecordUtil.write_record` frames one record; the headers of lengths
    already seen are reused, which matters when most records have one of a few lengths."""
    headers: dict[int, bytes] = {}
    parts = []
    append = parts.append
    for record in records:
        size = len(record)
        header = headers.get(size)
        if header is None:
            length = struct.pack("<Q", size)
            header = headers[size] = length + _masked_crc(length)
        append(header)
        append(record)
        append(_masked_crc(record))
    return b"".join(parts)


def tfrecord_batch(records: list[bytes]) -> tuple[bytes, int]:
    """A list of serialized records -> (their TFRecord framing, how many)."""
    return frame_records(records), len(records)


def example_order_key(records: list[bytes]) -> bytes:
    """The first few records of a bundle: what orders its shard among the others."""
    return b"".join(records[:16])


def json_line(record: dict) -> tuple[bytes, int]:
    """A dict -> (one JSON line, 1); keys sorted, bytes decoded as UTF-8 (bad bytes replaced)."""
    line = json.dumps(
        record,
        ensure_ascii=False,
        sort_keys=True,
        default=lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v),
    )
    return (line + "\n").encode("utf-8"), 1


def json_line_key(record: dict) -> bytes:
    return json_line(record)[0]


class WriteBundleFiles(beam.DoFn):
    """Writes the elements of each bundle into one new file under `temp_dir` and, when the
    bundle finishes, emits (that file's path, records in it, a digest of `order_key` of its first
    element); `publish_bundle_files` later gives the files their final shard names, ordered by
    digest, so that the same bundles give the same shard order run after run.

    This is what Beam's file sinks do (a temp file per bundle, renamed once the writes are
    done), without their four extra stages per output (DoOnce, GroupByKey, PreFinalize,
    FinalizeWrite), which on the local runners cost about as much as the writing itself on
    jobs of a few hundred thousand rows. A bundle that fails and is retried leaves an orphan
    file behind; only emitted paths (committed bundles) are published, and the temp folder is
    deleted with the orphans. Written by hand: `encode(element) -> (bytes, records)` frames the
    data; `gzip` compresses at level 1 in a background thread (`_FastGzipWriter`).
    """

    def __init__(self, temp_dir: str, encode, order_key, gzip: bool):
        self._temp_dir = temp_dir
        self._encode = encode
        self._order_key = order_key
        self._gzip = gzip
        self._file = None

    def start_bundle(self):
        self._file, self._path, self._records, self._digest = None, None, 0, None

    def process(self, element):
        data, records = self._encode(element)
        if self._file is None:
            self._path = FileSystems.join(self._temp_dir, uuid.uuid4().hex)
            self._file = _open_for_write(self._path, self._gzip)
            self._digest = hashlib.sha1(self._order_key(element)).hexdigest()
        self._file.write(data)
        self._records += records

    def finish_bundle(self):
        if self._file is None:
            return
        self._file.close()
        self._file = None
        yield GlobalWindows.windowed_value((self._path, self._records, self._digest))

    def teardown(self):
        if self._file is not None:  # a failed bundle: close what it opened (it stays an orphan)
            try:
                self._file.close()
            except Exception:  # noqa: BLE001, S110 - already failing; that error is the one
                pass


def _open_for_write(path: str, gzip: bool):
    raw = FileSystems.create(path, "application/octet-stream", CompressionTypes.UNCOMPRESSED)
    return _FastGzipWriter(raw) if gzip else raw


def publish_bundle_files(
    written: list[tuple[str, int, str]], prefix: str, suffix: str, gzip: bool
) -> list[str]:
    """Rename the files `WriteBundleFiles` emitted to `<prefix>-SSSSS-of-NNNNN<suffix>`, ordered
    by the digest of their first element (not by which bundle finished first, nor by the random
    temp name). With none, one empty file is written, as Beam's sinks do, so that `<prefix>-*`
    always matches."""
    if not written:
        target = f"{prefix}-00000-of-00001{suffix}"
        _open_for_write(target, gzip).close()
        return [target]
    sources = [path for path, _, _ in sorted(written, key=lambda w: (w[2], w[0]))]
    n = len(sources)
    targets = [f"{prefix}-{i:05d}-of-{n:05d}{suffix}" for i in range(n)]
    FileSystems.rename(sources, targets)
    return targets


def merge_stats(parts) -> dict:
    """Sum nested dicts of counts (a CombineGlobally function: parts -> one dict)."""
    out: dict = {}

    def add(dst: dict, src: dict):
        for key, value in src.items():
            if isinstance(value, dict):
                add(dst.setdefault(key, {}), value)
            elif isinstance(value, np.ndarray):
                total = dst.get(key, np.zeros(0, value.dtype))
                if len(total) < len(value):
                    total = np.pad(total, (0, len(value) - len(total)))
                total[: len(value)] += value
                dst[key] = total
            else:
                dst[key] = dst.get(key, 0) + value

    for part in parts:
        add(out, part)
    return out


def length_quantiles(histogram: dict, qs=(0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)) -> dict:
    """Exact quantiles of token counts from a {length: rows} histogram."""
    if not histogram:
        return {}
    lengths = np.array(sorted(int(k) for k in histogram))
    counts = np.array([histogram[k] if k in histogram else histogram[str(k)] for k in lengths])
    cum = np.cumsum(counts)
    total = cum[-1]
    return {
        f"p{int(q * 100)}": int(
            lengths[min(np.searchsorted(cum, q * total, side="left"), len(lengths) - 1)]
        )
        for q in qs
    }
