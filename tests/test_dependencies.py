"""One set of versions everywhere, on the Python the code needs (fast: reads files only).

requirements.lock pins every package that setup.py's install_requires and its test and bench
extras pull in, for CPython 3.11 on x86-64 Linux; `make` (and so CI's `make test`) and the image
(templates/Dockerfile) install with it as constraints. These tests hold the lock to setup.py's own
pins, keep it usable as a pip constraints file, check that each installer uses it, and keep
setup.py's python_requires honest about the 3.11-only standard library the code imports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
LOCKED_EXTRAS = ("test", "bench")


def setup_call() -> dict[str, object]:
    """setup.py's setup() keywords that are literals (or names of literals), as Python values."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    names = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    call = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        if getattr(node.value.func, "id", None) == "setup"
    )
    kwargs = {}
    for kw in call.keywords:
        value = names.get(kw.value.id, kw.value) if isinstance(kw.value, ast.Name) else kw.value
        if not isinstance(value, ast.Call):  # packages=find_packages(...)
            kwargs[kw.arg] = ast.literal_eval(value)
    return kwargs


def lock_pins() -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, eq, version = line.partition("==")
            assert eq and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name), (
                f"requirements.lock: {line!r} is not name==version (a constraints file takes no "
                "extras, URLs or -e lines; regenerate it with `make lock`)"
            )
            pins[canonicalize_name(name)] = version.strip()
    return pins


def locked_requirements() -> list[Requirement]:
    setup = setup_call()
    extras = setup["extras_require"]
    return [
        Requirement(r)
        for r in [*setup["install_requires"], *(r for e in LOCKED_EXTRAS for r in extras[e])]
    ]


@pytest.mark.parametrize("req", locked_requirements(), ids=str)
def test_every_setup_py_requirement_is_locked_at_a_version_it_allows(req):
    pins = lock_pins()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is in setup.py but not in requirements.lock: run `make lock`"
    exact = [s.version for s in req.specifier if s.operator == "=="]
    if exact:
        assert pins[name] == exact[0], f"setup.py pins {req}, requirements.lock {pins[name]}"
    assert req.specifier.contains(pins[name], prereleases=True), f"{req} vs {pins[name]}"


def test_the_lock_pins_no_package_of_its_own_and_says_how_it_was_made():
    text = LOCK.read_text()
    assert "textclf" not in lock_pins(), "the package itself is installed from the tree"
    assert re.search(r"^#\s+make lock$", text, re.MULTILINE), "regenerate with `make lock`"


def test_make_installs_with_the_lock_and_reinstalls_when_it_changes():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements\.lock$", makefile, re.MULTILINE)
    assert re.search(r"^\$\(STAMP\): setup\.py \$\(LOCK\)$", makefile, re.MULTILINE)
    assert "pip install --quiet -c $(LOCK) -e '.[test]'" in makefile
    lock_recipe = makefile.split("\nlock:\n", 1)[1].split("\n\n", 1)[0]
    assert "uv pip compile setup.py --extra test --extra bench" in lock_recipe
    assert "--python-version 3.11" in lock_recipe and "--output-file $(LOCK)" in lock_recipe
    assert "uv==$(UV_VERSION)" in lock_recipe, "the lock tool is pinned"
    assert re.search(r"^UV_VERSION := \d+\.\d+\.\d+$", makefile, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE), "CI installs through make"


def test_the_image_installs_with_the_lock():
    dockerfile = (ROOT / "templates" / "Dockerfile").read_text()
    assert re.search(r"^COPY requirements\.lock ", dockerfile, re.MULTILINE)
    installs = re.findall(r"pip install [^\n\\&]*", dockerfile)
    assert installs == ["pip install --no-cache-dir -c requirements.lock . "], installs


def test_python_requires_is_the_python_the_code_needs():
    python_requires = SpecifierSet(setup_call()["python_requires"])
    # pipeline/run_config.py and pipeline/demo.py read TOML with tomllib, new in 3.11.
    users = [p for p in (ROOT / "pipeline").rglob("*.py") if "import tomllib" in p.read_text()]
    assert users, "no module imports tomllib any more: python_requires may reach lower"
    assert "3.10" not in python_requires and "3.11" in python_requires
    assert "3.11" in setup_call()["classifiers"][-1]
    assert 'target-version = "py311"' in (ROOT / "pyproject.toml").read_text()
