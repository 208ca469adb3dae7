"""The OpenAPI document a client can drive: bearer security, stable operation ids, examples.

* Operation ids are the route functions' names (``ingest_file``, ``claim``): stable as long as the
  function keeps its name, unique (a test checks), and what generated clients call their methods.
* Every operation that can answer 401 needs a key: ``Authorization: Bearer KEY`` (the scheme
  Swagger's "Authorize" button fills in) or ``X-API-Key: KEY``.
* Every operation gets an example for its request body and its success answer: the route's own
  when it has one, else one built from the schema with realistic values for known field names.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key made with `python -m api keys create` (client or worker scope).",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}

TASK_ID = "0641f3a2b7c8d9e0a1b2c3d4e5f6a7b8"
# Values for fields by name: examples read like real traffic, not "string".
_BY_NAME: dict[str, Any] = {
    "task_id": TASK_ID,
    "job_id": TASK_ID,
    "batch_id": "0641f3a2b7c8d9e0b1b2c3d4e5f6a7b8",
    "file_id": "0641f3a2b7c8d9e0c1b2c3d4e5f6a7b8",
    "document_id": "talk-2026-11",
    "worker_id": "gpu-box-1",
    "key_id": "k_3f9a1c2b",
    "lease_token": "Zp3k9VYb2Qm1xT7rW0aLcE5uH8sJ4nDf",
    "claim_id": "claim-0001",
    "url": "https://example.org/talks/lanes.mp3",
    "source_url": "https://example.org/talks/lanes.mp3",
    "webhook_url": "https://hooks.example.org/morag",
    "query": "what did the speaker say about lanes?",
    "markdown": "# Lanes\n\nEach user has a GPU lane and a CPU lane.",
    "text": "Each user has a GPU lane and a CPU lane.",
    "name": "thumbnail.jpg",
    "mime": "image/jpeg",
    "mime_type": "audio/mpeg",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "domain": "youtube.com",
    "lane": "gpu-tasks-1",
    "message": "transcribing: 40%",
    "progress": 0.4,
    "code": "not_found",
    "version": "0.1.0",
    "source": "lanes.mp3",
    "score": 0.83,
    "limit": 5,
    "wait_s": 20.0,
    "max_jobs": 1,
}
# Optional fields that are empty in a typical answer (a task without an error).
_NULL_NAMES = frozenset({"error", "error_class", "next_cursor", "retry_at", "finished_at"})
_BY_FORMAT = {
    "date-time": "2026-12-02T12:00:00Z",
    "date": "2026-12-02",
    "uri": "https://example.org/talks/lanes.mp3",
    "binary": "(file bytes)",
}


def operation_id(route: APIRoute) -> str:
    """The route function's name: ``ingest_file`` rather than ``ingest_file_api_v1_ingest_file_post``."""
    return route.name


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the generator below (cached like FastAPI's)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(base())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the security schemes, per-operation security, and examples."""
    doc = copy.deepcopy(doc)
    components = doc.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.get("schemas", {})
    for ops in doc["paths"].values():
        for op in ops.values():
            responses = op.get("responses", {})
            if "401" in responses:
                op["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
            body = op.get("requestBody", {}).get("content", {})
            for media in body.values():
                _ensure_example(media, schemas)
            for status, answer in responses.items():
                if status.startswith("2") and status != "204":
                    if not answer.get("content"):  # a file download: whatever type the file has
                        answer["content"] = {"*/*": {}}
                    for media in answer["content"].values():
                        _ensure_example(media, schemas)
    return doc


def _ensure_example(media: dict[str, Any], schemas: dict[str, Any]) -> None:
    if "schema" not in media:  # bytes (a file, an artifact)
        media["schema"] = {"type": "string", "format": "binary"}
    if "example" in media or "examples" in media:
        return
    media["example"] = example_for(media["schema"], schemas)


def example_for(  # noqa: C901 (one branch per JSON Schema keyword, flat on purpose)
    schema: dict[str, Any], schemas: dict[str, Any], name: str | None = None, depth: int = 0
) -> Any:
    """A plausible value for ``schema`` (references resolved, optional fields included)."""
    if "$ref" in schema:
        return example_for(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas, name, depth)
    for key in ("example", "default"):
        if key in schema and schema[key] is not None:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            if name in _NULL_NAMES and any(s.get("type") == "null" for s in schema[key]):
                return None
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_for(options[0], schemas, name, depth)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if name in _BY_NAME and depth > 0 and kind in ("string", "number", "integer"):
        return _BY_NAME[name]
    if kind == "object" or "properties" in schema:
        if depth > 6:
            return {}
        props = schema.get("properties", {})
        return {k: example_for(v, schemas, k, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [example_for(schema.get("items", {}), schemas, name, depth + 1)]
    if kind == "string":
        return _BY_FORMAT.get(schema.get("format", ""), name.replace("_", " ") if name else "text")
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return None
