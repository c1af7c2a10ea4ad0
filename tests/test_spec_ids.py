"""How tests cite the specifications, checked over every test name and coverage table.

A test that covers a normative statement starts with its id, written in full, upper case,
underscores for its dots and dash: ``test_MQTT_3_1_2_24_...``; several ids are joined
with ``_and_`` or ``_to_`` (``test_MQTT_3_3_1_12_and_MQTT_3_3_1_13_...``). A rule that
has no numbered statement is cited by its section the same way: ``test_section_4_8_2_...``.
So ``pytest -k MQTT_3_1_2_24`` finds every test of a statement, and the coverage tables
(``tests/*-COVERAGE.md``) name only tests that exist. (STOMP 1.2 numbers no sections:
its tests carry the section's name, ``test_heart_beating_...``.)
"""

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted(path for path in [*ROOT.glob("tests/test_*.py"),
                                      *ROOT.glob("interop/**/test_*.py")]
                    if "node_modules" not in path.parts)
TABLES = sorted(ROOT.glob("tests/*-COVERAGE.md"))

CITATION = r"(?:MQTT(?:_\d+){4}|section(?:_\d+)+)"
LEADING = re.compile(rf"test_{CITATION}(?:_(?:and|to)_{CITATION})*(?=_[a-z0-9])")
ANY_CITATION = re.compile(r"(?:MQTT|section)_\d")
# Bare numbers read as a statement or a section: four in a row anywhere, or three or more
# ending the name (a protocol version, 3_1_1, is no citation).
BARE = re.compile(r"(?:_\d+){4}|(?:_\d+){3,}$")
VERSIONS = ("_3_1_1",)


def names_of_tests(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")]


def citation_problem(name: str) -> str | None:
    """Why ``name`` does not cite the specification the one way, or None."""
    leading = LEADING.match(name)
    rest = name[leading.end():] if leading else name
    if ANY_CITATION.search(rest):
        return "the citation does not lead the name"
    if leading and re.match(r"_(?:and|to)_\d", rest):
        return "an id not written in full: MQTT_... for each"
    if (bare := BARE.search(rest)) and bare.group(0) not in VERSIONS:
        return f"bare numbers {bare.group(0)!r}: write MQTT_... or section_..."
    return None


@pytest.mark.parametrize(("name", "problem"), [
    ("test_MQTT_3_1_2_24_keep_alive", None),
    ("test_MQTT_3_3_1_9_to_MQTT_3_3_1_11_retain_handling", None),
    ("test_MQTT_4_7_1_1_and_MQTT_4_7_3_1_invalid_topic_names", None),
    ("test_section_3_14_2_2_2_session_expiry", None),
    ("test_encode_refuses_what_3_1_1_cannot_carry", None),
    ("test_empty_client_id_is_left_to_the_adapter_at_3_1_1", None),
    ("test_keep_alive_MQTT_3_1_2_24", "does not lead"),
    ("test_MQTT_3_3_1_12_and_13_retain_as_published", "in full"),
    ("test_session_expiry_section_3_14_2_2_2", "does not lead"),
    ("test_session_expiry_3_14_2_2_2", "bare numbers"),
    ("test_shared_member_goes_to_another_4_8_2", "bare numbers"),
])
def test_the_citation_rule(name, problem):
    found = citation_problem(name)
    assert found is None if problem is None else problem in found


def test_every_test_name_cites_the_specification_one_way():
    wrong = [f"{path.relative_to(ROOT)}::{name}: {problem}"
             for path in TEST_FILES for name in names_of_tests(path)
             if (problem := citation_problem(name)) is not None]
    assert wrong == []


def cited_tests(table: Path) -> list[tuple[Path | None, str]]:
    """The (file, test name) pairs a coverage table cites, as ``file.py::test_x`` or as
    ``alias::test_x`` with its aliases listed as ``- `alias::` `path` ``; ``test_x_*``
    stands for the tests whose names start so."""
    text = table.read_text()
    aliases = {alias: ROOT / path
               for alias, path in re.findall(r"^- `(\w+)::` `([\w./]+)`", text, re.M)}
    cited = []
    for where, name in re.findall(r"`([\w./]+)::(test_\w+\*?)", text):
        if where in aliases:
            cited.append((aliases[where], name))
        elif "/" in where:
            cited.append((ROOT / where, name))
        else:
            found = [path for path in TEST_FILES if path.name == where]
            cited.append((found[0] if len(found) == 1 else None, name))
    return cited


@pytest.mark.parametrize("table", TABLES, ids=lambda path: path.name)
def test_coverage_tables_cite_tests_that_exist(table):
    cited = cited_tests(table)
    assert len(cited) > 20
    names = {path: set(names_of_tests(path)) for path in TEST_FILES}
    missing = [f"{path.relative_to(ROOT) if path else '?'}::{name}" for path, name in cited
               if path is None or not any(fnmatch(test, name)
                                          for test in names.get(path.resolve(), ()))]
    assert missing == []
