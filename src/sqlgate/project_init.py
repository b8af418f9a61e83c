"""`sqlgate init`: a ready project from the bundled template, with its database built."""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from sqlgate.errors import SqlgateError

TEMPLATE = "shop"


def _template_dir() -> Path:
    return Path(str(resources.files("sqlgate") / "templates" / TEMPLATE))


def create_project(directory: Path, name: str | None = None, force: bool = False) -> dict[str, Any]:
    from sqlgate.config.loader import load_project
    from sqlgate.engine.duckdb_engine import build_database

    root = directory.expanduser().resolve()
    if root.exists() and any(root.iterdir()) and not force:
        raise SqlgateError(f"{root} is not empty; pass --force to write into it anyway")
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip("-.") or "sqlgate-project"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SqlgateError(f"invalid project name {name!r}: use letters, digits, '_', '.', '-'")
    template = _template_dir()
    shutil.copytree(template, root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("data", "__pycache__", "*.duckdb*"))
    config = root / "sqlgate.yml"
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"^name: .*$", f"name: {name}", text, count=1, flags=re.M), encoding="utf-8")
    loaded = load_project(root)
    db = loaded.path(loaded.settings.engine.path)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        build_database(str(db), loaded.path(loaded.settings.engine.seed))
    exe = shutil.which("sqlgate")
    command, args = (exe, []) if exe else (sys.executable, ["-m", "sqlgate"])
    return {
        "name": name,
        "root": str(root),
        "database": str(db),
        "claude_desktop": {"mcpServers": {name: {
            "command": command, "args": [*args, "serve", "--project", str(root), "--transport", "stdio"]}}},
    }
