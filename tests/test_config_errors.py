"""Bad configuration and bad endpoint files give clear errors: file, line or key, and the reason.

Real files in temp directories, loaded with `load_project` / `load_endpoints`, and a few cases
through the real CLI (`python -m sqlgate validate`), which must exit 2 with the message on stderr
and no Python traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sqlgate.config.loader import load_project
from sqlgate.endpoints.loader import load_endpoints
from sqlgate.errors import ConfigError
from tests.conftest import isolated_env

BASE = """\
name: demo
engine:
  path: ":memory:"
"""


def write_project(root: Path, yml: str = BASE, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sqlgate.yml").write_text(textwrap.dedent(yml))
    for rel, text in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    """An explicit environment: no developer user config, nothing inherited."""
    return {"SQLGATE_CONFIG": str(tmp / "no-user-config.yml"), **extra}


def project_error(root: Path, env: dict[str, str], **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root, env=env, **kwargs)
    return str(info.value)


def endpoint_error(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_endpoints(root)
    return str(info.value)


def validate_cli(project: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlgate", "validate", "-p", str(project)],
                          capture_output=True, text=True, timeout=60,
                          env=isolated_env(tmp, COLUMNS="250", **env))


def assert_clean_cli_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} missing from {proc.stderr!r}"


# ================================================================ sqlgate.yml

def test_unknown_top_level_key_names_file_line_and_allowed_keys(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limts:\n  max_rows: 5\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:4:" in msg
    assert "unknown key 'limts'" in msg
    assert "limits" in msg.split("allowed:", 1)[1]


def test_unknown_nested_key(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_rowz: 5\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:5:" in msg
    assert "limits.max_rowz" in msg and "unknown key" in msg


def test_wrong_type_names_key_line_and_reason(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  timeout_seconds: 5\n  max_rows: lots\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:6:" in msg
    assert "limits.max_rows" in msg
    assert "valid integer" in msg


def test_out_of_range_value(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_bytes: 10\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:5:" in msg
    assert "limits.max_bytes" in msg and "1024" in msg


def test_several_problems_are_listed_together(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_rows: lots\n  max_bytes: many\n")
    msg = project_error(root, env_for(tmp_path))
    assert "invalid configuration" in msg
    assert f"{root / 'sqlgate.yml'}:5: limits.max_rows" in msg
    assert f"{root / 'sqlgate.yml'}:6: limits.max_bytes" in msg


def test_invalid_yaml_syntax_has_line_number(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n max_rows: 10\n  timeout_seconds: 3\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:6:" in msg
    assert "invalid YAML" in msg


def test_duplicate_yaml_key_is_an_error(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_rows: 1\n  max_rows: 2\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:6:" in msg
    assert "duplicate key 'max_rows'" in msg


def test_missing_project_file(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = project_error(tmp_path / "empty", env_for(tmp_path))
    assert "no sqlgate.yml here" in msg and "sqlgate init" in msg


def test_auth_in_project_file_is_refused(tmp_path):
    root = write_project(tmp_path / "p", BASE + "auth:\n  provider: none\n")
    msg = project_error(root, env_for(tmp_path))
    assert f"{root / 'sqlgate.yml'}:4:" in msg
    assert "auth belongs in the user config" in msg
    assert "secrets" in msg


def test_unset_variable_in_project_file(tmp_path):
    root = write_project(tmp_path / "p", BASE + "description: ${UNSET_VAR}\n")
    msg = project_error(root, env_for(tmp_path))
    assert "Environment variable UNSET_VAR is not set" in msg
    assert f"{root / 'sqlgate.yml'}:4 (description)" in msg


# ================================================================ user config and profiles

USER_CONFIG = """\
projects:
  demo:
    profiles:
      default:
        engine:
          path: ${UNSET_VAR}
"""


def test_unset_variable_in_user_config_via_sqlgate_config(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "user.yml"
    user.write_text(USER_CONFIG)
    msg = project_error(root, {"SQLGATE_CONFIG": str(user)})
    assert "Environment variable UNSET_VAR is not set" in msg
    assert f"{user}:6" in msg and "(path)" in msg


def test_unset_variable_in_user_config_via_config_path(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "elsewhere.yml"
    user.write_text(USER_CONFIG)
    msg = project_error(root, env_for(tmp_path), config_path=user)
    assert "Environment variable UNSET_VAR is not set" in msg
    assert f"{user}:6" in msg


def test_unknown_profile_lists_the_available_ones(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "user.yml"
    user.write_text("projects:\n  demo:\n    profiles:\n      default: {}\n      prod: {}\n")
    for how in ({"profile": "staging"}, {}):
        env = {"SQLGATE_CONFIG": str(user)} if how else {"SQLGATE_CONFIG": str(user), "SQLGATE_PROFILE": "staging"}
        msg = project_error(root, env, **how)
        assert f"{user}:3" in msg
        assert "profile 'staging' not found for project 'demo'" in msg
        assert "available: default, prod" in msg


def test_unknown_key_in_profile(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "user.yml"
    user.write_text("projects:\n  demo:\n    profiles:\n      default:\n        limts: {max_rows: 5}\n")
    msg = project_error(root, {"SQLGATE_CONFIG": str(user)})
    assert f"{user}:5" in msg
    assert "unknown key 'limts' in profile 'default'" in msg


def test_wrong_type_in_profile_points_at_the_user_config(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "user.yml"
    user.write_text("projects:\n  demo:\n    profiles:\n      default:\n        limits:\n          max_rows: many\n")
    msg = project_error(root, {"SQLGATE_CONFIG": str(user)})
    assert f"{user}:6:" in msg
    assert "limits.max_rows" in msg and "valid integer" in msg


def test_env_override_with_bad_value_names_the_variable(tmp_path):
    root = write_project(tmp_path / "p")
    msg = project_error(root, env_for(tmp_path, SQLGATE_MAX_ROWS="abc"))
    assert "environment variable SQLGATE_MAX_ROWS" in msg
    assert "limits.max_rows" in msg and "valid integer" in msg


# ---------------------------------------------------------------- positive cases

def test_variable_default_is_used_when_unset_and_value_when_set(tmp_path):
    root = write_project(tmp_path / "p", BASE + "description: db at ${DB_HOST:-localhost}\n"
                                               "limits:\n  max_rows: ${ROWS:-7}\n")
    loaded = load_project(root, env=env_for(tmp_path))
    assert loaded.settings.description == "db at localhost"
    assert loaded.settings.limits.max_rows == 7
    loaded = load_project(root, env=env_for(tmp_path, DB_HOST="db.internal", ROWS="9"))
    assert loaded.settings.description == "db at db.internal"
    assert loaded.settings.limits.max_rows == 9


def test_env_override_is_applied(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_rows: 100\n  timeout_seconds: 12\n")
    loaded = load_project(root, env=env_for(tmp_path, SQLGATE_MAX_ROWS="5", SQLGATE_QUERY_TIMEOUT="2.5"))
    assert loaded.settings.limits.max_rows == 5
    assert loaded.settings.limits.timeout_seconds == 2.5
    assert load_project(root, env=env_for(tmp_path)).settings.limits.max_rows == 100


PROFILES = """\
projects:
  demo:
    profiles:
      default:
        limits:
          max_rows: 10
      prod:
        engine:
          path: ${PROD_DB:-prod.duckdb}
        limits:
          max_rows: 20
      broken:
        engine:
          path: ${NEVER_SET_ANYWHERE}
  other-project:
    profiles:
      default:
        limits:
          max_rows: 1
"""


def test_profile_selection_merges_user_config_over_project_file(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits:\n  max_rows: 100\n  max_bytes: 5000\n"
                                               "  timeout_seconds: 12\n")
    user = tmp_path / "user.yml"
    user.write_text(PROFILES)
    env = {"SQLGATE_CONFIG": str(user)}

    default = load_project(root, env=env).settings
    assert default.profile == "default"
    assert default.limits.max_rows == 10  # from the profile
    assert default.limits.max_bytes == 5000 and default.limits.timeout_seconds == 12  # from the project
    assert default.engine.path == ":memory:"

    prod = load_project(root, env=env, profile="prod").settings  # `broken`'s unset variable is not needed
    assert prod.profile == "prod"
    assert prod.limits.max_rows == 20
    assert prod.limits.max_bytes == 5000
    assert prod.engine.path == "prod.duckdb"
    assert prod.engine.read_only is True  # untouched defaults survive the merge

    via_env = load_project(root, env={**env, "SQLGATE_PROFILE": "prod", "PROD_DB": "/srv/prod.duckdb"}).settings
    assert via_env.profile == "prod" and via_env.engine.path == "/srv/prod.duckdb"

    # environment overrides beat the profile
    assert load_project(root, env={**env, "SQLGATE_MAX_ROWS": "3"}, profile="prod").settings.limits.max_rows == 3
    # the broken profile fails only when selected
    msg = project_error(root, env, profile="broken")
    assert "Environment variable NEVER_SET_ANYWHERE is not set" in msg


def test_profile_named_in_project_file_is_selected(tmp_path):
    root = write_project(tmp_path / "p", BASE + "profile: prod\n")
    user = tmp_path / "user.yml"
    user.write_text(PROFILES)
    settings = load_project(root, env={"SQLGATE_CONFIG": str(user)}).settings
    assert settings.profile == "prod" and settings.limits.max_rows == 20


# ================================================================ endpoint files

def tool_yaml(name: str = "t", ptype: str = "string", code: str = "SELECT $x AS x") -> str:
    return textwrap.dedent(f"""\
        tool:
          name: {name}
          description: A test tool.
          parameters:
            - name: x
              type: {ptype}
              description: The x.
          source:
            code: {code}
        """)


def test_unknown_parameter_type(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml(ptype="text")})
    msg = endpoint_error(root)
    assert "tools/a.yml:6:" in msg
    assert "tool.parameters[0].type" in msg
    assert "'string', 'number', 'integer', 'boolean', 'array' or 'object'" in msg


def test_enum_default_not_in_enum(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": """\
        tool:
          name: a
          description: A test tool.
          parameters:
            - name: region
              type: string
              description: Region.
              enum: [EU, US]
              default: MARS
          source:
            code: SELECT $region AS r
        """})
    msg = endpoint_error(root)
    assert "tools/a.yml:5:" in msg
    assert "tool.parameters[0]" in msg
    assert "default 'MARS'" in msg and "is not one of ['EU', 'US']" in msg


def test_sql_uses_undeclared_parameter(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": """\
        tool:
          name: a
          description: A test tool.
          source:
            code: SELECT * FROM range(10) WHERE range > $minimum
        """})
    msg = endpoint_error(root)
    assert "tools/a.yml" in msg and "tool.source" in msg
    assert "SQL uses $minimum but no such parameter is declared" in msg


def test_colon_style_parameter_is_an_error_naming_the_dollar_form(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml(
        code="SELECT x::INTEGER AS y FROM (SELECT :x AS x) WHERE ':x' <> '' -- :x")})
    msg = endpoint_error(root)
    assert "tools/a.yml" in msg and "SQL uses :x: sqlgate parameters are written $x" in msg


def test_colon_inside_strings_casts_and_struct_literals_is_not_a_parameter(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml(
        code="SELECT $x::VARCHAR AS x, ':x' AS s, {'k':x} AS st, [1, 2][1:x] AS sl FROM (SELECT 1 AS x)")})
    (ep,) = load_endpoints(root)
    assert ep.sql_params == ["x"]


def test_two_files_with_the_same_tool_name(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml("same"),
                                                "tools/sub/b.yml": tool_yaml("same")})
    msg = endpoint_error(root)
    assert "duplicate tool 'same'" in msg
    assert "tools/a.yml" in msg and "tools/sub/b.yml" in msg


def test_tool_without_description(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": "tool:\n  name: a\n  source:\n    code: SELECT 1\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml:1:" in msg
    assert "tool.description: Field required" in msg


def test_source_with_both_code_and_file(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": "tool:\n  name: a\n  description: d\n  source:\n    code: SELECT 1\n    file: q.sql\n",
        "tools/q.sql": "SELECT 2\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml:4:" in msg
    assert "tool.source" in msg
    assert "exactly one of `code`" in msg


def test_missing_source_file(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": "tool:\n  name: a\n  description: d\n  source:\n    file: ../sql/missing.sql\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml" in msg
    assert "source file '../sql/missing.sql' not found" in msg


def test_python_source_without_the_function(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": "tool:\n  name: a\n  description: d\n  source:\n    file: ../python/m.py\n    function: nope\n",
        "python/m.py": "def other():\n    return 1\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml" in msg
    assert "python/m.py has no function 'nope'" in msg


def test_python_function_signature_mismatch(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": tool_yaml("a").replace("code: SELECT $x AS x", "file: ../python/sig.py"),
        "python/sig.py": "def a(y):\n    return y\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml" in msg
    assert "function a() does not accept parameter(s) x" in msg


def test_resource_uri_placeholder_without_parameter(tmp_path):
    root = write_project(tmp_path / "p", files={"resources/r.yml": """\
        resource:
          uri: data://items/{item_id}
          description: An item.
          source:
            code: SELECT 1 AS one
        """})
    msg = endpoint_error(root)
    assert "resources/r.yml:1:" in msg
    assert "URI placeholders without a parameter: item_id" in msg


def test_prompt_with_undeclared_variable(tmp_path):
    root = write_project(tmp_path / "p", files={"prompts/p.yml": """\
        prompt:
          name: p
          description: A prompt.
          parameters:
            - name: table
              type: string
              description: A table.
          messages:
            - prompt: Look at {{ table }} with focus on {{ focus }}.
        """})
    msg = endpoint_error(root)
    assert "prompts/p.yml:1:" in msg
    assert "messages[0] uses {{ focus }} but no parameter 'focus' is declared" in msg


def test_endpoint_in_the_wrong_folder(tmp_path):
    root = write_project(tmp_path / "p", files={"resources/a.yml": tool_yaml("a")})
    msg = endpoint_error(root)
    assert "resources/a.yml" in msg
    assert "defines a tool but lives in resources/ (move it to tools/)" in msg


def test_invalid_endpoint_yaml_has_line_number(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": "tool:\n  name: a\n  description: [oops\n"})
    msg = endpoint_error(root)
    assert "tools/a.yml:" in msg and "invalid YAML" in msg
    line = int(msg.split("tools/a.yml:", 1)[1].split(":", 1)[0])
    assert line in (3, 4)


def test_all_bad_files_are_reported_together(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": tool_yaml("a", ptype="text"),
        "tools/b.yml": "tool:\n  name: b\n  source:\n    code: SELECT 1\n",
    })
    msg = endpoint_error(root)
    assert "2 endpoint files are invalid" in msg
    assert "tools/a.yml:6: tool.parameters[0].type" in msg
    assert "tools/b.yml:1: tool.description: Field required" in msg


def test_valid_endpoints_load(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml("a"), "tools/b.yml": tool_yaml("b")})
    assert sorted(ep.name for ep in load_endpoints(root)) == ["a", "b"]


# ================================================================ through the CLI

def test_cli_unknown_key(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limts:\n  max_rows: 5\n")
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, f"{root / 'sqlgate.yml'}:4", "unknown key 'limts'")


def test_cli_unset_variable_in_user_config(tmp_path):
    root = write_project(tmp_path / "p")
    user = tmp_path / "user.yml"
    user.write_text(USER_CONFIG)
    proc = validate_cli(root, tmp_path, SQLGATE_CONFIG=str(user))
    assert_clean_cli_error(proc, "Environment variable UNSET_VAR is not set", f"{user}:6")


def test_cli_bad_endpoint_and_env_override(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml(ptype="text")})
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, "tools/a.yml:6", "tool.parameters[0].type")
    proc = validate_cli(write_project(tmp_path / "q"), tmp_path, SQLGATE_MAX_ROWS="abc")
    assert_clean_cli_error(proc, "environment variable SQLGATE_MAX_ROWS", "limits.max_rows")


def test_cli_valid_project(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": tool_yaml("a")})
    proc = validate_cli(root, tmp_path, SQLGATE_MAX_ROWS="5")
    assert proc.returncode == 0, proc.stderr
    assert "ok demo: 1 endpoint(s) valid" in proc.stdout


# ---------------------------------------------------------------- bugs: crashes instead of clear errors

def test_cli_unterminated_string_in_endpoint_sql(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": "tool:\n  name: a\n  description: d\n  source:\n    code: SELECT 'abc\n"})
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, "tools/a.yml")


def test_cli_non_utf8_sql_file(tmp_path):
    root = write_project(tmp_path / "p", files={
        "tools/a.yml": "tool:\n  name: a\n  description: d\n  source:\n    file: q.sql\n"})
    (root / "tools" / "q.sql").write_bytes("-- café\nSELECT 1\n".encode("latin-1"))
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, "q.sql")


def test_cli_env_override_into_non_mapping_section(tmp_path):
    root = write_project(tmp_path / "p", BASE + "limits: 5\n")
    proc = validate_cli(root, tmp_path, SQLGATE_MAX_ROWS="5")
    assert_clean_cli_error(proc, "limits")


def test_cli_message_with_brackets_is_printed_verbatim(tmp_path):
    root = write_project(tmp_path / "shop [draft]", BASE + "limts: 3\n")
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, f"{root / 'sqlgate.yml'}:4")


def test_cli_message_with_closing_tag_lookalike(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": """\
        tool:
          name: a
          description: A test tool.
          parameters:
            - name: path
              type: string
              description: A path.
              enum: [/data, /tmp]
              default: "[/etc]"
          source:
            code: SELECT $path AS p
        """})
    proc = validate_cli(root, tmp_path)
    assert_clean_cli_error(proc, "default '[/etc]'")


def number_tool(*keyword_lines: str) -> str:
    """Tool `a` with one integer parameter `n` carrying these extra YAML keyword lines."""
    extra = "".join(f"\n              {line}" for line in keyword_lines)
    return textwrap.dedent(f"""\
        tool:
          name: a
          description: A test tool.
          parameters:
            - name: n
              type: integer
              description: A number.{extra}
          source:
            code: SELECT $n AS n
        """)


@pytest.mark.parametrize(("typo", "meant"), [("defualt: 5", "default"), ("minimun: 1", "minimum"),
                                             ("requried: false", "required"), ("maxLenght: 3", "maxLength")])
def test_typos_in_parameter_definitions_are_errors_with_a_suggestion(tmp_path, typo, meant):
    root = write_project(tmp_path / "p", files={"tools/a.yml": number_tool(typo)})
    msg = endpoint_error(root)
    assert "tools/a.yml:5:" in msg and "tool.parameters[0]" in msg
    assert f"unknown keyword {typo.split(':')[0]!r}" in msg and f"did you mean {meant!r}" in msg


def test_extension_keywords_are_allowed(tmp_path):
    root = write_project(tmp_path / "p", files={"tools/a.yml": number_tool("x-unit: seconds", "examples: [1, 2]")})
    from sqlgate.endpoints.loader import load_endpoints

    assert [e.name for e in load_endpoints(root)] == ["a"]
