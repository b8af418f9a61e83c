"""What a server does not need, it does not load: a project without policies, PostgreSQL or traces
starts without cel-python (and its lark/pendulum/re2), psycopg, pglast or the OpenTelemetry SDK —
each costs start-up time and resident memory in every process (README "Benchmarks")."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import isolated_env

PROBE = """
import json, sys
from pathlib import Path
from sqlgate.config.loader import load_project
from sqlgate.server import build_app
import sqlgate.serve
build_app(load_project(Path(sys.argv[1])))
tops = {m.split(".")[0] for m in sys.modules}
print(json.dumps(sorted(tops | {m for m in sys.modules if m.startswith("opentelemetry.sdk")})))
"""


def test_a_plain_duckdb_project_loads_no_optional_machinery(shop_project, tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(shop_project)], capture_output=True, text=True,
                         env=isolated_env(tmp_path), check=True, timeout=120)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"celpy", "lark", "pendulum", "re2", "psycopg", "psycopg_pool", "pglast"}, loaded
    assert "opentelemetry.sdk" not in loaded  # the API comes with FastMCP; the SDK only with traces on
