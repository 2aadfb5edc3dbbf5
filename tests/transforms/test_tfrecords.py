"""Bundle files: written by a real Beam pipeline, read back with TensorFlow's TFRecord reader."""

import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from tfx_bsl.coders import example_coder

from transforms.tfrecords import (
    WriteBundleFiles,
    encode_example_array,
    example_order_key,
    json_line,
    json_line_key,
    publish_bundle_files,
    tfrecord_batch,
)


def _example(payload: bytes) -> bytes:
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[payload]))
    return tf.train.Example(
        features=tf.train.Features(feature={"x": feature, "n": feature})
    ).SerializeToString()


def _read_tfrecords(paths) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(paths), compression_type="GZIP")]


def _write_bundles(tmp_path, elements, encode, order_key, gzip_files) -> list[tuple[str, int]]:
    """Run WriteBundleFiles over `elements`; return what it emitted (path, records, digest)."""
    temp = str(tmp_path / "bundles")
    emitted = str(tmp_path / "emitted")
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create(elements)
            | beam.ParDo(WriteBundleFiles(temp, encode, order_key, gzip_files))
            | beam.Map(json.dumps)
            | beam.io.WriteToText(emitted, shard_name_template="")
        )
    with open(emitted) as f:
        return [tuple(json.loads(line)) for line in f]


def test_every_record_lands_in_an_emitted_gzip_tfrecord_file_and_only_those_are_published(
    tmp_path,
):
    batches = [
        [_example(b"a"), _example(b"bb")],
        [_example(b"ccc")],
        [_example(b"d" * 70_000), _example(b"")],
        [_example(b"e")],
    ]
    written = _write_bundles(tmp_path, batches, tfrecord_batch, example_order_key, True)
    assert sum(n for _, n, _ in written) == 6
    # each file's digest is that of the first batch written to it (its examples' content)
    firsts = {hashlib.sha1(example_order_key(b)).hexdigest() for b in batches}
    assert {digest for _, _, digest in written} <= firsts
    assert sorted(_read_tfrecords(p for p, _, _ in written)) == sorted(
        r for b in batches for r in b
    )

    orphan = tmp_path / "bundles" / "left-by-a-retried-bundle"
    orphan.write_bytes(gzip.compress(b"not published"))
    out = tmp_path / "out"
    out.mkdir()
    names = publish_bundle_files(written, str(out / "train"), ".tfrecord.gz", gzip=True)
    n = len(written)
    assert [os.path.basename(x) for x in names] == [
        f"train-{i:05d}-of-{n:05d}.tfrecord.gz" for i in range(n)
    ]
    assert sorted(glob.glob(str(out / "*"))) == sorted(names)
    assert orphan.exists()  # left for the caller to delete with the temp folder
    assert sorted(_read_tfrecords(names)) == sorted(r for b in batches for r in b)


def test_shards_are_ordered_by_digest_not_by_temp_name_or_the_order_bundles_finished(tmp_path):
    written = []
    for temp_name, record, digest in [
        ("zz", b"first", "b"),
        ("aa", b"second", "c"),
        ("mm", b"third", "a"),
    ]:
        path = tmp_path / temp_name
        path.write_bytes(gzip.compress(tfrecord_batch([record])[0]))
        written.append((str(path), 1, digest))
    for order in (written, written[::-1]):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        copies = []
        for path, n, digest in order:
            copy = out / f"tmp-{os.path.basename(path)}"
            copy.write_bytes(open(path, "rb").read())
            copies.append((str(copy), n, digest))
        names = publish_bundle_files(copies, str(out / "train"), ".tfrecord.gz", gzip=True)
        assert [_read_tfrecords([n]) for n in names] == [[b"third"], [b"first"], [b"second"]]


def _feature_batch(rows: int, seed: int = 0) -> pa.RecordBatch:
    """The columns preprocess writes (single- and multi-label), with edge values: ids that need
    1 to 10 varint bytes, negative ints, empty lists and zero floats."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 30_000, (rows, 7))
    ids[0] = 0
    ids[1] = [1, 127, 128, 16_383, 16_384, 2**35, 2**62]
    labels = [list(rng.random(3).astype(np.float32)) if i % 4 else [] for i in range(rows)]
    labels[2] = [0.0, 0.0, 0.0]
    return pa.record_batch(
        {
            "token_ids": pa.array(ids.tolist(), pa.list_(pa.int64())),
            "num_tokens": pa.array(
                [[int(n)] for n in rng.integers(0, 900, rows)], pa.list_(pa.int64())
            ),
            "label": pa.array([[int(n)] for n in rng.integers(-3, 20, rows)], pa.list_(pa.int64())),
            "labels": pa.array(labels, pa.list_(pa.float32())),
            "empty": pa.array([[]] * rows, pa.list_(pa.int64())),
        }
    )


def test_encoded_examples_are_protobufs_deterministic_bytes_of_the_same_examples():
    batch = _feature_batch(500)
    ours = encode_example_array(batch).to_pylist()
    reference = example_coder.RecordBatchToExamples(batch)  # same content, map order varies
    assert len(ours) == len(reference) == 500
    for mine, theirs in zip(ours, reference):
        parsed = tf.train.Example.FromString(theirs)
        assert tf.train.Example.FromString(mine) == parsed
        assert mine == parsed.SerializeToString(deterministic=True)


def test_encoded_examples_are_the_same_bytes_in_another_process():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = (
        f"import sys, hashlib; sys.path.insert(0, {root!r}); "
        "from tests.transforms.test_tfrecords import _feature_batch; "
        "from transforms.tfrecords import encode_example_array; "
        "print(hashlib.sha256(b''.join(encode_example_array(_feature_batch(300)).to_pylist())).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
        ).stdout.strip()
        for _ in range(2)
    }
    here = hashlib.sha256(
        b"".join(encode_example_array(_feature_batch(300)).to_pylist())
    ).hexdigest()
    assert digests == {here}


def test_example_order_key_is_the_records_themselves():
    records = encode_example_array(_feature_batch(40)).to_pylist()
    assert example_order_key(records) == b"".join(records[:16])
    assert example_order_key(records) != example_order_key(records[1:])


def test_no_records_still_publish_one_empty_readable_shard(tmp_path):
    names = publish_bundle_files([], str(tmp_path / "eval"), ".tfrecord.gz", gzip=True)
    assert [os.path.basename(x) for x in names] == ["eval-00000-of-00001.tfrecord.gz"]
    assert _read_tfrecords(names) == []
    (jsonl,) = publish_bundle_files([], str(tmp_path / "dead_letter"), ".jsonl", gzip=False)
    assert os.path.getsize(jsonl) == 0


def test_json_lines_bundle_files_keep_keys_sorted_and_bytes_readable(tmp_path):
    records = [
        {"reason": "text is empty", "row": {"text": b"", "label": "x"}},
        {"reason": "label is missing", "row": {"text": "caf\u00e9", "label": None}},
        {"reason": "text is not valid UTF-8", "row": {"text": b"bad \xff byte", "label": "y"}},
    ]
    written = _write_bundles(tmp_path, records, json_line, json_line_key, False)
    lines = [line for path, _, _ in written for line in open(path, encoding="utf-8")]
    assert sum(n for _, n, _ in written) == len(lines) == 3
    parsed = sorted((json.loads(line) for line in lines), key=lambda r: r["reason"])
    assert [list(r) for r in parsed] == [["reason", "row"]] * 3
    assert [r["row"]["text"] for r in parsed] == ["caf\u00e9", "", "bad \ufffd byte"]


def test_split_and_encode_sends_each_row_to_its_split_once_in_order_and_skips_empty_batches():
    from transforms.tfrecords import STATS_TAG, SplitAndEncode

    features = pa.record_batch(
        {
            "token_ids": pa.array([[i, 300 + i, 0] for i in range(9)], pa.list_(pa.int64())),
            "num_tokens": pa.array([[2]] * 9, pa.list_(pa.int64())),
            "label": pa.array([[i % 3] for i in range(9)], pa.list_(pa.int64())),
        }
    )
    splits = ["train", "eval", "train", "train", "eval", "train", "train", "train", "eval"]
    batch = pa.RecordBatch.from_arrays(
        [*features.columns, pa.array([[s] for s in splits], pa.list_(pa.string()))],
        names=[*features.schema.names, "split"],
    )
    out = {}
    for tagged in SplitAndEncode().process(batch):
        out[tagged.tag] = tagged.value
    records = encode_example_array(features).to_pylist()
    for split in ("train", "eval"):
        assert out[split] == [r for r, s in zip(records, splits) if s == split]
    assert out[STATS_TAG]["rows_written"] == {"train": 6, "eval": 3}
    empty = [t.tag for t in SplitAndEncode().process(batch.slice(0, 0))]
    assert empty == [STATS_TAG]  # statistics only: no empty record lists
