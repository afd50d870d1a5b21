"""The documented Mastodon shapes (``tests/specs/mastodon/``), checked on every request a
connector makes to the stand-in and every answer the stand-in gives.

:class:`MastodonSpec` is an aiohttp middleware for the sandbox app: it records each violation
(a parameter the method does not document, a limit above its maximum, an entity missing an
attribute or with a wrong type) and the harness asserts there were none. Answers the sandbox
broke on purpose (faults, items it corrupted) are not held to the shapes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from socialcrm.sandbox.server import CORRUPTED, Sandbox

SPECS: Final = Path(__file__).resolve().parent / "specs" / "mastodon"
ENTITIES: Final[dict[str, Any]] = json.loads((SPECS / "entities.schema.json").read_text())
REQUESTS: Final[dict[str, Any]] = json.loads((SPECS / "requests.schema.json").read_text())
_REGISTRY: Final = Registry().with_resources(
    [(doc["$id"], Resource.from_contents(doc)) for doc in (ENTITIES, REQUESTS)]
)
#: (method, path under /mastodon, request schema, answer entity)
ROUTES: Final = (
    ("GET", re.compile(r"/api/v1/notifications$"), "notifications", "Notifications"),
    ("GET", re.compile(r"/api/v1/timelines/tag/[^/]+$"), "tag_timeline", "Statuses"),
    ("GET", re.compile(r"/api/v2/search$"), "search", "Search"),
    ("GET", re.compile(r"/api/v1/statuses$"), "statuses", "Statuses"),
    ("POST", re.compile(r"/api/v1/statuses$"), "post_status", "Status"),
    ("GET", re.compile(r"/api/v1/accounts/verify_credentials$"), "verify_credentials", "Account"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def entity(name: str) -> Draft202012Validator:
    """A validator for one documented entity (``Status``, ``Notifications``, ``Error``...)."""
    return Draft202012Validator({"$ref": f"{ENTITIES['$id']}#/$defs/{name}"}, registry=_REGISTRY)


@functools.cache
def request(endpoint: str) -> Draft202012Validator:
    """A validator for one method's parameters (name -> list of values)."""
    return Draft202012Validator({"$ref": f"{REQUESTS['$id']}#/{endpoint}"}, registry=_REGISTRY)


def problems(validator: Draft202012Validator, value: Any) -> list[str]:
    """Each violation, with where it is."""
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(value)
    ]


def _status_id(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    inner = item.get("status") if "type" in item else item
    return inner.get("id") if isinstance(inner, dict) else None


def _without_corrupted(body: Any, corrupted: set[str]) -> Any:
    """The answer less the items the sandbox broke on purpose (``bad_item``)."""
    if not corrupted:
        return body

    def keep(items: list[Any]) -> list[Any]:
        return [i for i in items if _status_id(i) is not None and _status_id(i) not in corrupted]

    if isinstance(body, list):
        return keep(body)
    if isinstance(body, dict) and isinstance(body.get("statuses"), list):
        return {**body, "statuses": keep(body["statuses"])}
    return body


class MastodonSpec:
    """Checks the Mastodon stand-in's traffic against the documented shapes."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.violations: list[str] = []
        self.checked = 0
        self._valid: set[tuple[str, bytes, frozenset[str]]] = set()

    def install(self, app: web.Application) -> web.Application:
        """Put the check in front of ``app`` (the sandbox app, not started yet)."""
        app.middlewares.append(self.middleware)
        return app

    @web.middleware
    async def middleware(self, req: web.Request, handler: Handler) -> web.StreamResponse:
        """Check the request, let the stand-in answer, check the answer."""
        if not req.path.startswith("/mastodon/"):
            return await handler(req)
        path = req.path[len("/mastodon") :]
        route = next((r for r in ROUTES if r[0] == req.method and r[1].search(path)), None)
        if route is None:
            self.violations.append(f"{req.method} {path}: not a documented method")
            return await handler(req)
        _, _, endpoint, answer = route
        params: dict[str, list[str]] = {}
        for name, value in req.query.items():
            params.setdefault(name, []).append(value)
        if req.method == "POST":
            form = await req.post()
            for name, value in form.items():
                params.setdefault(name, []).append(str(value))
        for found in problems(request(endpoint), params):
            self.violations.append(f"request {req.method} {path}: {found}")
        faults_before = len(self.sandbox.faults.events)
        response = await handler(req)
        if len(self.sandbox.faults.events) != faults_before:
            return response  # a fault served on purpose: not the platform's shape
        if not isinstance(response, web.Response) or "json" not in (response.content_type or ""):
            return response
        assert isinstance(response.body, bytes)
        shape = answer if response.status < 400 else "Error"
        corrupted = set(req.get(CORRUPTED, ()))
        self.checked += 1
        key = (shape, response.body, frozenset(corrupted))
        if key in self._valid:
            return response  # the same answer again (a re-read): checked already
        body = _without_corrupted(json.loads(response.body), corrupted)
        found = problems(entity(shape), body)
        for problem in found:
            self.violations.append(f"answer {response.status} to {req.method} {path}: {problem}")
        if not found:
            self._valid.add(key)
        return response
