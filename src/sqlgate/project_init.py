"""`sqlgate init`: a ready project from the bundled template, or around existing data files."""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from sqlgate.errors import SqlgateError

TEMPLATE = "shop"
# what `init --from` picks up in a folder, by extension (the formats of `sources:`)
DATA_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".json": "json", ".ndjson": "ndjson",
                   ".jsonl": "ndjson", ".duckdb": "duckdb", ".sqlite": "sqlite", ".sqlite3": "sqlite"}
# the database sqlgate builds for an `init --from` project (views over the files; safe to delete)
FROM_DATABASE = ".sqlgate/project.duckdb"


def _template_dir() -> Path:
    return Path(str(resources.files("sqlgate") / "templates" / TEMPLATE))


def _project_name(root: Path, name: str | None) -> str:
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip("-.") or "sqlgate-project"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SqlgateError(f"invalid project name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def create_project(directory: Path, name: str | None = None, force: bool = False) -> dict[str, Any]:
    from sqlgate.config.loader import load_project

    root = directory.expanduser().resolve()
    if root.exists() and any(root.iterdir()) and not force:
        raise SqlgateError(f"{root} is not empty; pass --force to write into it anyway")
    name = _project_name(root, name)
    template = _template_dir()
    shutil.copytree(template, root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("data", "__pycache__", "*.duckdb*"))
    config = root / "sqlgate.yml"
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"^name: .*$", f"name: {name}", text, count=1, flags=re.M), encoding="utf-8")
    loaded = load_project(root)
    return _finish(loaded, name, root)


def _finish(loaded, name: str, root: Path) -> dict[str, Any]:
    """Build the database now (so mistakes show at init, not at the first call) and describe it."""
    from sqlgate.engine import duckdb_build
    from sqlgate.engine.duckdb_sources import load_views, resolve_sources

    db = loaded.path(loaded.settings.engine.path)
    duckdb_build.ensure_built(loaded, db, resolve_sources(loaded), load_views(loaded.root))
    exe = shutil.which("sqlgate")
    command, args = (exe, []) if exe else (sys.executable, ["-m", "sqlgate"])
    return {
        "name": name,
        "root": str(root),
        "database": str(db),
        "sources": list(loaded.settings.sources),
        "claude_desktop": {"mcpServers": {name: {
            "command": command, "args": [*args, "serve", "--project", str(root), "--transport", "stdio"]}}},
    }


# ---------------------------------------------------------------------------- init --from
def _relation_name(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "data"
    if base[0].isdigit():
        base = "t_" + base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _data_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".gz", ".zst"):
        suffix = Path(path.stem).suffix.lower()
    return DATA_EXTENSIONS.get(suffix)


def _rel(path: Path, root: Path) -> str:
    """Project-relative when the data is inside the project (so the folder can move), else absolute."""
    return os.path.relpath(path, root) if path.is_relative_to(root) else str(path)


def discover_sources(inputs: list[Path], root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Sources for files and folders: a file is one source; in a folder, each data file is one,
    and a sub-folder whose data files share one format is one glob source named after it."""
    sources: list[dict[str, Any]] = []
    skipped: list[str] = []
    taken: set[str] = set()

    def add(name_hint: str, path: str, fmt: str, what: str) -> None:
        sources.append({"name": _relation_name(name_hint, taken), "path": path, "format": fmt,
                        "description": f"Data from {what}"})

    for given in inputs:
        item = given.expanduser().resolve()
        if item.is_file():
            fmt = _data_format(item)
            if fmt is None:
                raise SqlgateError(f"{given}: not a data file sqlgate reads (csv, tsv, parquet, json, ndjson, "
                                   "duckdb, sqlite)")
            add(item.name.split(".")[0], _rel(item, root), fmt, item.name)
            continue
        if not item.is_dir():
            raise SqlgateError(f"{given}: no such file or folder")
        for entry in sorted(item.iterdir()):
            if entry.name.startswith(".") or entry.resolve() == root / ".sqlgate":
                continue
            if entry.is_file():
                fmt = _data_format(entry)
                if fmt is None:
                    if entry.suffix.lower() in (".xlsx", ".xls"):
                        skipped.append(f"{entry.name}: Excel needs DuckDB's excel extension, which is not "
                                       "available offline here; save the sheet as CSV")
                    continue
                add(entry.name.split(".")[0], _rel(entry, root), fmt, entry.name)
            elif entry.is_dir():
                files = [f for f in entry.rglob("*") if f.is_file() and _data_format(f)]
                formats = {_data_format(f) for f in files}
                if len(formats) == 1 and formats <= {"csv", "tsv", "parquet", "json", "ndjson"}:
                    fmt = formats.pop()
                    suffix = files[0].name[files[0].name.index("."):]
                    pattern = os.path.join(_rel(entry, root), "**", "*" + suffix)
                    add(entry.name, pattern, fmt, f"the {fmt} files in {entry.name}/")
                elif files:
                    skipped.append(f"{entry.name}/: mixed formats; list its files as sources by hand")
    if not sources:
        raise SqlgateError("no data files found (csv, tsv, parquet, json, ndjson, duckdb, sqlite)")
    return sources, skipped


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar, quoted and escaped


def from_files_yaml(name: str, sources: list[dict[str, Any]]) -> str:
    lines = [
        "# sqlgate project around existing data files (made by `sqlgate init --from`).",
        f"name: {name}",
        f"description: {_yaml_str('Tables: ' + ', '.join(s['name'] for s in sources) + '.')}"
        "   # the server's instructions to the AI client",
        "",
        "engine:",
        "  type: duckdb",
        f"  path: {FROM_DATABASE}   # built by sqlgate from the sources below; safe to delete",
        "  read_only: true",
        "",
        "# Each source is a table-like relation the AI client can list, describe, search and query.",
        "# csv/tsv/parquet/json/ndjson are read live (edit the file, the next query sees it);",
        "# duckdb files are attached read-only; sqlite tables are copied in (`sqlgate refresh` re-reads them).",
        "# Paths are relative to this folder; globs (data/*.parquet, logs/**/*.json) are one relation.",
        "# Also: views/NAME.sql holds one SELECT each (a view NAME; its leading -- lines describe it).",
        "sources:",
    ]
    for s in sources:
        lines += [
            f"  {s['name']}:",
            f"    path: {_yaml_str(s['path'])}",
            f"    format: {s['format']}",
            f"    description: {_yaml_str(s['description'])}",
        ]
        if s["format"] in ("csv", "tsv"):
            lines.append("    # options: {delim: ',', header: true, columns: {id: INTEGER}}   # read_csv options")
        lines.append("    # columns: {some_column: what it means}   # comments shown to the AI client")
    lines += [
        "",
        "limits:",
        "  max_rows: 1000        # rows per answer (truncated: true beyond)",
        "  timeout_seconds: 30   # a longer query is interrupted",
        "",
        "sql_tools:",
        "  enabled: true         # list_schemas, list_tables, describe_table, search_objects, query",
        "",
    ]
    return "\n".join(lines)


def create_from_files(directory: Path, inputs: list[Path], name: str | None = None,
                      force: bool = False) -> dict[str, Any]:
    from sqlgate.config.loader import load_project

    root = directory.expanduser().resolve()
    config = root / "sqlgate.yml"
    if config.exists() and not force:
        raise SqlgateError(f"{config} exists already; pass --force to replace it")
    name = _project_name(root, name)
    sources, skipped = discover_sources(inputs, root)
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(from_files_yaml(name, sources), encoding="utf-8")
    loaded = load_project(root)
    info = _finish(loaded, name, root)
    info["skipped"] = skipped
    return info
