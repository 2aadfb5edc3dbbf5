"""The model registry: integer versions in TF Serving's layout, and the pointer to the champion.

A registry root holds `<root>/<N>/` for every model that passed the promotion gate (N = 1, 2,
...): the SavedModel's own files (`saved_model.pb`, `variables/`, `assets/`, `fingerprint.pb`)
directly inside, as TF Serving loads a version, textclf's metadata files from the training
output beside them (labels.txt, model_card.json, metrics.json, ...; not logs/), `registry.json`
(where the version came from and the gate's decision) and `_SUCCESS` last. `<root>/CHAMPION`
holds the number of the version in use ("N\\n"), replaced atomically; `<root>/CHAMPION.history`
has one JSON line per pointer write (version, time), oldest first. A version is never
overwritten or removed: a new one is staged in `<root>/.<N>.inprogress-<token>/` and renamed to
a name that does not exist yet, and N is one more than the highest integer name present, finished
or not (so a name that holds anything, a user's files included, is never reused). Writers take
`fcntl.flock` on `<root>/.registry.lock` (waiting a bounded time: promotions are short); a root on
an object store has no lock, so there one writer at a time is the scheduler's job.
`resolve_model_dir` is what `score` and `run` call to turn `--model_dir ROOT [--model_version N]`
into a model directory. This module owns the registry's layout only; the gate that decides what
is published is pipeline/gate.py and pipeline/promote.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline import outputs
from pipeline.artifacts import ModelOutput
from transforms.contracts import (
    CHAMPION_FILE,
    CHAMPION_HISTORY_FILE,
    REGISTRY_LOCK_FILE,
    REGISTRY_RECORD_FILE,
    SUCCESS_FILE,
)

DEFAULT_LOCK_WAIT_SECONDS = 120.0
_LOCK_POLL_SECONDS = 0.1


class RegistryError(ValueError):
    """A registry (or a request to it) that cannot be used as given; the one-line message names
    the root and says what to do. Commands report it as bad input (exit 2)."""


def _is_version_name(name: str) -> bool:
    """A positive integer written plainly ("7", not "07" or "+7"), as version N is named."""
    return name.isascii() and name.isdigit() and name == str(int(name)) and int(name) > 0


class Registry:
    """The registry at `root` (a local path or any Beam filesystem URI; it need not exist yet)."""

    def __init__(self, root: str, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS):
        self.root = outputs.normalized(root)
        self.lock_wait_seconds = lock_wait_seconds
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    def path(self, *names: str) -> str:
        return FileSystems.join(self.root, *names)

    # -- reading -------------------------------------------------------------------------------

    def _names(self) -> set[str]:
        """The names at the top level of the root (files and directories); empty if no root."""
        if outputs.is_local(self.root):
            if not os.path.lexists(self.root):
                return set()
            if not os.path.isdir(self.root):
                raise RegistryError(f"registry root {self.root} exists and is not a directory")
            return set(os.listdir(self.root))
        prefix = self.root.rstrip("/") + "/"
        found = FileSystems.match([prefix + "**"])[0].metadata_list
        return {m.path[len(prefix) :].split("/", 1)[0] for m in found} - {""}

    def versions(self) -> list[int]:
        """The finished versions, ascending: directories named by a positive integer that hold
        `_SUCCESS` and registry.json (a name holding anything else is not textclf's)."""
        return sorted(
            int(name)
            for name in self._names()
            if _is_version_name(name)
            and FileSystems.exists(self.path(name, SUCCESS_FILE))
            and FileSystems.exists(self.path(name, REGISTRY_RECORD_FILE))
        )

    def is_registry(self) -> bool:
        """Whether `root` holds a CHAMPION pointer or at least one finished version."""
        names = self._names()
        return CHAMPION_FILE in names or bool(self.versions())

    def version_dir(self, n: int) -> str:
        return self.path(str(int(n)))

    def check_version(self, n: int) -> str:
        """The directory of finished version `n`; RegistryError naming the versions if none."""
        if int(n) not in self.versions():
            known = ", ".join(map(str, self.versions())) or "none"
            raise RegistryError(
                f"registry {self.root} has no finished version {n}; its versions are: {known}"
            )
        return self.version_dir(n)

    def record(self, n: int) -> dict:
        """registry.json of version `n`: version, published_at, source_model_dir, model_version
        and what the publisher added (the gate's decision)."""
        return outputs.read_json(self.path(str(int(n)), REGISTRY_RECORD_FILE))

    def champion(self) -> int | None:
        """The version CHAMPION names; None when there is no CHAMPION file. RegistryError when it
        names no finished version (a hand-edited or broken pointer)."""
        pointer = self.path(CHAMPION_FILE)
        if not FileSystems.exists(pointer):
            return None
        text = outputs.read_text(pointer).strip()
        if not _is_version_name(text):
            raise RegistryError(
                f"{pointer} holds {text[:40]!r}, not a version number; write the number of a "
                f"finished version there (versions: {', '.join(map(str, self.versions())) or 'none'})"
            )
        n = int(text)
        if n not in self.versions():
            raise RegistryError(
                f"{pointer} names version {n}, which is not a finished version of the registry; "
                f"write the number of one there (versions: "
                f"{', '.join(map(str, self.versions())) or 'none'})"
            )
        return n

    def find_version(self, model_version: str) -> int | None:
        """The published version whose record names the card's `model_version` (the highest if,
        against the rules, there are several); None when that model was never published."""
        for n in reversed(self.versions()):
            if self.record(n).get("model_version") == model_version:
                return n
        return None

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self):
        """Hold `<root>/.registry.lock` (exclusive flock, waiting at most lock_wait_seconds);
        re-entrant within this object. Creates a local root. No-op on an object store."""
        if not outputs.is_local(self.root) or self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.path(REGISTRY_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    os.close(fd)
                    raise RegistryError(
                        f"registry {self.root} stayed locked by another promotion"
                        f"{f' (pid {holder})' if holder.isdigit() else ''} for "
                        f"{self.lock_wait_seconds:g}s; wait for it to finish and try again"
                    ) from None
                time.sleep(_LOCK_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd, self._lock_depth = fd, 1
        try:
            yield self
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            os.close(fd)  # releases the lock

    def publish(self, model_dir: str, record: dict | None = None) -> int:
        """Copy the finished model directory `model_dir` in as a new version; return its number.

        Staged in `<root>/.<N>.inprogress-<token>/`: the SavedModel's files at the top, every
        other top-level file of `model_dir` beside them (not its directories: logs/), then
        registry.json ({version, published_at, source_model_dir, model_version} plus `record`),
        `_SUCCESS`, and a rename to `<root>/<N>`, which must not exist (RegistryError if it
        appeared meanwhile: nothing is overwritten). IncompleteOutput for an unfinished model.
        """
        model = ModelOutput(model_dir).check_complete()
        with self.locked():
            names = self._names()
            n = 1 + max((int(name) for name in names if _is_version_name(name)), default=0)
            target = self.version_dir(n)
            staging = self.path(f".{n}.inprogress-{uuid.uuid4().hex[:12]}")
            try:
                _copy_model(model, staging)
                content = dict(record or {})
                content.update(
                    version=n,
                    published_at=outputs.now(),
                    source_model_dir=outputs.normalized(model_dir),
                    model_version=model.model_version,
                )
                outputs.write_json(FileSystems.join(staging, REGISTRY_RECORD_FILE), content)
                _move_into_place(staging, target)
            except BaseException:
                outputs.discard(staging)
                raise
        return n

    def set_champion(self, n: int) -> None:
        """Point CHAMPION at finished version `n` (an atomic replace, under the lock), and add a
        line to CHAMPION_HISTORY_FILE first, so a rerun can tell a promotion cut short before the
        pointer (never champion) from a pointer rolled back by hand (champion before)."""
        with self.locked():
            self.check_version(n)
            history = self.champion_history()
            line = json.dumps({"version": int(n), "at": outputs.now()}, sort_keys=True)
            outputs.write_text_atomic(
                self.path(CHAMPION_HISTORY_FILE),
                "".join(json.dumps(h, sort_keys=True) + "\n" for h in history) + line + "\n",
            )
            outputs.write_text_atomic(self.path(CHAMPION_FILE), f"{int(n)}\n")

    def champion_history(self) -> list[dict]:
        """Every pointer write by textclf, oldest first: [{"version", "at"}]."""
        path = self.path(CHAMPION_HISTORY_FILE)
        if not FileSystems.exists(path):
            return []
        return [json.loads(line) for line in outputs.read_text(path).splitlines() if line.strip()]


# -- copying a model in ------------------------------------------------------------------------


def _copy_model(model: ModelOutput, staging: str) -> None:
    """The SavedModel's entries at the top of `staging`, the model dir's other top-level files
    beside them (not `_SUCCESS`, registry.json, hidden files, or directories such as logs/)."""
    saved_model = model.saved_model_dir
    skip = {SUCCESS_FILE, REGISTRY_RECORD_FILE}
    if outputs.is_local(model.dir) and outputs.is_local(staging):
        os.makedirs(os.path.dirname(staging), exist_ok=True)
        shutil.copytree(
            saved_model,
            staging,
            ignore=lambda d, names: [n for n in names if n in skip] if d == saved_model else [],
        )
        taken = set(os.listdir(staging))
        for name in sorted(os.listdir(model.dir)):
            source = os.path.join(model.dir, name)
            if name in taken or name in skip or name.startswith(".") or os.path.isdir(source):
                continue
            shutil.copy2(source, os.path.join(staging, name))
        return
    copied = _copy_files(saved_model, staging, lambda rel: rel not in skip)
    taken = {rel.split("/", 1)[0] for rel in copied}
    _copy_files(
        model.dir,
        staging,
        lambda rel: (
            "/" not in rel and rel not in taken and rel not in skip and not rel.startswith(".")
        ),
    )


def _copy_files(source: str, target: str, wanted) -> list[str]:
    """Copy every file below `source` whose path relative to it `wanted` accepts (any Beam
    filesystem); returns those relative paths."""
    prefix = source.rstrip("/") + "/"
    found = [m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list]
    rels = [p[len(prefix) :] for p in found if wanted(p[len(prefix) :])]
    if rels:
        FileSystems.copy(
            [prefix + rel for rel in rels], [FileSystems.join(target, rel) for rel in rels]
        )
    return rels


def _move_into_place(staging: str, target: str) -> None:
    """`_SUCCESS`, then staging renamed to `target`, which must not exist. Locally one rename
    (checked first, under the lock; rename(2) would replace an empty directory); on an object
    store the files are renamed and `_SUCCESS` written last."""
    if FileSystems.exists(target) or (outputs.is_local(target) and os.path.lexists(target)):
        raise RegistryError(
            f"{target} appeared while it was being published; nothing was overwritten: "
            f"promote again to publish the next version"
        )
    if outputs.is_local(target):
        outputs.write_text(os.path.join(staging, SUCCESS_FILE), outputs.now() + "\n")
        try:
            os.rename(staging, target)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise RegistryError(f"{target} exists; nothing was overwritten") from None
            raise
        return
    prefix = staging.rstrip("/") + "/"
    files = [m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list]
    FileSystems.rename(files, [FileSystems.join(target, f[len(prefix) :]) for f in files])
    outputs.write_text(FileSystems.join(target, SUCCESS_FILE), outputs.now() + "\n")
    outputs.discard(staging)


# -- resolving `--model_dir ROOT [--model_version N]` -----------------------------------------


def resolve_model_dir(model_dir: str, version: int | None = None) -> tuple[str, int | None]:
    """The model directory to score with, and its registry version (None: not a registry).

    A registry root (it holds CHAMPION or a finished version) gives the champion's directory,
    or version `version`'s when one is pinned; a plain model directory gives itself. RegistryError
    for a pinned version on a plain directory, a version the registry lacks, a registry with no
    champion, or a broken pointer.
    """
    registry = Registry(model_dir)
    try:
        is_registry = registry.is_registry()
    except RegistryError:
        is_registry = False  # a file, not a directory: the model checks will say so
    if not is_registry:
        if version is not None:
            raise RegistryError(
                f"--model_version {version} needs a registry root, and {model_dir} is not one "
                f"(no {CHAMPION_FILE}, no finished version directories); drop --model_version "
                f"or pass the registry root"
            )
        return model_dir, None
    if version is not None:
        return registry.check_version(version), int(version)
    champion = registry.champion()
    if champion is None:
        raise RegistryError(
            f"registry {registry.root} has no champion yet; promote a model with textclf "
            f"promote or pin one with --model_version"
        )
    return registry.version_dir(champion), champion
