"""Authentication settings (user config: projects → profiles → auth), validated at start-up.

Every provider URL is configurable and defaults to the provider's real public endpoint. An
incomplete configuration is an error that names what is missing — sqlgate never falls back to
serving without authentication.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROVIDERS = ("github", "atlassian", "salesforce", "keycloak", "google", "oidc")
PROVIDER_TITLES = {"github": "GitHub", "atlassian": "Atlassian", "salesforce": "Salesforce",
                   "keycloak": "Keycloak", "google": "Google", "oidc": "OIDC"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderConfig(Strict):
    """The upstream OAuth app (registered with the provider) and the provider's endpoints."""

    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = None  # default per provider
    callback_path: str | None = None  # default /<provider>/callback
    auth_url: str | None = None
    token_url: str | None = None
    userinfo_url: str | None = None
    revoke_url: str | None = None
    # GitHub: REST API base for /user and /user/emails
    api_base_url: str | None = None
    # Keycloak: {server_url}/realms/{realm}/protocol/openid-connect/...
    realm: str | None = None
    server_url: str | None = None
    # OIDC: discovery document (defaults to {issuer}/.well-known/openid-configuration)
    issuer: str | None = None
    discovery_url: str | None = None
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    forward_pkce: bool = True
    extra_authorize_params: dict[str, str] = Field(default_factory=dict)
    extra_token_params: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("callback_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class ClientConfig(Strict):
    """A pre-registered OAuth client of *this* server (not persisted: config is the source)."""

    client_id: str = Field(min_length=1)
    client_secret: str | None = None
    name: str = Field(min_length=1)
    redirect_uris: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:49153/oauth/callback",
                                                              "http://localhost:49153/oauth/callback"])
    grant_types: list[Literal["authorization_code", "refresh_token"]] = Field(
        default_factory=lambda: ["authorization_code", "refresh_token"])
    scopes: list[str] | None = None


class PersistenceConfig(Strict):
    type: Literal["sqlite", "memory"] = "sqlite"
    # default: ~/.sqlgate/oauth.db
    path: str | None = None
    # Fernet key (urlsafe base64, 32 bytes) or any passphrase; default: generated into a 0600
    # key file beside the database
    encryption_key: str | None = None
    cleanup_interval_seconds: int = Field(default=600, ge=10)


class AuthorizationConfig(Strict):
    # scopes every token must carry; empty = authentication only
    required_scopes: list[str] = Field(default_factory=list)


class AuthConfig(Strict):
    provider: Literal["none", "github", "atlassian", "salesforce", "keycloak", "google", "oidc"] = "none"
    github: ProviderConfig | None = None
    atlassian: ProviderConfig | None = None
    salesforce: ProviderConfig | None = None
    keycloak: ProviderConfig | None = None
    google: ProviderConfig | None = None
    oidc: ProviderConfig | None = None
    clients: list[ClientConfig] = Field(default_factory=list)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    # seconds the user info fetched from the provider is reused before asking it again
    cache_ttl: int = Field(default=300, ge=0)
    authorization: AuthorizationConfig = Field(default_factory=AuthorizationConfig)
    # scopes MCP clients may ask this server for (advertised in metadata)
    scopes: list[str] = Field(default_factory=lambda: ["sqlgate:access"])
    # https redirect URI patterns allowed for dynamically registered clients (wildcards allowed,
    # e.g. https://claude.ai/api/mcp/auth_callback); loopback http on any port is always allowed
    allowed_redirect_uris: list[str] = Field(default_factory=list)
    consent: bool = True
    access_token_ttl: int = Field(default=3600, ge=5)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=300)

    @field_validator("allowed_redirect_uris")
    @classmethod
    def _https_only(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if not p.startswith("https://"):
                raise ValueError(f"{p!r}: only https:// patterns may be allow-listed "
                                 "(loopback http on any port is always allowed)")
        return patterns

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.provider == "none":
            return self
        title = PROVIDER_TITLES[self.provider]
        block: ProviderConfig | None = getattr(self, self.provider)
        if block is None:
            raise ValueError(f"{title} OAuth configuration is incomplete: "
                             f"the `{self.provider}:` section is missing")
        missing = [k for k in ("client_id", "client_secret") if not getattr(block, k)]
        if self.provider == "keycloak":
            missing += [k for k in ("realm", "server_url") if not getattr(block, k)]
        if self.provider == "oidc" and not (block.discovery_url or block.issuer
                                            or (block.auth_url and block.token_url and block.userinfo_url)):
            missing.append("issuer or discovery_url")
        if missing:
            raise ValueError(f"{title} OAuth configuration is incomplete: {', '.join(missing)} missing")
        for s in self.authorization.required_scopes:
            if s not in self.scopes:
                raise ValueError(f"required scope {s!r} is not among `scopes` ({', '.join(self.scopes)}), "
                                 "so no token could ever carry it")
        return self

    def provider_config(self) -> ProviderConfig:
        block = getattr(self, self.provider)
        assert block is not None
        return block

    def masked(self) -> dict[str, Any]:
        """The settings with every secret replaced, for display."""
        data = self.model_dump(mode="json", exclude_none=True)
        for name in PROVIDERS:
            if data.get(name, {}).get("client_secret"):
                data[name]["client_secret"] = "***"
        for client in data.get("clients", []):
            if client.get("client_secret"):
                client["client_secret"] = "***"
        if data.get("persistence", {}).get("encryption_key"):
            data["persistence"]["encryption_key"] = "***"
        return data
