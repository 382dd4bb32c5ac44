"""A pytest plugin: no test's output may carry a name, an e-mail or a phone.

Every phase of every test (setup, call, teardown) has its captured stdout, stderr and log
records scanned; the service and the sandbox log there (structlog's lines, aiohttp's
records, child processes writing to the inherited descriptors). A line holding personal
data turns a passing phase into a failure that names the value's kind and the line.

What counts as personal data:
- any e-mail address and any French phone number, whoever wrote them (patterns);
- every name that reached the code under test this session: the values of the contact
  fields of JSON and form bodies read by an aiohttp server in this process (the API, the
  Koban webhooks, the sandbox), and of the contact records built without HTTP (`Contact`,
  `LeadForm`, the sandbox's thirds). A name is made of letters (with spaces, hyphens,
  apostrophes between them): test doubles that name a third by its guid (`cgp-1`) and
  generated input are not names. What fuzzers generate is not registered (schemathesis's
  requests, Hypothesis tests): it is random text that also lands in paths and identifiers,
  and in a fuzzing test it may spell a name registered elsewhere by chance, so such a test
  (a Hypothesis test, or one marked ``fuzzing``) is checked for e-mails and phones only.

The phases' own assertions are not scanned (a test may hold the values it sends); only what
was written while it ran.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web_request

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w+.:/-])(?:\+33 ?|0)[1-9](?:[ .-]?\d{2}){4}(?![\w.:-])")
# Field names (JSON camelCase, Koban's PascalCase, the dossier's res1Nom…) whose values name
# or reach a person; the e-mail and phone fields are caught by the patterns as well.
CONTACT_FIELD = re.compile(
    r"(?i)^(last_?name|first_?name|name|e_?mail|phone|mobile|cell|comments?"
    r"|res\d(nom|prenom|mail|phone|mobile|tel\w*|adresse\w*|ville|cp))$"
)
# Too short to tell a person from a word of the trade.
MIN_NAME = 3
NAME_SHAPE = re.compile(r"^[^\W\d_]+(?:[ '’.-]+[^\W\d_]+)*$")
FUZZER_AGENT = "schemathesis/"
# The mark of a test that sends generated input the guard cannot see as such: schemathesis'
# GETs (they read no body, so their User-Agent is never seen) and Hypothesis run inside a
# plain test. Such a test is checked for e-mails and phones only.
FUZZING_MARK = "fuzzing"


class Registry:
    """The names seen this session, matched whole-word and case-sensitively."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.paused = False  # while a fuzzer runs
        self.fuzzed = False  # the running test sent generated input
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: object) -> None:
        if self.paused or not isinstance(value, str):
            return
        value = value.strip()
        if len(value) < MIN_NAME or value in self.names or not NAME_SHAPE.match(value):
            return
        self.names.add(value)
        self._pattern = None

    def add_fields(self, data: object) -> None:
        """The contact fields' values anywhere in a parsed JSON or form body."""
        for key, value in _walk(data):
            if CONTACT_FIELD.match(key):
                self.add(value)

    def leaks(self, text: str) -> Iterator[tuple[str, str]]:
        """(kind, line) for each line of `text` that holds personal data."""
        for line in text.splitlines():
            if EMAIL.search(line):
                yield "e-mail", line
            elif PHONE.search(line):
                yield "phone", line
            elif self.names and not self.fuzzed and self.pattern().search(line):
                yield "name", line

    def pattern(self) -> re.Pattern[str]:
        if self._pattern is None:
            alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
        return self._pattern


def _walk(data: object, key: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk(v, str(k))
    elif isinstance(data, list):
        for v in data:
            yield from _walk(v, key)
    else:
        yield key, data


def parse_body(body: bytes, content_type: str) -> object:
    """A request body as JSON or as a form (``Tags[0].Label``-style keys keep their last
    part); anything else is nothing."""
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            return json.loads(text)
        except ValueError:
            return None
    if "form" in content_type:
        return {k.rsplit(".", 1)[-1]: v for k, v in parse_qsl(text, keep_blank_values=True)}
    return None


REGISTRY = Registry()


def _watch_requests(registry: Registry) -> Callable[[], None]:
    """Every body an aiohttp server of this process reads goes through `registry`."""
    original = web_request.BaseRequest.read

    async def read(self: web_request.BaseRequest) -> bytes:
        body = await original(self)
        if self.headers.get("User-Agent", "").startswith(FUZZER_AGENT):
            registry.fuzzed = True
        else:
            registry.add_fields(parse_body(body, self.content_type))
        return body

    web_request.BaseRequest.read = read  # type: ignore[method-assign]

    def undo() -> None:
        web_request.BaseRequest.read = original  # type: ignore[method-assign]

    return undo


def _undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    def undo() -> None:
        for one in undos:
            one()

    return undo


def _watch_records(registry: Registry) -> Callable[[], None]:
    """Contact records built without HTTP (unit tests, the sandbox's demo stock)."""
    from service.koban.denonciation import Contact
    from service.koban.lead_form import LeadForm
    from service.sandbox.stock import Third

    undos: list[Callable[[], None]] = []
    for cls, fields in (
        (Contact, ("last_name", "first_name", "email", "phone", "mobile")),
        (LeadForm, ("name", "first_name", "email", "phone", "mobile", "comments")),
        (Third, ("name", "first_name", "email", "phone", "mobile")),
    ):
        undos.append(_after_init(cls, fields, registry))
    return _undo_all(undos)


def _after_init(cls: type, fields: Iterable[str], registry: Registry) -> Callable[[], None]:
    original = cls.__init__
    names = tuple(fields)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in names:
            registry.add(getattr(self, name, None))

    cls.__init__ = init  # type: ignore[misc]

    def undo() -> None:
        cls.__init__ = original  # type: ignore[misc]

    return undo


def pytest_configure(config: pytest.Config) -> None:
    from service.sandbox import demo

    # The demo stock's people, known before any child process (`run`) logs about them.
    for _guid, name, first in (*demo.PROSPECTS, *demo.CGPS):
        REGISTRY.add(name)
        REGISTRY.add(first)
    undos = [_watch_requests(REGISTRY), _watch_records(REGISTRY)]
    config.add_cleanup(_undo_all(undos))


def assert_no_personal_data(text: str, where: str) -> None:
    """For output the guard does not see: a child process's log file, say."""
    found = list(REGISTRY.leaks(text))
    assert not found, f"personal data in {where}:\n" + "\n".join(
        f"  {kind}: {_masked(line)}" for kind, line in found[:10]
    )


def _masked(line: str) -> str:
    """The line with its personal values hidden: the failure report is output too."""
    line = EMAIL.sub("<e-mail>", line)
    line = PHONE.sub("<phone>", line)
    if REGISTRY.names:
        line = REGISTRY.pattern().sub("<name>", line)
    return line[:300]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, None]:
    hypothesis = bool(getattr(getattr(item, "obj", None), "is_hypothesis_test", False))
    REGISTRY.paused = REGISTRY.fuzzed = hypothesis
    if item.get_closest_marker(FUZZING_MARK) is not None:
        REGISTRY.fuzzed = True
    try:
        yield
    finally:
        REGISTRY.paused = REGISTRY.fuzzed = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.passed:
        return
    found = [
        (title, kind, line)
        for title, content in report.sections
        if title.endswith(f" {report.when}")
        for kind, line in REGISTRY.leaks(content)
    ]
    if found:
        report.outcome = "failed"
        report.longrepr = "personal data in the output:\n" + "\n".join(
            f"  [{title}] {kind}: {_masked(line)}" for title, kind, line in found[:10]
        )
