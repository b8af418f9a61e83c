"""Build the effective Settings: sqlgate.yml, then the selected profile of the user config,
then SQLGATE_* environment variables (each later layer wins)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sqlgate.config.env_auth import auth_from_env
from sqlgate.config.interpolate import interpolate
from sqlgate.config.models import PROFILE_SECTIONS, PROJECT_KEYS, Settings
from sqlgate.config.yamlio import LineDict, load_yaml_file, pydantic_problems
from sqlgate.errors import ConfigError

PROJECT_FILE = "sqlgate.yml"

# SQLGATE_* variable -> settings path. Values are strings; pydantic coerces them ("true", "8000").
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "SQLGATE_DB_PATH": ("engine", "path"),
    "SQLGATE_DB_TYPE": ("engine", "type"),
    "SQLGATE_DB_DSN": ("engine", "dsn"),
    "SQLGATE_DB_ROLE_MODE": ("engine", "role_mode"),
    "SQLGATE_DB_ROLE_PREFIX": ("engine", "role_prefix"),
    "SQLGATE_DB_IDENTITY": ("engine", "identity"),
    "SQLGATE_DB_IDENTITY_KEY": ("engine", "identity_key"),
    "SQLGATE_DB_ROLE_CHECKS": ("engine", "role_checks"),
    "SQLGATE_DB_ALLOWED_FUNCTIONS": ("engine", "allowed_functions"),
    "SQLGATE_DB_READ_ONLY": ("engine", "read_only"),
    "SQLGATE_DB_POOL_SIZE": ("engine", "pool_size"),
    "SQLGATE_DB_MAX_CONCURRENT_PER_CALLER": ("engine", "max_concurrent_per_caller"),
    "SQLGATE_DB_MEMORY_LIMIT": ("engine", "memory_limit"),
    "SQLGATE_DB_THREADS": ("engine", "threads"),
    "SQLGATE_DB_TEMP_DIRECTORY": ("engine", "temp_directory"),
    "SQLGATE_DB_EXTENSIONS": ("engine", "extensions"),
    "SQLGATE_DB_EXTENSION_DIRECTORY": ("engine", "extension_directory"),
    "SQLGATE_DB_ALLOWED_URLS": ("engine", "allowed_urls"),
    "SQLGATE_MAX_ROWS": ("limits", "max_rows"),
    "SQLGATE_MAX_BYTES": ("limits", "max_bytes"),
    "SQLGATE_CURSOR_SECRET": ("limits", "cursor_secret"),
    "SQLGATE_QUERY_TIMEOUT": ("limits", "timeout_seconds"),
    "SQLGATE_MAX_SQL_LENGTH": ("limits", "max_sql_length"),
    "SQLGATE_SQL_TOOLS": ("sql_tools", "enabled"),
    "SQLGATE_HOST": ("transport", "host"),
    "SQLGATE_PORT": ("transport", "port"),
    "SQLGATE_BASE_URL": ("transport", "base_url"),
    "SQLGATE_SCHEME": ("transport", "scheme"),
    "SQLGATE_TRUST_PROXY": ("transport", "trust_proxy"),
    "SQLGATE_STATELESS": ("transport", "stateless"),
    "SQLGATE_JSON_RESPONSE": ("transport", "json_response"),
    "SQLGATE_CORS_ORIGINS": ("transport", "cors_origins"),
    "SQLGATE_RESUME_BUFFER_BYTES": ("transport", "resume_buffer_bytes"),
    "SQLGATE_LOCKED_TOOLS": ("locked_tools",),
    "SQLGATE_CHECK_ANSWERS": ("check_answers",),
    "SQLGATE_MAX_SESSIONS": ("transport", "max_sessions"),
    "SQLGATE_MAX_SESSIONS_PER_CLIENT": ("transport", "max_sessions_per_client"),
    "SQLGATE_SESSION_IDLE_TIMEOUT": ("transport", "session_idle_timeout"),
    "SQLGATE_AUDIT_PATH": ("audit", "path"),
    "SQLGATE_AUDIT_STORE": ("audit", "store"),
    "SQLGATE_AUDIT_DATABASE": ("audit", "database"),
    "SQLGATE_AUDIT_DSN": ("audit", "dsn"),
    "SQLGATE_TRACES": ("telemetry", "traces", "enabled"),
    "SQLGATE_TRACES_ENDPOINT": ("telemetry", "traces", "endpoint"),
    "SQLGATE_METRICS": ("telemetry", "metrics", "enabled"),
    "SQLGATE_METRICS_TOKEN": ("telemetry", "metrics", "token"),
    "SQLGATE_METRICS_PORT": ("telemetry", "metrics", "port"),
    "SQLGATE_RATE_LIMIT_CALLS_PER_MINUTE": ("rate_limits", "calls_per_minute"),
    "SQLGATE_RATE_LIMIT_CONCURRENT_CALLS": ("rate_limits", "concurrent_calls"),
}


@dataclass(frozen=True)
class LoadedProject:
    settings: Settings
    root: Path
    user_config_path: Path | None

    def with_transport(self, host: str | None = None, port: int | None = None) -> LoadedProject:
        """Command-line host/port win over configuration (they shape the public base URL too)."""
        changes = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        if not changes:
            return self
        transport = self.settings.transport.model_copy(update=changes)
        return replace(self, settings=self.settings.model_copy(update={"transport": transport}))

    def path(self, relative: str) -> Path:
        """Resolve a project-relative path from the configuration."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    def writable_path(self, relative: str, setting: str, variable: str) -> Path:
        """A path sqlgate writes to, never inside the installed package (examples/shop links to its
        template, so serving it as is would write a database into site-packages or the checkout)."""
        path = self.path(relative)
        if path.resolve().is_relative_to(_PACKAGE):
            raise ConfigError(
                f"refusing to write {path} inside the sqlgate package; serve the bundled example with "
                f"`make serve` (it sets the paths), set {setting} / {variable} to a writable place, or create "
                "your own project with `sqlgate init DIR`", where=f"sqlgate.yml ({setting})")
        return path


_PACKAGE = Path(__file__).resolve().parent.parent


def user_config_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("SQLGATE_CONFIG")
    return Path(explicit).expanduser() if explicit else Path.home() / ".sqlgate" / "config.yml"


def _mapping(value: Any, where: str, what: str) -> LineDict:
    if value is None:
        return LineDict()
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}", where=where)
    return value if isinstance(value, LineDict) else LineDict(value)


def _at(d: LineDict, key: str) -> str:
    src, line = d.key_lines.get(key, (d.source, d.line))
    return f"{src}:{line}" if line else src


def deep_merge(base: LineDict, override: LineDict) -> LineDict:
    """Merge mappings recursively, keeping for each key the file and line it came from."""
    out = LineDict(base)
    out.line, out.source, out.key_lines = base.line, base.source, dict(base.key_lines)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(_mapping(out[key], "", ""), _mapping(value, "", ""))
        else:
            out[key] = value
        if key in override.key_lines:
            out.key_lines[key] = override.key_lines[key]
    return out


def _apply_env(data: LineDict, env: Mapping[str, str]) -> None:
    for var, path in ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"`{part}` must be a mapping (needed to apply {var})", where=_at(node, part))
            if not isinstance(child, LineDict):
                child = LineDict(child or {})
                child.source = f"environment variable {var}"
                node[part] = child
            node.key_lines[part] = (f"environment variable {var}", 0)
            node = child
        node[path[-1]] = env[var]
        node.key_lines[path[-1]] = (f"environment variable {var}", 0)


def _apply_env_auth(data: LineDict, env: Mapping[str, str]) -> None:
    found = auth_from_env(env)
    if found is None:
        return
    auth, transport = found
    source = ("environment variables SQLGATE_AUTH_*", 0)
    data["auth"] = _tagged(auth, source[0])
    data.key_lines["auth"] = source
    if transport:
        merged = deep_merge(_mapping(data.get("transport"), "", ""), _tagged(transport, source[0]))
        data["transport"] = merged
        data.key_lines["transport"] = source


def _tagged(value: Any, source: str) -> Any:
    """A plain dict as LineDicts whose every key points at `source` (for error messages)."""
    if not isinstance(value, dict):
        return value
    out = LineDict({k: _tagged(v, source) for k, v in value.items()})
    out.source = source
    out.key_lines = {k: (source, 0) for k in value}
    return out


def load_project(
    project_dir: str | Path,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> LoadedProject:
    env = os.environ if env is None else env
    root = Path(project_dir).expanduser().resolve()
    project_file = root / PROJECT_FILE
    if not project_file.is_file():
        raise ConfigError(
            f"no {PROJECT_FILE} here; create a project with `sqlgate init {project_dir}`", where=str(root)
        )
    raw = _mapping(load_yaml_file(project_file, str(project_file)), str(project_file), PROJECT_FILE)
    for key in raw:
        if key == "auth":
            raise ConfigError(
                "auth belongs in the user config (~/.sqlgate/config.yml, projects → profiles → auth), "
                "which keeps secrets out of the project repository",
                where=_at(raw, key),
            )
        if key not in PROJECT_KEYS:
            raise ConfigError(
                f"unknown key {key!r} (allowed: {', '.join(PROJECT_KEYS)})", where=_at(raw, key)
            )
    raw = interpolate(raw, env)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("`name` is required (the project name used in the user config)",
                          where=str(project_file))

    chosen = profile or env.get("SQLGATE_PROFILE") or raw.get("profile") or "default"
    ucfg_path = config_path or user_config_path(env)
    profile_raw = _load_profile(ucfg_path, name, chosen, env, explicit=bool(profile or env.get("SQLGATE_PROFILE")))
    merged = deep_merge(raw, profile_raw)
    merged["profile"] = chosen
    _apply_env(merged, env)
    _apply_env_auth(merged, env)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise pydantic_problems(exc, merged, str(project_file)) from None
    return LoadedProject(settings=settings, root=root, user_config_path=ucfg_path if ucfg_path.exists() else None)


def _load_profile(path: Path, project: str, profile: str, env: Mapping[str, str], explicit: bool) -> LineDict:
    """The selected profile's overrides from the user config (interpolated), or {}."""
    if not path.exists():
        if explicit and profile != "default":
            raise ConfigError(f"profile {profile!r} requested but there is no user config", where=str(path))
        return LineDict()
    doc = _mapping(load_yaml_file(path, str(path)), str(path), "the user config")
    for key in doc:
        if key != "projects":
            raise ConfigError(f"unknown key {key!r} (the user config has `projects:` at the top)",
                              where=_at(doc, key))
    projects = _mapping(doc.get("projects"), _at(doc, "projects") if "projects" in doc else str(path),
                        "`projects`")
    if project not in projects:
        if explicit and profile != "default":
            raise ConfigError(f"project {project!r} is not in the user config (projects: "
                              f"{', '.join(map(str, projects)) or 'none'})", where=str(path))
        return LineDict()
    entry = _mapping(projects[project], _at(projects, project), f"projects.{project}")
    for key in entry:
        if key != "profiles":
            raise ConfigError(f"unknown key {key!r} under projects.{project} (expected `profiles:`)",
                              where=_at(entry, key))
    profiles = _mapping(entry.get("profiles"), _at(entry, "profiles") if "profiles" in entry else str(path),
                        f"projects.{project}.profiles")
    if profile not in profiles:
        raise ConfigError(
            f"profile {profile!r} not found for project {project!r} "
            f"(available: {', '.join(map(str, profiles)) or 'none'})",
            where=_at(entry, "profiles") if "profiles" in entry else str(path),
        )
    body = _mapping(profiles[profile], _at(profiles, profile), f"profile {profile!r}")
    for key in body:
        if key not in PROFILE_SECTIONS:
            raise ConfigError(
                f"unknown key {key!r} in profile {profile!r} (allowed: {', '.join(PROFILE_SECTIONS)})",
                where=_at(body, key),
            )
    # interpolate only the selected profile: variables of other profiles need not be set
    return interpolate(body, env)
