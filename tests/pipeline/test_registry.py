"""The model registry on a real local directory: versions in TF Serving's layout, the CHAMPION
pointer, versions never overwritten, and `resolve_model_dir` for `score --model_dir ROOT`.
The models are real tiny SavedModels (tests/model_fixtures.py), loaded back with TensorFlow."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from pipeline import registry as registry_module
from pipeline.artifacts import IncompleteOutput, ModelOutput
from pipeline.registry import Registry, RegistryError, resolve_model_dir
from tests.model_fixtures import build_test_model
from tests.stage_outputs import file_tree
from transforms.contracts import (
    CHAMPION_FILE,
    LABELS_TXT,
    LOGS_DIR,
    MODEL_CARD_FILE,
    REGISTRY_LOCK_FILE,
    REGISTRY_RECORD_FILE,
    SAVED_MODEL_DIR,
    SAVED_MODEL_PB,
    SERVING_SIGNATURE,
    SUCCESS_FILE,
)
from transforms.scoring import LoadedModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["good great fun", "bad awful boring", "great movie", "boring bad film"] * 4
LABELS = ["pos", "neg", "pos", "neg"] * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A finished model directory with a logs/ folder and a PNG, as `textclf train` leaves."""
    path = str(tmp_path_factory.mktemp("models") / "model")
    build_test_model(path, TEXTS, LABELS, model_version="reg-v1")
    os.makedirs(os.path.join(path, LOGS_DIR, "train"))
    with open(os.path.join(path, LOGS_DIR, "train", "events.out.tfevents.1"), "wb") as f:
        f.write(b"events")
    with open(os.path.join(path, "training_curves.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    return path


def _other_model(tmp_path, model_dir: str, model_version: str) -> str:
    """A copy of `model_dir` whose card names another model_version."""
    path = str(tmp_path / model_version)
    shutil.copytree(model_dir, path)
    card_path = os.path.join(path, MODEL_CARD_FILE)
    with open(card_path) as f:
        card = json.load(f)
    card["model_version"] = model_version
    with open(card_path, "w") as f:
        json.dump(card, f)
    return path


def test_a_published_version_is_in_tf_serving_layout_with_textclfs_files_beside(
    model_dir, tmp_path
):
    registry = Registry(str(tmp_path / "registry"))

    n = registry.publish(model_dir, {"gate": {"decision": "promoted"}})

    assert n == 1 and registry.versions() == [1]
    version = tmp_path / "registry" / "1"
    names = set(os.listdir(version))
    assert {
        SAVED_MODEL_PB,
        "variables",
        LABELS_TXT,
        MODEL_CARD_FILE,
        "training_curves.png",
    } <= names
    assert {REGISTRY_RECORD_FILE, SUCCESS_FILE} <= names
    assert LOGS_DIR not in names and SAVED_MODEL_DIR not in names
    assert not [n for n in os.listdir(tmp_path / "registry") if ".inprogress-" in n]
    # TF Serving loads the version directory itself.
    serve = tf.saved_model.load(str(version)).signatures[SERVING_SIGNATURE]
    out = serve(text=tf.constant(["good fun", "awful film"]))
    source = LoadedModel(model_dir).probabilities(pa.array(["good fun", "awful film"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), source, atol=1e-6)
    assert ModelOutput(str(version)).check_complete().model_version == "reg-v1"
    record = registry.record(1)
    assert record["version"] == 1 and record["model_version"] == "reg-v1"
    assert record["source_model_dir"] == model_dir
    assert record["gate"] == {"decision": "promoted"} and record["published_at"]
    assert registry.champion() is None  # publishing does not promote
    assert registry.find_version("reg-v1") == 1 and registry.find_version("other") is None


def test_versions_are_never_overwritten_and_a_users_numbered_folder_is_skipped(model_dir, tmp_path):
    """The next version is one more than the highest integer name present, finished or not:
    a folder `3/` that textclf did not write is left alone and is not a version."""
    root = tmp_path / "registry"
    registry = Registry(str(root))
    assert registry.publish(model_dir) == 1
    first = file_tree(root / "1")
    (root / "3").mkdir()
    (root / "3" / "notes.txt").write_text("mine")

    second = registry.publish(_other_model(tmp_path, model_dir, "reg-v2"))

    assert second == 4
    assert registry.versions() == [1, 4]
    assert file_tree(root / "3") == {"notes.txt": b"mine"}
    assert file_tree(root / "1") == first
    assert registry.record(4)["model_version"] == "reg-v2"


def test_a_version_that_appears_while_publishing_is_not_overwritten(model_dir, tmp_path):
    staging, target = tmp_path / ".1.inprogress-x", tmp_path / "1"
    staging.mkdir()
    target.mkdir()  # empty: rename(2) alone would replace it

    with pytest.raises(RegistryError, match="nothing was overwritten"):
        registry_module._move_into_place(str(staging), str(target))

    assert os.listdir(target) == [] and staging.exists()


def test_an_unfinished_model_is_not_published_and_nothing_is_created(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(IncompleteOutput, match=f"no {SUCCESS_FILE}"):
        Registry(str(tmp_path / "registry")).publish(str(tmp_path / "model"))
    assert not (tmp_path / "registry").exists()


def test_champion_pointer_is_written_atomically_and_only_to_a_finished_version(model_dir, tmp_path):
    root = tmp_path / "registry"
    registry = Registry(str(root))
    registry.publish(model_dir)

    registry.set_champion(1)

    assert (root / CHAMPION_FILE).read_text() == "1\n"
    assert registry.champion() == 1
    assert not list(root.glob(f"{CHAMPION_FILE}.tmp-*"))
    with pytest.raises(RegistryError, match="no finished version 2; its versions are: 1"):
        registry.set_champion(2)
    assert registry.champion() == 1


@pytest.mark.parametrize(
    "content, message",
    [("7\n", "names version 7, which is not a finished version"), ("latest", "not a version")],
)
def test_a_broken_champion_pointer_is_one_line_naming_the_file(tmp_path, content, message):
    root = tmp_path / "registry"
    root.mkdir()
    (root / CHAMPION_FILE).write_text(content)
    with pytest.raises(RegistryError, match=message) as err:
        Registry(str(root)).champion()
    assert str(root / CHAMPION_FILE) in str(err.value) and "\n" not in str(err.value)


def test_resolve_model_dir_follows_the_champion_or_a_pinned_version(model_dir, tmp_path):
    root = str(tmp_path / "registry")
    registry = Registry(root)
    registry.publish(model_dir)
    registry.publish(_other_model(tmp_path, model_dir, "reg-v2"))

    with pytest.raises(RegistryError) as err:
        resolve_model_dir(root, None)
    assert str(err.value) == (
        f"registry {root} has no champion yet; promote a model with textclf promote or pin "
        "one with --model_version"
    )
    registry.set_champion(1)
    assert resolve_model_dir(root, None) == (os.path.join(root, "1"), 1)
    assert resolve_model_dir(root + "/", 2) == (os.path.join(root, "2"), 2)
    with pytest.raises(RegistryError, match="has no finished version 5; its versions are: 1, 2"):
        resolve_model_dir(root, 5)
    # A plain model directory is itself; pinning a version on it is a mistake.
    assert resolve_model_dir(model_dir, None) == (model_dir, None)
    with pytest.raises(RegistryError, match="--model_version 2 needs a registry root"):
        resolve_model_dir(model_dir, 2)
    # What resolves loads the way the scorer loads a model directory.
    version_dir, _ = resolve_model_dir(root, None)
    assert LoadedModel(version_dir).probabilities(pa.array(["good"])).shape == (1, 2)


def test_publishing_waits_for_the_lock_and_gives_up_with_one_line(model_dir, tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'4242\\n')\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
            str(root / REGISTRY_LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RegistryError, match=r"stayed locked by another promotion \(pid 4242\)"):
            Registry(str(root), lock_wait_seconds=0.3).publish(model_dir)
        assert sorted(os.listdir(root)) == [REGISTRY_LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # Released with the process: the next publish goes through.
    assert Registry(str(root), lock_wait_seconds=5).publish(model_dir) == 1
    with open(root / REGISTRY_LOCK_FILE) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held after publish returned
