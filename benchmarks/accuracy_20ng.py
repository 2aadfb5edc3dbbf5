"""20 Newsgroups test accuracy: the textclf pipeline against the same model trained in memory.

`python benchmarks/accuracy_20ng.py [--epochs 8]` prepares the embedded 20 Newsgroups data and,
in one run, trains the seed architecture (seq 100, vocabulary 20k, Embedding 300, Conv1D,
MaxPool, LSTM, GlobalMaxPool, softmax) twice on the same training rows, with the same seed,
epochs and early stopping:
  (a) in memory: Keras `TextVectorization` (lowercase, punctuation to spaces, whitespace split)
      adapted on the training texts, `model.fit` on tensors;
  (b) textclf: `textclf preprocess` (the same normalization via `--strip_punctuation`) ->
      `textclf train` -> `textclf score` on the official test split through the SavedModel.
The split is the pipeline's own (Fingerprint64 of the text, 10% eval), applied to (a) too, so the
only difference is the pipeline. With `--family tfidf` (or `both`), the linear family as well:
  (c) textclf: `textclf preprocess --features sequence,tfidf` (unigrams + bigrams, top 100k,
      min count 2) -> `textclf train --architecture tfidf_linear` -> `textclf score`;
  (d) scikit-learn's TfidfVectorizer (the same n-grams, top 100k, min count 2) + LinearSVC on the
      same training rows (the reference; `pip install -e '.[bench]'`);
with the targets: (c) >= 0.85, (c) >= (d) - 0.01, and (c) >= 0.8319 (TF-IDF + LR, Yao et al.
2019). Prints the test accuracies. Not a test.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

SEQUENCE_LENGTH, MAX_TOKENS = 100, 20_000


def in_memory(train_path: str, test_path: str, epochs: int, seed: int) -> dict:
    import keras
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf

    from transforms.corpus_io import split_of
    from transforms.model import ModelSettings, build_model, choose_head

    keras.utils.set_random_seed(seed)
    train = pq.read_table(train_path)
    test = pq.read_table(test_path)
    is_eval = split_of(train.column("text").combine_chunks(), 0.1)
    texts = np.array(train.column("text").to_pylist(), dtype=object)
    names = sorted(set(train.column("label").to_pylist()))
    labels = np.array([names.index(v) for v in train.column("label").to_pylist()])
    vectorize = keras.layers.TextVectorization(
        max_tokens=MAX_TOKENS + 2,
        output_sequence_length=SEQUENCE_LENGTH,
        standardize=lambda x: tf.strings.regex_replace(tf.strings.lower(x), r"[\pP\pS]", " "),
    )
    vectorize.adapt(texts[~is_eval])
    ids = lambda t: vectorize(tf.constant(t)).numpy()  # noqa: E731
    model = build_model(
        SEQUENCE_LENGTH,
        vectorize.vocabulary_size(),
        len(names),
        ModelSettings(),
        choose_head(False),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        ids(texts[~is_eval]),
        labels[~is_eval],
        epochs=epochs,
        batch_size=64,
        verbose=2,
        validation_data=(ids(texts[is_eval]), labels[is_eval]),
        callbacks=[keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)],
    )
    test_labels = np.array([names.index(v) for v in test.column("label").to_pylist()])
    predicted = model.predict(ids(test.column("text").to_pylist()), verbose=0).argmax(axis=1)
    return {
        "accuracy": float((predicted == test_labels).mean()),
        "seconds": time.perf_counter() - start,
    }


NGRAM_MAX, TFIDF_MAX_TOKENS, TFIDF_MIN_FREQUENCY = 2, 100_000, 2
PUBLISHED_TFIDF_LR = 0.8319  # Yao et al. 2019 (TextGCN), TF-IDF + LR on 20NG


def sklearn_reference(train_path: str, test_path: str) -> dict:
    """TfidfVectorizer (1-2 grams, top 100k, min_df 2) + LinearSVC on the pipeline's train rows."""
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    from transforms.corpus_io import split_of

    train, test = pq.read_table(train_path), pq.read_table(test_path)
    is_eval = split_of(train.column("text").combine_chunks(), 0.1)
    texts = np.array(train.column("text").to_pylist(), dtype=object)[~is_eval]
    labels = np.array(train.column("label").to_pylist())[~is_eval]
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(
        ngram_range=(1, NGRAM_MAX), max_features=TFIDF_MAX_TOKENS, min_df=TFIDF_MIN_FREQUENCY
    )
    model = LinearSVC().fit(vectorizer.fit_transform(texts), labels)
    predicted = model.predict(vectorizer.transform(test.column("text").to_pylist()))
    truth = np.array(test.column("label").to_pylist())
    return {
        "accuracy": float((predicted == truth).mean()),
        "seconds": time.perf_counter() - start,
    }


def pipeline(
    train_path: str,
    test_path: str,
    work: str,
    epochs: int,
    seed: int,
    architecture: str = "seed",
    train_flags: tuple[str, ...] = (),
) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cli = [sys.executable, "-m", "pipeline.cli"]
    start = time.perf_counter()
    work = f"{work}/{architecture}"
    tfidf = architecture != "seed"
    features = (
        ["--features", "sequence,tfidf", "--ngram_max", str(NGRAM_MAX),
         "--tfidf_max_tokens", str(TFIDF_MAX_TOKENS),
         "--tfidf_min_frequency", str(TFIDF_MIN_FREQUENCY)]
        if tfidf else []
    )  # fmt: skip
    steps = [
        [
            "preprocess",
            "--input",
            train_path,
            "--output_dir",
            f"{work}/data",
            "--sequence_length",
            str(SEQUENCE_LENGTH),
            "--max_tokens",
            str(MAX_TOKENS),
            "--strip_punctuation",
            *features,
        ],
        [
            "train",
            "--data_dir",
            f"{work}/data",
            "--model_dir",
            f"{work}/model",
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
            "--architecture",
            architecture,
            *train_flags,
        ],
        [
            "score",
            "--model_dir",
            f"{work}/model",
            "--input",
            test_path,
            "--output",
            f"{work}/scores",
            "--text_column",
            "text",
        ],
    ]
    for step in steps:
        subprocess.run(cli + step, check=True, cwd=ROOT)
    scored = pq.read_table(glob.glob(f"{work}/scores/part-*.parquet"))
    hits = pc.equal(scored.column("label"), scored.column("predicted_label"))
    return {
        "accuracy": pc.mean(pc.cast(hits, "int8")).as_py(),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="seed model epochs (default 8)")
    parser.add_argument(
        "--linear_epochs", type=int, default=20, help="tfidf_linear epochs (default 20)"
    )
    parser.add_argument(
        "--hidden_units",
        type=int,
        default=0,
        help="tfidf_linear: one hidden ReLU layer of this size (default 0: none); with it the "
        "learning rate is 0.003 and dropout 0.5",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--family", choices=("seed", "tfidf", "both"), default="seed")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="textclf-acc-")
    from pipeline import datasets

    data = datasets.prepare("20newsgroups", os.path.join(work, "20ng"))
    train, test = data["train"]["path"], data["test"]["path"]
    print(f"\n20 Newsgroups bydate test accuracy ({data['test']['rows']} posts)", flush=True)
    if args.family in ("seed", "both"):
        b = pipeline(train, test, work, args.epochs, args.seed)
        a = in_memory(train, test, args.epochs, args.seed)
        print(f"seed model, {args.epochs} epochs max, early stopping patience 2")
        print(
            f"(a) in-memory Keras TextVectorization + model.fit   {a['accuracy']:.4f}"
            f"   ({a['seconds']:.0f}s training)"
        )
        print(
            f"(b) textclf preprocess -> train -> score            {b['accuracy']:.4f}"
            f"   ({b['seconds']:.0f}s all three stages)"
        )
        print(f"b - a = {b['accuracy'] - a['accuracy']:+.4f}  (target >= 0)", flush=True)
    if args.family in ("tfidf", "both"):
        hidden = (
            ("--hidden_units", str(args.hidden_units), "--dropout", "0.5",
             "--learning_rate", "0.003", "--early_stopping_patience", "3")
            if args.hidden_units else ()
        )  # fmt: skip
        c = pipeline(train, test, work, args.linear_epochs, args.seed, "tfidf_linear", hidden)
        d = sklearn_reference(train, test)
        print(
            f"TF-IDF 1-{NGRAM_MAX} grams, top {TFIDF_MAX_TOKENS}, min count {TFIDF_MIN_FREQUENCY}"
            + (f", hidden layer {args.hidden_units}" if args.hidden_units else ", linear head")
        )
        print(
            f"(c) textclf tfidf_linear: preprocess -> train -> score  {c['accuracy']:.4f}"
            f"   ({c['seconds']:.0f}s all three stages)"
        )
        print(
            f"(d) scikit-learn TfidfVectorizer + LinearSVC            {d['accuracy']:.4f}"
            f"   ({d['seconds']:.0f}s)"
        )
        print(f"c >= 0.85: {c['accuracy'] >= 0.85}")
        print(f"c - d = {c['accuracy'] - d['accuracy']:+.4f}  (target >= -0.01)")
        print(
            f"c - published TF-IDF+LR {PUBLISHED_TFIDF_LR} = "
            f"{c['accuracy'] - PUBLISHED_TFIDF_LR:+.4f}  (target >= 0)"
        )


if __name__ == "__main__":
    main()
