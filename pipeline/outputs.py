"""Outputs that appear only complete: write under a temp sibling, then finalize.

A stage writes everything into `staging_dir(out)`, then `finalize(staging, out)` moves it into
place and writes `_SUCCESS` last, so a reader that sees `_SUCCESS` sees a complete directory and a
killed run leaves nothing that looks finished. Works on any Beam filesystem: local paths are
renamed atomically, object stores (gs://, s3://) are copied file by file with `_SUCCESS` last.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.contracts import SUCCESS_FILE


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def is_complete(path: str) -> bool:
    return FileSystems.exists(FileSystems.join(path, SUCCESS_FILE))


def staging_dir(out: str) -> str:
    """A fresh sibling of `out` that no reader takes for a finished output."""
    out = out.rstrip("/")
    parent, name = os.path.split(out) if is_local(out) else out.rsplit("/", 1)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    staging = FileSystems.join(parent or ".", f".{name}.inprogress-{stamp}-{uuid.uuid4().hex[:8]}")
    if is_local(staging):
        os.makedirs(staging)
    return staging


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str):
    return json.loads(read_text(path))


def discard(staging: str) -> None:
    """Remove a staging directory after a failure (best effort)."""
    try:
        if is_local(staging):
            shutil.rmtree(staging, ignore_errors=True)
        elif FileSystems.exists(staging):
            FileSystems.delete([staging])
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass


def finalize(staging: str, out: str) -> None:
    """Move the finished `staging` dir to `out` (replacing an older output), `_SUCCESS` last."""
    out = out.rstrip("/")
    if is_local(out):
        success = os.path.join(staging, SUCCESS_FILE)
        write_text(success, _dt.datetime.now(_dt.UTC).isoformat() + "\n")
        old = None
        if os.path.exists(out):
            old = f"{out}.replaced-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        parent = os.path.dirname(out)
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.rename(staging, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    if FileSystems.exists(out):
        FileSystems.delete([out])
    sources = [m.path for m in FileSystems.match([staging.rstrip("/") + "/**"])[0].metadata_list]
    FileSystems.rename(sources, [out + s[len(staging.rstrip("/")) :] for s in sources])
    write_text(FileSystems.join(out, SUCCESS_FILE), _dt.datetime.now(_dt.UTC).isoformat() + "\n")
    discard(staging)
