"""The CSV/JSONL reader on real files with rows far larger than its read block (4 MiB).

Every test writes a real file, runs `inspect_corpus` (the before-any-work column check) and then
`ReadCorpus` in a real Beam pipeline on the FnApiRunner (named explicitly). Each row read is
reduced to a small summary (id, label, text length, text digest) inside the pipeline and written
to a text file, so the checks compare summaries: every input row comes out exactly once, as a
record batch row or as a dead letter, with its text intact.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os

import apache_beam as beam
import pyarrow as pa
import pytest

from transforms.corpus_io import (
    _READ_BLOCK_BYTES,
    DEAD_LETTER_TAG,
    CorpusSpec,
    ReadCorpus,
    inspect_corpus,
    read_sample_schema,
)

MiB = 1 << 20
RUNNER = "FnApiRunner"  # Beam's in-process runner, as `preprocess` uses with no --runner


def big_text(n_bytes: int, tag: str) -> str:
    """A text of about n_bytes (UTF-8) with commas, quotes and line breaks inside, and marked
    ends, so that a cut, a merge with a neighbour or a bad unquoting shows in its digest."""
    unit = f'{tag} words, "quoted" and ünïcode\nnext line '
    reps = n_bytes // len(unit.encode()) + 1
    return f"BEGIN-{tag} " + unit * reps + f" END-{tag}"


def normal_rows(first_id: int, n: int) -> list[dict]:
    """About 1 KiB rows, so that n=5000 spans more than one read block."""
    return [
        {"id": str(i), "text": f"row {i} " + "lorem, ipsum dolor " * 50, "label": "ab"[i % 2]}
        for i in range(first_id, first_id + n)
    ]


def digest(text) -> str:
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


def expected(rows: list[dict]) -> list[list]:
    return sorted([r["id"], r["label"], digest(r["text"])] for r in rows)


def write(path, data: bytes) -> str:
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def csv_bytes(rows: list[dict], raw_lines: dict[int, str] | None = None) -> bytes:
    """CSV with a header (quoting as Python's csv module does); raw_lines[i] goes before row i."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", "label"])
    for i, row in enumerate(rows):
        if raw_lines and i in raw_lines:
            out.write(raw_lines[i] + "\n")
        writer.writerow([row["id"], row["text"], row["label"]])
    return out.getvalue().encode("utf-8")


def jsonl_bytes(rows: list[dict], raw_lines: dict[int, str] | None = None) -> bytes:
    lines = []
    for i, row in enumerate(rows):
        if raw_lines and i in raw_lines:
            lines.append(raw_lines[i])
        lines.append(json.dumps(row, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _summaries(batch: pa.RecordBatch):
    def plain(value) -> str:  # CSV cells come as bytes, JSONL ones as JSON types
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    for row in batch.to_pylist():
        yield json.dumps([plain(row["id"]), plain(row["label"]), digest(row["text"])])


def _dead_summary(dead: dict) -> str:
    return json.dumps([dead["reason"], dead["row"]["line"].rstrip("\r\n")[:40]])


def read_corpus(tmp_path, path: str, fmt: str) -> tuple[list[list], list[list]]:
    """(row summaries, dead-letter summaries) of `path` read by ReadCorpus on a real pipeline."""
    spec = CorpusSpec(
        patterns=(path,), format=fmt, text_column="text", label_column="label", id_column="id"
    )
    files = inspect_corpus(spec)
    rows_out, dead_out = str(tmp_path / "rows.jsonl"), str(tmp_path / "dead.jsonl")
    with beam.Pipeline(runner=RUNNER) as p:
        read = p | ReadCorpus(spec, files)
        _ = (
            read["batches"]
            | beam.FlatMap(_summaries)
            | "WriteRows" >> beam.io.WriteToText(rows_out, shard_name_template="")
        )
        _ = (
            read[DEAD_LETTER_TAG]
            | beam.Map(_dead_summary)
            | "WriteDead" >> beam.io.WriteToText(dead_out, shard_name_template="")
        )

    def lines(name):
        with open(name, encoding="utf-8") as f:
            return sorted(json.loads(line) for line in f if line.strip())

    return lines(rows_out), lines(dead_out)


CASES = [
    pytest.param("csv", 10 * MiB, "corpus.csv", id="csv-10MB"),
    pytest.param("csv", 64 * MiB, "corpus.csv", id="csv-64MB"),
    pytest.param("jsonl", 10 * MiB, "corpus.jsonl", id="jsonl-10MB"),
    pytest.param("jsonl", 64 * MiB, "corpus.jsonl", id="jsonl-64MB"),
    pytest.param("csv", 10 * MiB, "corpus.csv.gz", id="csv.gz-10MB"),
    pytest.param("jsonl", 10 * MiB, "corpus.jsonl.gz", id="jsonl.gz-10MB"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,size,name", CASES)
def test_a_huge_row_between_normal_rows_comes_out_once_and_intact(tmp_path, fmt, size, name):
    # 5000 rows (~5 MiB, more than a block) before the huge one, so the reader has handed on
    # batches before it meets it; then 5000 more after it.
    rows = normal_rows(0, 5000) + [{"id": "huge", "text": big_text(size, "H"), "label": "b"}]
    rows += normal_rows(5000, 5000)
    if fmt == "csv":  # malformed rows before and after the huge one: dead letters, once each
        data = csv_bytes(rows, {100: "bad,row,one,too,many", 6000: "bad,row,two,too,many"})
    else:
        data = jsonl_bytes(rows)
    path = write(tmp_path / name, data)
    got, dead = read_corpus(tmp_path, path, fmt)
    assert len(got) == len(rows)
    assert got == expected(rows)  # each row exactly once, the huge text byte for byte
    if fmt == "csv":
        assert dead == [
            ["malformed CSV row", "bad,row,one,too,many"],
            ["malformed CSV row", "bad,row,two,too,many"],
        ]
    else:
        assert dead == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_huge_first_row_passes_the_column_check_and_is_read(tmp_path, fmt):
    rows = [{"id": "huge", "text": big_text(10 * MiB, "F"), "label": "a"}] + normal_rows(0, 3)
    data = csv_bytes(rows) if fmt == "csv" else jsonl_bytes(rows)
    path = write(tmp_path / f"corpus.{fmt}", data)
    spec = CorpusSpec(patterns=(path,), format=fmt, text_column="text", label_column="label")
    assert {"id", "text", "label"} <= set(read_sample_schema(path, fmt, spec).names)
    got, dead = read_corpus(tmp_path, path, fmt)
    assert got == expected(rows) and dead == []


@pytest.mark.slow
def test_a_csv_header_larger_than_a_block_passes_the_column_check_and_is_read(tmp_path):
    wide = "w" * (_READ_BLOCK_BYTES + MiB)  # a column name alone is larger than a block
    rows = normal_rows(0, 10)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", wide, "label"])
    for row in rows:
        writer.writerow([row["id"], row["text"], "x", row["label"]])
    path = write(tmp_path / "wide.csv", out.getvalue().encode())
    spec = CorpusSpec(patterns=(path,), format="csv", text_column="text", label_column="label")
    assert read_sample_schema(path, "csv", spec).names == ["id", "text", wide, "label"]
    got, dead = read_corpus(tmp_path, path, "csv")
    assert got == expected(rows) and dead == []


@pytest.mark.slow
@pytest.mark.parametrize("bad_at", [100, 7000], ids=["bad-line-before", "bad-line-after"])
def test_jsonl_huge_line_with_a_bad_line_is_not_dead_lettered_nor_duplicated(tmp_path, bad_at):
    # A bad line sends the reader to its line-by-line fallback: before the huge line, the
    # fallback reads the huge line; after it, the fast reader has read it already.
    rows = normal_rows(0, 5000) + [{"id": "huge", "text": big_text(10 * MiB, "J"), "label": "a"}]
    rows += normal_rows(5000, 5000)
    path = write(tmp_path / "corpus.jsonl", jsonl_bytes(rows, {bad_at: "{not json"}))
    got, dead = read_corpus(tmp_path, path, "jsonl")
    assert got == expected(rows)
    assert dead == [["invalid JSON line", "{not json"]]


def test_normal_files_keep_the_4_mib_block(tmp_path):
    # The fast path stays as it was: a corpus of ordinary rows larger than a block is read in
    # blocks of _READ_BLOCK_BYTES, so no batch holds more than about one block of rows.
    rows = normal_rows(0, 12000)  # ~12 MiB
    path = write(tmp_path / "corpus.csv", csv_bytes(rows))
    spec = CorpusSpec(patterns=(path,), format="csv", text_column="text", label_column="label")
    sizes = str(tmp_path / "sizes")
    with beam.Pipeline(runner=RUNNER) as p:
        read = p | ReadCorpus(spec, inspect_corpus(spec))
        _ = (
            read["batches"]
            | beam.Map(lambda b: b.num_rows)
            | beam.io.WriteToText(sizes, shard_name_template="")
        )
    with open(sizes) as f:
        counts = [int(line) for line in f]
    assert sum(counts) == len(rows)
    assert len(counts) >= 3 and max(counts) * 1024 < 2 * _READ_BLOCK_BYTES
    assert os.path.getsize(path) > 2 * _READ_BLOCK_BYTES


@pytest.mark.parametrize(
    "text_type",
    [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())],
)
def test_every_arrow_string_type_score_accepts_is_a_text_column_for_preprocess_too(
    tmp_path, text_type
):
    import pyarrow.parquet as pq

    rows = [{"id": "1", "text": "a b", "label": "x"}, {"id": "2", "text": "c d", "label": "y"}]
    table = pa.Table.from_pylist(rows)
    table = table.set_column(1, "text", table.column("text").cast(text_type))
    pq.write_table(table, tmp_path / "corpus.parquet")
    path = str(tmp_path / "corpus.parquet")
    spec = CorpusSpec(
        patterns=(path,), format="parquet", text_column="text", label_column="label", id_column="id"
    )
    files = inspect_corpus(spec)  # the column check accepts the type
    out = str(tmp_path / "rows.jsonl")
    with beam.Pipeline(runner=RUNNER) as p:
        _ = (
            (p | ReadCorpus(spec, files))["batches"]
            | beam.FlatMap(_summaries)
            | beam.io.WriteToText(out, shard_name_template="")
        )
    with open(out, encoding="utf-8") as f:
        assert sorted(json.loads(line) for line in f) == expected(rows)
