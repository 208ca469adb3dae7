"""Shared request handling of the client routes: form models, JSON fields, URL and webhook checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api import filestore
from api.errors import BadRequest, Unprocessable
from api.multipart import UploadedForm, read_form
from api.settings import Settings
from protocol.errors import ErrorBody
from protocol.states import ContentType, LaneKind, lane_kind_for
from protocol.urlguard import UnsafeURL, check_scheme, check_url

M = TypeVar("M", bound=BaseModel)
JSON_FIELDS = ("options", "metadata")
#: The error answers of the submission routes (body: ErrorBody with a stable ``code``).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Bad input (stable `code`: unsupported_scheme, empty_file, malformed_multipart, ...)"),
        (401, "A valid API key is required"),
        (413, "The upload or batch is too large"),
        (415, "The content matches no processor"),
        (422, "Malformed JSON (`invalid_json`) or a field of the wrong type or value (`validation_error`)"),
        (507, "The server's disk is full; nothing was stored"),
    )
}


def form_model(model: type[M], fields: dict[str, str]) -> M:
    """Validate multipart text fields into ``model``; JSON-valued fields are decoded first."""
    data: dict[str, Any] = {}
    for name, raw in fields.items():
        if raw == "":
            continue  # an empty form field means "not given" (curl -F name=)
        if name in JSON_FIELDS:
            try:
                data[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise Unprocessable(f"{name} is not valid JSON: {exc.msg}", code="invalid_json") from exc
            except RecursionError as exc:  # json.loads follows nesting with the C stack's limit
                raise Unprocessable(f"{name} nests too deeply", code="invalid_json") from exc
        else:
            data[name] = raw
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from exc


def lane_kind(lane: str | None, content_type: ContentType) -> LaneKind:
    """The requested lane, or the content type's default one."""
    return LaneKind(lane) if lane else lane_kind_for(content_type)


def check_source_url(url: str) -> None:
    """URL jobs: only http(s) (the worker checks addresses again when it fetches)."""
    try:
        check_scheme(url)
    except UnsafeURL as exc:
        raise BadRequest(str(exc), code=exc.code) from exc


async def check_webhook(settings: Settings, url: str | None) -> None:
    """Webhook targets: http(s) only; private and loopback addresses unless the operator allows them."""
    if not url:
        return
    try:
        await asyncio.to_thread(check_url, url, settings.webhook_allow_private)
    except UnsafeURL as exc:
        raise BadRequest(f"webhook_url: {exc}", code=f"webhook_{exc.code}") from exc


def wait_seconds(settings: Settings, query: float | None, body: float | None) -> float:
    """How long a /process request waits: query, then body, then the default; capped."""
    value = query if query is not None else body
    if value is None:
        value = settings.process_wait_default_s
    elif value > settings.process_wait_max_s:
        raise Unprocessable(f"wait_s: at most {settings.process_wait_max_s:g} s (MORAG_PROCESS_WAIT_MAX_S)")
    return max(0.0, min(value, settings.process_wait_max_s))


@asynccontextmanager
async def uploaded(request: Request, user_id: int | None, max_files: int = 1) -> AsyncIterator[UploadedForm]:
    """A streamed multipart form; its files are removed unless the body of the ``with`` succeeds."""
    settings: Settings = request.app.state.morag.settings
    engine = request.app.state.morag.engine
    form = await read_form(request, settings, user_id, frozenset({"file", "files"}), max_files)
    try:
        yield form
    except BaseException:
        filestore.remove_written(settings, [row for _, row, _ in form.files])
        await filestore.discard_files(engine, settings, [row["id"] for _, row, _ in form.files])
        raise


def file_request_body(model: type[BaseModel], many: bool = False) -> dict[str, Any]:
    """OpenAPI text for a multipart body parsed by hand: the model's fields plus the file part(s)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    props = dict(schema.get("properties", {}))
    if "content_type" in props:
        props["content_type"] = {"type": "string", "enum": [c.value for c in ContentType]}
    for name in JSON_FIELDS:
        if name in props:
            props[name] = {
                "type": "string",
                "description": f"JSON object ({props[name].get('description', '')})",
            }
    binary = {"type": "string", "format": "binary"}
    if many:
        props["files"] = {"type": "array", "items": binary}
    else:
        props["file"] = binary
    body = {"type": "object", "properties": props, "required": ["files" if many else "file"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}
