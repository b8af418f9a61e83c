"""The `$name` scanner skips strings, identifiers, comments and dollar quotes."""

import re

import pytest

from sqlgate.endpoints.sqlparams import sql_parameters
from sqlgate.errors import ConfigError


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT $a, $b, $a", ["a", "b"]),
    ("SELECT '$not' || $yes", ["yes"]),
    ("SELECT 'it''s $not' AS \"$col\", $x", ["x"]),
    ("SELECT 1 -- $comment\n, $after", ["after"]),
    ("SELECT /* $c /* nested $d */ $e */ $real", ["real"]),
    ("SELECT $$ $inside $$, $tag$ $also $tag$, $ok", ["ok"]),
    ("SELECT $1, $2", []),
    ("SELECT price*$rate_2 FROM t WHERE d > $date_from", ["rate_2", "date_from"]),
])
def test_finds_exactly_the_parameters(sql, expected):
    assert sql_parameters(sql) == expected


@pytest.mark.parametrize(("sql", "problem"), [
    ("SELECT 'abc", "unterminated string"),
    ('SELECT "abc', "unterminated quoted identifier"),
    ("SELECT 1 /* open", "unterminated /* comment"),
    ("SELECT $t$ never closed", "unterminated dollar-quoted string"),
])
def test_unterminated_constructs_are_config_errors(sql, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        sql_parameters(sql)
