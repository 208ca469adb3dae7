"""The hot JSON routes (claim, complete, heartbeat, fail, submit a URL) without FastAPI's per-request
machinery, and with the very same endpoint functions and answers.

A py-spy profile of ``POST /process/url`` (bench/http_costs.py) put a third of the server's CPU
between the last middleware and the endpoint: Starlette's router trying each route in turn,
FastAPI's request handler, dependency solving, JSON read twice (``json.loads``, then validation),
two exception layers. For the routes named in ``HOT_ROUTES`` this middleware does the same work
directly: one pass of pydantic over the raw body (``model_validate_json``), the route's scalar
query parameters through FastAPI's own field validators, its dependencies (each a function of
the request alone: the key check, the server state) awaited in order, the endpoint called with the
same arguments FastAPI would pass, the answer serialized with the route's response model, and an
exception answered by the application's own exception handlers. Every middleware outside this one
(request id and access log, metrics, rate limits, body limits, the URL guard) still runs.

Only the happy path is taken here. Anything else goes to FastAPI untouched, the body replayed as it
arrived, so every refusal keeps FastAPI's exact status and error body: a body that does not
validate, a query value that does not, a content type that is not JSON, a test's
``dependency_overrides``. The plan of each route is read from its FastAPI declaration when the app
is built, and a route whose shape this path cannot serve stops the build (``plan_routes``), so a
route changed later cannot silently drift from what its declaration says. ``MORAG_FAST_ROUTES=false``
sends every request through FastAPI.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import paths

#: (method, path) of the routes served here: what a worker and a submitting client call per job.
HOT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", paths.CLAIM),
    ("POST", paths.COMPLETE),
    ("POST", paths.COMPLETE_BATCH),
    ("POST", paths.HEARTBEAT),
    ("POST", paths.FAIL),
    ("POST", "/process/url"),
    ("POST", "/api/v1/ingest/url"),
)


class NotServable(RuntimeError):
    """A route named in HOT_ROUTES has a shape this path does not serve (the app is not built)."""


@dataclass(frozen=True)
class FastRoute:
    route: APIRoute  # what the router puts in scope["route"] (metrics label by its path)
    endpoint: Callable[..., Awaitable[Any]]
    body_name: str
    body_model: type[BaseModel]
    query: tuple[Any, ...]  # FastAPI's ModelField of each scalar query parameter
    #: (parameter name, dependency) in declaration order; each takes the request alone
    dependencies: tuple[tuple[str, Callable[[Request], Awaitable[Any]]], ...]
    request_name: str | None
    response_name: str | None
    status_code: int
    answer: TypeAdapter[Any]


def _json(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json`` (parameters such as charset allowed)."""
    main = content_type.split(b";", 1)[0].strip().lower()
    return main == b"application/json" or (main.startswith(b"application/") and main.endswith(b"+json"))


def _plain_dependency(dep: Dependant) -> Callable[[Request], Awaitable[Any]]:
    """A dependency this path can call: a coroutine function of the request alone."""
    call = dep.call
    alone = (
        call is not None
        and inspect.iscoroutinefunction(call)
        and dep.request_param_name is not None
        and not (dep.dependencies or dep.path_params or dep.query_params or dep.header_params)
        and not (dep.cookie_params or dep.body_params or dep.response_param_name)
        and not (dep.background_tasks_param_name or dep.security_scopes_param_name)
        and not (dep.websocket_param_name or dep.http_connection_param_name)
    )
    if not alone or call is None:
        raise NotServable(f"dependency {dep.name!r} is not a coroutine of the request alone")
    return call


def _scalar_query(where: str, field: Any) -> Any:
    """A query parameter this path reads itself: one scalar value (not a list, not a model)."""
    annotation = field.field_info.annotation
    scalar = (float, int, str, bool, float | None, int | None, str | None, bool | None)
    if annotation not in scalar:
        raise NotServable(f"{where}: query parameter {field.name!r} is not a plain scalar")
    return field


def _declared(app: FastAPI) -> Iterator[tuple[APIRoute, Any]]:
    """(route, its effective declaration) of every FastAPI route of ``app``. FastAPI >= 0.160 keeps
    an included router's routes unflattened: their effective declaration (prefix, the router's
    dependencies and responses added) is a context object with the same attribute names."""
    from fastapi import routing

    nested = getattr(routing, "_iter_routes_with_context", None)
    pairs = nested(app.routes) if nested else ((r, None) for r in app.routes)
    for route, context in pairs:
        if isinstance(route, APIRoute):
            yield route, context if context is not None else route


def plan(route: APIRoute, declared: Any = None) -> FastRoute:
    """How to serve ``route`` here, read from its (effective) declaration; NotServable when it cannot be."""
    r: Any = declared if declared is not None else route
    d: Dependant = r.dependant
    where = f"{sorted(r.methods or ())} {r.path}"
    if not r.body_field or len(d.body_params) != 1 or r._embed_body_fields:
        raise NotServable(f"{where}: needs exactly one JSON model body")
    model = r.body_field.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise NotServable(f"{where}: its body is not a pydantic model")
    if d.path_params or d.header_params or d.cookie_params:
        raise NotServable(f"{where}: path, header or cookie parameters")
    if d.background_tasks_param_name or d.security_scopes_param_name or d.http_connection_param_name:
        raise NotServable(f"{where}: background tasks or security scopes")
    if r.response_model is None:
        raise NotServable(f"{where}: needs a response model")
    shaped = (
        r.response_model_include,
        r.response_model_exclude,
        r.response_model_exclude_unset,
        r.response_model_exclude_defaults,
        r.response_model_exclude_none,
        not r.response_model_by_alias,
    )
    if any(shaped):
        raise NotServable(f"{where}: response model include/exclude options")
    if not isinstance(r.response_class, DefaultPlaceholder):
        raise NotServable(f"{where}: a custom response class")
    if not inspect.iscoroutinefunction(r.endpoint):
        raise NotServable(f"{where}: the endpoint is not a coroutine function")
    deps = tuple((str(dep.name), _plain_dependency(dep)) for dep in d.dependencies)
    return FastRoute(
        route=route,
        endpoint=r.endpoint,
        body_name=r.body_field.name,
        body_model=model,
        query=tuple(_scalar_query(where, f) for f in d.query_params),
        dependencies=deps,
        request_name=d.request_param_name,
        response_name=d.response_param_name,
        status_code=r.status_code or 200,
        answer=TypeAdapter(r.response_model),
    )


def plan_routes(
    app: FastAPI, wanted: Iterable[tuple[str, str]] = HOT_ROUTES
) -> dict[tuple[str, str], FastRoute]:
    """The plan of every wanted route of ``app``; NotServable when one is missing or unservable."""
    declared = list(_declared(app))
    plans = {}
    for method, path in wanted:
        found = [(route, r) for route, r in declared if r.path == path and method in r.methods]
        if len(found) != 1:
            raise NotServable(f"{method} {path}: {len(found)} routes declared, expected 1")
        plans[(method, path)] = plan(*found[0])
    return plans


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the ``root_path`` a proxy mounts the server under
    (``--root-path``), as Starlette's own router strips it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages already read."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class FastRoutes:
    """ASGI middleware serving the planned routes (see the module docstring); innermost of ours."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], FastRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = None
        if scope["type"] == "http":
            fast = self.routes.get((scope["method"], _route_path(scope)))
        app = scope.get("app")
        if fast is None or not isinstance(app, FastAPI) or app.dependency_overrides:
            await self.app(scope, receive, send)
            return
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-type":  # the first one, as Starlette's request.headers reads it
                content_type = value
                break
        messages: list[Message] = []
        more = True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client left: FastAPI's own answer to that
                await self.app(scope, _replaying(messages, receive), send)
                return
            more = message.get("more_body", False)
        body = b"".join(m.get("body", b"") for m in messages)  # one copy, however many chunks
        request = Request(scope, receive)
        request._body = body  # read once; an endpoint that asks for it again gets it
        kwargs = self._arguments(fast, request, body, content_type)
        if kwargs is None:  # not the happy path: FastAPI answers, with its exact refusal
            await self.app(scope, _replaying(messages, receive), send)
            return
        scope["route"] = fast.route  # as the router would (metrics label by route template)
        scope["endpoint"] = fast.endpoint
        scope["path_params"] = {}
        try:
            response = await self._answer(fast, request, kwargs)
        except Exception as exc:
            handler = _handler_for(app, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    @staticmethod
    def _arguments(
        fast: FastRoute, request: Request, body: bytes, content_type: bytes
    ) -> dict[str, Any] | None:
        """The endpoint's body and query arguments, or None when FastAPI should answer instead."""
        if not _json(content_type):
            return None
        try:
            model = fast.body_model.model_validate_json(body)
        except ValidationError:
            return None
        kwargs: dict[str, Any] = {fast.body_name: model}
        if fast.query:
            given = dict(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True))
            for field in fast.query:  # as FastAPI reads a scalar query parameter: its last value
                raw = given.get(field.alias)
                if raw is None:
                    if field.field_info.is_required():
                        return None
                    kwargs[field.name] = field.get_default()
                    continue
                value, errors = field.validate(raw, {}, loc=("query", field.alias))
                if errors:
                    return None
                kwargs[field.name] = value
        return kwargs

    @staticmethod
    async def _answer(fast: FastRoute, request: Request, kwargs: dict[str, Any]) -> Response:
        for name, dependency in fast.dependencies:
            kwargs[name] = await dependency(request)
        sub = Response()  # as FastAPI's: no status or length of its own unless the endpoint sets them
        del sub.headers["content-length"]
        sub.status_code = None  # type: ignore[assignment]
        if fast.request_name:
            kwargs[fast.request_name] = request
        if fast.response_name:
            kwargs[fast.response_name] = sub
        result = await fast.endpoint(**kwargs)
        if isinstance(result, Response):
            return result
        content = fast.answer.dump_json(
            fast.answer.validate_python(result, from_attributes=True), by_alias=True
        )
        answer = Response(
            content, status_code=sub.status_code or fast.status_code, media_type="application/json"
        )
        answer.headers.raw.extend(sub.headers.raw)
        return answer


def _handler_for(app: FastAPI, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The application's handler for ``exc``, looked up along its class hierarchy as Starlette does."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]  # type: ignore[return-value]
    return None
