"""Every `textclf` command's --help says what each flag does and its default (or that it is
required), and `textclf --version` prints the installed package's version.

The commands are found through the CLI's own dispatch table (`cli.SUBCOMMANDS`), so a new
command, or a new flag of an old one, is held to the same rule without editing this file."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipeline import cli

# Actions argparse documents itself.
SELF_DOCUMENTED = (argparse._HelpAction, argparse._VersionAction)


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser a `textclf <command>` reads its arguments with: its module's build_parser()."""
    return importlib.import_module(cli.SUBCOMMANDS[command][0]).build_parser()


def documented_actions(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.Action]]:
    """(where, action) of every action a person sets, through nested subcommands."""
    for action in parser._actions:  # argparse lists its actions nowhere public
        if isinstance(action, SELF_DOCUMENTED):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from documented_actions(sub, f"{path} {name}")
            continue
        yield path, action


def problems(parser: argparse.ArgumentParser, path: str) -> list[str]:
    found = []
    for where, action in documented_actions(parser, path):
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            found.append(f"{where} {name}: no help")
            continue
        shown = parser._get_formatter()._expand_help(action).lower()  # what --help prints
        if "default" not in shown and "required" not in shown:
            found.append(f"{where} {name}: help names neither its default nor 'required'")
    return found


@pytest.mark.parametrize("command", list(cli.SUBCOMMANDS))
def test_every_flag_says_what_it_does_and_its_default(command):
    parser = command_parser(command)
    assert problems(parser, f"textclf {command}") == []
    parser.format_help()  # every help string formats (a stray % would raise here)


def test_the_top_level_flags_say_what_they_do():
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help, action.dest
    assert "--version" in parser.format_help()


def test_the_check_catches_a_flag_without_its_default():
    parser = argparse.ArgumentParser()
    parser.add_argument("--good", default=3, help="three (default: %(default)s)")
    parser.add_argument("--needed", required=True, help="needed; required")
    parser.add_argument("--quiet", action="store_true", help="say less")
    parser.add_argument("--bare", type=int, default=1)
    assert problems(parser, "x") == [
        "x --quiet: help names neither its default nor 'required'",
        "x --bare: no help",
    ]


def test_version_prints_the_installed_package_version(capsys):
    assert cli.main(["--version"]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert first == f"textclf {importlib.metadata.version('textclf')}"
    assert f"apache-beam {importlib.metadata.version('apache-beam')}" in rest[0]


def test_version_through_the_command_line_exits_0():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"textclf {importlib.metadata.version('textclf')}\n")


def test_a_bad_progress_setting_is_refused_with_one_line_before_any_work(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("TEXTCLF_PROGRESS_SECONDS", "soon")
    out = tmp_path / "out"
    argv = ["score", "--model_dir", str(tmp_path), "--input", "x.parquet", "--output", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "TEXTCLF_PROGRESS_SECONDS='soon'" in err[0]
    assert not out.exists()


def test_version_takes_no_other_argument(capsys):
    assert cli.main(["--version", "junk"]) == 2
