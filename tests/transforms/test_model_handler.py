"""TextclfModelHandler under Beam's RunInference on the DirectRunner, held equal to `textclf score`.

The models are tiny real SavedModels (tests/model_fixtures.py); the reference is the scored
Parquet that pipeline/score.py's `main` writes for the same rows with the same model.
"""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.testing.util import assert_that

from pipeline.registry import Registry, resolve_model_dir
from pipeline.score import main as score_main
from tests.model_fixtures import build_test_model
from transforms.contracts import (
    MODEL_VERSION_COLUMN,
    PREDICTED_LABEL_COLUMN,
    PREDICTED_LABELS_COLUMN,
    PROBABILITIES_COLUMN,
    SCORE_COLUMN,
    SCORED_PART_PREFIX,
)
from transforms.scoring import TextclfModelHandler, UnusableTextError

TRAIN_TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 8
TRAIN_LABELS = ["pos", "neg", "pos", "neg"] * 8
TRAIN_TAGS = [["fun"], ["dull"], ["fun", "film"], ["dull", "film"]] * 8
WORDS = ["good", "bad", "great", "boring", "fun", "awful", "film", "movie", "plot"]
# 40 distinct texts (the element is its own key in the parity check), one unknown word included.
TEXTS = [" ".join(WORDS[(i * k + k) % len(WORDS)] for k in range(1, 2 + i % 4)) for i in range(40)]
TEXTS = list(dict.fromkeys([*TEXTS, "an unseen zebra", "good", "bad bad bad boring"]))
SINGLE_VERSION = "handler-single-3"
MULTI_VERSION = "handler-multi-5"


@pytest.fixture(scope="module")
def single_model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "single")
    build_test_model(path, TRAIN_TEXTS, TRAIN_LABELS, epochs=3, model_version=SINGLE_VERSION)
    return path


@pytest.fixture(scope="module")
def multi_model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("models") / "multi")
    build_test_model(
        path, TRAIN_TEXTS, TRAIN_TAGS, multi_label=True, epochs=3, model_version=MULTI_VERSION
    )
    return path


def textclf_score(model_dir: str, tmp_path, *extra: str) -> dict[str, dict]:
    """`textclf score` (pipeline/score.py's main, DirectRunner) over TEXTS: {text: scored row}."""
    source = str(tmp_path / "texts.parquet")
    pq.write_table(pa.table({"id": np.arange(len(TEXTS)), "text": TEXTS}), source)
    out = str(tmp_path / "scores")
    argv = ["--model_dir", model_dir, "--input", source, "--output", out, "--text_column", "text",
            "--id_column", "id", "--batch_size", "16", *extra, "--runner=DirectRunner"]  # fmt: skip
    assert score_main(argv) == 0
    parts = sorted(glob.glob(os.path.join(out, f"{SCORED_PART_PREFIX}*.parquet")))
    rows = pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist()
    assert len(rows) == len(TEXTS)
    return {TEXTS[row["id"]]: row for row in rows}


def run_inference(elements: list, transform: beam.PTransform, **checks) -> None:
    """`elements | transform` on the DirectRunner; each check (`scored=`, and `failed=` for a
    transform with exception handling) gets that output's elements, through Beam's assert_that,
    so a failed check fails the run."""
    with beam.Pipeline(runner="DirectRunner") as p:
        results = p | beam.Create(elements, reshuffle=False) | transform
        if isinstance(results, tuple):  # RunInference(...).with_exception_handling()
            scored, dead_letter = results
            outputs = {"scored": scored, "failed": dead_letter.failed_inferences}
        else:
            outputs = {"scored": results}
        for name, check in checks.items():
            assert_that(outputs[name], check, label=f"Check[{name}]")


@pytest.mark.parametrize(
    "model, threshold, label_column",
    [
        ("single_model_dir", None, PREDICTED_LABEL_COLUMN),
        ("multi_model_dir", None, PREDICTED_LABELS_COLUMN),
        ("multi_model_dir", 0.3, PREDICTED_LABELS_COLUMN),
    ],
)
def test_run_inference_predicts_what_textclf_score_writes_for_the_same_rows(
    request, tmp_path, model, threshold, label_column
):
    model_dir = request.getfixturevalue(model)
    extra = () if threshold is None else ("--threshold", str(threshold))
    expected = textclf_score(model_dir, tmp_path, *extra)

    def check(results):
        assert sorted(r.example for r in results) == sorted(TEXTS)
        for result in results:
            want, got = expected[result.example], result.inference
            assert set(got) == {label_column, SCORE_COLUMN, PROBABILITIES_COLUMN,
                                MODEL_VERSION_COLUMN}  # fmt: skip
            assert got[label_column] == want[label_column]
            assert isinstance(got[PROBABILITIES_COLUMN], np.ndarray)
            np.testing.assert_allclose(
                got[PROBABILITIES_COLUMN], want[PROBABILITIES_COLUMN], rtol=0, atol=1e-6
            )
            assert abs(got[SCORE_COLUMN] - want[SCORE_COLUMN]) <= 1e-6
            assert got[MODEL_VERSION_COLUMN] == want[MODEL_VERSION_COLUMN]
            assert result.model_id == want[MODEL_VERSION_COLUMN]

    handler = TextclfModelHandler(model_dir, threshold=threshold, max_batch_size=8)
    run_inference(TEXTS, RunInference(handler), scored=check)


def test_model_id_is_the_model_cards_version_and_batch_hints_reach_run_inference(
    single_model_dir, multi_model_dir
):
    assert TextclfModelHandler(single_model_dir).model.model_version == SINGLE_VERSION
    assert TextclfModelHandler(multi_model_dir).model.model_version == MULTI_VERSION
    handler = TextclfModelHandler(single_model_dir, min_batch_size=4, max_batch_size=64)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 64}
    assert TextclfModelHandler(single_model_dir).batch_elements_kwargs() == {
        "max_batch_size": 1024  # score's rows per model call
    }
    results = handler.run_inference(["good fun"], handler.load_model())
    assert [r.model_id for r in results] == [SINGLE_VERSION]


def test_keyed_model_handler_keeps_each_key_with_its_text(single_model_dir):
    keyed = [(f"doc-{i}", text) for i, text in enumerate(TEXTS)]
    by_key = dict(keyed)

    def check(results):
        assert sorted(key for key, _ in results) == sorted(by_key)
        for key, result in results:
            assert isinstance(result, PredictionResult)
            assert result.example == by_key[key]
            assert result.model_id == SINGLE_VERSION

    handler = KeyedModelHandler(TextclfModelHandler(single_model_dir, max_batch_size=8))
    run_inference(keyed, RunInference(handler), scored=check)


def test_with_exception_handling_sends_unusable_texts_to_failed_inferences_and_scores_the_rest(
    single_model_dir,
):
    good = ["good great fun", "boring bad film", "great movie"]
    bad = [None, 7, "   "]

    def check_scored(results):
        assert sorted(r.example for r in results) == sorted(good)
        assert {r.inference[PREDICTED_LABEL_COLUMN] for r in results} <= {"neg", "pos"}

    def check_failed(failed):
        # Beam's dead letter is per batch: (the batch, (error type, repr(error), traceback)).
        batches = sorted(([repr(x) for x in batch], error) for batch, error in failed)
        assert [b for b, _ in batches] == sorted([[repr(x)] for x in bad])
        for _, (error_type, message, _) in batches:
            assert error_type is UnusableTextError
            assert "element 0 of a batch of 1" in str(message)
        reasons = " ".join(str(message) for _, (_, message, _) in batches)
        for reason in ("text is null", "text is not a string but int", "text is empty"):
            assert reason in reasons

    # One element per batch, so each unusable text fails alone.
    handler = TextclfModelHandler(single_model_dir, max_batch_size=1)
    run_inference(
        [good[0], bad[0], good[1], bad[1], bad[2], good[2]],
        RunInference(handler).with_exception_handling(),
        scored=check_scored,
        failed=check_failed,
    )


@pytest.mark.parametrize(
    "batch, reason",
    [
        (["good", None], "element 1 of a batch of 2: text is null"),
        ([b"good"], "element 0 of a batch of 1: text is not a string but bytes"),
        (["good", "fun", 3.5], "element 2 of a batch of 3: text is not a string but float"),
        (["good", "\u2003\n"], "element 1 of a batch of 2: text is empty"),
    ],
)
def test_a_batch_with_a_text_score_would_dead_letter_raises_before_the_model_call(
    single_model_dir, batch, reason
):
    handler = TextclfModelHandler(single_model_dir)
    with pytest.raises(UnusableTextError, match=reason):
        handler.run_inference(batch, model=None)  # raised before the model is touched


def test_a_registry_version_directory_scores_like_the_model_it_was_published_from(
    single_model_dir, tmp_path
):
    registry = Registry(str(tmp_path / "registry"))
    registry.set_champion(registry.publish(single_model_dir))
    version_dir, _ = resolve_model_dir(registry.root)
    assert not os.path.isdir(os.path.join(version_dir, "saved_model"))  # TF Serving's layout
    texts = TEXTS[:10]
    published = TextclfModelHandler(version_dir)
    original = TextclfModelHandler(single_model_dir)
    got = published.run_inference(texts, published.load_model())
    want = original.run_inference(texts, original.load_model())
    for g, w in zip(got, want, strict=True):
        assert g.model_id == w.model_id == SINGLE_VERSION
        assert g.inference[PREDICTED_LABEL_COLUMN] == w.inference[PREDICTED_LABEL_COLUMN]
        np.testing.assert_array_equal(
            g.inference[PROBABILITIES_COLUMN], w.inference[PROBABILITIES_COLUMN]
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.0}, "threshold must lie strictly between 0 and 1"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"min_batch_size": 9, "max_batch_size": 8}, "min_batch_size 9 is above max_batch_size 8"),
    ],
)
def test_bad_settings_are_refused_when_the_handler_is_built(single_model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextclfModelHandler(single_model_dir, **kwargs)
