"""Log redaction at record creation (sqlgate.logredact): messages, arguments, tracebacks."""

from __future__ import annotations

import io
import logging

import pytest

from sqlgate.logredact import install, redact


@pytest.fixture
def captured():
    before = logging.getLogRecordFactory()
    install()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sqlgate.test.redact")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, buf
    log.removeHandler(handler)
    logging.setLogRecordFactory(before)


def test_access_log_query_strings_keep_their_shape(captured):
    log, buf = captured
    # uvicorn's access log: a tuple its formatter unpacks
    log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/oidc/callback?code=c0de-VALUE&state=s1",
             "1.1", 302)
    log.debug("GET /mcp?access_token=eyJ.abc.def&x=1")
    out = buf.getvalue()
    assert '"GET /oidc/callback?code=[redacted]&state=s1 HTTP/1.1" 302' in out
    assert "/mcp?access_token=[redacted]&x=1" in out
    assert "c0de-VALUE" not in out and "eyJ.abc.def" not in out


def test_mapping_arguments_json_bearer_and_tracebacks(captured):
    log, buf = captured
    log.info("token reply %s", {"access_token": "AT-SECRET", "expires_in": 3600})
    log.info('body {"refresh_token": "RT-SECRET", "scope": "openid"}')
    log.info("header Authorization: Bearer abcdefgh12345678")
    try:
        raise RuntimeError("POST https://idp.example/token failed for code=TB-SECRET")
    except RuntimeError:
        log.exception("exchange failed")
    out = buf.getvalue()
    for secret in ("AT-SECRET", "RT-SECRET", "abcdefgh12345678", "TB-SECRET"):
        assert secret not in out, secret
    assert "'expires_in': 3600" in out and '"scope": "openid"' in out and "RuntimeError" in out


@pytest.mark.parametrize("text", ["response_type=code&code_challenge=E9Mel&code_challenge_method=S256",
                                  "token_type_hint=refresh_token", "grant_type=authorization_code"])
def test_what_is_not_secret_stays(text):
    assert redact(text) == text
