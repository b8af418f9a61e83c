"""Run an endpoint: validate arguments, execute SQL or Python under limits, shape the result."""

from __future__ import annotations

import asyncio
import contextvars
import re
from typing import Any

import anyio
import pydantic_core

from sqlgate import answers, runtime
from sqlgate.components import check_arguments
from sqlgate.context import CallContext
from sqlgate.endpoints.loader import Endpoint
from sqlgate.endpoints.models import PromptDef
from sqlgate.engine.base import ROW_TOO_LARGE, Engine, Limits, QueryResult
from sqlgate.errors import InvalidArguments, QueryFailed, QueryTimeout, ResourceNotFound
from sqlgate.paging import CURSOR_RESERVE, FIRST, Page, Pager
from sqlgate.policy import RecordsView, apply_output_policies

CURSOR = "cursor"


def pageable(ep: Endpoint) -> bool:
    """A SQL tool answering rows can be continued with a cursor (unless it has its own `cursor`)."""
    return (ep.kind == "tool" and ep.sql is not None and _declared_kind(ep) == "array"
            and CURSOR not in {p.name for p in ep.definition.parameters})


def tool_input_schema(ep: Endpoint) -> dict[str, Any]:
    """The inputSchema clients see: the declared parameters, plus `cursor` for a pageable tool."""
    if not pageable(ep):
        return ep.input_schema
    schema = dict(ep.input_schema)
    schema["properties"] = {**schema.get("properties", {}), CURSOR: {
        "type": "string", "maxLength": 2048,
        "description": "Only to continue a cut answer: its `next_cursor` (send the same other arguments)."}}
    return schema


def prepare_arguments(ep: Endpoint, arguments: dict[str, Any] | None) -> dict[str, Any]:
    """Apply declared defaults and validate against the declared schema."""
    args = dict(ep.defaults)
    args.update(arguments or {})
    check_arguments(ep.validator, args, f"{ep.kind} {ep.name!r}")
    # optional parameters without a default are still bound (as NULL) so SQL can test `$x IS NULL`
    for p in ep.definition.parameters:
        args.setdefault(p.name, None)
    return args


def endpoint_limits(ep: Endpoint, base: Limits) -> Limits:
    own = getattr(ep.definition, "limits", None)
    if own is None:
        return base
    return base.tightened(own.max_rows, own.max_bytes, own.timeout_seconds)


async def execute(ep: Endpoint, arguments: dict[str, Any] | None, engine: Engine, base_limits: Limits,
                  call: CallContext, pager: Pager | None = None) -> dict[str, Any]:
    """Run a tool/resource endpoint; returns {"result", "row_count", "truncated"[, "hint", "next_cursor"]}."""
    arguments = dict(arguments or {})
    cursor = arguments.pop(CURSOR, None) if pageable(ep) else None
    args = prepare_arguments(ep, arguments)
    # policies are checked here, so MCP calls, `sqlgate run` and `sqlgate test` all pass through them
    policy_scope = ep.enforcer.check_input(call, args) if ep.enforcer is not None else None
    limits = endpoint_limits(ep, base_limits)
    if ep.sql is not None:
        target = f"{ep.kind}:{ep.name}"
        page = FIRST
        if cursor is not None:
            if pager is None:
                raise InvalidArguments(f"{ep.kind} {ep.name!r} does not page its answers here; call it without "
                                       "`cursor`")
            page = pager.open(cursor, call, target, args)
        params = {name: args[name] for name in ep.sql_params}
        qr = await engine.execute(ep.sql, params, call, limits, page)
        qr.page = page
        envelope = shape(ep, qr)
        if ep.kind == "resource" and envelope["result"] is None and _declared_kind(ep) == "object":
            # a record resource whose query found no row does not exist: an error, not `null`
            raise ResourceNotFound(f"resource {_uri(ep, args)} not found")
        if isinstance(envelope["result"], list):
            paging = pager is not None and pageable(ep)
            if answers.fit(envelope, limits.max_bytes, rows_key="result", reserve=CURSOR_RESERVE if paging else 0):
                del qr.rows[len(envelope["result"]):]
                qr.truncated, qr.truncated_by = True, "max_bytes"
                envelope["truncated"], envelope["hint"] = True, qr.hint()
            if envelope["truncated"] and paging:
                if not qr.rows:  # a cursor to this same position again would page forever
                    raise QueryFailed(ROW_TOO_LARGE)
                envelope["next_cursor"] = pager.issue(call, target, args, Page(page.offset + len(qr.rows)))
    else:
        result = jsonable(await _call_python(ep, args, engine, call, limits), ep)
        envelope = {"result": result, "row_count": 0, "truncated": False}
    if policy_scope is not None and ep.enforcer.policies.output:
        # after the page is cut (a cursor counts the engine's rows, whatever a rule then drops) and
        # before it is encoded: structured content and JSON text both come from the envelope
        await apply_output_policies(ep.enforcer, policy_scope, RecordsView(envelope, "result"))
    result = envelope["result"]
    envelope["row_count"] = len(result) if isinstance(result, list) else int(result is not None)
    return envelope


async def _call_python(ep: Endpoint, args: dict[str, Any], engine: Engine, call: CallContext,
                       limits: Limits) -> Any:
    assert ep.function is not None
    token = runtime.bind(engine, call, limits)
    try:
        if ep.is_async:
            try:
                return await asyncio.wait_for(ep.function(**args), limits.timeout_seconds)
            except TimeoutError:
                raise QueryTimeout(f"{ep.kind} {ep.name!r} ran longer than the "
                                   f"{limits.timeout_seconds:g} s timeout") from None
        ctx = contextvars.copy_context()
        with anyio.fail_after(limits.timeout_seconds + 5):
            return await anyio.to_thread.run_sync(lambda: ctx.run(ep.function, **args))
    except (QueryFailed, QueryTimeout, InvalidArguments) as exc:
        secret = call.user.external_token
        if secret and secret in str(exc):
            raise type(exc)(_without_token(str(exc), secret)) from None
        raise
    except TimeoutError:
        raise QueryTimeout(f"{ep.kind} {ep.name!r} ran longer than its timeout") from None
    except Exception as exc:
        raise QueryFailed(_without_token(f"{type(exc).__name__}: {exc}", call.user.external_token)) from None
    finally:
        runtime.unbind(token)


def jsonable(result: Any, ep: Endpoint) -> Any:
    """A Python endpoint's return value as JSON-ready values (datetimes ISO 8601, models as dicts …),
    once, here: the answer is then sent as it is (components.answer_result)."""
    try:
        return pydantic_core.to_jsonable_python(result)
    except pydantic_core.PydanticSerializationError as exc:
        raise QueryFailed(f"{ep.kind} {ep.name!r} returned a value that cannot be sent as JSON: {exc}") from None


def _without_token(text: str, secret: str) -> str:
    """An endpoint's error goes to the client (the model) and the log: never with the caller's
    upstream token in it (an HTTP library's error quoting a URL with `?access_token=…`)."""
    return text.replace(secret, "[token]") if secret else text


def _declared_kind(ep: Endpoint) -> str:
    return (getattr(ep.definition, "return_", None) or {}).get("type", "array")


def _uri(ep: Endpoint, args: dict[str, Any]) -> str:
    uri = ep.definition.uri
    for key, value in args.items():
        uri = uri.replace("{" + key + "}", str(value))
    return uri


def shape(ep: Endpoint, qr: QueryResult) -> dict[str, Any]:
    kind = _declared_kind(ep)
    if kind == "array":
        result: Any = qr.records()
    elif kind == "object":
        if len(qr.rows) > 1:
            raise QueryFailed(f"{ep.kind} {ep.name!r} declares a single object but the query returned "
                              f"{'more than ' if qr.truncated else ''}{len(qr.rows)} rows")
        result = qr.records()[0] if qr.rows else None
    else:
        if len(qr.rows) > 1 or len(qr.columns) != 1:
            raise QueryFailed(f"{ep.kind} {ep.name!r} declares a single {kind} value but the query returned "
                              f"{len(qr.rows)} row(s) x {len(qr.columns)} column(s)")
        result = qr.rows[0][0] if qr.rows else None
    out: dict[str, Any] = {"result": result, "row_count": len(qr.rows), "truncated": qr.truncated}
    if qr.truncated:
        out["hint"] = qr.hint()
    return out


def output_schema(ep: Endpoint) -> dict[str, Any]:
    return answers.result_schema(getattr(ep.definition, "return_", None))


_PLACEHOLDER = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")


def render_prompt(ep: Endpoint, arguments: dict[str, Any] | None) -> list[tuple[str, str]]:
    """[(role, text)] with {{ param }} replaced (plain substitution: prompts run no code)."""
    assert isinstance(ep.definition, PromptDef)
    coerced = coerce_string_args(ep, arguments or {})
    args = prepare_arguments(ep, coerced)
    out = []
    for m in ep.definition.messages:
        text = _PLACEHOLDER.sub(lambda mt: "" if args.get(mt.group(1)) is None else str(args[mt.group(1)]),
                                m.prompt)
        out.append((m.role, text))
    return out


def coerce_string_args(ep: Endpoint, arguments: dict[str, Any]) -> dict[str, Any]:
    """Prompt arguments and URI-template values arrive as strings: convert to the declared scalar types."""
    types = {p.name: p.type for p in ep.definition.parameters}
    out = dict(arguments)
    for k, v in arguments.items():
        if not isinstance(v, str):
            continue
        t = types.get(k)
        try:
            if t == "integer":
                out[k] = int(v)
            elif t == "number":
                out[k] = float(v)
            elif t == "boolean" and v.lower() in ("true", "false"):
                out[k] = v.lower() == "true"
        except ValueError:
            pass  # left as a string: validation names the problem
    return out
