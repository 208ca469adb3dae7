"""Write docs/configuration.md from Settings: ``python -m api.settings_doc > docs/configuration.md``."""

from __future__ import annotations

from typing import Any

from api.settings import Settings

INTRO = """# Configuration

Every server setting is an environment variable with the `MORAG_` prefix (pydantic-settings;
`MORAG_DATA_DIR=/srv/morag`, booleans as `true`/`false`). Generated from `api/settings.py` by
`python -m api.settings_doc > docs/configuration.md`; a test keeps this list complete.

| Variable | Default | Description |
|---|---|---|
"""


def _default(value: Any) -> str:
    if value is None:
        return "(unset)"
    return f"`{value}`"


def render() -> str:
    """The Markdown table of every MORAG_* setting."""
    rows = []
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `MORAG_{name.upper()}` | {_default(field.default)} | {desc} |")
    return INTRO + "\n".join(rows) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
