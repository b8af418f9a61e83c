"""Policies: CEL rules on who may call an endpoint with which arguments, and what they see of the answer.

Written the way MXCP's users know them, per endpoint (`policies:` in the YAML) and per built-in tool
(`sql_tools.policies` in sqlgate.yml):

    policies:
      input:                              # before the call; any matching deny refuses it
        - condition: "!('analysts' in user.groups)"
          action: deny
          reason: Only analysts may run this.
      output:                             # on the answer, in order
        - condition: "user.role != 'admin'"
          action: filter_fields           # or mask_fields (mask: "****"), filter_rows (keep: CEL), deny
          fields: [email, phone]

Everything fails closed: an expression that does not evaluate to a boolean (a missing claim, a type
error, a division by zero) denies the call, with a WARNING naming the rule but no argument or claim
values. Expressions are compiled when the endpoint files are loaded, so a bad one stops start-up
(and `sqlgate validate`) with file, line and the parser's message.

Variables: `user` (username, user_id, email, provider, name, scopes, groups, claims, anonymous, plus
every top-level claim of the token that does not collide with those, e.g. `user.role`), `args` (the
arguments; also each one by its own name, as in MXCP), `endpoint` ({kind, name}); in output rules
`response` (the result: a list of rows, an object or a value) and, in `keep:`, `row`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from functools import cached_property
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from sqlgate.audit.notes import note_refused
from sqlgate.context import CallContext, UserContext
from sqlgate.errors import PolicyDenied

log = logging.getLogger("sqlgate.policy")
# cel-python logs every evaluation step with its values (claims, arguments, rows) at DEBUG: never ours
logging.getLogger("celpy").setLevel(logging.WARNING)


@functools.cache
def _env() -> Any:
    """Built on first use, like the import of cel-python (and lark, pendulum, re2 behind it): a
    project without policies pays neither (the grammar ~0.4 s, the import ~0.1 s and several MiB)."""
    import celpy

    return celpy.Environment()

# names a rule may use besides the arguments; an argument with one of these names is only in `args`
RESERVED = frozenset({"user", "args", "endpoint", "response", "row"})
DEFAULT_MASK = "****"


@functools.lru_cache(maxsize=1024)
def compile_cel(text: str) -> Any:
    """The runnable program (a celpy.Runner), or ValueError with the parser's message (pydantic makes
    it file:line). Cached: the same rule text in many files compiles once."""
    import celpy

    try:
        env = _env()
        return env.program(env.compile(text))
    except celpy.CELParseError as exc:
        at = f"line {exc.line}, column {exc.column}" if getattr(exc, "line", None) else "here"
        raise ValueError(f"invalid CEL expression {text!r}: syntax error at {at}") from None
    except Exception as exc:  # the CEL compiler's other complaints (unknown macro …)
        raise ValueError(f"invalid CEL expression {text!r}: {type(exc).__name__}: {_first_line(str(exc))}") from None


# macros that bind a variable of their own (`list.exists(g, g == 'a')`), and names CEL itself defines
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_CEL_NAMES = frozenset({"null_type", "bool", "int", "uint", "double", "string", "bytes", "list", "map", "type",
                        "duration", "timestamp", "google", "dyn"})
# the parameters of the built-in tools (sqltools/builtin.py), for checking sql_tools.policies
BUILTIN_PARAMETERS = frozenset({"sql", "schema", "table", "keywords", "limit", "cursor"})


def free_names(text: str) -> set[str]:
    """The variables an expression reads (not the ones its macros bind, not CEL's own names)."""
    bound, used = set(), set()
    for node in _env().compile(text).iter_subtrees():
        if node.data == "member_dot_arg" and len(node.children) >= 3 and str(node.children[1]) in _BINDING_MACROS:
            first = node.children[2].children[0]
            idents = [t for t in first.iter_subtrees() if t.data == "ident"]
            if idents:
                bound.add(str(idents[0].children[0]))
        elif node.data == "ident":
            used.add(str(node.children[0]))
    return used - bound - _CEL_NAMES


def _first_line(text: str) -> str:
    return " ".join(text.strip().split())[:300]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: str = Field(min_length=1, description="CEL; the rule applies when it is true")
    reason: str | None = None
    _program: Any = PrivateAttr()  # celpy.Runner

    @field_validator("condition")
    @classmethod
    def _compiles(cls, text: str) -> str:
        compile_cel(text)
        return text

    def model_post_init(self, _context: Any) -> None:
        self._program = compile_cel(self.condition)


class InputRule(_Rule):
    # deny: refuse when the condition holds; allow: when any allow rule is given, the call needs one
    # that holds; warn: log a WARNING and go on
    action: Literal["deny", "allow", "warn"]


class OutputRule(_Rule):
    action: Literal["deny", "filter_fields", "mask_fields", "filter_rows", "warn"]
    fields: list[str] = Field(default_factory=list)
    mask: Any = DEFAULT_MASK
    # filter_rows: CEL over `row` (and user, args …); rows for which it is not true are dropped
    keep: str | None = None
    _keep: Any = PrivateAttr(default=None)  # celpy.Runner

    @model_validator(mode="after")
    def _shape(self) -> OutputRule:
        if self.action in ("filter_fields", "mask_fields") and not self.fields:
            raise ValueError(f"action {self.action} needs `fields: [...]`")
        if self.action != "filter_rows" and self.keep is not None:
            raise ValueError("`keep` is only for action filter_rows")
        if self.action == "filter_rows":
            if not self.keep:
                raise ValueError("action filter_rows needs `keep:`, a CEL expression over `row` "
                                 "(rows for which it is not true are dropped)")
            self._keep = compile_cel(self.keep)
        if self.fields and self.action not in ("filter_fields", "mask_fields"):
            raise ValueError("`fields` is only for actions filter_fields and mask_fields")
        return self


class Policies(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: list[InputRule] = Field(default_factory=list)
    output: list[OutputRule] = Field(default_factory=list)

    def unknown_variable(self, parameters: set[str]) -> tuple[tuple[Any, ...], str] | None:
        """(location in the policies, message) of the first variable no rule could be given, else None:
        a typo (`usr.groups`) is a start-up error rather than a policy that denies every call."""
        base = {"user", "args", "endpoint"} | (parameters - RESERVED)
        checks: list[tuple[tuple[Any, ...], str, set[str]]] = [
            (("input", i, "condition"), r.condition, base) for i, r in enumerate(self.input)]
        for i, r in enumerate(self.output):
            checks.append((("output", i, "condition"), r.condition, base | {"response"}))
            if r.keep:
                checks.append((("output", i, "keep"), r.keep, base | {"response", "row"}))
        for loc, text, known in checks:
            unknown = sorted(free_names(text) - known)
            if unknown:
                return loc, (f"unknown variable {unknown[0]!r} in {text!r} (known: {', '.join(sorted(known))}; "
                             "claims are user.<claim>, arguments args.<name>)")
        return None


# ---------------------------------------------------------------------------------------- values
def to_cel(value: Any) -> Any:
    """Python/engine values -> CEL values (database types CEL lacks become strings)."""
    from celpy import celtypes

    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return celtypes.IntType(value)
        return celtypes.StringType(str(value))  # HUGEINT & co.: CEL integers are 64-bit
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, decimal.Decimal):
        return celtypes.DoubleType(float(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(str(k)): to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple | set | frozenset):
        return celtypes.ListType([to_cel(v) for v in value])
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, dt.datetime | dt.date | dt.time | uuid.UUID):
        return celtypes.StringType(value.isoformat() if hasattr(value, "isoformat") else str(value))
    return celtypes.StringType(str(value))


def user_view(user: UserContext) -> dict[str, Any]:
    """What rules see as `user`: claims first, sqlgate's own fields on top (a claim cannot forge them)."""
    claims = dict(user.claims)
    groups = claims.get("groups")
    view: dict[str, Any] = {k: v for k, v in claims.items() if isinstance(k, str)}
    view.update({
        "username": user.username, "user_id": user.user_id, "email": user.email, "provider": user.provider,
        "name": user.display_name, "scopes": sorted(user.scopes),
        "groups": list(groups) if isinstance(groups, list | tuple) else [],
        "claims": claims, "anonymous": user.is_anonymous,
    })
    return view


class _Failed(Exception):
    """A rule could not be evaluated: the call is denied (fail closed)."""


def _safe_reason(exc: BaseException) -> str:
    """Why evaluation failed, without values from the arguments, claims or rows."""
    first = exc.args[0] if exc.args else ""
    text = str(first).split(" (in activation", 1)[0]
    if text.startswith(("no such member", "undeclared reference", "no such key")):
        return _first_line(text)[:200]  # names from the expression itself
    kind = exc.args[1].__name__ if len(exc.args) > 1 and isinstance(exc.args[1], type) else type(exc).__name__
    return kind if re.search(r"['\"]", text) else f"{kind}: {_first_line(text)[:120]}"


def _truth(program: Any, activation: Mapping[str, Any]) -> bool:
    from celpy import celtypes

    try:
        result = program.evaluate(activation)
    except Exception as exc:  # CELEvalError and anything the runtime raises: never a silent pass
        raise _Failed(_safe_reason(exc)) from None
    if not isinstance(result, celtypes.BoolType):
        raise _Failed(f"the expression gave a {type(result).__name__}, not a boolean")
    return bool(result)


# ---------------------------------------------------------------------------------------- results
class ResultView:
    """The part of an answer output rules act on; subclasses know where the rows are."""

    def response(self) -> Any:
        raise NotImplementedError

    def drop(self, fields: set[str]) -> None:
        raise NotImplementedError

    def mask(self, fields: set[str], mask: Any) -> None:
        raise NotImplementedError

    def rows(self) -> list[Any] | None:
        """The rows as records for `keep:`, or None when the answer is not a list of rows."""
        raise NotImplementedError

    def keep_rows(self, keep: list[bool]) -> None:
        raise NotImplementedError


class RecordsView(ResultView):
    """envelope[key] is a list of records, one record, or a plain value (YAML endpoints, catalog tools)."""

    def __init__(self, envelope: dict[str, Any], key: str | None):
        self.envelope, self.key = envelope, key
        self._owned = False

    @property
    def _value(self) -> Any:
        return self.envelope if self.key is None else self.envelope.get(self.key)

    def response(self) -> Any:
        return self._value

    def _records(self) -> list[dict[str, Any]]:
        """The records to change, copied first: a Python endpoint may return an object it keeps
        (a module-level list), and one caller's mask must never reach the next caller's answer."""
        if not self._owned and self.key is not None:
            value = self.envelope.get(self.key)
            if isinstance(value, dict):
                self.envelope[self.key] = dict(value)
            elif isinstance(value, list):
                self.envelope[self.key] = [dict(r) if isinstance(r, dict) else r for r in value]
            self._owned = True
        value = self._value
        if isinstance(value, dict):
            return [value]
        if isinstance(value, list):
            return [r for r in value if isinstance(r, dict)]
        return []

    def drop(self, fields: set[str]) -> None:
        for record in self._records():
            for name in fields & record.keys():
                del record[name]

    def mask(self, fields: set[str], mask: Any) -> None:
        for record in self._records():
            for name in fields & record.keys():
                record[name] = mask

    def rows(self) -> list[Any] | None:
        value = self._value
        return value if isinstance(value, list) else None

    def keep_rows(self, keep: list[bool]) -> None:
        kept = [row for row, ok in zip(self._value, keep, strict=True) if ok]
        if self.key is None:
            raise AssertionError("a bare object has no rows")
        self.envelope[self.key] = kept


class ColumnsView(ResultView):
    """The query tool's {columns, types, rows, row_count}: rows are lists, fields are column names."""

    def __init__(self, envelope: dict[str, Any]):
        self.envelope = envelope

    def _records(self) -> list[dict[str, Any]]:
        cols = self.envelope["columns"]
        return [dict(zip(cols, row, strict=False)) for row in self.envelope["rows"]]

    def response(self) -> Any:
        return self._records()

    def drop(self, fields: set[str]) -> None:
        keep = [i for i, c in enumerate(self.envelope["columns"]) if c not in fields]
        env = self.envelope
        env["columns"] = [env["columns"][i] for i in keep]
        if "types" in env:
            env["types"] = [env["types"][i] for i in keep]
        env["rows"] = [[row[i] for i in keep] for row in env["rows"]]

    def mask(self, fields: set[str], mask: Any) -> None:
        hit = [i for i, c in enumerate(self.envelope["columns"]) if c in fields]
        for row in self.envelope["rows"]:
            for i in hit:
                row[i] = mask

    def rows(self) -> list[Any] | None:
        return self._records()

    def keep_rows(self, keep: list[bool]) -> None:
        self.envelope["rows"] = [row for row, ok in zip(self.envelope["rows"], keep, strict=True) if ok]
        self.envelope["row_count"] = len(self.envelope["rows"])


# ---------------------------------------------------------------------------------------- enforcement
class Enforcer:
    """Compiled policies of one endpoint, applied to each call."""

    def __init__(self, policies: Policies, kind: str, name: str, where: str):
        self.policies, self.kind, self.name, self.where = policies, kind, name, where

    @cached_property
    def _has_allow(self) -> bool:
        return any(r.action == "allow" for r in self.policies.input)

    def _activation(self, call: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        act = {name: to_cel(value) for name, value in args.items() if name not in RESERVED}
        act.update(user=to_cel(user_view(call.user)), args=to_cel(dict(args)),
                   endpoint=to_cel({"kind": self.kind, "name": self.name}))
        return act

    def _deny(self, rule: str, reason: str | None) -> PolicyDenied:
        log.info("policy %s of %s %r denied the call", rule, self.kind, self.name)
        note_refused("PolicyDenied")
        return PolicyDenied(f"denied by policy: {reason or f'{rule} of {self.kind} {self.name!r}'}")

    def _failed(self, rule: str, why: str) -> PolicyDenied:
        log.warning("policy %s of %s %r (%s) could not be evaluated, call denied: %s",
                    rule, self.kind, self.name, self.where, why)
        note_refused("PolicyDenied")
        return PolicyDenied(f"denied: policy {rule} of {self.kind} {self.name!r} could not be evaluated")

    def check_input(self, call: CallContext, args: Mapping[str, Any]) -> dict[str, Any]:
        """Raise PolicyDenied, or return the activation for the output rules."""
        try:
            act = self._activation(call, args)
        except Exception as exc:  # a value CEL cannot hold: deny rather than guess
            raise self._failed("input", f"arguments or claims CEL cannot hold: {type(exc).__name__}") from None
        allowed = not self._has_allow
        first_allow_reason = None
        for i, rule in enumerate(self.policies.input):
            label = f"input[{i}]"
            try:
                holds = _truth(rule._program, act)
            except _Failed as exc:
                raise self._failed(label, str(exc)) from None
            if rule.action == "deny" and holds:
                raise self._deny(label, rule.reason)
            if rule.action == "warn" and holds:
                log.warning("policy %s of %s %r: %s", label, self.kind, self.name, rule.reason or "warning")
            if rule.action == "allow":
                first_allow_reason = first_allow_reason or rule.reason
                allowed = allowed or holds
        if not allowed:
            raise self._deny("input (allow)", first_allow_reason or "no allow rule matched")
        return act

    def apply_output(self, act: dict[str, Any], view: ResultView) -> None:
        """Deny, drop, mask or filter in place, rule by rule, each rule seeing the previous one's work."""
        for i, rule in enumerate(self.policies.output):
            label = f"output[{i}]"
            try:
                try:
                    scope = {**act, "response": to_cel(view.response())}
                except Exception as exc:
                    raise _Failed(f"the answer cannot be given to CEL: {type(exc).__name__}") from None
                holds = _truth(rule._program, scope)
                if not holds:
                    continue
                if rule.action == "deny":
                    raise self._deny(label, rule.reason)
                if rule.action == "warn":
                    log.warning("policy %s of %s %r: %s", label, self.kind, self.name, rule.reason or "warning")
                elif rule.action == "filter_fields":
                    view.drop(set(rule.fields))
                elif rule.action == "mask_fields":
                    view.mask(set(rule.fields), rule.mask)
                elif rule.action == "filter_rows":
                    self._filter_rows(rule, act, view, label)
            except _Failed as exc:
                raise self._failed(label, str(exc)) from None

    def _filter_rows(self, rule: OutputRule, act: dict[str, Any], view: ResultView, label: str) -> None:
        assert rule._keep is not None
        rows = view.rows()
        if rows is None:  # one object: shown or refused as a whole (no answer: nothing to hide)
            if view.response() is not None and not _truth(rule._keep, {**act, "row": to_cel(view.response())}):
                raise self._deny(label, rule.reason or "this record is not visible to you")
            return
        view.keep_rows([_truth(rule._keep, {**act, "row": to_cel(row)}) for row in rows])


async def apply_output_policies(enforcer: Enforcer, scope: dict[str, Any], view: ResultView) -> None:
    """Output rules off the event loop: `keep:` runs once per row (~1 ms each), up to limits.max_rows."""
    await anyio.to_thread.run_sync(enforcer.apply_output, scope, view)


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def guard_handler(enforcer: Enforcer, handler: Handler, view: Callable[[dict[str, Any]], ResultView],
                  call: Callable[[], CallContext]) -> Handler:
    """A built-in tool's handler behind its policies: input rules first, output rules on its answer."""

    async def guarded(args: dict[str, Any]) -> dict[str, Any]:
        act = enforcer.check_input(call(), args)
        out = await handler(args)
        if enforcer.policies.output:
            await apply_output_policies(enforcer, act, view(out))
        return out

    return guarded

