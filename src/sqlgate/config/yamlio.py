"""YAML loading that remembers line numbers, so validation errors can point at file:line.

PyYAML's C loader keeps start-up fast (endpoint files are parsed once, at start-up); we only
swap the mapping constructor for one that records where every key was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sqlgate.errors import ConfigError

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineDict(dict):
    """A dict that knows the line (1-based) of itself and of each of its keys."""

    __slots__ = ("key_lines", "line", "source")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.source = ""
        # key -> (source file, line): merged configs mix keys from several files
        self.key_lines: dict[Any, tuple[str, int]] = {}


class LineList(list):
    __slots__ = ("item_lines", "line", "source")

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.line = 0
        self.source = ""
        self.item_lines: list[tuple[str, int]] = []


class _LineLoader(_Loader):  # type: ignore[misc, valid-type]
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.source = loader.sqlgate_source
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable mapping key", key_node.start_mark
            ) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = (loader.sqlgate_source, key_node.start_mark.line + 1)
    return out


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.source = loader.sqlgate_source
    out.item_lines = [(loader.sqlgate_source, child.start_mark.line + 1) for child in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml_text(text: str, source: str) -> Any:
    loader = _LineLoader(text)
    loader.sqlgate_source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", where=f"{source}{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", where=source) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, display: str | None = None) -> Any:
    source = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", where=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", where=source) from None
    return load_yaml_text(text, source)


def location_of(data: Any, loc: tuple[Any, ...], default_source: str) -> tuple[str, int | None]:
    """(file, line) of the deepest node of a pydantic error location inside LineDict/LineList data."""
    source = getattr(data, "source", "") or default_source
    line = getattr(data, "line", None) or None
    node = data
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            source, line = node.key_lines.get(part, (source, line))
            node = node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            source, line = node.item_lines[part]
            node = node[part]
        else:
            break
    return source or default_source, line


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_problems(exc: Any, data: Any, source: str, message: str = "invalid configuration") -> ConfigError:
    """Turn a pydantic ValidationError into a ConfigError listing file:line key: reason."""
    problems = []
    first = None
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where_file, line = location_of(data, loc, source)
        first = first or (where_file, line)
        where = f"{where_file}:{line}: " if line else f"{where_file}: "
        key = format_loc(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif err["type"] in ("literal_error", "enum") and isinstance(err.get("input"), str | int | float):
            msg = f"{msg}, got {err['input']!r}"
        problems.append(f"{where}{key}: {msg}" if key else f"{where}{msg}")
    if first and len(problems) == 1:
        # one problem: put it on the headline, the way compilers do
        return ConfigError(problems[0].split(": ", 1)[1], where=problems[0].split(": ", 1)[0])
    where = f"{first[0]}:{first[1]}" if first and first[1] else (first[0] if first else source)
    return ConfigError(message, where=where, problems=problems)
