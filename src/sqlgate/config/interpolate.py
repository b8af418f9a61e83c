"""`${VAR}` / `${VAR:-default}` references in configuration values, resolved from the environment.

A missing variable is an error naming the variable and where it was referenced — never an
empty string that would silently turn e.g. a client secret into "".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from sqlgate.config.yamlio import LineDict, LineList
from sqlgate.errors import ConfigError

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str] | None = None, _where: str = "") -> Any:
    """Return a copy of `data` (LineDict/LineList/str/...) with every ${VAR} replaced."""
    env = os.environ if env is None else env
    if isinstance(data, str):
        return _interpolate_str(data, env, _where)
    if isinstance(data, LineDict):
        out = LineDict()
        out.line, out.source, out.key_lines = data.line, data.source, dict(data.key_lines)
        for key, value in data.items():
            src, line = data.key_lines.get(key, (data.source, data.line))
            out[key] = interpolate(value, env, f"{src}:{line} ({key})")
        return out
    if isinstance(data, LineList):
        out_list = LineList(interpolate(v, env, _where) for v in data)
        out_list.line, out_list.source, out_list.item_lines = data.line, data.source, list(data.item_lines)
        return out_list
    if isinstance(data, dict):
        return {k: interpolate(v, env, _where) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, _where) for v in data]
    return data


def _interpolate_str(value: str, env: Mapping[str, str], where: str) -> str:
    if "${" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"Environment variable {name} is not set", where=where or None
        )

    return _REF.sub(repl, value)
