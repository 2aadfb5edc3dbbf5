"""A simulated fortnight of a scheduled job, with the real stages, gate and registry.

One config (dated inputs, a registry, a fixed evaluation set) and two schedules, as
configs/scheduled.toml sets them up: a weekly `--stages preprocess,train` run that trains, gates
and maybe promotes, and a daily `--stages score` backfill that scores each day's files with the
champion. The second week's snapshot has shuffled labels: its model must be refused and the
champion kept. One day has no files (allow_missing), one day's documents come from another
vocabulary (drift). Afterwards the registry, the manifests and the reports must tell which model
scored which day and why the second model was not promoted.
"""

from __future__ import annotations

import html
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import registry, run
from transforms.contracts import (
    CHAMPION_FILE,
    MANIFEST_FILE,
    MODEL_VERSION_COLUMN,
    PROMOTION_FILE,
    REGISTRY_RECORD_FILE,
    REPORT_FILE,
    SUCCESS_FILE,
)

TOPICS = {
    "sports": "ball goal team match coach referee stadium league score",
    "politics": "vote law senate party election budget minister policy court",
    "science": "atom cell energy theory lab molecule physics gene orbit",
}
OTHER = "free prize call now txt claim winner cash mobile offer urgent reply stop".split()


def _rows(n: int, seed: int, shuffle_labels: bool = False, other_vocab: bool = False):
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = OTHER if other_vocab else TOPICS[topic].split()
        length = rng.randint(30, 60) if other_vocab else rng.randint(5, 12)
        texts.append(" ".join(rng.choice(words) for _ in range(length)))
        labels.append(topic)
    if shuffle_labels:
        rng.shuffle(labels)
    return pa.table({"text": texts, "label": labels})


def _write(path, table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


WEEK1, WEEK2 = "2024-03-04", "2024-03-08"
DAYS1 = ("2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07")  # 03-06: no files
DAYS2 = ("2024-03-08",)


@pytest.mark.slow
def test_a_fortnight_of_daily_scores_and_weekly_retrains(tmp_path):
    _write(tmp_path / "labelled" / WEEK1 / "snapshot.parquet", _rows(600, seed=1))
    _write(
        tmp_path / "labelled" / WEEK2 / "snapshot.parquet", _rows(600, seed=2, shuffle_labels=True)
    )
    _write(tmp_path / "holdout.parquet", _rows(150, seed=3))
    for n, day in enumerate(DAYS1 + DAYS2):
        if day == "2024-03-06":
            continue
        y, m, d = day.split("-")
        _write(
            tmp_path / "incoming" / y / m / d / "docs.parquet",
            _rows(40, seed=10 + n, other_vocab=day == "2024-03-07"),
        )
    config = tmp_path / "scheduled.toml"
    config.write_text("""
[inputs]
train = "labelled/{run_date}/*.parquet"
score = "incoming/{run_date:%Y/%m/%d}/*.parquet"
allow_missing = true

[registry]
root = "models"

[promotion]
metric = "accuracy"
tolerance = 0.02
floor = 0.6
eval_input = "holdout.parquet"

[preprocess]
max_tokens = 100
sequence_length = 16

[train]
epochs = 4
batch_size = 32
embedding_dim = 16
filters = 8
kernel_size = 3
pool_size = 2
lstm_units = 8

[score]
batch_size = 64
columns = ["label"]

[beam]
direct_num_workers = 1
""")
    root, models = tmp_path / "runs", tmp_path / "models"
    base = ["--config", str(config), "--root", str(root)]

    # Week 1: train, gate (no champion: the floor decides), promote to version 1.
    assert run.main([*base, "--run_date", WEEK1, "--stages", "preprocess,train"]) == 0
    week1 = json.loads((root / WEEK1 / PROMOTION_FILE).read_text())
    assert week1["decision"] == "promoted", week1
    assert week1["champion"] is None and week1["version"] == 1
    reg = registry.Registry(str(models))
    assert reg.versions() == [1] and reg.champion() == 1
    assert (models / "1" / "saved_model.pb").exists() and (models / "1" / "variables").is_dir()
    v1_record = json.loads((models / "1" / REGISTRY_RECORD_FILE).read_text())
    v1_model_version = v1_record["model_version"]

    # Daily scores for week 1 (a backfill); 03-06 has no files and is recorded as skipped.
    assert run.main([*base, "--from", DAYS1[0], "--to", DAYS1[-1], "--stages", "score"]) == 0

    # Week 2: labels shuffled -> refused; the registry and the champion are unchanged.
    before = {p.relative_to(models): p.read_bytes() for p in models.rglob("*") if p.is_file()}
    assert run.main([*base, "--run_date", WEEK2, "--stages", "preprocess,train"]) == 0
    week2 = json.loads((root / WEEK2 / PROMOTION_FILE).read_text())
    assert week2["decision"] == "refused", week2
    assert week2["champion"]["version"] == 1
    assert week2["candidate"]["metrics"]["accuracy"] < week2["champion"]["metrics"]["accuracy"]
    after = {p.relative_to(models): p.read_bytes() for p in models.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name != ".registry.lock"} == {
        k: v for k, v in before.items() if k.name != ".registry.lock"
    }
    assert (models / CHAMPION_FILE).read_text().strip() == "1"

    # Daily score for week 2 still uses version 1.
    assert run.main([*base, "--from", DAYS2[0], "--to", DAYS2[-1], "--stages", "score"]) == 0

    # What the runs tell afterwards.
    for day in DAYS1 + DAYS2:
        manifest = json.loads((root / day / MANIFEST_FILE).read_text())
        if day == "2024-03-06":
            assert manifest["status"] == run.MISSING_INPUTS
            continue
        assert manifest["status"] == "succeeded", (day, manifest.get("reason"))
        assert manifest["model"]["version"] == 1 and manifest["model"]["chosen"] == "champion"
        assert manifest["model"]["model_version"] == v1_model_version
        parts = sorted((root / day / "scores").glob("part-*.parquet"))
        scored = pq.read_table(parts[0]).column(MODEL_VERSION_COLUMN).to_pylist()
        assert set(scored) == {v1_model_version}
        assert (root / day / SUCCESS_FILE).exists()
        drift = manifest["drift"]
        assert drift["drifted"] is (day == "2024-03-07"), (day, drift.get("warnings"))
    manifest = json.loads((root / WEEK2 / MANIFEST_FILE).read_text())
    assert manifest["promotion"]["decision"] == "refused"
    page = (root / WEEK2 / REPORT_FILE).read_text()
    assert "refused" in page and html.escape(week2["reason"]) in page
    assert "Drift" in (root / "2024-03-07" / REPORT_FILE).read_text()
