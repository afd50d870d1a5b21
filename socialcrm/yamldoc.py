"""YAML documents that remember where each value stood, so errors can name file, line and path."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]


class YamlError(ValueError):
    """A YAML file that cannot be read; the message starts with ``file:line``."""


@dataclass
class YamlDoc:
    """Parsed YAML plus the line (1-based) of every mapping key and sequence item."""

    data: Any
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)
    #: The document as read.
    text: str = ""

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """Line of the deepest known prefix of ``loc``."""
        key = tuple(loc)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), None)

    def where(self, loc: Sequence[str | int]) -> str:
        """``file:line`` for ``loc`` (just the file when the line is unknown)."""
        line = self.line_of(loc)
        return f"{self.source}:{line}" if line else self.source


def format_loc(loc: Iterable[str | int]) -> str:
    """``("sources", 2, "interval")`` -> ``sources[2].interval``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _convert(node: yaml.Node, loader: yaml.SafeLoader, loc: Loc, lines: dict[Loc, int]) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlError(
                    f"{loader.name}:{key_node.start_mark.line + 1}: "
                    f"{format_loc(loc)}: mapping keys must be plain values"
                )
            if key in out:
                raise YamlError(
                    f"{loader.name}:{key_node.start_mark.line + 1}: "
                    f"{format_loc((*loc, str(key)))}: duplicate key {key!r}"
                )
            child: Loc = (*loc, str(key))
            lines[child] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, loader, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            child = (*loc, i)
            lines[child] = item.start_mark.line + 1
            items.append(_convert(item, loader, child, lines))
        return items
    return loader.construct_object(node, deep=True)


def loads(text: str, source: str = "<string>") -> YamlDoc:
    """Parse one YAML document from ``text``; ``source`` names it in errors."""
    loader = yaml.SafeLoader(text)
    loader.name = source
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(data=None, source=source, text=text)
        lines: dict[Loc, int] = {}
        data = _convert(node, loader, (), lines)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise YamlError(f"{source}{line}: invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise YamlError(f"{source}: invalid YAML: {err}") from err
    except RecursionError as err:
        raise YamlError(f"{source}: invalid YAML: nested too deeply to read") from err
    finally:
        loader.dispose()
    return YamlDoc(data=data, source=source, lines=lines, text=text)


def load(path: Path) -> YamlDoc:
    """Read and parse a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise YamlError(f"{path}: file not found") from err
    except UnicodeDecodeError as err:
        raise YamlError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise YamlError(f"{path}: cannot read: {err.strerror}") from err
    return loads(text, str(path))


def describe_validation_error(
    err: ValidationError, doc: YamlDoc, prefix: Loc = (), limit: int = 20
) -> list[str]:
    """One ``file:line: path: message`` line per pydantic error, pointing into ``doc``."""
    out = []
    for e in err.errors()[:limit]:
        loc = (*prefix, *(p for p in e["loc"] if not _is_union_tag(p)))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif e["type"] == "missing":
            msg = "is required"
        elif not isinstance(e.get("input"), dict | list) and "got " not in msg:
            msg = f"{msg}, got {_got(e.get('input'))}"
        out.append(f"{doc.where(loc)}: {format_loc(loc)}: {msg}")
    if len(err.errors()) > limit:
        out.append(f"... and {len(err.errors()) - limit} more errors")
    return out


def _got(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _is_union_tag(part: str | int) -> bool:
    # pydantic puts the chosen union member ("function-after[...]", "tagged-union[...]") in loc.
    return isinstance(part, str) and "[" in part
