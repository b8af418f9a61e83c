"""The component registry's index (component_index.py) enforces FastMCP's rule exactly: components
of one name are all versioned or all unversioned, also after removals; and a server registers its
endpoints through it."""

from __future__ import annotations

import pytest
from fastmcp import FastMCP
from fastmcp.tools import Tool

from sqlgate.component_index import IndexedLocalProvider, index_components


def _tool(name: str, version: str | None = None) -> Tool:
    def body() -> int:
        return 1

    return Tool.from_function(body, name=name, version=version)


def _server(on_duplicate: str = "error") -> FastMCP:
    mcp = FastMCP("t", on_duplicate=on_duplicate)
    index_components(mcp)
    assert isinstance(mcp.local_provider, IndexedLocalProvider)
    return mcp


def test_mixing_versioned_and_unversioned_is_refused_as_fastmcp_refuses_it():
    mcp = _server()
    mcp.add_tool(_tool("a"))
    with pytest.raises(ValueError, match="Cannot add versioned tool 'a'"):
        mcp.add_tool(_tool("a", "2"))
    mcp.add_tool(_tool("b", "1"))
    mcp.add_tool(_tool("b", "2"))  # versions of one name mix freely
    with pytest.raises(ValueError, match="Cannot add unversioned tool 'b'"):
        mcp.add_tool(_tool("b"))
    with pytest.raises(ValueError, match="already exists"):
        mcp.add_tool(_tool("a"))


def test_the_index_follows_removals():
    mcp = _server()
    mcp.add_tool(_tool("a"))
    mcp.local_provider.remove_tool("a")
    mcp.add_tool(_tool("a", "1"))  # the name is free again: versioned is fine now
    mcp.local_provider.remove_tool("a")
    mcp.add_tool(_tool("a"))
    assert mcp.local_provider._version_index == {(Tool, "a"): [1, 0]}


def test_a_replaced_component_is_counted_once():
    mcp = _server(on_duplicate="replace")
    mcp.add_tool(_tool("a"))
    mcp.add_tool(_tool("a"))
    assert mcp.local_provider._version_index == {(Tool, "a"): [1, 0]}
    mcp.local_provider.remove_tool("a")
    assert mcp.local_provider._version_index == {}


def test_a_project_server_registers_through_the_index(shop_project):
    from sqlgate.config.loader import load_project
    from sqlgate.server import build_app

    app = build_app(load_project(shop_project))
    provider = app.mcp.local_provider
    assert isinstance(provider, IndexedLocalProvider)
    assert sum(u + v for u, v in provider._version_index.values()) == len(provider._components)
