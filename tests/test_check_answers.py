"""`check_answers: true` (SQLGATE_CHECK_ANSWERS): every tool answer is validated against the tool's
outputSchema before it is sent, so an endpoint author sees a wrong `return:` declaration as a clear
tool error instead of a client that rejects the answer. Off by default: the hot path does no schema walk."""

from __future__ import annotations

import shutil

import pytest

from sqlgate.config.models import Settings
from tests.clients import mcp_session
from tests.conftest import EXAMPLE, isolated_env, start_server, stop_server

WRONG = """\
tool:
  name: wrong_return
  description: declares an integer, answers text
  return:
    type: object
    properties:
      n: {type: integer}
  source:
    code: SELECT 'seven' AS n
"""


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    project = tmp / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("data", "__pycache__"))
    (project / "tools" / "wrong_return.yml").write_text(WRONG)
    server = start_server(project, tmp, env=isolated_env(tmp, SQLGATE_CHECK_ANSWERS="true"))
    yield server
    stop_server(server)


async def test_an_answer_that_breaks_its_schema_is_a_clear_error(checking_server):
    async with mcp_session(checking_server.url) as s:
        bad = await s.call_tool("wrong_return", {})
        assert bad.is_error
        text = bad.content[0].text
        assert "does not match its outputSchema" in text and "result/n" in text and "'seven'" in text, text
        good = await s.call_tool("top_customers", {"limit": 3})
        assert not good.is_error and len(good.structured_content["result"]) == 3
        query = await s.call_tool("query", {"sql": "SELECT 1 AS one"})
        assert not query.is_error and query.structured_content["rows"] == [[1]]
    assert "does not match its outputSchema" in checking_server.logs()  # a WARNING for the author


def test_answers_are_not_checked_by_default():
    assert Settings(name="x").check_answers is False
