"""The whole preprocess stage on small real files (CSV, JSONL, Parquet) with the DirectRunner."""

import collections
import hashlib
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import preprocess
from tests.stage_outputs import read_dead_letters, read_examples, read_lines
from transforms.contracts import CONFIG_FILE, EXIT_BAD_INPUT, STATS_FILE, SUCCESS_FILE
from transforms.preprocess_graph import BUNDLES_DIR

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def corpus(n: int = 240) -> list[dict]:
    rows = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)]
        rows.append(
            {
                "doc_id": i,
                "body": " ".join(words) + f" doc{i}",
                "topic": ["sports", "politics", "science"][i % 3],
            }
        )
    return rows


def run(tmp_path, name, argv):
    out = str(tmp_path / name)
    code = preprocess.main([*argv, "--output_dir", out])
    return code, out


def stats_of(out):
    with open(os.path.join(out, STATS_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parquet")
    rows = corpus()
    rows[5]["body"] = None
    rows[6]["body"] = "   \n\t "
    rows[7]["topic"] = None
    rows[8]["topic"] = ""
    path = tmp / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    argv = [
        "--input",
        str(path),
        "--text_column",
        "body",
        "--label_column",
        "topic",
        "--sequence_length",
        "6",
        "--eval_fraction",
        "0.25",
    ]
    first = run(tmp, "first", argv)
    second = run(tmp, "second", argv)
    return rows, first, second


@pytest.mark.slow
def test_output_has_the_documented_layout_and_success_last(parquet_run):
    _, (code, out), _ = parquet_run
    assert code == 0
    names = set(os.listdir(out))
    assert {"transform_fn", "transformed_metadata", STATS_FILE, CONFIG_FILE, SUCCESS_FILE} <= names
    assert any(n.startswith("train-") and n.endswith(".tfrecord.gz") for n in names)
    assert any(n.startswith("eval-") and n.endswith(".tfrecord.gz") for n in names)
    assert any(n.startswith("dead_letter-") and n.endswith(".jsonl") for n in names)
    assert BUNDLES_DIR not in names  # bundle files were all renamed, orphans deleted
    for split in ("train", "eval"):
        shards = sorted(n for n in names if n.startswith(f"{split}-"))
        assert shards == [
            f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord.gz" for i in range(len(shards))
        ]
    siblings = os.listdir(os.path.dirname(out))
    assert not [s for s in siblings if "inprogress" in s]  # staging dirs are gone
    newest = max(os.path.getmtime(os.path.join(out, n)) for n in names if n != SUCCESS_FILE)
    assert os.path.getmtime(os.path.join(out, SUCCESS_FILE)) >= newest


@pytest.mark.slow
def test_every_row_is_written_or_dead_lettered_with_its_reason(parquet_run):
    rows, (_, out), _ = parquet_run
    stats = stats_of(out)
    assert stats["rows_read"] == len(rows)
    written = read_examples(out, "train") + read_examples(out, "eval")
    assert len(written) == sum(stats["rows_written"].values()) == len(rows) - 4
    assert stats["rows_dead_lettered"] == 4 and stats["rows_accounted"]
    reasons = collections.Counter(d["reason"] for d in read_dead_letters(out))
    assert reasons == {"text is null": 1, "text is empty": 1, "label is missing": 2}
    assert stats["dead_letter_reasons"] == dict(reasons)


@pytest.mark.slow
def test_tfrecords_hold_fixed_length_ids_and_labels_from_the_label_vocabulary(parquet_run):
    rows, (_, out), _ = parquet_run
    config = json.load(open(os.path.join(out, CONFIG_FILE)))
    assert config["label_vocabulary"] == read_lines(f"{out}/transform_fn/assets/label_vocab")
    assert sorted(config["label_vocabulary"]) == ["politics", "science", "sports"]
    assert config["id_vocabulary_size"] == 1 + config["vocab_size"] + 1
    for example in read_examples(out, "train"):
        assert len(example["token_ids"]) == 6
        assert 0 <= example["label"][0] < 3
        assert all(0 <= i < config["id_vocabulary_size"] for i in example["token_ids"])
    stats = stats_of(out)
    assert stats["vocab_size"] == config["vocab_size"] == len(WORDS) + 240 - 4
    counts = collections.Counter()
    for split in ("train", "eval"):
        counts.update(stats["label_counts"][split])
    assert sum(counts.values()) == 236


@pytest.mark.slow
def test_split_is_the_same_on_a_rerun_and_near_the_eval_fraction(parquet_run):
    _, (_, first), (code, second) = parquet_run
    assert code == 0
    for split in ("train", "eval"):
        a = sorted(json.dumps(e, sort_keys=True) for e in read_examples(first, split))
        b = sorted(json.dumps(e, sort_keys=True) for e in read_examples(second, split))
        assert a == b
    assert 0.12 < stats_of(first)["rows_written"]["eval"] / 236 < 0.38
    assert read_lines(f"{first}/transform_fn/assets/token_vocab") == read_lines(
        f"{second}/transform_fn/assets/token_vocab"
    )


@pytest.mark.slow
def test_csv_with_multiline_text_bad_bytes_malformed_rows_and_numeric_labels(tmp_path):
    path = tmp_path / "corpus.csv"
    lines = [b"id,text,label"]
    for i in range(60):
        lines.append(f'{i},"line one {WORDS[i % 12]}\nline two, with comma",{i % 2}'.encode())
    lines.append(b'60,"bad \xff\xfe bytes",1')
    lines.append(b'61,"",0')
    lines.append(b"62,too,many,fields")
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out = run(tmp_path, "out", ["--input", str(path), "--sequence_length", "8"])
    assert code == 0
    stats = stats_of(out)
    assert stats["rows_read"] == 63
    assert stats["dead_letter_reasons"] == {
        "text is not valid UTF-8": 1,
        "text is empty": 1,
        "malformed CSV row": 1,
    }
    assert sum(stats["rows_written"].values()) == 60
    assert stats["token_length_quantiles"]["p50"] == 7  # the newline inside quotes is text
    assert sorted(json.load(open(f"{out}/{CONFIG_FILE}"))["label_vocabulary"]) == ["0", "1"]


@pytest.mark.slow
def test_jsonl_multi_label_lists_become_multi_hot_and_bad_lines_are_dead_lettered(tmp_path):
    path = tmp_path / "corpus.jsonl"
    label_sets = [["a"], ["a", "b"], [], ["c", "a"]]
    with open(path, "w") as f:
        for i in range(40):
            f.write(
                json.dumps(
                    {
                        "text": f"{WORDS[i % 12]} {WORDS[(i + 1) % 12]}",
                        "tags": label_sets[i % 4],
                        "extra": {"x": i},
                    }
                )
                + "\n"
            )
        f.write("{not json\n")
    code, out = run(
        tmp_path,
        "out",
        ["--input", str(path), "--label_column", "tags", "--multi_label", "--sequence_length", "4"],
    )
    assert code == 0
    stats = stats_of(out)
    assert stats["rows_read"] == 41 and stats["dead_letter_reasons"] == {"invalid JSON line": 1}
    vocab = read_lines(f"{out}/transform_fn/assets/label_vocab")
    assert vocab == ["a", "c", "b"]  # a:30, then c and b (10 each, ties by bytes descending)
    hot = collections.Counter(
        tuple(e["labels"]) for s in ("train", "eval") for e in read_examples(out, s)
    )
    assert hot == {
        (1.0, 0.0, 0.0): 10,
        (1.0, 0.0, 1.0): 10,
        (0.0, 0.0, 0.0): 10,
        (1.0, 1.0, 0.0): 10,
    }


@pytest.mark.slow
def test_delimited_label_strings_in_multi_label_mode(tmp_path):
    path = tmp_path / "corpus.csv"
    rows = ["text,labels"] + [
        f"{WORDS[i % 12]} x,{'news|tech' if i % 2 else ' tech '}" for i in range(30)
    ]
    path.write_text("\n".join(rows) + "\n")
    code, out = run(
        tmp_path,
        "out",
        [
            "--input",
            str(path),
            "--label_column",
            "labels",
            "--multi_label",
            "--label_delimiter",
            "|",
            "--sequence_length",
            "3",
        ],
    )
    assert code == 0
    assert read_lines(f"{out}/transform_fn/assets/label_vocab") == ["tech", "news"]
    hot = collections.Counter(
        tuple(e["labels"]) for s in ("train", "eval") for e in read_examples(out, s)
    )
    assert hot == {(1.0, 1.0): 15, (1.0, 0.0): 15}


def test_missing_column_is_refused_before_any_work_with_exit_2(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("id,txt,label\n1,hello,a\n")
    code, out = run(tmp_path, "out", ["--input", str(path)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == (
        f"textclf preprocess: text column 'text' not found in {path}; columns are: id, txt, label"
    )
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if "inprogress" in p]


@pytest.mark.parametrize(
    "table,argv,message",
    [
        (pa.table({"text": [1, 2], "label": ["a", "b"]}), [], "holds int64, not text"),
        (pa.table({"text": ["x", "y"], "label": [["a"], ["b"]]}), [], "pass --multi_label"),
    ],
)
def test_unusable_column_types_are_refused_with_exit_2(tmp_path, capsys, table, argv, message):
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    code, _ = run(tmp_path, "out", ["--input", str(path), *argv])
    assert code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_missing_input_file_is_refused_with_exit_2(tmp_path, capsys):
    code, _ = run(tmp_path, "out", ["--input", str(tmp_path / "nope-*.csv")])
    assert code == EXIT_BAD_INPUT
    assert "no input file matches" in capsys.readouterr().err


@pytest.mark.slow
def test_tsv_files_are_split_on_tabs_and_odd_column_names_work(tmp_path):
    path = tmp_path / "corpus.tsv"
    rows = ["Ünïcode label\tBody Text"] + [
        f"{'ham' if i % 2 else 'spam'}\thello, world {WORDS[i % 12]}" for i in range(40)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, out = run(
        tmp_path,
        "out",
        ["--input", str(path), "--text_column", "Body Text", "--label_column", "Ünïcode label"],
    )
    assert code == 0
    assert stats_of(out)["rows_read"] == 40
    assert sorted(read_lines(f"{out}/transform_fn/assets/label_vocab")) == ["ham", "spam"]


@pytest.mark.slow
def test_gzipped_jsonl_with_a_bad_line_is_read_line_by_line_with_a_dead_letter(tmp_path):
    import gzip

    path = tmp_path / "corpus.jsonl.gz"
    lines = [
        json.dumps({"text": f"{WORDS[i % 12]} words", "label": "ab"[i % 2]}) for i in range(30)
    ]
    lines.insert(10, "{broken")
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    code, out = run(tmp_path, "out", ["--input", str(path), "--sequence_length", "3"])
    assert code == 0
    stats = stats_of(out)
    assert stats["rows_read"] == 31
    assert stats["dead_letter_reasons"] == {"invalid JSON line": 1}
    assert sum(stats["rows_written"].values()) == 30


def test_zero_oov_buckets_is_refused_because_unknown_tokens_need_an_id(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("text,label\nhello,a\n")
    code, _ = run(tmp_path, "out", ["--input", str(path), "--num_oov_buckets", "0"])
    assert code == EXIT_BAD_INPUT
    assert "--num_oov_buckets must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("multi_label", [False, True])
def test_a_label_with_a_line_break_is_dead_lettered_not_left_unlabeled(tmp_path, multi_label):
    labels = ["sports", "politics\nand more", " science ", "sports"] * 10
    column = [[x, "extra"] for x in labels] if multi_label else labels
    path = tmp_path / "corpus.parquet"
    texts = [f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]}" for i in range(len(labels))]
    pq.write_table(pa.table({"text": texts, "label": column}), path)
    code, out = run(
        tmp_path,
        "out",
        ["--input", str(path), "--sequence_length", "4"]
        + (["--multi_label"] if multi_label else []),
    )
    assert code == 0
    stats = stats_of(out)
    assert stats["dead_letter_reasons"] == {"label has a line break": 10}
    assert stats["rows_written"]["train"] + stats["rows_written"]["eval"] == 30
    assert sorted(d["row"]["text"] for d in read_dead_letters(out)) == sorted(texts[1::4])
    vocab = read_lines(f"{out}/transform_fn/assets/label_vocab")
    assert vocab == (["extra", "sports", "science"] if multi_label else ["sports", "science"])


@pytest.mark.slow
def test_a_csv_with_a_10_mb_document_preprocesses_and_counts_it(tmp_path):
    # One document far larger than the reader's 4 MiB block, between ordinary rows: the reader
    # reads the file again with a larger block instead of failing the stage.
    big = " ".join(WORDS[(i * 5) % 12] for i in range(1_900_000)) + ', "quoted"\nend'
    assert len(big) > 10 * 2**20
    lines = ["text,label"] + [f"{WORDS[i % 12]} small,{'ab'[i % 2]}" for i in range(40)]
    lines.append('"' + big.replace('"', '""') + '",b')
    lines += [f"{WORDS[i % 12]} after,{'ab'[i % 2]}" for i in range(40)]
    path = tmp_path / "corpus.csv"
    path.write_text("\n".join(lines) + "\n")
    code, out = run(
        tmp_path,
        "out",
        ["--input", str(path), "--sequence_length", "6", "--runner=FnApiRunner"],
    )
    assert code == 0
    stats = stats_of(out)
    assert stats["rows_read"] == 81 and stats["rows_accounted"]
    assert stats["rows_dead_lettered"] == 0
    assert sum(stats["rows_written"].values()) == 81
    assert len(read_examples(out, "train") + read_examples(out, "eval")) == 81


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("header_only.csv", "text,label\n", "no rows to preprocess: the input holds no data rows"),
        (
            "all_dead.jsonl",
            '{"text": "  ", "label": "a"}\n{"text": null, "label": "b"}\n{"text": "x", "label": ""}\n',
            "no rows to preprocess: 3 rows read, all dead-lettered "
            "(label is missing: 1, text is empty: 1, text is null: 1)",
        ),
    ],
)
def test_a_corpus_with_no_usable_rows_exits_2_and_publishes_nothing(
    tmp_path, capsys, name, content, message
):
    path = tmp_path / name
    path.write_text(content)
    code, out = run(tmp_path, "out", ["--input", str(path), "--runner=FnApiRunner"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == f"textclf preprocess: {message}", err
    assert sorted(os.listdir(tmp_path)) == [name]  # no output, no staging dir left


def test_an_empty_parquet_file_exits_2(tmp_path, capsys):
    path = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path
    )
    code, out = run(tmp_path, "out", ["--input", str(path), "--runner=FnApiRunner"])
    assert code == EXIT_BAD_INPUT
    assert "no rows to preprocess" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_a_rerun_in_another_process_writes_byte_identical_files(tmp_path):
    rows = corpus(300)
    rows[3]["body"] = ""
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = ["--input", str(path), "--text_column", "body", "--label_column", "topic"]
    argv += ["--sequence_length", "8", "--runner=FnApiRunner", "--batch_rows", "64"]
    digests = []
    for name in ("first", "second"):
        out = tmp_path / name
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "preprocess", *argv, "--output_dir", str(out)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        files = {}
        for dirpath, _, names in os.walk(out):
            for n in names:
                rel = os.path.relpath(os.path.join(dirpath, n), out)
                if rel.endswith((".tfrecord.gz", ".jsonl", ".json")) or "assets" in rel:
                    with open(os.path.join(dirpath, n), "rb") as f:
                        files[rel] = hashlib.sha256(f.read()).hexdigest()
        digests.append(files)
    assert {"stats.json", "preprocess_config.json", "transform_fn/assets/token_vocab"} <= set(
        digests[0]
    )
    assert "timings.json" in digests[0]
    digests[0].pop("timings.json"), digests[1].pop("timings.json")  # wall time varies
    assert digests[0] == digests[1]
