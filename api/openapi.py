"""Print the server's OpenAPI document: ``python -m api.openapi > openapi.json`` (committed, tested)."""

from __future__ import annotations

import json

from api.app import create_app
from api.settings import Settings


def document() -> str:
    """The OpenAPI JSON exactly as committed (sorted keys, two-space indent, final newline)."""
    app = create_app(Settings(secret_key="openapi"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(document(), end="")


if __name__ == "__main__":
    main()
