"""X API v2's official OpenAPI description (tests/specs/x), and checks of real exchanges against it.

:class:`XSpec` validates one request and its answer with ``openapi-core``. It is stricter than
the published document in two ways, both about names: a query parameter the operation does not
declare is an error, and an object schema that lists its properties accepts no others (the
published schemas leave ``additionalProperties`` open, which would let a misspelt field pass).

:func:`record_x` puts a middleware in front of a sandbox app that keeps every X exchange, so a
test can check every request a connector made and every answer the stand-in gave.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.validators import (
    V30RequestBodyValidator,
    V30RequestParametersValidator,
)

from socialcrm.sandbox.faults import FaultPlan

SPEC_PATH = Path(__file__).parent / "specs" / "x" / "openapi.json"
SERVER = "https://api.x.com"
#: Paths the stand-in serves that X's OpenAPI file does not describe (see specs/x/README.md).
UNDESCRIBED = frozenset({"/2/oauth2/token"})


def _strict(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with ``additionalProperties: false`` on every closed object schema.

    Schemas that take part in an ``allOf`` (the ``Problem`` base and its extensions) stay
    open, or the composition would refuse the extension's own fields.
    """
    spec = copy.deepcopy(spec)
    schemas: dict[str, Any] = spec["components"]["schemas"]
    composed: set[int] = set()

    def mark(node: Any) -> None:
        if isinstance(node, dict):
            for part in node.get("allOf", []):
                ref = part.get("$ref", "")
                composed.add(id(schemas[ref.rsplit("/", 1)[1]]) if ref else id(part))
            for value in node.values():
                mark(value)
        elif isinstance(node, list):
            for value in node:
                mark(value)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                isinstance(node.get("properties"), dict)
                and "additionalProperties" not in node
                and id(node) not in composed
                and "discriminator" not in node
            ):
                node["additionalProperties"] = False
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for member in value.values():  # a map of names, not a schema
                        close(member)
                else:
                    close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    mark(spec)
    close(spec)
    return spec


@dataclass
class Exchange:
    """One request to the X stand-in and its answer."""

    method: str
    path: str
    query: list[tuple[str, str]]
    content_type: str
    body: bytes
    status: int
    answer_type: str
    answer: bytes


class XSpec:
    """X API v2's OpenAPI description, ready to validate requests and answers."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        with path.open() as f:
            self.document: dict[str, Any] = json.load(f)
        strict = _strict(self.document)
        problem = {"application/problem+json": json.loads}
        self._params = OpenAPI.from_dict(
            strict,
            config=Config(
                extra_media_type_deserializers=problem,
                request_validator_cls=V30RequestParametersValidator,
            ),
        )
        self._body = OpenAPI.from_dict(
            strict,
            config=Config(
                extra_media_type_deserializers=problem,
                request_validator_cls=V30RequestBodyValidator,
            ),
        )

    def declared(self, method: str, path: str) -> set[str]:
        """The query parameters an operation declares."""
        for template, operations in self.document["paths"].items():
            if _matches(template, path) and method.lower() in operations:
                out: set[str] = set()
                for given in operations[method.lower()].get("parameters", []):
                    param = given
                    if "$ref" in given:
                        name = given["$ref"].rsplit("/", 1)[1]
                        param = self.document["components"]["parameters"][name]
                    if param.get("in") == "query":
                        out.add(param["name"])
                return out
        raise AssertionError(f"{method} {path} is not an operation of X API v2")

    def request(self, exchange: Exchange) -> MockRequest:
        """The exchange's request, as openapi-core reads it."""
        args: dict[str, str] = {}
        for name, value in exchange.query:
            args[name] = value
        return MockRequest(
            SERVER,
            exchange.method.lower(),
            exchange.path,
            args=args,
            data=exchange.body.decode() if exchange.body else None,
            content_type=exchange.content_type or "application/json",
        )

    def check_request(self, exchange: Exchange) -> None:
        """Raise when the request is not one X API v2 documents (names, values, limits)."""
        unknown = {n for n, _ in exchange.query} - self.declared(exchange.method, exchange.path)
        if unknown:
            raise ValueError(f"{exchange.method} {exchange.path}: undeclared {sorted(unknown)}")
        names = [n for n, _ in exchange.query]
        if len(names) != len(set(names)):
            raise ValueError(f"{exchange.method} {exchange.path}: a parameter repeated: {names}")
        request = self.request(exchange)
        self._params.validate_request(request)
        if exchange.method.upper() == "POST":
            self._body.validate_request(request)

    def check_answer(self, exchange: Exchange) -> None:
        """Raise when the answer's status, type or body is not what X API v2 documents."""
        response = MockResponse(
            exchange.answer,
            status_code=exchange.status,
            content_type=exchange.answer_type,
        )
        self._params.validate_response(self.request(exchange), response)

    def check(self, exchange: Exchange) -> None:
        """Both checks."""
        self.check_request(exchange)
        self.check_answer(exchange)


def _matches(template: str, path: str) -> bool:
    parts, given = template.split("/"), path.split("/")
    return len(parts) == len(given) and all(
        p == g or (p.startswith("{") and p.endswith("}") and g)
        for p, g in zip(parts, given, strict=True)
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def record_x(app: web.Application, into: list[Exchange], faults: FaultPlan | None = None) -> None:
    """Keep every exchange with the X stand-in (``/x/...``) of a sandbox app in ``into``;
    with the sandbox's ``faults``, leave out the answers it broke on purpose."""

    @web.middleware
    async def recorder(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        before = len(faults.events) if faults is not None else 0
        answer = await handler(request)
        path = request.path
        faulted = faults is not None and len(faults.events) > before
        if path.startswith("/x/") and path[2:] not in UNDESCRIBED and not faulted:
            raw = answer.body if isinstance(answer, web.Response) else b""
            into.append(
                Exchange(
                    method=request.method,
                    path=path[2:],
                    query=list(request.query.items()),
                    content_type=request.content_type,
                    body=body,
                    status=answer.status,
                    answer_type=answer.content_type,
                    answer=raw if isinstance(raw, bytes) else b"",
                )
            )
        return answer

    app.middlewares.append(recorder)
