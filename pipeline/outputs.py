"""Outputs that appear only complete: write under a temp sibling, then finalize.

A stage writes everything into `staging_dir(out)`, then `finalize(staging, out)` moves it into
place and writes `_SUCCESS` last, so a reader that sees `_SUCCESS` sees a complete directory and a
killed run leaves nothing that looks finished. Works on any Beam filesystem: local paths are
renamed atomically, object stores (gs://, s3://) are copied file by file with `_SUCCESS` last.

`check_replaceable(out, stage)` is the rule that keeps a run from touching what it did not write:
an existing output path is replaced only when it is an empty directory or holds nothing but what
that stage writes (its output layout, finished or not); anything else is refused before any work,
and `finalize` checks again before it moves anything.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.contracts import (
    CONFIG_FILE,
    CONFUSION_PNG,
    CURVES_PNG,
    DEAD_LETTER_PREFIX,
    F1_BARS_PNG,
    HISTORY_FILE,
    LABELS_TXT,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PARQUET_SUFFIX,
    PREPROCESS_STAGE,
    SAVED_MODEL_DIR,
    SCORE_STAGE,
    SCORED_PART_PREFIX,
    STATS_FILE,
    SUCCESS_FILE,
    TFRECORD_SUFFIX,
    TIMINGS_FILE,
    TRAIN_STAGE,
    TRAINING_PROFILE_FILE,
    TRANSFORM_FN_DIR,
    TRANSFORMED_METADATA_DIR,
)

# What each stage writes at the top level of its output: names or fnmatch patterns, a trailing
# "/" for a directory. An existing output holding anything else is not that stage's to replace.
STAGE_ENTRIES = {
    PREPROCESS_STAGE: (
        SUCCESS_FILE,
        STATS_FILE,
        TIMINGS_FILE,
        CONFIG_FILE,
        f"{TRANSFORM_FN_DIR}/",
        f"{TRANSFORMED_METADATA_DIR}/",
        f"train-*-of-*{TFRECORD_SUFFIX}",
        f"eval-*-of-*{TFRECORD_SUFFIX}",
        f"{DEAD_LETTER_PREFIX}-*-of-*.jsonl",
    ),
    TRAIN_STAGE: (
        SUCCESS_FILE,
        f"{SAVED_MODEL_DIR}/",
        LABELS_TXT,
        METRICS_FILE,
        HISTORY_FILE,
        MODEL_CARD_FILE,
        TRAINING_PROFILE_FILE,
        f"{LOGS_DIR}/",
        CURVES_PNG,
        CONFUSION_PNG,
        F1_BARS_PNG,
    ),
    SCORE_STAGE: (
        SUCCESS_FILE,
        STATS_FILE,
        f"{SCORED_PART_PREFIX}-*-of-*{PARQUET_SUFFIX}",
        f"{DEAD_LETTER_PREFIX}-*-of-*{PARQUET_SUFFIX}",
    ),
}


# What marks a non-empty directory as that stage's output (besides `_SUCCESS`): its own config
# or card file, or its part files. Names such as `logs/` or `stats.json` alone are too common to
# take a directory for textclf's. On object stores `finalize` writes these first and deletes them
# last, so an output whose finalize was cut short is still recognised.
STAGE_IDENTITY = {
    PREPROCESS_STAGE: (CONFIG_FILE,),
    TRAIN_STAGE: (MODEL_CARD_FILE,),
    SCORE_STAGE: (f"{SCORED_PART_PREFIX}-*-of-*{PARQUET_SUFFIX}",),
}


def normalized(path: str) -> str:
    """A local path made absolute and normal (`out/`, `./out`, `link/` name the same place as
    `out`, `link`); an object-store path without its trailing slash."""
    return os.path.abspath(path) if is_local(path) else path.rstrip("/")


def _is_identity(name: str, stage: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in STAGE_IDENTITY.get(stage, ()))


class OutputNotReplaceable(ValueError):
    """An output path that holds something this stage did not write; nothing was touched."""


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def is_complete(path: str) -> bool:
    return FileSystems.exists(FileSystems.join(path, SUCCESS_FILE))


def _entries(path: str) -> dict[str, bool] | None:
    """Top-level entries of directory `path` as {name: is_dir}; None when nothing is there.
    Raises OutputNotReplaceable when `path` is a regular file (locally or as an object)."""
    if is_local(path):
        if not os.path.lexists(path):
            return None
        if os.path.islink(path) or not os.path.isdir(path):
            raise OutputNotReplaceable(f"{path} exists and is not a directory")
        with os.scandir(path) as it:
            return {e.name: e.is_dir(follow_symlinks=False) for e in it}
    path = path.rstrip("/")
    files = _files_under(path)
    if not files and FileSystems.exists(path):
        raise OutputNotReplaceable(f"{path} exists and is not a directory")
    entries: dict[str, bool] = {}
    for f in files:
        rest = f[len(path) + 1 :]
        name, sep, _ = rest.partition("/")
        if name:
            entries[name] = entries.get(name, False) or bool(sep)
    return entries or None


def _foreign(present: dict[str, bool], patterns: tuple[str, ...]) -> list[str]:
    """The entries of `present` ({name: is_dir}) that match none of `patterns` (sorted)."""
    foreign = []
    for name, is_dir in sorted(present.items()):
        wanted = [p.rstrip("/") for p in patterns if p.endswith("/") == is_dir]
        if not any(fnmatch.fnmatchcase(name, p) for p in wanted):
            foreign.append(name + ("/" if is_dir else ""))
    return foreign


def check_replaceable(out: str, stage: str, entries: tuple[str, ...] | None = None) -> None:
    """Refuse (OutputNotReplaceable, one line) an `out` that `stage` may not replace.

    Allowed: no such path, an empty directory, or a directory holding only entries that
    `stage` writes and among them `_SUCCESS` or the stage's mark (STAGE_IDENTITY): a finished
    output, or an object-store one whose finalize was cut short. Refused: a regular file, a
    directory with anything else in it (a user's files, another stage's output), or common
    names alone. Nothing is moved or deleted here or later when this raises. `entries`
    (patterns as in STAGE_ENTRIES) serves the directories that `run` and `demo` write into.
    """
    out = normalized(out)
    if not is_local(out) and any(c in out for c in "*?["):
        raise OutputNotReplaceable(f"{out}: an output path may not hold *, ? or [")
    if is_local(out) and os.path.dirname(out) == out:
        raise OutputNotReplaceable(f"{out} is a filesystem root, not an output directory")
    present = _entries(out) or {}  # listed once: on an object store, every object under it
    foreign = _foreign(present, entries or STAGE_ENTRIES[stage])
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise OutputNotReplaceable(
            f"{out} holds files that textclf {stage} does not write ({shown}); refusing to "
            f"replace it: choose another path, or empty it yourself"
        )
    if entries is None and present and SUCCESS_FILE not in present:
        if not any(_is_identity(name, stage) for name in present):
            marks = " or ".join((SUCCESS_FILE, *STAGE_IDENTITY[stage]))
            raise OutputNotReplaceable(
                f"{out} is not empty and has no {marks}, so it is not a textclf {stage} "
                f"output; refusing to replace it: choose another path, or empty it yourself"
            )


def _staging_prefix(out: str) -> str:
    """`<parent>/.<name>.inprogress-`: what every staging dir of `out` is named from."""
    out = normalized(out)
    parent, name = os.path.split(out) if is_local(out) else out.rsplit("/", 1)
    return FileSystems.join(parent or ".", f".{name}.inprogress-")


def staging_dir(out: str) -> str:
    """A fresh sibling of `out` that no reader takes for a finished output."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
    staging = f"{_staging_prefix(out)}{stamp}-{uuid.uuid4().hex[:8]}"
    if is_local(staging):
        os.makedirs(staging)
    return staging


def backup_dir(out: str) -> str:
    """`<parent>/.<name>.train-backup`: the same sibling of `out` on every run (unlike
    `staging_dir`), where `textclf train` keeps what a rerun needs to resume; not created here,
    removed by the trainer after a successful finalize. Not an `.inprogress-*` name, so the
    clean-up of stale staging dirs leaves it alone."""
    out = normalized(out)
    parent, name = os.path.split(out) if is_local(out) else out.rsplit("/", 1)
    return FileSystems.join(parent or ".", f".{name}.train-backup")


def is_within_output(path: str, out: str) -> bool:
    """Whether `path` lies in what a stage writing `out` replaces or removes: `out` itself, its
    staging dirs or its training backup (a local symlink into them counts)."""
    owned = [normalized(out) + "/", normalized(backup_dir(out)) + "/", _staging_prefix(out)]
    if is_local(out):
        owned.append(os.path.realpath(out) + "/")
    target = (os.path.realpath(path) if is_local(path) else path.rstrip("/")) + "/"
    return target.startswith(tuple(owned))


def copy_tree(source: str, destination: str) -> None:
    """Copy every file under `source` to the same relative path under `destination`: a local
    tree with shutil, an object-store prefix file by file."""
    if is_local(source):
        if os.path.isdir(source):
            shutil.copytree(source, destination, dirs_exist_ok=True)
        return
    prefix = source.rstrip("/") + "/"
    files = [f for f in _files_under(source) if not f.endswith("/")]  # not directory markers
    if files:
        FileSystems.copy(files, [FileSystems.join(destination, f[len(prefix) :]) for f in files])


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


def _delete_tree(path: str, stage: str | None = None) -> None:
    """Delete a directory, or on an object store every object under it: `_SUCCESS` first,
    `stage`'s identity files (STAGE_IDENTITY) last."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = _files_under(path)
    success = [f for f in files if f.endswith("/" + SUCCESS_FILE)]
    last = [f for f in files if stage and _is_identity(f[len(path.rstrip("/")) + 1 :], stage)]
    for batch in (success, [f for f in files if f not in success and f not in last], last):
        if batch:
            FileSystems.delete(batch)


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


def finalize(staging: str, out: str, stage: str) -> None:
    """Move the finished `staging` dir to `out` (replacing an older output of `stage`), `_SUCCESS`
    last. Checks `out` again first (it may have changed since the run began): raises
    OutputNotReplaceable, touching nothing, when it holds anything `stage` does not write."""
    out = normalized(out)
    check_replaceable(out, stage)
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
    _delete_tree(out, stage)  # _SUCCESS first, the stage's identity files last
    sources = _files_under(staging)
    first = [f for f in sources if _is_identity(f.rsplit("/", 1)[-1], stage)]
    for batch in (first, [f for f in sources if f not in first]):  # identity files first
        if batch:
            FileSystems.rename(batch, [out + f[len(staging.rstrip("/")) :] for f in batch])
    write_text(FileSystems.join(out, SUCCESS_FILE), now() + "\n")
    discard(staging)


def write_text_atomic(path: str, text: str) -> None:
    """Write `path` so that a reader sees the previous file or this one, never half of one."""
    _replace_atomically(path, write_text, text)


def write_json_atomic(path: str, obj) -> None:
    """`write_json`, atomically (see `write_text_atomic`)."""
    _replace_atomically(path, write_json, obj)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """`data` to `path` atomically, flushed to disk before the rename (a resume state must
    survive the machine going away, not only the process)."""
    _replace_atomically(path, _write_bytes_synced, data)


def _write_bytes_synced(path: str, data: bytes) -> None:
    if not is_local(path):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_atomically(path: str, write, content) -> None:
    # Locally: a `<path>.tmp-<pid>` sibling renamed over `path`. An object store publishes an
    # object only when its upload completes, so there the object is written in place.
    if not is_local(path):
        write(path, content)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp, content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
