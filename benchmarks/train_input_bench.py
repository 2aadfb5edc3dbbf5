"""Training input speed: `textclf train`'s tf.data input against `model.fit` on in-memory arrays.

`python benchmarks/train_input_bench.py [--family seed|tfidf|both] [--repeats 3] [--skip_fit]`
preprocesses the embedded 20 Newsgroups training split once (`--features sequence,tfidf`, the
settings of benchmarks/accuracy_20ng.py) into `--cache_dir`, then per model family, in one process:
  (a) tfrecords: the train and eval datasets `textclf train` builds (pipeline/train.py's
      `_datasets`: transforms/training_data.py's `make_dataset` over the gzipped TFRecords,
      shuffled with the seed and shuffle buffer) and its compiled model (`_compiled_model`);
  (b) in memory: the same rows read once from the same TFRecords into numpy arrays (the TF-IDF
      matrix as a scipy CSR matrix), fitted by `model.fit(x, y, batch_size=...)` on a second
      model built and compiled the same way.
Both fit with validation on the eval split. One warm-up epoch each (tracing), then `--repeats`
epochs of (a) and (b) interleaved (a, b, a, b, ...); the best of each is reported as examples/s
over the training rows (the validation pass inside the epoch included), and (a)/(b), target
>= 0.95.
Then where (a)'s input time goes (alone with `--skip_fit`): one epoch of the training input
iterated inside TensorFlow with no model, its stages added one by one (read the gzipped files
through the interleave, + shuffle, + batch, + parse = `make_dataset` itself), beside the same
files read uncompressed (written once to the cache: decompression's share) and read one after
another without the interleave (its share); best of `--repeats`, interleaved. The input keeps up
when its examples/s is well above the model's. Not a test.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402  (after the environment above)
import tensorflow as tf  # noqa: E402

# benchmarks/accuracy_20ng.py's preprocess settings: one data dir serves both families.
PREPROCESS_FLAGS = (
    "--sequence_length", "100", "--max_tokens", "20000", "--strip_punctuation",
    "--features", "sequence,tfidf", "--ngram_max", "2", "--tfidf_max_tokens", "100000",
    "--tfidf_min_frequency", "2",
)  # fmt: skip
FAMILIES = {"seed": "seed", "tfidf": "tfidf_linear"}


def prepared_data_dir(cache_dir: str) -> str:
    """`<cache_dir>/data`: the preprocess output, made on the first run and reused after."""
    from transforms.contracts import SUCCESS_FILE

    data_dir = os.path.join(cache_dir, "data")
    if os.path.exists(os.path.join(data_dir, SUCCESS_FILE)):
        return data_dir
    from pipeline import datasets

    splits = datasets.prepare("20newsgroups", os.path.join(cache_dir, "20ng"))
    print(f"preprocessing 20 Newsgroups train ({splits['train']['rows']} posts) into {data_dir}")
    cli = [sys.executable, "-m", "pipeline.cli", "preprocess"]
    subprocess.run(
        [*cli, "--input", splits["train"]["path"], "--output_dir", data_dir, *PREPROCESS_FLAGS],
        check=True,
        cwd=ROOT,
    )
    return data_dir


def uncompressed_copy(data_dir: str, cache_dir: str) -> str:
    """The train split's TFRecords without GZIP (same names), for the decompression's share."""
    raw = os.path.join(cache_dir, "train_uncompressed")
    if not os.path.isdir(raw):
        os.makedirs(raw + ".tmp", exist_ok=True)
        for path in sorted(glob.glob(os.path.join(data_dir, "train-*.tfrecord.gz"))):
            name = os.path.basename(path).removesuffix(".gz")
            with gzip.open(path, "rb") as src, open(os.path.join(raw + ".tmp", name), "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(raw + ".tmp", raw)
    return os.path.join(raw, "train-*.tfrecord")


class EpochTimer(keras.callbacks.Callback):
    """Each epoch's wall time, and the validation pass's share of it."""

    def __init__(self):
        super().__init__()
        self.epochs: list[tuple[float, float]] = []  # (epoch seconds, validation seconds)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._validation = 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self._validation += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((time.perf_counter() - self._start, self._validation))


def in_memory_arrays(data, opts, head):
    """(x, y) of a split, read once from its TFRecords in file order through `make_dataset`
    (unshuffled): token ids int64[n, seq], or the TF-IDF matrix as scipy CSR [n, tfidf_dim]."""
    import numpy as np
    import scipy.sparse

    from pipeline import train
    from transforms.training_data import make_dataset

    def arrays(split: str):
        dataset = make_dataset(
            data.split_pattern(split),
            data.tft_output.transformed_feature_spec(),
            train._target_key(head),
            opts.batch_size,
            one_hot_depth=data.num_classes if head.one_hot_targets else None,
            tfidf_dim=train._tfidf_dim(opts, data),
        )
        xs, ys = [], []
        for x, y in dataset:
            if isinstance(x, tf.SparseTensor):
                indices = x.indices.numpy()
                x = scipy.sparse.csr_matrix(
                    (x.values.numpy(), (indices[:, 0], indices[:, 1])), shape=x.dense_shape.numpy()
                )
            else:
                x = x.numpy()
            xs.append(x)
            ys.append(y.numpy())
        stack = scipy.sparse.vstack if scipy.sparse.issparse(xs[0]) else np.concatenate
        x = stack(xs)
        return (x.tocsr() if scipy.sparse.issparse(x) else x), np.concatenate(ys)

    return arrays(train.TRAIN), arrays(train.EVAL)


def fit_epoch(model, timer, fit_kwargs: dict) -> tuple[float, float]:
    model.fit(**fit_kwargs, epochs=1, callbacks=[timer], verbose=0)
    return timer.epochs[-1]


def training_setup(family: str, data_dir: str, work: str, overrides: dict):
    """(opts, data, head) as `textclf train --architecture <family>` resolves them."""
    from pipeline import train

    opts = train.settings_from(
        data_dir, os.path.join(work, f"model-{family}"), architecture=FAMILIES[family], **overrides
    )
    opts = train.resolved_defaults(opts)
    data, head = train._check_inputs(opts)
    return opts, data, head


def compare_fit(opts, data, head, repeats: int) -> dict:
    """(a) tfrecords vs (b) in memory: best (epoch, validation) seconds of each, interleaved."""
    from pipeline import train

    keras.utils.set_random_seed(opts.seed)
    datasets = train._datasets(opts, data, head)
    (x, y), (x_eval, y_eval) = in_memory_arrays(data, opts, head)
    keras.utils.set_random_seed(opts.seed)
    model_a = train._compiled_model(opts, data, head)
    keras.utils.set_random_seed(opts.seed)
    model_b = train._compiled_model(opts, data, head)
    runs = {
        "tfrecords": (
            model_a,
            {"x": datasets.train, "validation_data": datasets.eval, "shuffle": False},
        ),
        "in_memory": (
            model_b,
            {
                "x": x,
                "y": y,
                "batch_size": opts.batch_size,
                "validation_data": (x_eval, y_eval),
                "shuffle": True,
            },
        ),
    }
    timers = {name: EpochTimer() for name in runs}
    for name, (model, kwargs) in runs.items():  # warm-up: tracing, the first shuffle buffer
        fit_epoch(model, timers[name], kwargs)
    best = {name: (float("inf"), 0.0) for name in runs}
    for _ in range(repeats):
        for name, (model, kwargs) in runs.items():
            best[name] = min(best[name], fit_epoch(model, timers[name], kwargs))
    return best


# Single records are counted in groups (a count per record costs more than reading it).
COUNT_GROUP = 1024
UNBATCHED = ("read + GZIP, no interleave", "read, uncompressed", "read + GZIP", "+ shuffle")


def input_stages(opts, data, head, raw_pattern: str) -> dict:
    """The training input as `make_dataset` builds it, stage by stage (the last is make_dataset
    itself); the unbatched stages are counted in groups of COUNT_GROUP records."""
    from pipeline import train
    from transforms.training_data import make_dataset

    pattern = data.split_pattern(train.TRAIN)

    def read(file_pattern: str, compression: str):
        files = tf.data.Dataset.list_files(file_pattern, shuffle=True, seed=opts.seed)
        return files.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
            cycle_length=4,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def shuffled(records):
        return records.shuffle(opts.shuffle_buffer, seed=opts.seed, reshuffle_each_iteration=True)

    return {
        UNBATCHED[0]: tf.data.TFRecordDataset(
            sorted(tf.io.gfile.glob(pattern)), compression_type="GZIP"
        ),
        UNBATCHED[1]: read(raw_pattern, ""),
        UNBATCHED[2]: read(pattern, "GZIP"),
        UNBATCHED[3]: shuffled(read(pattern, "GZIP")),
        "+ batch": shuffled(read(pattern, "GZIP")).batch(opts.batch_size),
        "+ parse + prefetch (make_dataset)": make_dataset(
            pattern,
            data.tft_output.transformed_feature_spec(),
            train._target_key(head),
            opts.batch_size,
            shuffle=True,
            shuffle_buffer=opts.shuffle_buffer,
            seed=opts.seed,
            one_hot_depth=data.num_classes if head.one_hot_targets else None,
            tfidf_dim=train._tfidf_dim(opts, data),
        ),
    }


def time_iteration(dataset) -> float:
    """Seconds to run one epoch of `dataset` through, counted inside TensorFlow (a Python loop
    over 10k single records would time Python's per-element overhead instead)."""
    start = time.perf_counter()
    dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy()
    return time.perf_counter() - start


def time_stages(datasets: dict, repeats: int) -> dict:
    """Best of `repeats` seconds per stage, interleaved."""
    datasets = {
        name: dataset.batch(COUNT_GROUP) if name in UNBATCHED else dataset
        for name, dataset in datasets.items()
    }
    for dataset in datasets.values():  # warm-up: page cache, tracing of the parse
        time_iteration(dataset)
    best = {name: float("inf") for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            best[name] = min(best[name], time_iteration(dataset))
    return best


def report(family: str, opts, data, fit: dict | None, stages: dict, repeats: int) -> None:
    from pipeline import train

    rows = data.rows(train.TRAIN)
    print(
        f"\n{family} ({FAMILIES[family]}): {rows} train rows, {data.rows(train.EVAL)} eval rows, "
        f"batch {opts.batch_size}, shuffle buffer {opts.shuffle_buffer}"
    )
    train_s = None
    if fit:
        a_s, a_val = fit["tfrecords"]
        b_s, b_val = fit["in_memory"]
        train_s = a_s - a_val
        print(f"epochs with validation, best of {repeats} after a warm-up, interleaved:")
        print(
            f"(a) tfrecords (textclf train's input)  {a_s:7.2f} s/epoch  {rows / a_s:8.0f} ex/s"
            f"   (validation {a_val:.2f} s)"
        )
        print(
            f"(b) in-memory arrays, model.fit        {b_s:7.2f} s/epoch  {rows / b_s:8.0f} ex/s"
            f"   (validation {b_val:.2f} s)"
        )
        print(f"a/b = {b_s / a_s:.3f}x  (target >= 0.95)")
    print(
        f"input alone, one training epoch, no model (best of {repeats}, interleaved; records "
        f"before the batch counted in groups of {COUNT_GROUP}):"
    )
    previous = None
    for name, seconds in stages.items():
        step = "" if previous is None else f"  ({seconds - previous:+.3f} s)"
        print(f"  {name:36s} {seconds:7.3f} s  {rows / seconds:9.0f} ex/s{step}")
        previous = seconds if name in UNBATCHED[2:] or name == "+ batch" else None
    print(
        f"  GZIP decompression {stages['read + GZIP'] - stages['read, uncompressed']:+.3f} s, "
        f"interleave {stages['read + GZIP'] - stages['read + GZIP, no interleave']:+.3f} s"
    )
    full = stages["+ parse + prefetch (make_dataset)"]
    if train_s:
        print(
            f"input keeps up: {'yes' if full < train_s else 'NO'}; input alone "
            f"{rows / full:.0f} ex/s, the model's training steps {rows / train_s:.0f} ex/s (the "
            f"input is {100 * full / train_s:.1f}% of the training pass's time, run alone)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=(*FAMILIES, "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="measured epochs per path")
    parser.add_argument(
        "--skip_fit", action="store_true", help="only the input alone, no model (a minute)"
    )
    parser.add_argument(
        "--cache_dir",
        default="/tmp/textclf-train-input-bench",
        help="the preprocess output is written here once and reused",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="textclf train's default")
    parser.add_argument(
        "--shuffle_buffer", type=int, default=10_000, help="textclf train's default"
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    import tempfile

    data_dir = prepared_data_dir(args.cache_dir)
    raw_pattern = uncompressed_copy(data_dir, args.cache_dir)
    work = tempfile.mkdtemp(prefix="textclf-train-input-")
    overrides = {
        "batch_size": args.batch_size,
        "shuffle_buffer": args.shuffle_buffer,
        "seed": args.seed,
    }
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    families = FAMILIES if args.family == "both" else (args.family,)
    for family in families:
        opts, data, head = training_setup(family, data_dir, work, overrides)
        fit = None if args.skip_fit else compare_fit(opts, data, head, args.repeats)
        stages = time_stages(input_stages(opts, data, head, raw_pattern), args.repeats)
        report(family, opts, data, fit, stages, args.repeats)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
