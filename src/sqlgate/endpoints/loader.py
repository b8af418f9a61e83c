"""Load every endpoint file of a project once, validate it, and resolve its source.

All problems of all files are collected and reported together, each with file:line and key.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from sqlgate.config.yamlio import format_loc, load_yaml_file, location_of, pydantic_problems
from sqlgate.endpoints.models import EndpointFile, PromptDef, ResourceDef, ToolDef
from sqlgate.endpoints.sqlparams import colon_names, sql_parameters
from sqlgate.errors import ConfigError
from sqlgate.policy import Enforcer

KIND_DIRS = {"tool": "tools", "resource": "resources", "prompt": "prompts"}


@dataclass
class Endpoint:
    kind: str  # tool | resource | prompt
    name: str
    definition: ToolDef | ResourceDef | PromptDef
    file: str  # project-relative path of the YAML file
    input_schema: dict[str, Any]
    validator: Draft202012Validator
    defaults: dict[str, Any]
    sql: str | None = None
    sql_params: list[str] = field(default_factory=list)
    function: Callable[..., Any] | None = None
    is_async: bool = False
    warnings: list[str] = field(default_factory=list)
    enforcer: Enforcer | None = None  # the endpoint's compiled policies
    # where line 1 of `sql` is: (file, line), for messages that point into the SQL
    sql_origin: tuple[str, int] = ("", 1)

    def sql_line(self, line: int) -> str:
        """file:line of the SQL's `line` (1-based)."""
        file, first = self.sql_origin
        return f"{file}:{first + line - 1}"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


def input_schema(definition: ToolDef | ResourceDef | PromptDef) -> dict[str, Any]:
    """The MCP inputSchema: each parameter's JSON-Schema keywords exactly as declared."""
    props = {p.name: p.json_schema() for p in definition.parameters}
    required = [p.name for p in definition.parameters if p.is_required]
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def load_endpoints(root: Path) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    errors: list[ConfigError] = []
    for kind, folder in KIND_DIRS.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted([*base.rglob("*.yml"), *base.rglob("*.yaml")]):
            try:
                ep = _load_one(root, path)
            except ConfigError as exc:
                errors.append(exc)
                continue
            if ep is None:
                continue
            if ep.kind != kind:
                errors.append(ConfigError(f"defines a {ep.kind} but lives in {folder}/ "
                                          f"(move it to {KIND_DIRS[ep.kind]}/)", where=ep.file))
                continue
            endpoints.append(ep)
    seen: dict[str, Endpoint] = {}
    for ep in endpoints:
        ident = f"{ep.kind}:{ep.definition.uri}" if isinstance(ep.definition, ResourceDef) else ep.key
        if ident in seen:
            errors.append(ConfigError(f"duplicate {ep.kind} {ep.name!r}: also defined in {seen[ident].file}",
                                      where=ep.file))
        seen[ident] = ep
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{len(errors)} endpoint files are invalid", problems=[e.render() for e in errors])
    return endpoints


def _load_one(root: Path, path: Path) -> Endpoint | None:
    rel = str(path.relative_to(root))
    data = load_yaml_file(path, rel)
    if data is None:
        raise ConfigError("file is empty", where=rel)
    if not isinstance(data, dict):
        raise ConfigError("an endpoint file must be a mapping with `tool:`, `resource:` or `prompt:`", where=rel)
    try:
        doc = EndpointFile.model_validate(data)
    except ValidationError as exc:
        raise pydantic_problems(exc, data, rel, message="invalid endpoint definition") from None
    definition = doc.tool or doc.resource or doc.prompt
    assert definition is not None
    kind = "tool" if doc.tool else "resource" if doc.resource else "prompt"
    if not definition.enabled:
        return None
    name = definition.name or _resource_name(definition)  # type: ignore[union-attr]
    schema = input_schema(definition)
    defaults = {p.name: p.json_schema()["default"] for p in definition.parameters
                if "default" in p.json_schema()}
    ep = Endpoint(kind=kind, name=name, definition=definition, file=rel, input_schema=schema,
                  validator=Draft202012Validator(schema), defaults=defaults)
    _check_completion_sql(definition, rel, kind)
    if isinstance(definition, PromptDef):
        return ep
    if definition.policies is not None:
        unknown = definition.policies.unknown_variable({p.name for p in definition.parameters})
        if unknown is not None:
            loc = (kind, "policies", *unknown[0])
            source, line = location_of(data, loc, rel)
            raise ConfigError(unknown[1], where=f"{source}:{line} ({format_loc(loc)})" if line else rel)
        ep.enforcer = Enforcer(definition.policies, kind, name, rel)
    declared = [p.name for p in definition.parameters]
    src = definition.source
    if definition.language == "sql":
        if src.code is not None:
            ep.sql = src.code
            ep.sql_origin = (rel, _code_line(data, kind, path))
        else:
            file = _resolve(root, path, src.file, rel, ".sql")
            ep.sql_origin = (str(file.relative_to(root.resolve())) if file.is_relative_to(root.resolve())
                             else str(file), 1)
            try:
                ep.sql = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read SQL file {src.file}: {exc}", where=rel) from None
        if not ep.sql.strip():
            raise ConfigError("SQL source is empty", where=rel)
        try:
            ep.sql_params = sql_parameters(ep.sql)
        except ConfigError as exc:
            raise ConfigError(f"cannot read the SQL: {exc.message}", where=f"{rel} ({kind}.source)") from None
        colon_style = [p for p in colon_names(ep.sql) if p in declared and p not in ep.sql_params]
        if colon_style:
            raise ConfigError(
                f"SQL uses {', '.join(':' + p for p in colon_style)}: sqlgate parameters are written "
                f"{', '.join('$' + p for p in colon_style)}",
                where=f"{rel} ({kind}.source)",
            )
        undeclared = [p for p in ep.sql_params if p not in declared]
        if undeclared:
            raise ConfigError(
                f"SQL uses {', '.join('$' + p for p in undeclared)} but no such parameter is declared",
                where=f"{rel} ({kind}.source)",
            )
        unused = [p for p in declared if p not in ep.sql_params]
        if unused:
            ep.warnings.append(f"{rel}: parameter(s) {', '.join(unused)} not used by the SQL")
    else:
        file = _resolve(root, path, src.file, rel, ".py")
        fn_name = src.function or name
        ep.function = _import_function(root, file, fn_name, rel)
        _check_signature(ep.function, declared, rel, fn_name)
        ep.is_async = inspect.iscoroutinefunction(ep.function)
    return ep


def _check_completion_sql(definition, rel: str, kind: str) -> None:
    """A parameter's `complete.sql` may use `$value` and the endpoint's parameters, nothing else."""
    allowed = {"value", *(p.name for p in definition.parameters)}
    for p in definition.parameters:
        if p.complete is None:
            continue
        where = f"{rel} ({kind}.parameters.{p.name}.complete.sql)"
        try:
            used = sql_parameters(p.complete.sql)
        except ConfigError as exc:
            raise ConfigError(f"cannot read the SQL: {exc.message}", where=where) from None
        unknown = [u for u in used if u not in allowed]
        if unknown:
            raise ConfigError(f"completion SQL uses {', '.join('$' + u for u in unknown)}; it may use $value "
                              "(the text typed so far) and the endpoint's parameters", where=where)


def _code_line(data: Any, kind: str, path: Path) -> int:
    """The YAML line of the SQL's first line: the `code:` key's, or the next one for a block (`|`)."""
    source = data.get(kind, {}).get("source", {}) if isinstance(data, dict) else {}
    where = getattr(source, "key_lines", {}).get("code")
    if where is None:
        return 1
    line = where[1]
    text = path.read_text(encoding="utf-8").splitlines()
    block = line <= len(text) and text[line - 1].split("code:", 1)[-1].strip()[:1] in ("|", ">")
    return line + 1 if block else line


def _resource_name(defn: ResourceDef) -> str:
    return defn.uri.split("://", 1)[1].split("{", 1)[0].strip("/").replace("/", "_") or "resource"


def _resolve(root: Path, yaml_path: Path, ref: str | None, rel: str, suffix: str) -> Path:
    assert ref is not None
    candidates = [(yaml_path.parent / ref).resolve(), (root / ref).resolve()]
    for c in candidates:
        if c.is_file():
            if root.resolve() not in c.parents:
                raise ConfigError(f"source file {ref!r} is outside the project", where=rel)
            if c.suffix != suffix:
                raise ConfigError(f"source file {ref!r} should end in {suffix}", where=rel)
            return c
    raise ConfigError(f"source file {ref!r} not found (looked in {yaml_path.parent.relative_to(root)}/ "
                      "and the project root)", where=rel)


_modules: dict[Path, Any] = {}


def _import_function(root: Path, file: Path, fn_name: str, rel: str) -> Callable[..., Any]:
    module = _modules.get(file)
    if module is None:
        mod_name = "sqlgate_project." + ".".join(file.relative_to(root).with_suffix("").parts)
        spec = importlib.util.spec_from_file_location(mod_name, file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {file}", where=rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ConfigError(f"importing {file.relative_to(root)} failed: {type(exc).__name__}: {exc}",
                              where=rel) from None
        _modules[file] = module
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"{file.relative_to(root)} has no function {fn_name!r}", where=rel)
    return fn


def _check_signature(fn: Callable[..., Any], declared: list[str], rel: str, fn_name: str) -> None:
    sig = inspect.signature(fn)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [d for d in declared if d not in params]
    if missing:
        raise ConfigError(f"function {fn_name}() does not accept parameter(s) {', '.join(missing)}", where=rel)
    extra = [n for n, p in params.items() if n not in declared and p.default is p.empty
             and p.kind not in (p.VAR_POSITIONAL,)]
    if extra:
        raise ConfigError(f"function {fn_name}() requires {', '.join(extra)} which the YAML does not declare",
                          where=rel)


def reset_module_cache() -> None:
    """Forget imported project modules (explicit reload)."""
    for mod in list(sys.modules):
        if mod.startswith("sqlgate_project."):
            del sys.modules[mod]
    _modules.clear()
