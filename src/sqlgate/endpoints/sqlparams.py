"""Find the `$name` parameters a SQL text uses.

A small scanner instead of a SQL parser: it only has to skip what can contain a `$` that is not
a parameter (string literals, quoted identifiers, comments, dollar-quoted strings), and it keeps
any SQL parser out of start-up.
"""

from __future__ import annotations

import re

from sqlgate.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def sql_parameters(sql: str) -> list[str]:
    return _scan(sql)[0]


def colon_names(sql: str) -> list[str]:
    """`:name` words outside strings and comments (not `::` casts): other tools' parameter style,
    which sqlgate would pass to the engine as text — the loader turns them into errors."""
    return _scan(sql)[2]


def to_pyformat(sql: str) -> str:
    """`$name` -> `%(name)s` for drivers using Python's paramstyle (psycopg); literal % doubled."""
    return _scan(sql)[1]


def _scan(sql: str) -> tuple[list[str], str, list[str]]:
    names: list[str] = []
    colons: list[str] = []
    out: list[str] = []
    i, n = 0, len(sql)
    last = 0

    def emit(upto: int) -> None:
        out.append(sql[last:upto].replace("%", "%%"))

    while i < n:
        c = sql[i]
        if c in "'\"":
            i = _skip_quoted(sql, i, c)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "$":
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is not None:  # $$...$$ or $tag$...$tag$ string
                end = sql.find(tag.group(0), tag.end())
                if end < 0:
                    raise ConfigError(f"unterminated dollar-quoted string starting at offset {i}")
                i = end + len(tag.group(0))
                continue
            name = _NAME.match(sql, i + 1)
            if name is not None:
                if name.group(0) not in names:
                    names.append(name.group(0))
                emit(i)
                out.append(f"%({name.group(0)})s")
                last = i = name.end()
            else:
                i += 1
        elif c == ":":
            if sql.startswith("::", i):  # a cast
                i += 2
                continue
            name = _NAME.match(sql, i + 1)
            # `'k':v` (struct literal), `a[i:j]` (slice) and `f(x):y` are not parameters
            after_value = i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_'\")]")
            if name is not None and not after_value and name.group(0) not in colons:
                colons.append(name.group(0))
            i += 1
        else:
            i += 1
    emit(n)
    return names, "".join(out), colons


def _skip_quoted(sql: str, start: int, quote: str) -> int:
    i = start + 1
    while True:
        j = sql.find(quote, i)
        if j < 0:
            kind = "string" if quote == "'" else "quoted identifier"
            raise ConfigError(f"unterminated {kind} starting at offset {start}")
        if sql.startswith(quote * 2, j):  # doubled quote is an escaped quote
            i = j + 2
            continue
        return j + 1


def _skip_block_comment(sql: str, start: int) -> int:
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ConfigError(f"unterminated /* comment starting at offset {start}")
