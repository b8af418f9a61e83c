"""Start-up checks of sqlgate's PostgreSQL service role: the privileges that would undo the guard.

Row-level security and the signed identity hold only if the role sqlgate connects as cannot step
around them. Each problem found is one readable sentence; the engine refuses to start on any
(engine.role_checks: refuse, the default) or logs them as warnings (warn).
"""

from __future__ import annotations

# predefined roles that read/write server files, run programs, signal other backends, read every
# table whatever its grants (sqlgate.identity_key included), or read the server's paths
_DANGEROUS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
                    "pg_signal_backend", "pg_read_all_data", "pg_write_all_data", "pg_read_all_settings")


def service_role_problems(conn, identity_mode: str) -> list[str]:
    """What is wrong with the current role (psycopg sync connection as the service role)."""
    problems: list[str] = []
    me, superuser, bypassrls, createrole = conn.execute(
        "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    if superuser:
        problems.append(f"the service role {me} is a superuser (it bypasses row-level security and every check)")
    if bypassrls:
        problems.append(f"the service role {me} has BYPASSRLS")
    if createrole:
        problems.append(f"the service role {me} has CREATEROLE (it can grant itself other roles)")
    for (role,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND pg_has_role(current_user, oid, 'MEMBER') "
            "ORDER BY 1", (list(_DANGEROUS_ROLES),)):
        problems.append(f"the service role {me} is a member of {role}")
    # set_role mode (and SET ROLE in general): roles it can become must not be privileged either
    for (role,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE (rolsuper OR rolbypassrls) AND rolname <> current_user "
            "AND pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1"):
        problems.append(f"the service role {me} can SET ROLE to {role}, a superuser or BYPASSRLS role")
    for (table,) in conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relrowsecurity AND NOT c.relforcerowsecurity "
            "AND pg_has_role(current_user, c.relowner, 'USAGE') AND has_table_privilege(c.oid, 'SELECT') "
            "ORDER BY 1"):
        problems.append(f"table {table} has row-level security but is owned by the service role {me} "
                        "without FORCE ROW LEVEL SECURITY, so its policies do not apply to sqlgate")
    if identity_mode == "signed":
        problems += _identity_problems(conn, me)
    return problems


def _identity_problems(conn, me: str) -> list[str]:
    found = conn.execute(
        "SELECT to_regclass('sqlgate.identity_key'), to_regprocedure('sqlgate._identity()')").fetchone()
    if found[0] is None or found[1] is None:
        return []  # not installed: the engine reports that on its own
    problems: list[str] = []
    readable, owns_key, owns_fn, runs_fn, creates = conn.execute(
        "SELECT has_table_privilege('sqlgate.identity_key', 'SELECT'), "
        "pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = 'sqlgate.identity_key'::regclass), "
        "'USAGE'), pg_has_role(current_user, (SELECT proowner FROM pg_proc WHERE oid = "
        "'sqlgate._identity()'::regprocedure), 'USAGE'), has_function_privilege('sqlgate._identity()', 'EXECUTE'), "
        "has_schema_privilege('sqlgate', 'CREATE')").fetchone()
    if readable or owns_key:
        problems.append(f"the service role {me} can read sqlgate.identity_key, so it could sign any identity")
    if owns_fn:
        problems.append(f"the service role {me} owns sqlgate's identity functions, so it could replace them")
    if runs_fn and not owns_fn:
        problems.append(f"the service role {me} may call sqlgate._identity() directly (revoke EXECUTE)")
    if creates:
        problems.append(f"the service role {me} may create objects in schema sqlgate (revoke CREATE)")
    return problems


# sqlgate's own identity functions (templates/postgres/identity.sql): SECURITY DEFINER on purpose
_IDENTITY_FUNCTIONS = ("username", "user_id", "user_email", "user_provider", "user_display_name", "claims",
                       "_identity")


def function_findings(conn, role_prefix: str | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) about functions outside pg_catalog that sqlgate's calls can EXECUTE: the
    service role, and with role_prefix (set_role mode) every role it can become whose name starts
    with the prefix. Their code is invisible to the query guard (it refuses them unless allow-listed,
    but endpoint SQL, views and policies may call them):
    - SECURITY DEFINER owned by a superuser or BYPASSRLS role: a problem (it can read every row past
      row-level security), refused at start-up with role_checks: refuse;
    - any other SECURITY DEFINER function, or one in a procedural language (plpgsql, plpython …,
      which can EXECUTE SQL text): a warning."""
    rows = conn.execute(
        "SELECT format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), "
        "p.prosecdef, l.lanname, o.rolname, o.rolsuper OR o.rolbypassrls "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang "
        "JOIN pg_roles o ON o.oid = p.proowner "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND NOT (n.nspname = 'sqlgate' AND p.proname = ANY(%(own)s)) "
        "AND (p.prosecdef OR l.lanname NOT IN ('sql', 'internal', 'c')) "
        "AND EXISTS (SELECT 1 FROM pg_roles r WHERE (r.rolname = current_user OR (%(prefix)s::text <> '' "
        "AND left(r.rolname, length(%(prefix)s)) = %(prefix)s AND pg_has_role(current_user, r.oid, 'MEMBER'))) "
        "AND has_function_privilege(r.oid, p.oid, 'EXECUTE') AND has_schema_privilege(r.oid, n.oid, 'USAGE')) "
        "ORDER BY 1", {"own": list(_IDENTITY_FUNCTIONS), "prefix": role_prefix or ""}).fetchall()
    problems: list[str] = []
    warnings: list[str] = []
    for fn, definer, language, owner, privileged in rows:
        if definer and privileged:
            problems.append(f"function {fn} is SECURITY DEFINER and owned by {owner}, a superuser or BYPASSRLS "
                            "role, and sqlgate's roles may execute it: it runs past row-level security (revoke "
                            "EXECUTE from them, or change its owner)")
        elif definer:
            warnings.append(f"function {fn} is SECURITY DEFINER (runs as {owner}) and sqlgate's roles may execute "
                            "it; the query tool refuses it unless engine.allowed_functions lists it")
        else:
            warnings.append(f"function {fn} is written in {language} (it can run any SQL) and sqlgate's roles may "
                            "execute it; the query tool refuses it unless engine.allowed_functions lists it")
    return problems, warnings


def function_catalog(conn) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """(names of pg_catalog's functions, (schema, name) of every other function), lower-cased, for
    the query guard's decisions about unqualified names."""
    builtin: set[str] = set()
    outside: set[tuple[str, str]] = set()
    for schema, name in conn.execute("SELECT n.nspname, p.proname FROM pg_proc p "
                                     "JOIN pg_namespace n ON n.oid = p.pronamespace"):
        if schema == "pg_catalog":
            builtin.add(name.lower())
        else:
            outside.add((schema.lower(), name.lower()))
    return frozenset(builtin), frozenset(outside)
