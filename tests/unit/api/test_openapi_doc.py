"""The OpenAPI document drives a client: security scheme, stable ids, valid examples everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[3]
DOC = json.loads((ROOT / "openapi.json").read_text())
OPEN = {"/health", "/ready", "/metrics"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in DOC["paths"].items() for method, op in ops.items()]


def test_bearer_scheme_and_every_keyed_operation_asks_for_it() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    for path, method, op in _operations():
        if path in OPEN:
            assert "security" not in op, path
        else:
            assert {"bearer": []} in op["security"], f"{method} {path}"


def test_operation_ids_are_short_unique_and_snake_case() -> None:
    ids = [op["operationId"] for _, _, op in _operations()]
    assert len(ids) == len(set(ids))
    for op_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9_]{1,40}", op_id) and "_api_v1_" not in op_id, op_id
    assert {"ingest_file", "claim", "get_status", "search", "ready", "metrics"} <= set(ids)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "components": DOC["components"]}


def test_every_operation_has_a_valid_example_of_its_body_and_its_success_answer() -> None:
    for path, method, op in _operations():
        media = []
        for content in op.get("requestBody", {}).get("content", {}).values():
            media.append(("request", content))
        for status, answer in op["responses"].items():
            if status.startswith("2") and status != "204":
                media.extend((status, c) for c in answer.get("content", {}).values())
        assert media, f"{method} {path} documents no body and no success content"
        for where, content in media:
            assert "example" in content or "examples" in content, f"{method} {path} {where}"
            if "example" in content and content.get("schema") and where != "request":
                jsonschema.Draft202012Validator(_resolve(content["schema"])).validate(content["example"])
            elif "example" in content and content.get("schema", {}).get("$ref"):
                jsonschema.Draft202012Validator(_resolve(content["schema"])).validate(content["example"])


def test_task_states_are_enums() -> None:
    status = DOC["components"]["schemas"]["TaskStatus"]["properties"]
    assert "$ref" in status["status"] or "enum" in status["status"]
    stage = status["stage"]
    if "$ref" in stage:
        stage = DOC["components"]["schemas"][stage["$ref"].rsplit("/", 1)[-1]]
    assert stage.get("enum") == ["process", "index", "done"]
