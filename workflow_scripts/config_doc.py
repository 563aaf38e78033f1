"""Render the config schema as docs/config.md, so the reference can never drift from the schema.

``python -m workflow_scripts.config_doc > docs/config.md``; a test fails when the file is stale.
"""

from __future__ import annotations

import json

from workflow_scripts.config import load_schema

HEADER = """# Configuration reference

Generated from `config/schema/config.schema.yaml` by `python -m workflow_scripts.config_doc`;
do not edit by hand. Keys not given take the default shown. `config/config.yaml` is the
commented default; `--configfile` overrides it key by key.

| key | type | default | description |
|---|---|---|---|
"""


def table_cell(text: str) -> str:
    """``text`` as one cell of a Markdown table that renders as the text itself: on one line, with
    backslashes and pipes escaped (a backslash would otherwise escape the character after it, e.g.
    the ``\\.`` of a regular expression, and a pipe would end the cell)."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def _resolve(node: dict, root: dict) -> dict:
    """``node`` with a local ``$ref`` (``#/$defs/...``, any depth) replaced by what it points to."""
    ref = node.get("$ref")
    if ref:
        target = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _type(node: dict) -> str:
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "")
    if kind == "array" and "items" in node:
        inner = node["items"]
        if "$ref" in inner:
            return "list"
        return "list of " + (_type(inner) + "s" if "enum" not in inner else "quant types")
    bounds = [f"{sign} {node[key]}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"))
              if key in node]
    return (" or ".join(kind) if isinstance(kind, list) else str(kind)) + "".join(f" {b}," for b in bounds).rstrip(",")


def _long_enum(values: list, root: dict) -> str:
    """Quant and tensor types are listed once, below the table."""
    return "tensor type (see below)" if values == root["$defs"]["tensor_type"]["enum"] else "quant type (see below)"


def _rows(node: dict, prefix: str, root: dict):
    node = _resolve(node, root)
    for name, child in node.get("properties", {}).items():
        child = _resolve(child, root)
        key = f"{prefix}.{name}" if prefix else name
        if "const" in child:
            continue
        # In a code span only the table's pipe needs its escape.
        default = f"`{json.dumps(child['default'])}`".replace("|", "\\|") if "default" in child else ""
        description = table_cell(child.get("description", ""))
        kind = _type(child) if "enum" not in child or len(child["enum"]) < 12 else _long_enum(child["enum"], root)
        yield f"| `{key}` | {kind} | {default} | {description} |"
        yield from _rows(child, key, root)
        if child.get("type") == "array" and isinstance(child.get("items"), dict):
            yield from _rows(child["items"], f"{key}[]", root)
        for branch in child.get("allOf", []):
            yield from _rows(branch.get("then", {}), key, root)
        extra = child.get("additionalProperties")
        if isinstance(extra, dict) and ("$ref" in extra or "properties" in extra):
            yield from _rows(extra, f"{key}.<{'quant' if name == 'quant_options' else 'name'}>", root)


def render() -> str:
    schema = load_schema()
    defs = schema.get("$defs", {})
    rows, seen = [], set()
    for row in _rows(schema, "", schema):
        if row not in seen:
            seen.add(row)
            rows.append(row)
    quant_types = ", ".join(f"`{q}`" for q in defs["quant_type"]["enum"])
    tensor_types = ", ".join(f"`{t}`" for t in defs["tensor_type"]["enum"])
    return (HEADER + "\n".join(rows) + "\n\n**Quant types**: " + quant_types
            + ".\n\n**Tensor types** (overrides): " + tensor_types + ".\n")


if __name__ == "__main__":
    print(render(), end="")
