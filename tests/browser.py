"""A tiny headless browser for OAuth flows: follows redirects, fills and submits HTML forms.

It drives real pages — sqlgate's consent page (CSRF token, approve button), the IdP's login
form — until the flow redirects to the client's redirect URI, which it does not follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlparse

import httpx


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append(Form(action=a.get("action") or "", method=(a.get("method") or "get").lower()))
        elif not self.forms:
            return
        elif tag == "input" and a.get("name"):
            if (a.get("type") or "text").lower() in ("submit", "button"):
                self.forms[-1].buttons.append((a["name"], a.get("value") or ""))
            else:
                self.forms[-1].fields[a["name"]] = a.get("value") or ""
        elif tag == "button" and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value") or ""))


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class FlowError(AssertionError):
    pass


class Browser:
    """One user agent with its own cookie jar."""

    def __init__(self, username: str = "alice", password: str = "alice-password", approve: bool = True):
        self.http = httpx.Client(timeout=15, follow_redirects=False, trust_env=False)
        self.username, self.password, self.approve = username, password, approve
        self.pages: list[tuple[int, str]] = []  # (status, url) visited, for debugging

    def close(self) -> None:
        self.http.close()

    def run(self, url: str, stop_prefix: str, max_steps: int = 20) -> str:
        """Follow the flow from `url` until a redirect to `stop_prefix`; return that URL."""
        resp = self.http.get(url)
        for _ in range(max_steps):
            self.pages.append((resp.status_code, str(resp.url)))
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if location.startswith(stop_prefix):
                    return location
                resp = self.http.get(location)
                continue
            if resp.status_code >= 400 and not forms(resp.text):
                raise FlowError(f"HTTP {resp.status_code} at {resp.url}: {resp.text[:300]}")
            resp = self._submit(resp)
        raise FlowError(f"no redirect to {stop_prefix} after {max_steps} steps: {self.pages}")

    def _submit(self, resp: httpx.Response) -> httpx.Response:
        page = forms(resp.text)
        if not page:
            raise FlowError(f"HTTP {resp.status_code} at {resp.url} has no form: {resp.text[:300]}")
        form = page[0]
        data = dict(form.fields)
        if "username" in data or "password" in data:
            data.update(username=self.username, password=self.password)
        for name, value in form.buttons:
            wanted = "approve" if self.approve else "deny"
            if name == "action" and value.lower().startswith(wanted[:4]):
                data[name] = value
                break
        target = urljoin(str(resp.url), form.action or str(resp.url))
        if form.method == "post":
            return self.http.post(target, data=data)
        return self.http.get(target, params=data)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
