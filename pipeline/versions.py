"""The versions of Python and the packages that decide a stage's output, as both the model card
and the run manifest record them (one list, read from the installed distributions)."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = (
    "textclf",
    "apache-beam",
    "tensorflow",
    "tensorflow-transform",
    "tfx-bsl",
    "keras",
    "pyarrow",
    "numpy",
    "matplotlib",
)


def package_versions() -> dict[str, str | None]:
    """Python's version and each of PACKAGES' installed version (None when not installed)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
