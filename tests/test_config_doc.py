"""docs/config.md carries every schema description whole, and no description was cut by YAML parsing."""

from __future__ import annotations

from pathlib import Path

import yaml

from workflow_scripts.config_doc import table_cell

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "config" / "schema" / "config.schema.yaml").read_text())
# Branches whose description is an error-message clause set inside a sentence by config.py
# ("{description} (got keys ...)"), not a sentence of its own.
CLAUSE_BRANCHES = {"oneOf", "anyOf", "not"}


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells, read back as the text they render: '\\x' is x, '|' ends a cell."""
    cells, cell, chars = [], [], iter(line.strip().removeprefix("|"))
    for char in chars:
        if char == "\\":
            cell.append(next(chars, ""))
        elif char == "|":
            cells.append("".join(cell).strip())
            cell = []
        else:
            cell.append(char)
    return cells


def _walk(node, path: tuple = ()):
    """Every (path, mapping) of the schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _property_descriptions() -> set[str]:
    """The description of every configurable key (a mapping under 'properties'), as the docs show it."""
    found = set()
    for path, node in _walk(SCHEMA):
        if len(path) >= 2 and path[-2] == "properties":
            node = _resolve(node)
            if "description" in node and "const" not in node:
                found.add(" ".join(node["description"].split()))
    return found


def cut_descriptions(schema: dict) -> list[str]:
    """Descriptions that look cut short, and keys that look like the cut-off rest of one.

    An unquoted comma in a YAML flow mapping ({description: a, b., type: ...}) ends the text at the
    comma and makes the rest a key with no value: a description must end with '.' or ')' (an error
    clause under oneOf/anyOf/not need not) and close every parenthesis it opens, and no key but
    'default' may be null."""
    problems = []
    for path, node in _walk(schema):
        where = "/".join(map(str, path)) or "(top)"
        for key, value in node.items():
            if value is None and key != "default":
                problems.append(f"{where}: key {key!r} has no value")
        text = node.get("description")
        if not isinstance(text, str):
            continue
        if text.count("(") != text.count(")"):
            problems.append(f"{where}: unbalanced parentheses in {text!r}")
        if not CLAUSE_BRANCHES & set(map(str, path)) and not text.rstrip().endswith((".", ")")):
            problems.append(f"{where}: does not end with '.' or ')': {text!r}")
    return problems


def test_no_schema_description_was_cut_by_yaml_parsing():
    assert cut_descriptions(SCHEMA) == []


def test_the_cut_check_catches_an_unquoted_comma_in_a_flow_mapping():
    # benchmark.prompt as it was: the docs showed "Prompt of the reference task (load time".
    broken = yaml.safe_load("prompt: {description: Prompt of the reference task (load time, time to first token and "
                            "latency measured with llama-cpp-python)., type: string}")
    assert broken["prompt"]["description"] == "Prompt of the reference task (load time"
    assert cut_descriptions(broken) == [
        "prompt: key 'time to first token and latency measured with llama-cpp-python).' has no value",
        "prompt: unbalanced parentheses in 'Prompt of the reference task (load time'",
        "prompt: does not end with '.' or ')': 'Prompt of the reference task (load time'",
    ]


def test_every_schema_description_is_whole_in_the_generated_docs():
    rows = [line for line in (ROOT / "docs" / "config.md").read_text().splitlines() if line.startswith("| `")]
    shown = {_cells(row)[3] for row in rows}
    assert all(len(_cells(row)) == 4 for row in rows), "a row has a stray cell separator"
    assert _property_descriptions() - shown == set()
    assert ("Prompt of the reference task (load time, time to first token and latency measured with "
            "llama-cpp-python).") in shown


def test_table_cell_escapes_what_markdown_would_eat():
    assert table_cell("a | b\n  'blk\\.[0-3]'") == "a \\| b 'blk\\\\.[0-3]'"
    assert _cells("| `k` | " + table_cell("x | y \\. z") + " |") == ["`k`", "x | y \\. z"]
