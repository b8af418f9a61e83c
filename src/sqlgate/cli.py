"""The `sqlgate` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sqlgate import __version__
from sqlgate.errors import SqlgateError

app = typer.Typer(
    name="sqlgate",
    help="Safe, audited MCP access to SQL data (DuckDB) over stdio and streamable HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Run one tool, resource or prompt locally and print its result.", no_args_is_help=True)
app.add_typer(run_app, name="run")
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", envvar="SQLGATE_PROJECT",
                                          help="Project directory (holds sqlgate.yml).")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Profile of the user config to use.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"sqlgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    pass


def _fail(exc: Exception) -> None:
    err.print("[bold red]error:[/] " + escape(str(exc)), highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _load(project: Path, profile: str | None):
    from sqlgate.config.loader import load_project

    return load_project(project, profile)


@contextlib.contextmanager
def stdout_to_stderr():
    """Point fd 1 (and so print(), C extensions, child processes) at stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _setup_logging(level: str) -> None:
    from sqlgate.logredact import install

    install()  # before anything logs: no code or token in any line (logredact.py)
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Project name (default: the directory name).")] = None,
    force: Annotated[bool, typer.Option(help="Write into a non-empty directory.")] = False,
    from_: Annotated[list[Path] | None, typer.Option(
        "--from", help="Data file(s) or folder(s) to serve (csv, tsv, parquet, json, ndjson, duckdb, sqlite) "
                       "instead of the example shop; repeatable.")] = None,
) -> None:
    """Create a working project: the example shop, or one around your data files (--from)."""
    from sqlgate.project_init import create_from_files, create_project

    try:
        if from_:
            info = create_from_files(directory, list(from_), name=name, force=force)
        else:
            info = create_project(directory, name=name, force=force)
    except SqlgateError as exc:
        _fail(exc)
    out.print(f"[green]Created project[/] [bold]{info['name']}[/] in {info['root']}")
    out.print(f"Database: {info['database']}")
    if from_:
        out.print("Sources: " + ", ".join(info["sources"]))
        for note in info["skipped"]:
            err.print(f"[yellow]skipped:[/] {escape(note)}", soft_wrap=True)
        example = f"  sqlgate validate -p {directory}\n"
    else:
        example = (f"  sqlgate list -p {directory}\n"
                   f"  sqlgate run -p {directory} tool top_customers --param limit=3\n"
                   f"  sqlgate test -p {directory}\n")
    out.print("\nTry it:\n" + example + f"  sqlgate serve -p {directory} --transport http\n")
    out.print("Claude Desktop (claude_desktop_config.json):")
    out.print_json(json.dumps(info["claude_desktop"]))


@app.command()
def refresh(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Rebuild the database (seed, sources, views/) into a new file and swap it in atomically.

    A running server keeps answering from the old file; send it SIGHUP (kill -HUP PID) and new
    calls use the new one while calls in flight finish on the old."""
    from sqlgate.engine.duckdb_build import refresh as rebuild

    def progress(message: str) -> None:
        err.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True)

    try:
        path = rebuild(_load(project, profile), progress)
    except SqlgateError as exc:
        _fail(exc)
    out.print(f"[green]refreshed[/] {path}; running servers switch to it on SIGHUP (kill -HUP PID)")


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    profile: ProfileOpt = None,
    transport: Annotated[str, typer.Option(help="stdio or http (streamable HTTP).",
                                           envvar="SQLGATE_TRANSPORT")] = "stdio",
    host: Annotated[str | None, typer.Option(help="Bind address (http).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (http); 0 picks a free one.")] = None,
    log_level: Annotated[str, typer.Option(envvar="SQLGATE_LOG_LEVEL")] = "info",
    workers: Annotated[int, typer.Option(min=1, max=64, envvar="SQLGATE_WORKERS",
                                         help="Worker processes sharing the port (http; stateless).")] = 1,
) -> None:
    """Serve the project's tools, resources and prompts over MCP."""
    from sqlgate.serve import serve as run_server
    from sqlgate.serve import serve_workers
    from sqlgate.server import build_app

    if transport not in ("stdio", "http"):
        _fail(SqlgateError(f"unknown transport {transport!r}: use stdio or http"))
    if workers > 1 and transport != "http":
        _fail(SqlgateError("--workers needs --transport http (stdio serves one client)"))
    _setup_logging(log_level)
    try:
        # on stdio, stdout is the MCP wire: whatever project code prints while it is imported goes
        # to stderr (while serving, the mcp SDK diverts fd 1 itself)
        with stdout_to_stderr() if transport == "stdio" else contextlib.nullcontext():
            loaded = _load(project, profile).with_transport(host=host, port=port)
            # built here also with workers: it validates everything and builds the database once,
            # before the workers start (they would race to build it)
            application = build_app(loaded)
    except SqlgateError as exc:
        _fail(exc)
    t = loaded.settings.transport
    if workers > 1:
        import asyncio

        asyncio.run(application.engine.close())
        serve_workers(application, str(loaded.root), profile, t.host, t.port, log_level.lower(), workers)
        return
    run_server(application, transport, t.host, t.port, log_level.lower())


@app.command("list")
def list_(project: ProjectOpt = Path("."), profile: ProfileOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the project's endpoints and enabled built-in tools."""
    from sqlgate.endpoints.loader import load_endpoints

    try:
        loaded = _load(project, profile)
        endpoints = load_endpoints(loaded.root)
    except SqlgateError as exc:
        _fail(exc)
    cfg = loaded.settings.sql_tools
    builtins = [n for n in ("list_schemas", "list_tables", "describe_table", "search_objects", "query")
                if cfg.enabled and getattr(cfg, n)]
    rows = [{"kind": "tool", "name": n, "source": "built-in", "description": ""} for n in builtins]
    rows += [{"kind": ep.kind, "name": ep.name if ep.kind != "resource" else ep.definition.uri,
              "source": ep.file, "description": ep.definition.description} for ep in endpoints]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"{loaded.settings.name} (profile {loaded.settings.profile})")
    for col in ("kind", "name", "source", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["source"], (r["description"] or "").strip().split("\n")[0][:70])
    out.print(table)


@app.command()
def validate(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Check sqlgate.yml, the user config and every endpoint file; exit 2 on the first problem."""
    from sqlgate.endpoints.loader import load_endpoints

    try:
        loaded = _load(project, profile)
        endpoints = load_endpoints(loaded.root)
        unbound = _bind_problems(loaded, endpoints)
    except SqlgateError as exc:
        _fail(exc)
    if unbound:
        _fail(SqlgateError("endpoint SQL does not fit the database:\n" + "\n".join(f"  - {p}" for p in unbound)))
    for ep in endpoints:
        for w in ep.warnings:
            err.print(f"[yellow]warning:[/] {w}")
    if not loaded.settings.engine.read_only:
        err.print("[yellow]warning:[/] engine.read_only is false: the built-in query tool then relies on the "
                  "statement checker alone to refuse writes")
    out.print(f"[green]ok[/] {loaded.settings.name}: {len(endpoints)} endpoint(s) valid "
              f"(profile {loaded.settings.profile})")


_SAMPLES = {"string": "", "integer": 0, "number": 0.5, "boolean": False}


def _sample(schema: dict[str, Any]) -> Any:
    """A value of the parameter's type, so engines that plan with typed parameters can bind."""
    for key in ("default", "examples", "enum"):
        if key in schema:
            return schema[key][0] if key != "default" else schema[key]
    return _SAMPLES.get(schema["type"])


def _bind_problems(loaded, endpoints) -> list[str]:
    """Open the database (read-only, as served) and bind every endpoint's SQL against it.

    A PostgreSQL database that cannot be reached from here is a warning, not a failure: validation
    often runs where only the project files are."""
    import asyncio

    from sqlgate.engine import open_engine

    try:
        engine = open_engine(loaded)
    except SqlgateError as exc:
        if loaded.settings.engine.type == "duckdb" or "cannot connect" not in str(exc):
            raise
        err.print(f"[yellow]warning:[/] endpoint SQL not checked against the database: {escape(str(exc))}")
        return []
    try:
        problems = []
        for ep in endpoints:
            if ep.sql is not None:
                samples = {p.name: _sample(p.json_schema()) for p in ep.definition.parameters}
                problem = engine.bind_problem(ep.sql, samples)
                if problem:
                    line = re.search(r" \(SQL line (\d+)\)$", problem)
                    where = ep.sql_line(int(line.group(1))) if line else ep.sql_line(1)
                    problem = problem[:line.start()] if line else problem
                    problems.append(f"{where}: {ep.kind} {ep.name!r}: {problem}")
        return problems
    finally:
        asyncio.run(engine.close())


def _parse_params(params: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        if "=" not in item:
            raise SqlgateError(f"--param needs key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _coerce_to_declared(ep, args: dict[str, Any], raw: list[str]) -> dict[str, Any]:
    """`--param name=007` for a string parameter stays the string "007"."""
    raw_values = dict(item.split("=", 1) for item in raw)
    types = {p.name: p.type for p in ep.definition.parameters}
    return {k: raw_values[k] if types.get(k) == "string" and not isinstance(v, str) else v
            for k, v in args.items()}


def _find_endpoint(endpoints, kind: str, name: str):
    """By name; a resource also by its URI template or by a concrete URI (`shop://customers/42`),
    whose template values become arguments."""
    from fastmcp.resources.template import match_uri_template

    for ep in endpoints:
        if ep.kind == kind and (ep.name == name or (kind == "resource" and ep.definition.uri == name)):
            return ep, {}
    if kind == "resource":
        for ep in endpoints:
            if ep.kind == "resource" and "{" in ep.definition.uri:
                values = match_uri_template(name, ep.definition.uri)
                if values is not None:
                    return ep, values
    names = ", ".join(ep.name if kind != "resource" else f"{ep.name} ({ep.definition.uri})"
                      for ep in endpoints if ep.kind == kind) or "none"
    raise SqlgateError(f"no {kind} named {name!r} (available: {names})")


def _run(kind: str, name: str, project: Path, profile: str | None, params: list[str],
         user_context: str | None) -> None:
    import anyio

    from sqlgate.context import CallContext, UserContext, pinned_call
    from sqlgate.endpoints import executor
    from sqlgate.endpoints.loader import load_endpoints
    from sqlgate.engine import Limits, open_engine

    try:
        loaded = _load(project, profile)
        endpoints = load_endpoints(loaded.root)
        ep, from_uri = _find_endpoint(endpoints, kind, name)
        args = _coerce_to_declared(ep, _parse_params(params), params)
        clash = sorted(k for k in from_uri if k in args and args[k] != from_uri[k])
        if clash:
            raise SqlgateError(f"--param {', '.join(clash)} contradicts the URI {name!r}")
        args = {**executor.coerce_string_args(ep, from_uri), **args}
        user = UserContext.from_mapping(json.loads(user_context)) if user_context else UserContext()
    except (SqlgateError, ValueError) as exc:
        _fail(exc)
    call = CallContext(user=user)
    if kind == "prompt":
        try:
            messages = executor.render_prompt(ep, args)
        except SqlgateError as exc:
            _fail(exc)
        out.print_json(json.dumps([{"role": r, "text": t} for r, t in messages]))
        return
    lim = loaded.settings.limits
    try:
        engine = open_engine(loaded)
    except SqlgateError as exc:
        _fail(exc)

    async def go() -> dict[str, Any]:
        try:
            with pinned_call(call):
                return await executor.execute(ep, args, engine, Limits(lim.max_rows, lim.max_bytes,
                                                                       lim.timeout_seconds), call)
        finally:
            await engine.close()

    try:
        result = anyio.run(go)
    except SqlgateError as exc:
        _fail(exc)
    out.print_json(json.dumps(result, default=str))


ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="Argument as key=value (repeatable).")]
UserOpt = Annotated[str | None, typer.Option("--user-context",
                                             help='Caller as JSON, e.g. \'{"username": "alice"}\'.')]


@run_app.callback()
def run_options(ctx: typer.Context, project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Project and profile may also come before the kind: `sqlgate run -p DIR tool NAME`."""
    ctx.obj = {"project": project, "profile": profile}


def _where(ctx: typer.Context, project: Path, profile: str | None) -> tuple[Path, str | None]:
    """The command's own -p/--profile win; else what was given before the kind."""
    outer = ctx.obj or {}
    return (project if project != Path(".") else outer.get("project", project),
            profile if profile is not None else outer.get("profile"))


@run_app.command("tool")
def run_tool(ctx: typer.Context, name: str, project: ProjectOpt = Path("."), profile: ProfileOpt = None,
             param: ParamOpt = None, user_context: UserOpt = None) -> None:
    """Run a tool."""
    _run("tool", name, *_where(ctx, project, profile), param or [], user_context)


@run_app.command("resource")
def run_resource(ctx: typer.Context, name: str, project: ProjectOpt = Path("."), profile: ProfileOpt = None,
                 param: ParamOpt = None, user_context: UserOpt = None) -> None:
    """Read a resource: by name, URI template, or a concrete URI such as `shop://customers/42`."""
    _run("resource", name, *_where(ctx, project, profile), param or [], user_context)


@run_app.command("prompt")
def run_prompt(ctx: typer.Context, name: str, project: ProjectOpt = Path("."), profile: ProfileOpt = None,
               param: ParamOpt = None) -> None:
    """Render a prompt."""
    _run("prompt", name, *_where(ctx, project, profile), param or [], None)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement (`-` reads it from stdin).")],
    project: ProjectOpt = Path("."),
    profile: ProfileOpt = None,
    user_context: UserOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the rows as CSV.")] = False,
) -> None:
    """Run ad-hoc SQL exactly as the `query` tool would: same guard, caller identity and limits."""
    import anyio

    from sqlgate.context import CallContext, UserContext, pinned_call
    from sqlgate.engine import Limits, open_engine
    from sqlgate.engine.guard import check_length

    if as_json and as_csv:
        _fail(SqlgateError("choose one of --json and --csv"))
    if sql == "-":
        sql = sys.stdin.read()
    try:
        loaded = _load(project, profile)
        user = UserContext.from_mapping(json.loads(user_context)) if user_context else UserContext()
        lim = loaded.settings.limits
        limits = Limits(lim.max_rows, lim.max_bytes, lim.timeout_seconds, lim.max_sql_length)
        check_length(sql, limits.max_sql_length)
        engine = open_engine(loaded)
    except (SqlgateError, ValueError) as exc:
        _fail(exc)
    call = CallContext(user=user)
    # the query tool's policies (sql_tools.policies.query) hold here too, for the --user-context caller
    policy = _query_policy(loaded)

    async def go():
        try:
            with pinned_call(call):
                scope = policy.check_input(call, {"sql": sql}) if policy is not None else None
                qr = await engine.run_untrusted(sql, call, limits)
                answer = {"columns": qr.columns, "types": qr.types, "rows": qr.rows, "row_count": len(qr.rows),
                          "truncated": qr.truncated}
                if qr.truncated:
                    answer["hint"] = qr.hint()
                if scope is not None:
                    from sqlgate.policy import ColumnsView, apply_output_policies

                    await apply_output_policies(policy, scope, ColumnsView(answer))
                return qr, answer
        finally:
            await engine.close()

    try:
        qr, answer = anyio.run(go)
    except SqlgateError as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps(answer, default=str))
    elif as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(answer["columns"])
        writer.writerows([_csv_value(v) for v in row] for row in answer["rows"])
    else:
        table = Table(*answer["columns"], caption=f"{len(answer['rows'])} row(s)", highlight=False)
        for row in answer["rows"]:
            table.add_row(*(escape(_text(v)) for v in row))
        out.print(table)
    if qr.truncated:
        err.print(f"[yellow]truncated:[/] {escape(qr.hint() or '')}")


def _query_policy(loaded):
    rules = loaded.settings.sql_tools.policies.get("query")
    if rules is None:
        return None
    from sqlgate.policy import Enforcer

    return Enforcer(rules, "tool", "query", "sql_tools.policies.query")


def _text(value: Any) -> str:
    return "NULL" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


def _csv_value(value: Any) -> Any:
    return "" if value is None else value if isinstance(value, str | int | float) else _text(value)


@app.command("pg-identity", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                             "help_option_names": []})
def pg_identity(ctx: typer.Context) -> None:
    """PostgreSQL: install (or print) the signed-identity functions `sqlgate.username()` & co.

    `sqlgate pg-identity install --admin-dsn DSN -p PROJECT` / `sqlgate pg-identity sql`.
    """
    from sqlgate.engine.postgres_identity import main as identity_main

    raise typer.Exit(identity_main(list(ctx.args)))


@app.command()
def test(
    name: Annotated[str | None, typer.Argument(help="Only this endpoint's tests.")] = None,
    project: ProjectOpt = Path("."),
    profile: ProfileOpt = None,
    user_context: Annotated[str | None, typer.Option(
        "--user-context", help='Caller for tests without their own `user:`, as JSON, e.g. '
                               '\'{"username": "bob", "claims": {"groups": ["sales"]}}\'.')] = None,
) -> None:
    """Run the `tests:` blocks of the project's endpoints."""
    import anyio

    from sqlgate.context import UserContext
    from sqlgate.testing import run_tests

    try:
        loaded = _load(project, profile)
        default_user = UserContext.from_mapping(json.loads(user_context)) if user_context else None
        outcomes = anyio.run(run_tests, loaded, name, default_user)
    except (SqlgateError, ValueError) as exc:
        _fail(exc)
    failed = 0
    for o in outcomes:
        mark = "[green]PASS[/]" if o.passed else "[red]FAIL[/]"
        out.print(f"{mark} {o.kind} {o.endpoint} :: {o.test} [dim]({o.duration_ms:.1f} ms)[/]")
        if not o.passed:
            failed += 1
            out.print(f"     {o.message}", highlight=False, markup=False)
    out.print(f"\n{len(outcomes) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command("log")
def log_(
    project: ProjectOpt = Path("."),
    profile: ProfileOpt = None,
    user: Annotated[str | None, typer.Option(help="Only this user (username, user id or email).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Only this tool/resource/prompt (or auth step).")] = None,
    kind: Annotated[str | None, typer.Option(help="tool, resource, prompt or auth.")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, error or refused.")] = None,
    since: Annotated[str | None, typer.Option(help="From: 30m, 1h, 7d ago or an ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Up to: 30m, 1h ago or an ISO time.")] = None,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text anywhere in the event.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Newest N events (0: all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header line.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    file: Annotated[Path | None, typer.Option(help="Read this JSON-lines file instead of the audit table.")] = None,
) -> None:
    """Query the audit trail: who called what, when, with which outcome."""
    from sqlgate.audit import logview
    from sqlgate.audit.query import EventFilter, parse_time

    try:
        flt = EventFilter(user=user, endpoint=endpoint, kind=kind, outcome=outcome, text=text,
                          since=parse_time(since) if since else None, until=parse_time(until) if until else None)
        trail = logview.open_trail(_load(project, profile), file)
        fmt = "json" if as_json else "csv" if as_csv else "table"
        logview.show(trail, flt, limit or None, fmt, follow, out)
    except SqlgateError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@config_app.command("show")
def config_show(project: ProjectOpt = Path("."), profile: ProfileOpt = None,
                auth_only: Annotated[bool, typer.Option("--auth", help="Only the auth settings.")] = False) -> None:
    """Print the effective settings (project file + profile + environment), secrets masked."""
    try:
        loaded = _load(project, profile)
    except SqlgateError as exc:
        _fail(exc)
    settings = loaded.settings
    data: dict[str, Any] = settings.model_dump(mode="json", exclude_none=True)
    data["auth"] = settings.auth.masked()
    if auth_only:
        from sqlgate.auth.factory import public_base_url

        mode = ("proxy" if settings.auth.provider != "none"
                else "resource server" if settings.auth.enabled else "none")
        data = {"mode": mode, "base_url": public_base_url(settings.transport), "auth": data["auth"]}
    out.print_json(json.dumps(data))


def main() -> None:
    # quiet FastMCP's own banner/update checks; sqlgate prints what matters
    os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
    os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
    app()


if __name__ == "__main__":
    main()
