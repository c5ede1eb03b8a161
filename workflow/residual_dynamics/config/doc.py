"""Write config/README.md from the config schema, so the documentation never drifts from it.

Run ``python -m residual_dynamics.config.doc`` after changing anything in workflow/schemas/ (the main
schema or a module's fragment in modules/); a test fails while the two differ.
"""

from __future__ import annotations

import json
import sys

from residual_dynamics.config.schema import SCHEMA_PATH, load_schema

README = SCHEMA_PATH.parents[2] / "config" / "README.md"

HEADER = """# Configuration keys

Generated from `workflow/schemas/config.schema.yaml` and `workflow/schemas/modules/*.yaml` by `python -m residual_dynamics.config.doc`
(a test fails when the two differ). Every key is optional unless marked *required*; a key left out
takes its default. `config/config.yaml` is the embedded default and shows every key (a test checks it
against the schema). A `--configfile` is merged over it: its `models` and `datasets` are added to the
default's, `runs` and every other key it gives replace the default's.
Names of models and datasets are used in paths: letters, digits, `_` and `-`.

The related studies (`affine`, `talking_heads`, `embedding_space`) are switched on in
`config/config.yaml` for its own models. While a study's `models` is left as it is there, the study
follows `runs`: models no run records drop out, and a study left with none is switched off, each
change said in one line when the workflow starts. A `models` list you write is checked as written.
Likewise `beyond.datasets` as it is there names the default's own recordings: with `runs` of your
own it is `[]` (every recorded dataset).
Only the `train:` models that some run records or some switched-on study lists are trained.
"""


def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(n) for n in node["oneOf"])
    kind = node.get("type", "")
    if isinstance(kind, list):
        return " \\| ".join(kind)
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"list of {_type(node['items'])}"
    return kind


def _rows(node: dict, prefix: str, defs: dict, required: set[str]) -> list[str]:
    rows = []
    for key, sub in node.get("properties", {}).items():
        sub = defs.get(sub.get("$ref", "").split("/")[-1], sub) if "$ref" in sub else sub
        name = f"{prefix}{key}"
        default = (
            "*required*"
            if key in required
            else (f"`{json.dumps(sub['default'])}`" if "default" in sub else "")
        )
        description = " ".join(sub.get("description", "").split())
        rows.append(f"| `{name}` | {_type(sub)} | {default} | {description} |")
        if sub.get("properties"):
            rows += _rows(sub, f"{name}.", defs, set(sub.get("required", [])))
        items = sub.get("items")
        if isinstance(items, dict) and items.get("properties"):
            rows += _rows(items, f"{name}[].", defs, set(items.get("required", [])))
    return rows


def render() -> str:
    schema = load_schema()
    defs = schema["$defs"]
    table = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    parts = [HEADER, "## Top level", "", *table, *_rows(schema, "", defs, set())]
    for name, title in (("model", "models.&lt;name&gt;"), ("dataset", "datasets.&lt;name&gt;")):
        parts += ["", f"## {title}", "", *table, *_rows(defs[name], "", defs, set())]
    return "\n".join(parts) + "\n"


def main() -> int:
    README.write_text(render())
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
