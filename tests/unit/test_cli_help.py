"""The CLI's help text: it lists the exit codes the commands use, and every document it
names is in the repository (no Redis, no HTTP)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.entrypoints import cli
from service.entrypoints.commands import exit_codes

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [[], ["lot"], ["intents"], ["events", "tail"], ["sync"], ["clock"], ["scheduler"]]


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of([], capsys).split())  # argparse wraps lines
    assert "exit codes:" in text
    for code, meaning in exit_codes.EXIT_CODES.items():
        assert f"{code} {meaning}" in text
    assert set(exit_codes.EXIT_CODES) == {
        exit_codes.OK,
        exit_codes.NOT_FOUND,
        exit_codes.USAGE,
        exit_codes.UNAVAILABLE,
    }


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "top")
def test_help_names_only_documents_of_the_repository(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(argv, capsys)
    for document in re.findall(r"\b[\w./-]+\.md\b", text):
        assert (ROOT / document).is_file(), f"{document} named by `{' '.join(argv)} --help`"
    assert not re.search(r"SPEC|STACK|STYLE|§", text)


def test_the_exit_codes_are_documented_alike() -> None:
    page = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    for code, meaning in exit_codes.EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in page


def test_json_goes_with_listing_and_check_only(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["intents", "t", "--resolve=x", "--json"], ["scheduler", "--json"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == exit_codes.USAGE
        assert "--json" in capsys.readouterr().err
