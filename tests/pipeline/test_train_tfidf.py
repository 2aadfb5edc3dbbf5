"""`textclf train --architecture tfidf_linear` end to end: real `preprocess --features
sequence,tfidf` outputs of tiny corpora written here, real training, the real SavedModel loaded
back and fed raw text, `describe`, and the refusals (exit 2) before any training."""

import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import describe, preprocess, train
from pipeline.artifacts import PreprocessOutput
from pipeline.outputs import read_json
from tests.pipeline.test_train import SEQUENCE_LENGTH, _corpus, _eval_rows
from transforms.contracts import (
    CONFUSION_PNG,
    CURVES_PNG,
    EXIT_BAD_INPUT,
    F1_BARS_PNG,
    HISTORY_FILE,
    LABEL_KEY,
    LABELS_KEY,
    LABELS_TXT,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    OUT_LABEL,
    OUT_LABELS,
    OUT_NUM_TOKENS,
    OUT_OOV_TOKENS,
    OUT_PROBABILITIES,
    OUT_WINDOW_TOKENS,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    SUCCESS_FILE,
)
from transforms.model import DEFAULT_LEARNING_RATE, SEED, TFIDF_LINEAR
from transforms.training_data import make_dataset

pytestmark = pytest.mark.slow

TFIDF_MAX_TOKENS = 300


def _preprocess(tmp, name: str, multi_label: bool, features: str = "sequence,tfidf") -> str:
    corpus, out = str(tmp / f"{name}.csv"), str(tmp / f"{name}_data")
    _corpus(corpus, multi_label)
    argv = ["--input", corpus, "--output_dir", out, "--sequence_length", str(SEQUENCE_LENGTH)]
    argv += ["--max_tokens", "100", "--features", features]
    argv += ["--tfidf_max_tokens", str(TFIDF_MAX_TOKENS)]
    if multi_label:
        argv += ["--multi_label", "--label_delimiter", "|"]
    assert preprocess.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """A linear model with the defaults (learning rate, L2, no hidden layer), from the flags."""
    tmp = tmp_path_factory.mktemp("tfidf_single")
    data_dir = _preprocess(tmp, "single", multi_label=False)
    model_dir = str(tmp / "model")
    argv = ["--data_dir", data_dir, "--model_dir", model_dir, "--architecture", TFIDF_LINEAR]
    result = train.run_training(train.parse(argv + ["--epochs", "6", "--batch_size", "16"]))
    return data_dir, model_dir, result


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """Multi-label, with one small hidden layer."""
    tmp = tmp_path_factory.mktemp("tfidf_multi")
    data_dir = _preprocess(tmp, "multi", multi_label=True)
    model_dir = str(tmp / "model")
    settings = dict(architecture=TFIDF_LINEAR, hidden_units=8, threshold=0.4)
    result = train.run_training(
        train.settings_from(data_dir, model_dir, epochs=6, batch_size=16, **settings)
    )
    return data_dir, model_dir, result


def _serve(model_dir: str, texts: list[str]) -> dict:
    serve = tf.saved_model.load(os.path.join(model_dir, SAVED_MODEL_DIR)).signatures[
        SERVING_SIGNATURE
    ]
    return {k: v.numpy() for k, v in serve(**{SERVING_INPUT: tf.constant(texts)}).items()}


def _keras_on_tfrecords(data_dir: str, model, target_key: str) -> np.ndarray:
    """The in-memory Keras model on the eval TFRecords' TF-IDF matrix, in file order."""
    data = PreprocessOutput(data_dir)
    spec = data.tft_output.transformed_feature_spec()
    dataset = make_dataset(
        data.split_pattern("eval"), spec, target_key, 16, tfidf_dim=data.tfidf_dim
    )
    return model.predict(dataset.map(lambda x, y: x), verbose=0)


def test_linear_saved_model_on_raw_text_matches_keras_on_the_tfrecords(single):
    data_dir, model_dir, result = single
    ids, texts = _eval_rows(data_dir)
    assert len(texts) >= 5
    keras_probs = _keras_on_tfrecords(data_dir, result.model, LABEL_KEY)

    out = _serve(model_dir, texts)
    np.testing.assert_allclose(out[OUT_PROBABILITIES], keras_probs, atol=1e-5)
    labels = open(os.path.join(model_dir, LABELS_TXT)).read().split()
    assert [s.decode() for s in out[OUT_LABEL]] == [labels[i] for i in keras_probs.argmax(1)]
    # The input profile is the token window's, whichever features the model reads.
    lengths = [len(text.split()) for text in texts]
    assert out[OUT_NUM_TOKENS].tolist() == lengths
    assert out[OUT_WINDOW_TOKENS].tolist() == (ids > 0).sum(axis=1).tolist() == lengths
    assert out[OUT_OOV_TOKENS].tolist() == [0] * len(texts)


def test_linear_model_dir_holds_every_contract_file_and_learns_the_easy_corpus(single):
    data_dir, model_dir, result = single
    names = set(os.listdir(model_dir))
    expected = {SAVED_MODEL_DIR, LABELS_TXT, METRICS_FILE, HISTORY_FILE, MODEL_CARD_FILE}
    assert expected | {LOGS_DIR, CURVES_PNG, CONFUSION_PNG, SUCCESS_FILE} <= names

    metrics = read_json(os.path.join(model_dir, METRICS_FILE))
    assert metrics == result.metrics
    assert metrics["accuracy"] >= 0.9, metrics
    assert len(read_json(os.path.join(model_dir, HISTORY_FILE))["val_loss"]) == 6

    card = read_json(os.path.join(model_dir, MODEL_CARD_FILE))
    tfidf_dim = PreprocessOutput(data_dir).tfidf_dim
    assert tfidf_dim == TFIDF_MAX_TOKENS + 1
    assert card["architecture"] == card["model"]["architecture"] == TFIDF_LINEAR
    assert (card["model"]["l2"], card["model"]["hidden_units"]) == (1e-6, 0)
    assert card["training"]["learning_rate"] == DEFAULT_LEARNING_RATE[TFIDF_LINEAR] == 0.03
    assert [layer["output_shape"] for layer in card["layers"]] == [[None, tfidf_dim], [None, 3]]
    assert card["parameters"] == tfidf_dim * 3 + 3
    assert card["head"]["activation"] == "softmax"


def test_multi_label_linear_model_returns_every_class_over_threshold(multi):
    data_dir, model_dir, result = multi
    assert os.path.exists(os.path.join(model_dir, F1_BARS_PNG))
    card = read_json(os.path.join(model_dir, MODEL_CARD_FILE))
    assert (card["multi_label"], card["threshold"]) == (True, 0.4)
    assert (card["head"]["activation"], card["head"]["loss"]) == ("sigmoid", "binary_crossentropy")
    assert [layer["name"] for layer in card["layers"]] == ["tfidf", "hidden", "dropout", "head"]
    assert result.metrics["micro_f1"] >= 0.8, result.metrics

    _, texts = _eval_rows(data_dir)
    out = _serve(model_dir, texts)
    probs, labels = out[OUT_PROBABILITIES], out[OUT_LABELS]
    np.testing.assert_allclose(
        probs, _keras_on_tfrecords(data_dir, result.model, LABELS_KEY), atol=1e-5
    )
    names = open(os.path.join(model_dir, LABELS_TXT)).read().split()
    assert labels.shape == probs.shape == (len(texts), len(names))
    expected = np.where(probs >= 0.4, np.array(names, dtype=object), "")
    assert [[s.decode() for s in row] for row in labels] == expected.tolist()


def _refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert train.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_the_head_rules_refuse_the_same_pairings_for_the_linear_family(
    single, multi, tmp_path, capsys
):
    linear = ["--architecture", TFIDF_LINEAR, "--model_dir", str(tmp_path / "m")]
    err = _refused(["--data_dir", multi[0], *linear, "--activation", "softmax"], capsys)
    assert "co-occur" in err
    argv = ["--data_dir", single[0], *linear, "--activation", "softmax"]
    err = _refused(argv + ["--loss", "binary_crossentropy"], capsys)
    assert "refusing softmax with binary_crossentropy" in err
    assert not os.listdir(tmp_path)


def test_tfidf_linear_on_a_sequence_only_output_exits_2_saying_how_to_preprocess(tmp_path, capsys):
    data_dir = _preprocess(tmp_path, "plain", multi_label=False, features="sequence")
    model_dir = str(tmp_path / "m")
    argv = ["--data_dir", data_dir, "--model_dir", model_dir, "--architecture", TFIDF_LINEAR]
    err = _refused(argv, capsys)
    assert err.startswith("textclf train: --architecture tfidf_linear needs TF-IDF features")
    assert "preprocess with --features sequence,tfidf" in err
    assert not os.path.exists(model_dir)

    capsys.readouterr()
    code = describe.main(["--data_dir", data_dir, "--architecture", TFIDF_LINEAR])
    assert code == EXIT_BAD_INPUT
    assert "preprocess with --features sequence,tfidf" in capsys.readouterr().err


def test_describe_prints_the_linear_layers_of_a_model_and_of_a_configuration(single, capsys):
    data_dir, model_dir, _ = single
    assert describe.main(["--model_dir", model_dir]) == 0
    text = capsys.readouterr().out
    assert text.startswith("architecture: tfidf_linear")
    assert "Input(sparse)" in text and "(batch, 301) -> (batch, 3)" in text
    assert "a linear model" in text and "L2 1e-06" in text and "head: softmax" in text

    text = describe.describe(data_dir=data_dir, architecture=TFIDF_LINEAR, hidden_units=5)
    assert "5 relu units, each a weighted sum of the 301 inputs" in text
    assert "Dropout(0.2)" in text and "(batch, 3)" in text
    # The same data dir, the default architecture: the seed.
    text = describe.describe(data_dir=data_dir)
    assert text.startswith("architecture: seed") and "LSTM(100, seq)" in text


def test_the_default_architecture_is_the_seed_with_its_own_learning_rate(capsys):
    opts = train.parse(["--data_dir", "d", "--model_dir", "m"])
    assert (opts.architecture, opts.learning_rate, opts.epochs) == (SEED, None, None)
    seed = train.resolved_defaults(opts)
    assert (seed.learning_rate, seed.epochs) == (1e-3, 8)  # the seed's, as before
    linear = train.parse(["--data_dir", "d", "--model_dir", "m", "--architecture", TFIDF_LINEAR])
    linear = train.resolved_defaults(linear)
    assert (linear.learning_rate, linear.epochs) == (0.03, 20)
    given = ["--data_dir", "d", "--model_dir", "m", "--learning_rate", "0.5", "--epochs", "3"]
    given = train.resolved_defaults(train.parse([*given, "--architecture", TFIDF_LINEAR]))
    assert (given.learning_rate, given.epochs) == (0.5, 3)

    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    for flag in ("--architecture", "--l2", "--hidden_units"):
        assert flag in out
    assert "default seed" in out and "default 0 = none" in out
