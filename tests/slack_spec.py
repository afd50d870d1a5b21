"""Slack's own Web API spec as a checker: our requests and the stand-in's answers must fit it.

The spec is the vendored subset of slackapi/slack-api-specs (Swagger 2.0) in
``tests/specs/slack/``, with ``overlay.json`` adding what Slack documents beyond that frozen
version. Each method becomes two JSON Schemas, checked with ``jsonschema``: its parameters (no
unknown names: a misspelt field is an error, as Slack's ``invalid_arg_name`` is) and its
answers (the success schema for ``ok: true``, the error schema for ``ok: false``).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

SPEC_DIR = Path(__file__).parent / "specs" / "slack"
SPEC_FILE = SPEC_DIR / "slack_web_openapi_v2.json"


@functools.cache
def spec() -> dict[str, Any]:
    """The vendored Swagger 2.0 document."""
    data: dict[str, Any] = json.loads(SPEC_FILE.read_text())
    return data


@functools.cache
def overlay() -> dict[str, Any]:
    """The documented additions to the frozen spec."""
    data: dict[str, Any] = json.loads((SPEC_DIR / "overlay.json").read_text())
    return data


def _operation(method: str) -> dict[str, Any]:
    path = spec()["paths"][f"/{method}"]
    op: dict[str, Any] = next(iter(path.values()))
    return op


def _param_schema(kind: str, json_value: bool) -> dict[str, Any]:
    if json_value:
        return {"type": ["string", "array", "object"]}
    if kind == "boolean":  # form values are strings; JSON bodies carry real booleans
        return {"anyOf": [{"type": "boolean"}, {"enum": ["true", "false", "1", "0"]}]}
    if kind == "number":  # a ts such as "1712345678.000100" travels as a string
        return {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}]
        }
    if kind == "integer":
        return {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}
    return {"type": kind}


@functools.cache
def request_validator(method: str) -> Draft4Validator:
    """The schema of one method's arguments (body and query, without the token header)."""
    json_names = set(overlay()["json_parameters"]["names"])
    props: dict[str, Any] = {}
    required: list[str] = []
    for param in _operation(method)["parameters"]:
        if param["in"] == "header":
            continue
        name = param["name"]
        props[name] = _param_schema(param.get("type", "string"), name in json_names)
        if param.get("required"):
            required.append(name)
    for name, extra in overlay()["parameters"].get(f"/{method}", {}).items():
        props[name] = _param_schema(extra["type"], bool(extra.get("x-json")))
    schema = {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }
    return Draft4Validator(schema)


@functools.cache
def response_validator(method: str, ok: bool) -> Draft4Validator:
    """The schema of one method's success (``ok``) or error answer."""
    responses = _operation(method)["responses"]
    key = "200" if ok else "default"
    schema = copy.deepcopy(responses[key]["schema"])
    fixes = overlay()["corrections"].get(f"/{method}", {}).get(key, {})
    for dotted, fixed in fixes.items():
        if dotted.startswith("x-"):
            continue
        node = schema
        *parents, last = dotted.split(".")
        for name in parents:
            node = node["properties"][name]
        node["properties"][last] = fixed
    if not ok:
        errors = overlay()["errors"]
        props = schema.setdefault("properties", {})
        enum = props.get("error", {}).get("enum")
        if enum is not None:
            extra = errors["common"] + errors["methods"].get(f"/{method}", [])
            props["error"]["enum"] = sorted(set(enum) | set(extra))
        for name, prop in errors["properties"].items():
            if not name.startswith("x-"):
                props.setdefault(name, prop)
    schema["definitions"] = definitions()
    return Draft4Validator(schema)


@functools.cache
def definitions() -> dict[str, Any]:
    """The spec's definitions, with the properties the overlay adds to them."""
    defs = copy.deepcopy(spec()["definitions"])
    for name, props in overlay().get("definitions", {}).items():
        if not name.startswith("x-"):
            defs[name]["properties"].update(props)
    return defs


def request_problems(method: str, args: dict[str, Any]) -> list[str]:
    """What is wrong with a call's arguments by the spec (empty when it fits)."""
    found = request_validator(method).iter_errors(args)
    return [f"{method} request: {e.message}" for e in found]


def response_problems(method: str, body: dict[str, Any]) -> list[str]:
    """What is wrong with an answer by the spec (empty when it fits)."""
    found = response_validator(method, bool(body.get("ok"))).iter_errors(body)
    return [f"{method} answer: {e.message} at {list(e.absolute_path)}" for e in found]


def exchange_problems(
    calls: list[tuple[str, dict[str, Any]]], answers: list[tuple[str, int, dict[str, Any]]]
) -> list[str]:
    """Every problem in a stand-in's record of calls and answers."""
    problems: list[str] = []
    for method, args in calls:
        problems += request_problems(method, args)
    for method, _status, body in answers:
        problems += response_problems(method, body)
    return problems
