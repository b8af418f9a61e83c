"""Pydantic models of endpoint files (one tool, resource or prompt per YAML file)."""

from __future__ import annotations

import difflib
import functools
import json
import re
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from sqlgate.config.models import EndpointLimits, Icon, RateLimitRule
from sqlgate.context import UserContext
from sqlgate.policy import Policies

NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
JSON_TYPES = ("string", "number", "integer", "boolean", "array", "object")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    problem = _schema_problem(json.dumps(schema, sort_keys=True, default=str))
    if problem:
        raise ValueError(problem)
    return schema


@functools.lru_cache(maxsize=4096)
def _schema_problem(schema_json: str) -> str | None:
    """Meta-schema check, cached: many endpoints declare identical parameters."""
    try:
        Draft202012Validator.check_schema(json.loads(schema_json))
    except SchemaError as exc:
        path = "/".join(str(p) for p in exc.path)
        return f"invalid JSON schema{' at ' + path if path else ''}: {exc.message}"
    return None


# JSON Schema 2020-12 keywords a parameter may carry: what the validator implements plus the
# annotation vocabularies. Anything else is a typo (`defualt`, `minimun`) that would silently
# change behaviour, so it is an error; extensions are spelled x-….
SCHEMA_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS) | {
    "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment",
    "$id", "$schema", "$defs", "$anchor", "$dynamicAnchor", "contentMediaType", "contentEncoding",
    "contentSchema",
}


class CompleteSpec(Strict):
    """Where `completion/complete` finds candidate values for a parameter (besides its `enum`).

    `sql` is the project's own SQL, run like endpoint SQL (engine guard, caller identity, a short
    timeout, at most 100 rows); its first column gives the values. It may use `$value` (what the
    user typed so far) and the endpoint's other parameters (NULL until given).
    """

    sql: str = Field(min_length=1)


class Parameter(BaseModel):
    """A typed parameter; every JSON-Schema keyword given is kept verbatim in the inputSchema."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=PARAM_NAME)
    type: Literal["string", "number", "integer", "boolean", "array", "object"]
    description: str = Field(min_length=1)
    # required unless a default is given or `required: false`
    required: bool | None = None
    # completion values from SQL (prompt arguments and resource-template parameters only)
    complete: CompleteSpec | None = None

    @model_validator(mode="after")
    def _schema_ok(self) -> Parameter:
        for key in self.__pydantic_extra__ or {}:
            if key not in SCHEMA_KEYWORDS and not key.startswith("x-"):
                near = difflib.get_close_matches(key, sorted(SCHEMA_KEYWORDS | {"required"}), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else " (custom keywords start with x-)"
                raise ValueError(f"unknown keyword {key!r}: not JSON Schema{hint}")
        schema = self.json_schema()
        _check_schema(schema)
        if "default" in schema:
            errors = list(Draft202012Validator({k: v for k, v in schema.items() if k != "default"})
                          .iter_errors(schema["default"]))
            if errors:
                raise ValueError(f"default {schema['default']!r} does not match the type: {errors[0].message}")
        if self.required and "default" in schema:
            raise ValueError("a parameter with a default cannot be `required: true`")
        return self

    def json_schema(self) -> dict[str, Any]:
        extra = dict(self.__pydantic_extra__ or {})
        return {"type": self.type, "description": self.description, **extra}

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return "default" not in (self.__pydantic_extra__ or {})


class Source(Strict):
    code: str | None = None
    file: str | None = None
    # python only: function in `file` (default: the endpoint's name)
    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one(self) -> Source:
        if bool(self.code) == bool(self.file):
            raise ValueError("give exactly one of `code` (inline SQL) or `file` (a .sql or .py file)")
        return self


class TestCase(Strict):
    name: str
    description: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    # the caller the test runs as (to test policies): username, email, scopes, claims (groups, roles …);
    # `user:` is the same, `user_context:` the name MXCP's tests use
    user_context: dict[str, Any] | None = Field(default=None, validation_alias=AliasChoices("user_context", "user"))
    # assertions (any combination)
    result: Any = None
    result_contains: Any = None
    result_length: int | None = Field(default=None, ge=0)
    truncated: bool | None = None
    expect_error: str | None = None

    @field_validator("user_context")
    @classmethod
    def _known_user_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                UserContext.from_mapping(value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{exc}; other claims (role, groups …) go under `claims:`") from None
        return value

    @model_validator(mode="after")
    def _has_assertion(self) -> TestCase:
        fields = self.model_fields_set
        if not fields & {"result", "result_contains", "result_length", "truncated", "expect_error"}:
            raise ValueError("a test needs at least one assertion: result, result_contains, "
                             "result_length, truncated or expect_error")
        if self.expect_error is not None and fields & {"result", "result_contains", "result_length"}:
            raise ValueError("expect_error cannot be combined with result assertions")
        return self


class Annotations(Strict):
    title: str | None = None
    readOnlyHint: bool | None = None
    destructiveHint: bool | None = None
    idempotentHint: bool | None = None
    openWorldHint: bool | None = None


class _Executable(Strict):
    description: str = Field(min_length=1)
    parameters: list[Parameter] = Field(default_factory=list)
    return_: dict[str, Any] | None = Field(default=None, alias="return")
    language: Literal["sql", "python"] | None = None
    source: Source
    limits: EndpointLimits | None = None
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    # scopes (or claim-mapped capabilities) a caller needs; missing → HTTP 403 insufficient_scope
    scopes: list[str] = Field(default_factory=list)
    # CEL rules on the caller, the arguments and the answer (see sqlgate/policy.py)
    policies: Policies | None = None
    # this endpoint's own calls-per-minute / concurrent-calls limits per caller (besides the global ones)
    rate_limit: RateLimitRule | None = None
    tests: list[TestCase] = Field(default_factory=list)
    icons: list[Icon] = Field(default_factory=list)

    @field_validator("parameters")
    @classmethod
    def _unique(cls, params: list[Parameter]) -> list[Parameter]:
        seen = set()
        for p in params:
            if p.name in seen:
                raise ValueError(f"parameter {p.name!r} is declared twice")
            seen.add(p.name)
        return params

    @field_validator("return_")
    @classmethod
    def _return_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return None
        if schema.get("type") not in JSON_TYPES:
            raise ValueError(f"`type` must be one of {', '.join(JSON_TYPES)}")
        return _check_schema(dict(schema))

    @model_validator(mode="after")
    def _language(self) -> _Executable:
        if self.language is None:
            if self.source.file and self.source.file.endswith(".py"):
                self.language = "python"
            else:
                self.language = "sql"
        if self.language == "python" and not self.source.file:
            raise ValueError("python endpoints need `source.file` pointing at a .py file")
        if self.language == "sql" and self.source.function:
            raise ValueError("`source.function` is only for python endpoints")
        return self


class ToolDef(_Executable):
    name: str = Field(pattern=NAME)
    title: str | None = None
    annotations: Annotations | None = None

    @model_validator(mode="after")
    def _no_completions(self) -> ToolDef:
        for p in self.parameters:
            if p.complete is not None:
                raise ValueError(f"parameter {p.name!r}: `complete` is for prompt arguments and resource-template "
                                 "parameters (MCP has no completion for tool arguments)")
        return self


class ResourceDef(_Executable):
    uri: str = Field(min_length=3)
    name: str | None = Field(default=None, pattern=NAME)
    title: str | None = None
    mime_type: str = "application/json"

    @model_validator(mode="after")
    def _uri_params(self) -> ResourceDef:
        if "://" not in self.uri:
            raise ValueError(f"uri {self.uri!r} needs a scheme, e.g. data://customers/{{id}}")
        placeholders = set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", self.uri))
        declared = {p.name for p in self.parameters}
        if placeholders != declared:
            missing = placeholders - declared
            extra = declared - placeholders
            parts = []
            if missing:
                parts.append(f"URI placeholders without a parameter: {', '.join(sorted(missing))}")
            if extra:
                parts.append(f"parameters not in the URI: {', '.join(sorted(extra))}")
            raise ValueError("; ".join(parts))
        for p in self.parameters:
            if not p.is_required:
                raise ValueError(f"URI parameter {p.name!r} cannot have a default")
        return self


class PromptMessage(Strict):
    role: Literal["user", "assistant"] = "user"
    type: Literal["text"] = "text"
    prompt: str = Field(min_length=1)


class PromptDef(Strict):
    name: str = Field(pattern=NAME)
    title: str | None = None
    description: str = Field(min_length=1)
    parameters: list[Parameter] = Field(default_factory=list)
    messages: list[PromptMessage] = Field(min_length=1)
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    icons: list[Icon] = Field(default_factory=list)

    @model_validator(mode="after")
    def _placeholders(self) -> PromptDef:
        declared = {p.name for p in self.parameters}
        for i, m in enumerate(self.messages):
            for ref in re.findall(r"\{\{\s*([^}\s]+)\s*\}\}", m.prompt):
                if ref not in declared:
                    raise ValueError(f"messages[{i}] uses {{{{ {ref} }}}} but no parameter {ref!r} is declared")
        for p in self.parameters:
            if p.type not in ("string", "number", "integer", "boolean"):
                raise ValueError(f"prompt parameter {p.name!r}: prompt arguments are strings; "
                                 "use string, number, integer or boolean")
        return self


class EndpointFile(Strict):
    """Top level of an endpoint file: exactly one of tool / resource / prompt."""

    version: Literal[1] = 1
    tool: ToolDef | None = None
    resource: ResourceDef | None = None
    prompt: PromptDef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EndpointFile:
        given = [k for k in ("tool", "resource", "prompt") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an endpoint file defines exactly one of `tool:`, `resource:` or `prompt:`"
                             + (f" (found {', '.join(given)})" if given else ""))
        return self
