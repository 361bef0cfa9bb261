"""Every stored result is in the one envelope, and the README's generated tables are what their JSON gives."""

from pathlib import Path

import pytest

from benchmarks import envelope, tables

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("path", sorted(RESULTS.rglob("*.json")), ids=lambda p: str(p.relative_to(RESULTS)))
def test_stored_results_are_in_the_envelope(path):
    payload = envelope.read(path)
    assert payload["schema_version"] == envelope.SCHEMA_VERSION and list(payload)[:6] == list(envelope.KEYS)
    assert payload["runs"], "a result with no measured points"


def test_envelope_checks_and_upgrades():
    old = {"benchmark": "x", "machine": {"cpus": 2}, "rows": [{"n": 1}], "commands": ["python x.py"]}
    new = envelope.upgrade(old)
    assert new["runs"] == [{"n": 1}] and new["rows"] == [{"n": 1}] and new["command"] == "python x.py"
    envelope.check(new, required=("rows",))
    with pytest.raises(ValueError, match="lacks"):
        envelope.check(new, required=("summary",))
    with pytest.raises(ValueError, match="lacks"):
        envelope.check(old)
    sectioned = envelope.wrap("y", {"a": {"runs": [{"n": 2}]}, "b": {"rows": [{"n": 3}]}}, machine={})
    assert sectioned["runs"] == [{"section": "a", "n": 2}, {"section": "b", "n": 3}]


@pytest.mark.parametrize("doc", tables.DOCUMENTS, ids=lambda p: p.name)
def test_document_tables_are_generated_from_the_results(doc):
    text = doc.read_text()
    assert "<!-- table: " in text
    assert tables.render(text) == text, "run python -m benchmarks.tables"


def test_every_registered_table_is_in_a_document():
    text = "".join(doc.read_text() for doc in tables.DOCUMENTS)
    assert [name for name in tables.TABLES if f"<!-- table: {name} -->" not in text] == []


def test_an_empty_placeholder_is_filled_in_place():
    """A new table's opening and closing lines alone: the table lands between them, the text after it stays."""
    text = ("a\n<!-- table: md_training -->\n<!-- /table -->\nkept\n"
            "<!-- table: md_throughput -->\nold\n<!-- /table -->\n")
    out = tables.render(text)
    assert out.startswith("a\n<!-- table: md_training -->\n| run |") and "\n<!-- /table -->\nkept\n" in out
    assert out.count("<!-- /table -->") == 2 and "old" not in out
