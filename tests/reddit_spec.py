"""Reddit's documented shapes as a checker: the connector's requests, the stand-in's answers.

Reddit publishes no machine-readable spec, so its shapes (Listing, Thing, errors, the comment
answer, the token endpoint, the User-Agent rule) are encoded once, from its documentation and
source, in ``tests/specs/reddit/reddit_api.schema.json`` and checked with ``jsonschema``.
:class:`Recorder` is an aiohttp client middleware that keeps every exchange a connector makes.
"""

from __future__ import annotations

import functools
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMA_FILE = Path(__file__).parent / "specs" / "reddit" / "reddit_api.schema.json"


@functools.cache
def _document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(data)
    return data


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A validator for one of the file's ``$defs``."""
    doc = _document()
    registry: Registry[Any] = Registry().with_resource(doc["$id"], Resource.from_contents(doc))
    return Draft202012Validator({"$ref": f"{doc['$id']}#/$defs/{name}"}, registry=registry)


def problems(name: str, instance: Any) -> list[str]:
    """What is wrong with ``instance`` as a ``name`` (empty when it fits)."""
    return [
        f"{name}: {e.message} at {list(e.absolute_path)}"
        for e in validator(name).iter_errors(instance)
    ]


@dataclass
class Exchange:
    """One request a connector made and the answer it got."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    status: int
    content_type: str
    body: bytes
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorder:
    """An aiohttp client middleware that keeps every exchange, with the path under ``prefix``."""

    prefix: str
    exchanges: list[Exchange] = field(default_factory=list)

    async def __call__(
        self,
        request: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
    ) -> aiohttp.ClientResponse:
        form: dict[str, str] = {}
        if request.method == "POST" and request.body is not None:
            raw = await request.body.as_bytes()
            form = dict(urllib.parse.parse_qsl(raw.decode()))
        response = await handler(request)
        body = await response.read()
        path = request.url.path.removeprefix(self.prefix)
        self.exchanges.append(
            Exchange(
                request.method,
                path,
                dict(request.url.query),
                form,
                {k: v for k, v in request.headers.items()},
                response.status,
                response.content_type,
                body,
                dict(response.headers),
            )
        )
        return response


def exchange_problems(exchanges: list[Exchange]) -> list[str]:
    """Every request and JSON answer checked against the shapes it should have."""
    found: list[str] = []
    for ex in exchanges:
        answer = json.loads(ex.body) if "json" in ex.content_type else None
        if ex.path == "/api/v1/access_token":
            request = {"method": ex.method, "path": ex.path, "form": ex.form, "headers": ex.headers}
            found += problems("token_request", request)
            if ex.status == 200:
                found += problems("token_answer", answer)
        elif ex.path == "/api/comment":
            request = {"method": ex.method, "path": ex.path, "form": ex.form, "headers": ex.headers}
            found += problems("comment_request", request)
            if ex.status == 200:
                found += problems("comment_answer", answer)
        else:
            request = {
                "method": ex.method,
                "path": ex.path,
                "query": ex.query,
                "headers": ex.headers,
            }
            found += problems("listing_request", request)
            if ex.status == 200:
                found += problems("listing", answer)
        if ex.status >= 400 and answer is not None:
            found += problems("http_error", answer)
    return found
