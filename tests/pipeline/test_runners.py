"""The Beam stages give identical outputs on every runner this machine can run.

Preprocess and score run once per runner (module-scoped fixtures) on small corpora written here:
Beam's DirectRunner in this process, the DirectRunner with two worker processes (every DoFn, side
input and transform graph is pickled across a process boundary), and the PortableRunner with an
embedded job server and a LOOPBACK environment (the Fn API protocol that Flink, Spark and
Dataflow Runner v2 speak). The outputs are compared as multisets: sharding and order may differ
between runners, content may not. Each runner's wall time is printed (`pytest -s`) for
docs/RUNNERS.md.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import preprocess, score
from transforms.contracts import (
    DEAD_LETTER_PREFIX,
    LABEL_VOCAB_NAME,
    SCORED_PART_PREFIX,
    SPLITS,
    STATS_FILE,
    SUCCESS_FILE,
    TFRECORD_SUFFIX,
    TOKEN_VOCAB_NAME,
    TRANSFORM_FN_DIR,
)

pytestmark = pytest.mark.slow

RUNNERS = {
    "direct": [],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
WORDS = "good bad great boring fun awful film movie plot actor scene ending music dull".split()
LABELS = ["pos", "neg", "meh"]
WALL_SECONDS: dict[str, dict[str, float]] = {"preprocess": {}, "score": {}}


def text_of(i: int) -> str:
    """Deterministic, varied texts: 3-11 words, a few repeats so the vocabulary has ties."""
    return " ".join(WORDS[(i * k + k * k) % len(WORDS)] for k in range(1, 4 + i % 9))


def run_stage(stage: str, runner: str, main, argv: list[str]) -> None:
    """Run a stage's CLI entry in this process; it must exit 0. Records the wall time."""
    start = time.perf_counter()
    code = main(argv)
    WALL_SECONDS[stage][runner] = round(time.perf_counter() - start, 1)
    print(f"\n{stage} on {runner}: {WALL_SECONDS[stage][runner]}s")
    assert code == 0, f"{stage} exited {code} on the {runner} runner"


# ---------------------------------------------------------------------------------------------
# preprocess


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """300 Parquet rows in three row groups plus a 61-row CSV; 4 of the rows are dead letters."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [{"id": i, "text": text_of(i), "label": LABELS[i % 3]} for i in range(300)]
    rows[5]["text"] = None  # text is null
    rows[17]["text"] = "   "  # text is empty
    rows[23]["label"] = None  # label is missing
    parquet = str(root / "corpus.parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=100)
    extra = str(root / "extra.csv")
    with open(extra, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows([i, text_of(i), LABELS[i % 3]] for i in range(300, 360))
        writer.writerow([998, "", "pos"])  # text is empty
    return [parquet, extra]


@pytest.fixture(scope="module")
def preprocessed(corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("preprocessed")
    outs = {}
    for runner, beam_args in RUNNERS.items():
        out = str(root / runner)
        argv = ["--input", *corpus, "--output_dir", out, "--text_column", "text",
                "--label_column", "label", "--sequence_length", "12", *beam_args]  # fmt: skip
        run_stage("preprocess", runner, preprocess.main, argv)
        outs[runner] = out
    return outs


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _examples(out: str, split: str) -> Counter:
    """The split's tf.Examples, decoded to hashable (feature, values) tuples, as a multiset."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(out, f"{split}-*{TFRECORD_SUFFIX}")))
    assert files, f"no {split} TFRecords in {out}"
    decoded = Counter()
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        features = []
        for key, feature in sorted(example.features.feature.items()):
            kind = feature.WhichOneof("kind")
            features.append((key, kind, tuple(getattr(feature, kind).value)))
        decoded[tuple(features)] += 1
    return decoded


def _dead_letters(out: str) -> Counter:
    lines = Counter()
    for path in glob.glob(os.path.join(out, f"{DEAD_LETTER_PREFIX}-*.jsonl")):
        with open(path) as f:
            lines.update(json.dumps(json.loads(line), sort_keys=True) for line in f if line.strip())
    return lines


def _row_stats(out: str) -> dict:
    with open(os.path.join(out, STATS_FILE)) as f:
        stats = json.load(f)
    for timing in ("seconds", "docs_per_second"):
        stats.pop(timing, None)
    return stats


def test_preprocess_finishes_on_every_runner(preprocessed):
    for runner, out in preprocessed.items():
        assert os.path.exists(os.path.join(out, SUCCESS_FILE)), runner
        stats = _row_stats(out)
        assert stats["rows_accounted"], (runner, stats)
        assert stats["rows_read"] == 361, (runner, stats)
        assert stats["rows_dead_lettered"] == 4, (runner, stats)


def test_preprocess_vocabularies_are_identical_across_runners(preprocessed):
    for asset in (TOKEN_VOCAB_NAME, LABEL_VOCAB_NAME):
        contents = {
            runner: _read_bytes(os.path.join(out, TRANSFORM_FN_DIR, "assets", asset))
            for runner, out in preprocessed.items()
        }
        assert contents["direct"], f"{asset} is empty"
        for runner, content in contents.items():
            assert content == contents["direct"], f"{asset} differs on the {runner} runner"


def test_preprocess_tfrecords_are_the_same_multiset_per_split_across_runners(preprocessed):
    for split in SPLITS:
        expected = _examples(preprocessed["direct"], split)
        assert sum(expected.values()) > 0
        for runner, out in preprocessed.items():
            assert _examples(out, split) == expected, f"{split} records differ on {runner}"


def test_preprocess_stats_are_identical_across_runners(preprocessed):
    expected = _row_stats(preprocessed["direct"])
    for runner, out in preprocessed.items():
        assert _row_stats(out) == expected, runner


def test_preprocess_dead_letters_are_the_same_multiset_across_runners(preprocessed):
    expected = _dead_letters(preprocessed["direct"])
    assert sum(expected.values()) == 4
    for runner, out in preprocessed.items():
        assert _dead_letters(out) == expected, runner


# ---------------------------------------------------------------------------------------------
# score


@pytest.fixture(scope="module")
def score_inputs(tmp_path_factory) -> tuple[str, list[str]]:
    """A tiny real model and two Parquet files (250 rows, 3 of them unusable text)."""
    from tests.model_fixtures import build_test_model

    root = tmp_path_factory.mktemp("score")
    model_dir = str(root / "model")
    build_test_model(model_dir, [text_of(i) for i in range(60)],
                     [LABELS[i % 3] for i in range(60)], epochs=2)  # fmt: skip
    texts = [text_of(i) for i in range(250)]
    texts[3], texts[40], texts[200] = None, "", "  "
    table = pa.table({"id": pa.array(range(250), pa.int64()), "body": pa.array(texts, pa.string()),
                      "rating": pa.array([i / 4 for i in range(250)], pa.float64())})  # fmt: skip
    files = []
    for name, part in (("a", table.slice(0, 150)), ("b", table.slice(150))):
        path = str(root / f"{name}.parquet")
        pq.write_table(part, path, row_group_size=50)
        files.append(path)
    return model_dir, files


@pytest.fixture(scope="module")
def scored(score_inputs, tmp_path_factory) -> dict[str, str]:
    model_dir, files = score_inputs
    root = tmp_path_factory.mktemp("scored")
    outs = {}
    for runner, beam_args in RUNNERS.items():
        out = str(root / runner)
        argv = ["--model_dir", model_dir, "--input", *files, "--output", out,
                "--text_column", "body", "--id_column", "id", "--batch_size", "64", *beam_args]  # fmt: skip
        run_stage("score", runner, score.main, argv)
        outs[runner] = out
    return outs


def _parquet_rows(out: str, prefix: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(out, f"{prefix}-*.parquet")))
    assert files, f"no {prefix} Parquet in {out}"
    rows = pa.concat_tables(pq.read_table(f) for f in files).to_pylist()
    return sorted(rows, key=lambda row: row["id"])


def test_score_rows_are_identical_across_runners(scored):
    expected = _parquet_rows(scored["direct"], SCORED_PART_PREFIX)
    assert len(expected) == 247
    for runner, out in scored.items():
        assert os.path.exists(os.path.join(out, SUCCESS_FILE)), runner
        assert _parquet_rows(out, SCORED_PART_PREFIX) == expected, runner


def test_score_dead_letters_and_stats_are_identical_across_runners(scored):
    expected_dead = _parquet_rows(scored["direct"], DEAD_LETTER_PREFIX)
    assert [row["id"] for row in expected_dead] == [3, 40, 200]
    expected_stats = _row_stats(scored["direct"])
    for runner, out in scored.items():
        assert _parquet_rows(out, DEAD_LETTER_PREFIX) == expected_dead, runner
        stats = _row_stats(out)
        assert (stats["rows_read"], stats["rows_scored"], stats["rows_dead_lettered"]) == (
            250, 247, 3), runner  # fmt: skip
        assert stats == expected_stats, runner
