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


def _files_under(prefix: str) -> list[str]:
    """Every object below `prefix/` on an object store (where 'directories' are prefixes)."""
    return [m.path for m in FileSystems.match([prefix.rstrip("/") + "/**"])[0].metadata_list]


def _delete_tree(path: str) -> None:
    """Delete a directory, or on an object store every object under it, `_SUCCESS` first."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = _files_under(path)
    files.sort(key=lambda f: not f.endswith("/" + SUCCESS_FILE))
    if files:
        FileSystems.delete(files)


def discard(staging: str) -> None:
    """Remove a staging directory after a failure (best effort)."""
    try:
        _delete_tree(staging)
    except Exception:  # noqa: BLE001 - cleanup must not hide the original error
        pass


def completed_since(path: str, started: str) -> bool:
    """True when `path` was finalized at or after `started` (a `now()` timestamp): that run's
    output, not an older complete one. `finalize` writes its UTC ISO time into `_SUCCESS`."""
    success = FileSystems.join(path, SUCCESS_FILE)
    return FileSystems.exists(success) and read_text(success).strip() >= started


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()


def finalize(staging: str, out: str) -> None:
    """Move the finished `staging` dir to `out` (replacing an older output), `_SUCCESS` last."""
    out = out.rstrip("/")
    if is_local(out):
        success = os.path.join(staging, SUCCESS_FILE)
        write_text(success, now() + "\n")
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
    _delete_tree(out)  # the old _SUCCESS goes first, so the old output stops looking complete
    sources = _files_under(staging)
    FileSystems.rename(sources, [out + s[len(staging.rstrip("/")) :] for s in sources])
    write_text(FileSystems.join(out, SUCCESS_FILE), now() + "\n")
    discard(staging)
