"""A streaming multipart/form-data reader over ``request.stream()``.

Starlette's ``request.form()`` spools the whole body to a temporary file before the handler runs,
so a size limit could only be checked afterwards. Here python-multipart's push parser sees the body
as it arrives: file parts go straight into a :class:`~api.filestore.FileSink` (limit, hash, disk
full handled per chunk), small fields are kept in memory with their own limits. Any failure,
including the client hanging up midway, removes every file this request wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import BadRequest, PayloadTooLarge
from api.filestore import FileSink, remove_written
from api.settings import Settings

MAX_FIELD_BYTES = 1024 * 1024
MAX_FIELDS = 100
#: Bytes a multipart body may carry beyond its files (boundaries, part headers, small fields).
FORM_OVERHEAD = 4 * 1024 * 1024


@dataclass
class UploadedForm:
    """The text fields and finished files (rows not yet inserted) of one multipart body."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)  # (field, row, first bytes)


class _Collector:
    """Callbacks of the push parser: they only record events; the async loop acts on them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": lambda: self.events.append(("begin", None)),
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.events.append(("headers", None)),
            "on_part_data": lambda d, s, e: self.events.append(("data", d[s:e])),
            "on_part_end": lambda: self.events.append(("end", None)),
        }

    def _header_end(self) -> None:
        # A header may arrive split across network chunks: the pieces are joined here.
        self.events.append(("header", (bytes(self._field), bytes(self._value))))
        self._field.clear()
        self._value.clear()

    def drain(self) -> list[tuple[str, Any]]:
        out, self.events = self.events, []
        return out


MAX_BOUNDARY = 256


def _boundary(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequest("the body must be multipart/form-data", code="expected_multipart")
    boundary: bytes = params[b"boundary"]
    if len(boundary) > MAX_BOUNDARY:  # RFC 2046: 1 to 70 characters; the parser refuses > 256
        raise BadRequest(
            f"the multipart boundary is longer than {MAX_BOUNDARY} characters", code="malformed_multipart"
        )
    return boundary


def _check_length(request: Request, settings: Settings) -> None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + FORM_OVERHEAD:
        raise PayloadTooLarge(
            f"the upload exceeds MORAG_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
            code="upload_too_large",
        )


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.sink: FileSink | None = None
        self.value = bytearray()


async def read_form(
    request: Request, settings: Settings, user_id: int | None, file_fields: frozenset[str], max_files: int = 1
) -> UploadedForm:
    """Parse the body as it streams in; file parts named in ``file_fields`` are written to disk."""
    collector = _Collector()
    parser = MultipartParser(_boundary(request), collector.callbacks())  # type: ignore[arg-type]
    _check_length(request, settings)
    form = UploadedForm()
    part: _Part | None = None
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > settings.max_upload_bytes + FORM_OVERHEAD:
                raise PayloadTooLarge(
                    f"the upload exceeds MORAG_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
                    code="upload_too_large",
                )
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart raises its own errors on malformed bodies
                raise BadRequest(f"malformed multipart body: {exc}", code="malformed_multipart") from exc
            for kind, value in collector.drain():
                part = _on_event(kind, value, part, form, settings, user_id, file_fields, max_files)
        parser.finalize()
        for kind, value in collector.drain():
            part = _on_event(kind, value, part, form, settings, user_id, file_fields, max_files)
        if part is not None:
            raise BadRequest("the multipart body ended in the middle of a part", code="malformed_multipart")
    except BaseException as exc:
        if part is not None and part.sink is not None:
            part.sink.abort()
        remove_written(settings, [row for _, row, _ in form.files])
        if isinstance(exc, ClientDisconnect):
            raise BadRequest("the client closed the connection midway", code="upload_aborted") from exc
        raise
    return form


def _on_event(
    kind: str,
    value: Any,
    part: _Part | None,
    form: UploadedForm,
    settings: Settings,
    user_id: int | None,
    file_fields: frozenset[str],
    max_files: int,
) -> _Part | None:
    if kind == "begin":
        return _Part()
    assert part is not None
    if kind == "header":
        name, data = value
        part.headers[name.lower()] = data
    elif kind == "headers":
        _start_part(part, form, settings, user_id, file_fields, max_files)
    elif kind == "data":
        if part.sink is not None:
            part.sink.write(value)
        else:
            part.value += value
            if len(part.value) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"form field {part.name!r} exceeds 1 MiB", code="field_too_large")
    elif kind == "end":
        if part.sink is not None:
            sink, part.sink = part.sink, None
            form.files.append((part.name, sink.finish(), sink.head))
        else:
            try:
                form.fields[part.name] = part.value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"form field {part.name!r} is not UTF-8 text", code="invalid_field") from exc
        return None
    return part


def _start_part(
    part: _Part,
    form: UploadedForm,
    settings: Settings,
    user_id: int | None,
    file_fields: frozenset[str],
    max_files: int,
) -> None:
    disposition, params = parse_options_header(part.headers.get(b"content-disposition", b""))
    if disposition != b"form-data" or b"name" not in params:
        raise BadRequest(
            "a multipart part lacks Content-Disposition: form-data; name=...", code="malformed_multipart"
        )
    part.name = params[b"name"].decode("utf-8", "replace")
    if b"filename" in params:
        if b"\x00" in params[b"filename"]:  # the name is stored as text, and PostgreSQL refuses NUL
            raise BadRequest("the file name contains a NUL character", code="invalid_field")
        if part.name not in file_fields:
            raise BadRequest(f"unexpected file field {part.name!r}", code="unexpected_file")
        if len(form.files) >= max_files:
            if max_files > 1:
                raise PayloadTooLarge(f"a batch holds at most {max_files} files", code="batch_too_large")
            raise BadRequest("one file per request", code="too_many_files")
        part.sink = FileSink(settings, user_id, params[b"filename"].decode("utf-8", "replace"))
    elif part.name in form.fields or len(form.fields) >= MAX_FIELDS:
        raise BadRequest(f"form field {part.name!r} repeated, or too many fields", code="invalid_field")
