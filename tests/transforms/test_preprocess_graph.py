"""`PreprocessCorpus` on a small real CSV with Beam's TestPipeline, and the pieces it uses."""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tensorflow_metadata.proto.v0 import schema_pb2

from transforms.contracts import (
    RAW_LABEL_KEY,
    REASON_LABEL_MISSING,
    REASON_TEXT_EMPTY,
    SPLITS,
    TEXT_KEY,
    TOKEN_VOCAB_NAME,
    TRANSFORM_FN_DIR,
)
from transforms.corpus_io import CorpusSpec, inspect_corpus
from transforms.preprocess_graph import (
    BUNDLES_DIR,
    PreprocessCorpus,
    PreprocessSettings,
    parse_error_stats,
    rebatch,
    tensor_adapter_config,
)
from transforms.text_preprocessing import TextSettings


def test_batches_are_cut_by_rows_and_by_text_bytes_and_a_long_row_stands_alone():
    batch = pa.record_batch(
        {"body": ["a" * 10, "b" * 50, None, "c" * 5, "d" * 100, "e"], "topic": list("xyzxyz")}
    )
    pieces = list(rebatch(batch, 4, "body", max_bytes=60))
    assert [p.num_rows for p in pieces] == [3, 1, 1, 1]
    assert pa.Table.from_batches(pieces).equals(pa.Table.from_batches([batch]))
    assert [p.num_rows for p in rebatch(batch, 4, "body")] == [4, 2]


def test_a_text_column_without_byte_lengths_is_cut_by_rows_only():
    batch = pa.record_batch({"body": list(range(7)), "topic": list("xyzxyzx")})
    assert [p.num_rows for p in rebatch(batch, 3, "body", max_bytes=1)] == [3, 3, 1]
    assert [p.num_rows for p in rebatch(batch, 3, "no_such_column", max_bytes=1)] == [3, 3, 1]


def test_a_parse_error_counts_as_one_row_read_and_dead_lettered_with_its_reason():
    record = {"reason": "malformed CSV row", "row": {"line": "a,b,c"}, "source": "x.csv"}
    assert parse_error_stats(record) == {"rows_read": 1, "dead_lettered": {"malformed CSV row": 1}}


@pytest.mark.parametrize("multi_label", [False, True])
def test_the_label_is_a_dense_scalar_or_a_sparse_list_for_tf_transform(multi_label):
    config = tensor_adapter_config(multi_label)
    text, label = (
        config.tensor_representations[TEXT_KEY],
        config.tensor_representations[RAW_LABEL_KEY],
    )
    assert text.WhichOneof("kind") == "dense_tensor"
    assert label.WhichOneof("kind") == ("varlen_sparse_tensor" if multi_label else "dense_tensor")
    assert isinstance(label, schema_pb2.TensorRepresentation)


# 23 rows: 20 usable, one with empty text, one with no label, and one malformed CSV row (three
# fields where the header has two) that the reader dead-letters before validation.
WORDS = "alpha beta gamma delta epsilon zeta".split()
ROWS = [(f"{WORDS[i % 6]} {WORDS[(i * 5) % 6]} w{i}", ["x", "y"][i % 2]) for i in range(20)]


def write_corpus(path) -> None:
    lines = ["text,label", *(f"{text},{label}" for text, label in ROWS)]
    lines[5:5] = [",x", "lonely words,", "too,many,fields"]
    path.write_text("\n".join(lines) + "\n")


def records_in(pattern: str) -> int:
    return sum(
        sum(1 for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"))
        for path in glob.glob(pattern)
    )


def test_preprocess_corpus_writes_each_usable_row_once_and_counts_every_row_read(tmp_path):
    path = tmp_path / "corpus.csv"
    write_corpus(path)
    spec = CorpusSpec(patterns=(str(path),), format="csv", text_column="text", label_column="label")
    out = str(tmp_path / "out")
    settings = PreprocessSettings(
        corpus=spec,
        files=inspect_corpus(spec),
        text=TextSettings(sequence_length=4),
        output_dir=out,
        temp_dir=str(tmp_path / "tft_tmp"),
        batch_rows=5,
    )

    def total(name, pcolls, value):
        return (
            pcolls
            | f"Flatten[{name}]" >> beam.Flatten()
            | f"Value[{name}]" >> beam.Map(value)
            | f"Sum[{name}]" >> beam.CombineGlobally(sum)
        )

    with TestPipeline(runner=FnApiRunner()) as p:
        written = p | PreprocessCorpus(settings)
        assert sorted(written) == [
            "dead_letter_files_invalid",
            "dead_letter_files_unparsed",
            "files_eval",
            "files_train",
            "stats_read",
            "stats_unparsed",
            "stats_write",
            "transform_fn",
        ]
        files = [written[f"files_{split}"] for split in SPLITS]
        dead_files = [written["dead_letter_files_invalid"], written["dead_letter_files_unparsed"]]
        assert_that(total("records", files, lambda w: w[1]), equal_to([20]), label="Records")
        assert_that(total("dead", dead_files, lambda w: w[1]), equal_to([3]), label="Dead")
        assert_that(
            written["stats_read"] | beam.Map(lambda s: (s["rows_read"], s["dead_lettered"])),
            equal_to([(22, {REASON_TEXT_EMPTY: 1, REASON_LABEL_MISSING: 1})]),
            label="ReadStats",
        )
        assert_that(
            written["stats_unparsed"],
            equal_to([{"rows_read": 1, "dead_lettered": {"malformed CSV row": 1}}]),
            label="UnparsedStats",
        )
        assert_that(
            written["stats_write"] | beam.Map(lambda s: sum(s["rows_written"].values())),
            equal_to([20]),
            label="WriteStats",
        )

    # The reported files are on disk and hold the rows; the transform graph is beside them.
    assert sum(records_in(f"{out}/{BUNDLES_DIR}/{split}/*") for split in SPLITS) == 20
    dead_lines = [
        line for name in glob.glob(f"{out}/{BUNDLES_DIR}/dead_letter/*") for line in open(name)
    ]
    assert len(dead_lines) == 3
    assert os.path.exists(f"{out}/{TRANSFORM_FN_DIR}/assets/{TOKEN_VOCAB_NAME}")
