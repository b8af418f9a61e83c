"""engine.extensions: DuckDB extensions loaded from a local directory, never downloaded.

No httpfs build for this DuckDB is available offline, so the positive case loads extensions DuckDB
links statically (json, icu); the missing-extension case is the real httpfs name.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext
from sqlgate.engine import Limits, open_engine
from sqlgate.errors import ConfigError, QueryRefused
from tests.conftest import isolated_env

LIMITS = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=10)


def project(tmp_path, engine_yaml: str):
    (tmp_path / "sqlgate.yml").write_text(f"name: ext\nengine:\n  path: ':memory:'\n{engine_yaml}")
    return load_project(tmp_path, env=isolated_env(tmp_path))


def test_a_missing_extension_stops_the_start_naming_it(tmp_path):
    loaded = project(tmp_path, "  extensions: [httpfs]\n  extension_directory: ext\n")
    with pytest.raises(ConfigError, match=r"extension 'httpfs' cannot be loaded in .*/ext: .*not found"):
        open_engine(loaded)
    proc = subprocess.run([sys.executable, "-m", "sqlgate", "validate", "-p", str(tmp_path)],
                          capture_output=True, text=True, env=isolated_env(tmp_path), timeout=60)
    assert proc.returncode == 2 and "httpfs" in proc.stderr and "Traceback" not in proc.stderr


async def test_loaded_extensions_serve_endpoint_sql_and_the_query_tool_still_reads_no_url(tmp_path):
    loaded = project(tmp_path, "  extensions: [json, icu]\n  allowed_urls: ['https://data.example.com/x/']\n")
    engine = open_engine(loaded)
    try:
        qr = await engine.execute("SELECT json_extract('{\"a\": 7}', '$.a')::INT AS a", None, CallContext(), LIMITS)
        assert qr.rows == [[7]]
        for sql in ("SELECT * FROM read_json('https://data.example.com/x/a.json')",
                    "SELECT * FROM 'https://data.example.com/x/a.csv'"):
            with pytest.raises(QueryRefused):
                await engine.run_untrusted(sql, CallContext(), LIMITS)
    finally:
        await engine.close()


@pytest.mark.parametrize("yaml, message", [
    ("  extensions: ['httpfs; SELECT 1']\n", "is not an extension name"),
    ("  allowed_urls: ['https://data.example.com']\n", "must be a URL prefix ending in /"),
    ("  allowed_urls: ['file:///etc/']\n", "must be a URL prefix ending in /"),
])
def test_extension_settings_are_checked(tmp_path, yaml, message):
    with pytest.raises(ConfigError, match=message):
        project(tmp_path, yaml)


def test_extensions_from_the_environment(tmp_path):
    (tmp_path / "sqlgate.yml").write_text("name: ext\nengine:\n  path: ':memory:'\n")
    loaded = load_project(tmp_path, env=isolated_env(tmp_path, SQLGATE_DB_EXTENSIONS="json, icu",
                                                     SQLGATE_DB_ALLOWED_URLS="https://a.example/b/"))
    assert loaded.settings.engine.extensions == ["json", "icu"]
    assert loaded.settings.engine.allowed_urls == ["https://a.example/b/"]
