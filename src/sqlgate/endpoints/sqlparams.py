"""Find the `$name` parameters a SQL text uses (tokenizer-based: robust to dialect syntax)."""

from __future__ import annotations

import itertools

import sqlglot
from sqlglot.tokens import TokenType


def sql_parameters(sql: str, dialect: str = "duckdb") -> list[str]:
    tokens = sqlglot.tokenize(sql, read=dialect)
    names: list[str] = []
    for tok, nxt in itertools.pairwise(tokens):
        is_named = tok.token_type == TokenType.PARAMETER and tok.text == "$" and nxt.start == tok.end + 1
        if is_named and nxt.text not in names and not nxt.text.isdigit():
            names.append(nxt.text)
    return names
