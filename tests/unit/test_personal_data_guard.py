"""The suite's personal-data guard (tests/support/personal_data_guard.py): what it calls
personal data, and that it fails a test whose output holds some."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.personal_data_guard import Registry, parse_body

ROOT = Path(__file__).resolve().parents[2]


def kinds(registry: Registry, text: str) -> list[str]:
    return [kind for kind, _ in registry.leaks(text)]


def test_e_mails_and_french_phones_are_found_anywhere() -> None:
    registry = Registry()
    assert kinds(registry, '{"event": "x", "to": "jeanne.lefevre@example.fr"}') == ["e-mail"]
    for phone in ("0102030405", "06 07 08 09 10", "06.07.08.09.10", "+33 6 07 08 09 10"):
        assert kinds(registry, f"called {phone} today") == ["phone"], phone


def test_what_a_log_line_of_the_trade_holds_is_not_personal() -> None:
    registry = Registry()
    registry.add_fields({"lastName": "Lefèvre", "programme": "HAR", "extcode": "HAR-A101"})
    lines = [
        '{"event": "option_placed", "lot": "HAR-A101", "thirdGuid": "p-0601020304a"}',
        "2026-12-07T18:00:00Z expired at 1765130400 (0.0102030405 s)",
        "redis://127.0.0.1:6379/0 port 40102",
        "version 0102030405.1 id urn:0102030405",
        "Lefèvres and LefèvreX are other words",
    ]
    assert kinds(registry, "\n".join(lines)) == []


def test_names_are_the_contact_fields_values_seen() -> None:
    registry = Registry()
    registry.add_fields({"prospect": {"lastName": "Oudinot", "firstName": "Zéphirine"}})
    registry.add_fields({"lastName": "Le Goff-Kervella", "firstName": "Jean-Noël"})
    registry.add_fields(
        parse_body(b"Name=Dupont&Tags%5B0%5D.Label=HAR", "application/x-www-form-urlencoded")
    )
    registry.add_fields(parse_body(b'{"res1Nom": "Moreau", "price": 1}', "application/json"))
    people = {"Oudinot", "Zéphirine", "Le Goff-Kervella", "Jean-Noël", "Dupont", "Moreau"}
    assert registry.names == people
    assert kinds(registry, "refused: Zéphirine Oudinot\nlot HAR sold to (Moreau)") == [
        "name",
        "name",
    ]
    registry.fuzzed = True  # a fuzzing test: generated text may spell a name by chance
    assert kinds(registry, "GET /lots/Moreau\nto jo@example.fr") == ["e-mail"]
    registry.fuzzed = False
    registry.add("Al")  # too short to tell from a word
    registry.add("0147200001")  # digits: the phone pattern's job
    registry.add("cgp-1")  # a test double named by its guid
    registry.paused = True  # a fuzzer's text
    registry.add("Xqzvt")
    assert registry.names == people


GUARDED = """
import structlog
from service.koban.denonciation import Contact

log = structlog.get_logger()

def test_logs_an_e_mail():
    log.info("mailed", to="someone@example.org")

def test_logs_a_name_it_was_given():
    Contact(last_name="Zorglubovitch")
    log.info("made", who="Zorglubovitch")

def test_logs_guids_only():
    Contact(last_name="Zorglubovitch")
    log.info("made", thirdGuid="3f1c", lot="HAR-A101")

def test_fails_on_its_own():
    assert False
"""


def test_the_guard_fails_a_passing_test_whose_output_leaks(tmp_path: Path) -> None:
    # A child pytest with its output kept here (pytester would echo it into this test's).
    (tmp_path / "test_guarded.py").write_text(GUARDED)
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.personal_data_guard"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = child.stdout
    assert "3 failed, 1 passed" in out, out[-2000:]
    # The failure names the kind and masks the value (pytest shows the raw output below it).
    assert re.search(r"personal data in the output:\n.*e-mail: .*to=<e-mail>", out)
    assert re.search(r"name: .*who=<name>", out)
    assert "test_logs_guids_only FAILED" not in out and "::test_logs_guids_only" not in out
