"""Generated sqlgate projects for the benchmarks, and what the two baseline servers (raw_mcp.py,
bare_fastmcp.py) share: their command line and their database, built like sqlgate builds its own."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

SEED_SQL = "CREATE TABLE numbers AS SELECT range AS n FROM range(100);\n"

PROJECT_YML = """\
name: bench
engine: {path: data/bench.duckdb, seed: sql/seed.sql, read_only: true}
"""

PING_YML = """\
tool:
  name: ping
  description: trivial query
  source:
    code: SELECT 42 AS answer
"""

# one integer parameter used by the SQL, so startup pays for parameter schema + SQL parsing
GENERATED_TOOL = """\
tool:
  name: t{i:04d}
  description: generated endpoint {i}
  parameters:
    - name: x
      type: integer
      description: any integer
  source:
    code: SELECT $x + {i} AS y
"""


# the 1,000-row x 10-column answer (benchmarks/answer_rows.py); bare_fastmcp.py runs the same SQL
ROWS_SQL = ("SELECT i AS c0, i * 2 AS c1, i * 3 AS c2, i / 7 AS c3, 'row ' || i AS c4, i % 2 = 0 AS c5, "
            "i * 1.5 AS c6, 'abcdefghij' AS c7, i - 500 AS c8, i * i AS c9 FROM range(1000) t(i) ORDER BY i")
ROWS_YML = f"""\
tool:
  name: rows
  description: 1000 rows x 10 columns
  source:
    code: "{ROWS_SQL}"
"""


def _base(root: Path) -> Path:
    (root / "tools").mkdir(parents=True)
    (root / "sql").mkdir()
    (root / "sqlgate.yml").write_text(PROJECT_YML)
    (root / "sql" / "seed.sql").write_text(SEED_SQL)
    return root


def ping_project(root: Path) -> Path:
    """The throughput project: a single `ping` tool."""
    _base(root)
    (root / "tools" / "ping.yml").write_text(PING_YML)
    (root / "tools" / "rows.yml").write_text(ROWS_YML)
    return root


def many_tools_project(root: Path, count: int) -> Path:
    _base(root)
    for i in range(count):
        (root / "tools" / f"t{i:04d}.yml").write_text(GENERATED_TOOL.format(i=i))
    return root


def copy_example(src: Path, dest: Path) -> Path:
    """Copy an example project without its built database, so the server seeds a fresh one."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("data", "*.duckdb", "*.duckdb.wal", "__pycache__"))
    return dest


def baseline_args(doc: str | None, typed: bool = False) -> argparse.Namespace:
    """The command line of a baseline server (raw_mcp.py, bare_fastmcp.py, bare_sdk.py)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True, help="DuckDB file (opened read-only)")
    ap.add_argument("--seed", type=Path, help="SQL that builds --db when it does not exist yet")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    if typed:
        ap.add_argument("--typed", action="store_true", help="tools/call through the mcp SDK's types (thin path)")
    return ap.parse_args()


def build_once(db_path: Path, seed: Path | None) -> None:
    """Create the database from the seed on first start, like sqlgate does (not timed separately)."""
    if db_path.exists() or seed is None:
        return
    import duckdb

    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        con.execute(seed.read_text(encoding="utf-8"))
    finally:
        con.close()


def records(db: Any, sql: str) -> list[dict[str, Any]]:
    """`sql`'s rows as records, on a cursor of its own: a DuckDB connection is not shared across threads."""
    cur = db.cursor()
    try:
        cur.execute(sql)
        columns = [d[0] for d in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    finally:
        cur.close()
