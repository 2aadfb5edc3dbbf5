"""Transformed record batches -> per-split serialized tf.Examples, bundle files, statistics.

`SplitAndEncode` takes tf.Transform's output batches (with the pass-through `split` column),
encodes each split's rows with tfx_bsl's `RecordBatchToExamples` (vectorised, in C++), and emits
one tagged output per split. It also emits a small statistics dict per batch (token lengths,
OOV ids) that preprocess folds with the reader's counts into the numbers of stats.json.
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
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from tensorflow.core.example import example_pb2
from tfx_bsl.coders import example_coder

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
        for name in SPLITS:
            mask = split == name
            if mask.any():
                self._written[name].inc(int(mask.sum()))
                part = features.filter(pa.array(mask)) if not mask.all() else features
                yield beam.pvalue.TaggedOutput(name, example_coder.RecordBatchToExamples(part))


class _FastGzipWriter:
    """A gzip stream at compression level 1 over a raw Beam file handle, compressed and written
    by one background thread.

    Beam's compressed files use zlib's default level (6); on token-id records level 1 was about
    3x faster for files about 15% larger. zlib and file writes release the GIL, so the thread
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
    """The first few tf.Examples of a batch, serialized deterministically: their content, not
    their bytes, which protobuf does not keep from one process to the next (a map's entries
    are written in hash order). Computed once per bundle."""
    return b"".join(
        example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
        for r in records[:16]
    )


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
