"""Scoring throughput: `textclf score` against the model's own limit and against per-row RunInference.

`python benchmarks/score_bench.py --rows 200000` builds one Parquet corpus and one model with the
seed architecture's sizes (sequence 100, vocabulary 20k, Embedding 300 -> Conv1D -> MaxPool -> LSTM
-> GlobalMaxPool -> Dense(3); untrained, the cost is the same), then measures rows/s of
  (a) the SavedModel's serving signature called in-process over the same texts, `--batch_size` rows
      per call: the limit for this machine;
  (b) `pipeline.score.score(...)` on the default in-process runner: Parquet in, Parquet out;
  (c) the usual alternative: ReadFromParquet (one dict per row) -> RunInference with textclf's
      public ModelHandler (transforms.scoring.TextclfModelHandler: the same signature, one call per
      batch of RunInference's BatchElements, up to --batch_size) -> WriteToParquet;
and prints them with b/a, b/c and the per-row cost beyond the model call (1/rate - 1/rate_a).
Then it scores the corpus at 1x and `--rss_multiplier`x rows, each in a fresh subprocess, and prints
the peak RSS of each. Not a test: nothing here asserts; the targets are printed beside the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from transforms.contracts import (  # noqa: E402
    OUT_PROBABILITIES,
    PREDICTED_LABEL_COLUMN,
    PROBABILITIES_COLUMN,
    SAVED_MODEL_DIR,
    SCORE_COLUMN,
    SERVING_INPUT,
    SERVING_SIGNATURE,
)

SEQUENCE_LENGTH = 100
VOCAB_SIZE = 20_000
CLASSES = ("alpha", "beta", "gamma")
TEXT_COLUMN = "text"
ROW_GROUP_ROWS = 10_000


def build_corpus(path: str, rows: int, seed: int = 0) -> None:
    """Synthetic documents of 40-160 words over a 30k-word Zipf-ish vocabulary."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(30_000)])
    writer = None
    for start in range(0, rows, ROW_GROUP_ROWS):
        n = min(ROW_GROUP_ROWS, rows - start)
        lengths = rng.integers(40, 160, n)
        ids = np.minimum(rng.zipf(1.3, lengths.sum()), len(words)) - 1
        tokens = words[ids]
        ends = np.cumsum(lengths)
        texts = [" ".join(tokens[e - k : e]) for e, k in zip(ends, lengths, strict=True)]
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + n), pa.int64()),
                TEXT_COLUMN: pa.array(texts, pa.string()),
                "source": pa.array(rng.choice(["web", "mail", "chat"], n)),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    writer.close()


def build_model(model_dir: str, corpus: str, architecture: str) -> None:
    from tests.model_fixtures import build_test_model

    sample = pq.ParquetFile(corpus).read_row_group(0).column(TEXT_COLUMN).to_pylist()[:5000]
    labels = [CLASSES[i % len(CLASSES)] for i in range(len(sample))]
    build_test_model(
        model_dir,
        sample,
        labels,
        architecture=architecture,
        vocab_size=VOCAB_SIZE,
        sequence_length=SEQUENCE_LENGTH,
        epochs=0,
        model_version="bench",
    )


def in_process(model_dir: str, corpus: str, batch_size: int) -> float:
    """(a): rows/s of the bare signature over the corpus texts, already in memory."""
    import tensorflow as tf

    signature = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    texts = pq.read_table(corpus, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()
    signature(**{SERVING_INPUT: tf.constant(texts[:batch_size])})  # warm-up: trace, allocate
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        signature(**{SERVING_INPUT: tf.constant(texts[i : i + batch_size])})[
            OUT_PROBABILITIES
        ].numpy()
    return len(texts) / (time.perf_counter() - start)


def textclf_score(model_dir: str, corpus: str, out: str, batch_size: int) -> float:
    """(b): rows/s of the scoring stage's library entry, end to end (pipeline start included)."""
    from pipeline.score import score

    start = time.perf_counter()
    stats = score(model_dir, [corpus], out, TEXT_COLUMN, batch_size=batch_size)
    return stats["rows_read"] / (time.perf_counter() - start)


def _row_output(keyed):
    row, result = keyed
    inference = result.inference
    out = dict(row)
    out.update(
        {
            PREDICTED_LABEL_COLUMN: inference[PREDICTED_LABEL_COLUMN],
            SCORE_COLUMN: inference[SCORE_COLUMN],
            PROBABILITIES_COLUMN: inference[PROBABILITIES_COLUMN].tolist(),
        }
    )
    return out


def run_inference_per_row(model_dir: str, corpus: str, out: str, batch_size: int) -> float:
    """(c): rows/s of ReadFromParquet -> RunInference(per-row elements) -> WriteToParquet."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import make_pipeline
    from transforms.scoring import TextclfModelHandler

    schema = pq.read_schema(corpus)
    schema = pa.schema(
        [
            *schema,
            pa.field(PREDICTED_LABEL_COLUMN, pa.string()),
            pa.field(SCORE_COLUMN, pa.float32()),
            pa.field(PROBABILITIES_COLUMN, pa.list_(pa.float32())),
        ]
    )
    handler = KeyedModelHandler(TextclfModelHandler(model_dir, max_batch_size=batch_size))
    rows = pq.read_metadata(corpus).num_rows
    start = time.perf_counter()
    p = make_pipeline(PipelineOptions([]))
    _ = (
        p
        | "Read" >> beam.io.ReadFromParquet(corpus)
        | "KeyByRow" >> beam.Map(lambda row: (row, row[TEXT_COLUMN]))
        | "RunInference" >> RunInference(handler)
        | "Format" >> beam.Map(_row_output)
        | "Write" >> beam.io.WriteToParquet(out, schema, file_name_suffix=".parquet")
    )
    p.run().wait_until_finish()
    return rows / (time.perf_counter() - start)


RSS_CHILD = """
import os, resource, sys, time
sys.path.insert(0, {root!r})
from pipeline.score import score
start = time.perf_counter()
stats = score({model!r}, [{pattern!r}], {out!r}, {text!r}, batch_size={batch})
print(stats["rows_read"], time.perf_counter() - start,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(model_dir: str, pattern: str, out: str, batch_size: int) -> tuple[int, float, float]:
    """Score `pattern` in a fresh interpreter; (rows, seconds, peak RSS in MiB) of that process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = RSS_CHILD.format(
        root=root, model=model_dir, pattern=pattern, out=out, text=TEXT_COLUMN, batch=batch_size
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    rows, seconds, rss_kib = result.stdout.split()[-3:]
    return int(rows), float(seconds), int(rss_kib) / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--rss_multiplier", type=int, default=10)
    parser.add_argument("--skip_rss", action="store_true")
    parser.add_argument(
        "--architecture",
        choices=["seed", "tiny"],
        default="seed",
        help="seed: the seed model's sizes (the model dominates); tiny: Embedding(8) -> pool -> "
        "Dense, so the pipelines' own per-row costs dominate",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="best of N for (a), (b), (c): the machine is shared"
    )
    parser.add_argument("--workdir", default=None, help="kept if given; else a temp dir")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or tempfile.mkdtemp(prefix="score_bench-")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, "corpus.parquet")
    model_dir = os.path.join(work, "model")
    t0 = time.perf_counter()
    build_corpus(corpus, args.rows)
    build_model(model_dir, corpus, args.architecture)
    print(
        f"corpus {args.rows} rows, {args.architecture} model: built in {time.perf_counter() - t0:.1f}s"
    )

    def best(measure, *rest):
        return max(measure(model_dir, corpus, *rest) for _ in range(args.repeats))

    a = best(in_process, args.batch_size)
    b = best(textclf_score, os.path.join(work, "scores_b"), args.batch_size)
    c = best(run_inference_per_row, os.path.join(work, "scores_c", "part"), args.batch_size)

    def overhead_us(rate):
        return (1 / rate - 1 / a) * 1e6

    print()
    print(
        f"rows={args.rows} batch_size={args.batch_size} model={args.architecture} "
        f"cpus={os.cpu_count()} best of {args.repeats}"
    )
    print(f"{'path':<52}{'rows/s':>10}{'overhead us/row':>18}")
    print(f"{'(a) signature in-process (limit)':<52}{a:>10.0f}{'-':>18}")
    print(f"{'(b) textclf score, in-process runner':<52}{b:>10.0f}{overhead_us(b):>18.1f}")
    print(f"{'(c) ReadFromParquet + per-row RunInference':<52}{c:>10.0f}{overhead_us(c):>18.1f}")
    print(f"b/a = {b / a:.2f}  (target >= 0.85)")
    print(f"b/c = {b / c:.2f}  (target >= 5)")
    ob, oc = overhead_us(b), overhead_us(c)
    ratio = f"{oc / ob:.1f}" if ob > 0 else "inf (b at the limit)"
    print(f"per-row overhead beyond the model call: b {ob:.1f} us, c {oc:.1f} us, c/b {ratio}")

    if not args.skip_rss:
        many = os.path.join(work, "many")
        os.makedirs(many, exist_ok=True)
        for i in range(args.rss_multiplier):
            target = os.path.join(many, f"corpus-{i:03d}.parquet")
            if not os.path.exists(target):
                os.link(corpus, target)
        one = peak_rss(model_dir, corpus, os.path.join(work, "rss_1x"), args.batch_size)
        ten = peak_rss(
            model_dir,
            os.path.join(many, "*.parquet"),
            os.path.join(work, "rss_nx"),
            args.batch_size,
        )
        print()
        print(f"{'peak RSS, fresh process':<30}{'rows':>10}{'seconds':>10}{'MiB':>10}")
        print(f"{'1x':<30}{one[0]:>10}{one[1]:>10.1f}{one[2]:>10.0f}")
        print(f"{f'{args.rss_multiplier}x':<30}{ten[0]:>10}{ten[1]:>10.1f}{ten[2]:>10.0f}")
        print(f"{args.rss_multiplier}x/1x RSS = {ten[2] / one[2]:.2f}  (target <= 1.2)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
