"""Authentication settings (user config: projects → profiles → auth), validated at start-up.

Every provider URL is configurable and defaults to the provider's real public endpoint. An
incomplete configuration is an error that names what is missing — sqlgate never falls back to
serving without authentication.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

PROVIDERS = ("github", "atlassian", "salesforce", "keycloak", "google", "oidc",
             "auth0", "workos", "cognito", "entra", "descope", "scalekit")
PROVIDER_TITLES = {"github": "GitHub", "atlassian": "Atlassian", "salesforce": "Salesforce",
                   "keycloak": "Keycloak", "google": "Google", "oidc": "OIDC", "auth0": "Auth0",
                   "workos": "WorkOS AuthKit", "cognito": "AWS Cognito", "entra": "Microsoft Entra ID",
                   "descope": "Descope", "scalekit": "Scalekit"}
PROVIDER_ALIASES = {"azure": "entra"}  # `provider: azure` (and an `azure:` section) mean entra
ProviderName = Literal["none", "github", "atlassian", "salesforce", "keycloak", "google", "oidc",
                       "auth0", "workos", "cognito", "entra", "descope", "scalekit"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _split_commas(value: Any) -> Any:
    return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value


# a list that may also be written as one comma-separated string (as environment variables are)
CommaList = Annotated[list[str], BeforeValidator(_split_commas)]


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
    # presets (auth/presets/): Auth0 / Cognito / WorkOS AuthKit: the tenant's domain (a host name,
    # or a full URL); Cognito: user_pool_id (its region prefix is the region unless `region` is set);
    # Entra: tenant (GUID, domain, organizations, common, consumers), authority_url, identifier_uri;
    # Auth0: audience (your API identifier); Descope: project_id; Scalekit: environment_url
    domain: str | None = None
    region: str | None = None
    user_pool_id: str | None = None
    tenant: str | None = None
    authority_url: str | None = None
    identifier_uri: str | None = None
    audience: str | None = None
    project_id: str | None = None
    environment_url: str | None = None
    # JWKS the provider signs its access tokens with (presets that read claims from them)
    jwks_url: str | None = None
    # runtime.http: hosts the caller's token may be sent to (default per provider, see README),
    # and the largest response body a Python endpoint may read from them
    api_hosts: CommaList | None = None
    api_max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
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
    """Where OAuth state (clients, codes, grants, tokens) lives: see auth/store.py."""

    type: Literal["sqlite", "postgres", "memory"] = "sqlite"
    # sqlite: default ~/.sqlgate/oauth.db
    path: str | None = None
    # postgres: a libpq DSN or URL, e.g. postgresql://sqlgate@db.internal/sqlgate
    dsn: str | None = None
    # Fernet key (urlsafe base64, 32 bytes) or any passphrase; sqlite default: generated into a
    # 0600 key file beside the database; postgres: required (every replica needs the same one)
    encryption_key: str | None = None
    cleanup_interval_seconds: int = Field(default=600, ge=1)
    # postgres: how long connecting, or a request waiting for a pooled connection, may take before the
    # store counts as down (the request is answered 503); libpq's minimum is 2 s
    connect_timeout_seconds: int = Field(default=10, ge=2, le=600)

    @model_validator(mode="after")
    def _backend(self) -> PersistenceConfig:
        if self.type == "postgres":
            missing = [k for k in ("dsn", "encryption_key") if not getattr(self, k)]
            if missing:
                raise ValueError(f"persistence type postgres needs {' and '.join(missing)} (env: "
                                 + ", ".join("SQLGATE_AUTH_" + {"dsn": "PERSISTENCE_DSN",
                                                                "encryption_key": "ENCRYPTION_KEY"}[k]
                                             for k in missing)
                                 + "); replicas must share the encryption key")
        elif self.dsn:
            raise ValueError(f"persistence.dsn is only used with type postgres (type is {self.type})")
        return self


class RegistrationConfig(Strict):
    """Limits on anonymous dynamic client registration (RFC 7591 /register): see auth/registration.py."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)  # larger bodies: 413
    max_metadata_bytes: int = Field(default=16 * 1024, ge=512)  # the metadata as registered (JSON)
    max_client_name_length: int = Field(default=200, ge=1)
    max_redirect_uris: int = Field(default=10, ge=1)
    max_uri_length: int = Field(default=2000, ge=20)
    # registrations per client address per window, counted in the grant store (shared by all
    # processes and replicas); 0 switches the limit off
    rate_limit: int = Field(default=10, ge=0)
    rate_window_seconds: int = Field(default=60, ge=1)
    # a registered client that never completes an authorization is removed after this long;
    # one that did, after this long without a token being issued to it (login or refresh)
    unauthorized_client_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    idle_client_ttl_seconds: int = Field(default=90 * 86400, ge=1)


class CIMDConfig(Strict):
    """Client ID Metadata Documents (a client_id that is the https URL of its metadata): auth/cimd.py."""

    enabled: bool = True
    max_document_bytes: int = Field(default=5 * 1024, ge=256, le=1024 * 1024)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    cache_ttl_seconds: int = Field(default=3600, ge=0)
    # development only: accept http://127.0.0.1 / http://localhost / http://[::1] client ids
    # (and fetch them from the loopback interface); never in production
    allow_loopback: bool = False


class JWTConfig(Strict):
    """Verify JWT access tokens issued by an external authorization server."""

    jwks_uri: str | None = None
    public_key: str | None = None  # PEM
    secret: str | None = None  # shared secret for HS256/384/512
    algorithms: CommaList = Field(default_factory=lambda: ["RS256"], min_length=1)
    issuer: str | None = None
    # accepted `aud` values; default: this server's resource URL (RFC 8707)
    audience: CommaList | None = None
    audience_required: bool = True
    leeway_seconds: int = Field(default=30, ge=0, le=600)

    @model_validator(mode="after")
    def _key(self) -> JWTConfig:
        from sqlgate.auth.jwt_verifier import ASYMMETRIC, HMAC

        given = [k for k in ("jwks_uri", "public_key", "secret") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("JWT configuration needs exactly one of jwks_uri, public_key or secret"
                             + (f" (got {', '.join(given)})" if given else ""))
        family = HMAC if self.secret else ASYMMETRIC
        wrong = [a for a in self.algorithms if a not in family]
        if wrong:
            kind = "a shared secret" if self.secret else "a public key / JWKS"
            raise ValueError(f"algorithm(s) {', '.join(wrong)} cannot be used with {kind} "
                             f"(allowed: {', '.join(family)})")
        return self


class IntrospectionConfig(Strict):
    """Verify opaque tokens with an RFC 7662 introspection endpoint."""

    url: str
    client_id: str
    client_secret: str
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout_seconds: float = Field(default=10.0, gt=0)
    # seconds an introspection answer is reused (never past the token's own expiry)
    cache_ttl: int = Field(default=60, ge=0)
    # accepted `aud` values (any one must be in the token's `aud`); default: this server's resource
    # URL (RFC 8707), as the MCP authorization spec requires. A token without it is refused.
    audience: CommaList | None = None


class RemoteConfig(Strict):
    """Protected-resource metadata pointing clients at the authorization server(s) to use."""

    authorization_servers: CommaList = Field(default_factory=list)
    resource_name: str | None = None
    resource_documentation: str | None = None


class ClaimMapping(Strict):
    """Grant capabilities (used like scopes) to callers whose claim has a value, e.g. a Keycloak role."""

    claim: str = Field(min_length=1)  # dotted path, e.g. realm_access.roles
    value: str | int | bool
    scopes: list[str] = Field(min_length=1)


class TokenCacheConfig(Strict):
    """Verified access tokens kept per process (auth/verified.py, auth/revocations.py)."""

    # tokens held at most (least recently used go first); 0 verifies every token on every request
    max_entries: int = Field(default=4096, ge=0, le=1_000_000)
    # OAuth proxy: the longest a token revoked by another process or replica (`--workers`, a shared
    # PostgreSQL) may still be accepted here; the grant store is read once per this many seconds.
    # Revocations made by this process count at once. 0 reads the store on every request.
    revocation_check_seconds: float = Field(default=5.0, ge=0, le=60)


class AuthorizationConfig(Strict):
    # scopes every token must carry; empty = authentication only
    required_scopes: list[str] = Field(default_factory=list)
    claim_mappings: list[ClaimMapping] = Field(default_factory=list)


class AuthConfig(Strict):
    provider: ProviderName = "none"
    github: ProviderConfig | None = None
    atlassian: ProviderConfig | None = None
    salesforce: ProviderConfig | None = None
    keycloak: ProviderConfig | None = None
    google: ProviderConfig | None = None
    oidc: ProviderConfig | None = None
    auth0: ProviderConfig | None = None
    workos: ProviderConfig | None = None
    cognito: ProviderConfig | None = None
    entra: ProviderConfig | None = None
    descope: ProviderConfig | None = None
    scalekit: ProviderConfig | None = None
    # resource-server verification (alone, or next to the proxy for machine clients)
    jwt: JWTConfig | None = None
    introspection: IntrospectionConfig | None = None
    remote: RemoteConfig | None = None
    # which claim names the caller (database user, get_username())
    username_claim: str = "preferred_username"
    # OAuth-proxy extras from the first seed's settings
    issuer_url: str | None = None
    service_documentation_url: str | None = None
    clients: list[ClientConfig] = Field(default_factory=list)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    cimd: CIMDConfig = Field(default_factory=CIMDConfig)
    # seconds the user info fetched from the provider is reused before asking it again
    cache_ttl: int = Field(default=300, ge=0)
    token_cache: TokenCacheConfig = Field(default_factory=TokenCacheConfig)
    authorization: AuthorizationConfig = Field(default_factory=AuthorizationConfig)
    # scopes MCP clients may ask this server for (advertised in metadata)
    scopes: CommaList = Field(default_factory=lambda: ["sqlgate:access"])
    # https redirect URI patterns allowed for dynamically registered clients (wildcards allowed,
    # e.g. https://claude.ai/api/mcp/auth_callback); loopback http on any port is always allowed
    allowed_redirect_uris: CommaList = Field(default_factory=list)
    consent: bool = True
    access_token_ttl: int = Field(default=3600, ge=5)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=300)
    # seconds after a refresh in which the just-replaced refresh token, presented again, gets the
    # same new token pair (a lost response, a crash, a client's concurrent refreshes); any other
    # reuse revokes the grant (RFC 9700 §4.14.2). 0 refuses every reuse.
    refresh_grace_seconds: float = Field(default=60.0, ge=0, le=600,
                                         validation_alias=AliasChoices("refresh_grace_seconds",
                                                                       "refresh_race_window_seconds"))
    # a refresh goes to the provider only when the provider's access token expires within this
    # many seconds; otherwise only sqlgate's own tokens rotate (the provider is not asked)
    upstream_refresh_margin_seconds: int = Field(default=60, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for alias, name in PROVIDER_ALIASES.items():
            if data.get("provider") == alias:
                data["provider"] = name
            if alias in data:
                if name in data:
                    raise ValueError(f"both `{alias}:` and `{name}:` sections are given; `{alias}` is another "
                                     f"name for `{name}`: keep one")
                data[name] = data.pop(alias)
        return data

    @field_validator("allowed_redirect_uris")
    @classmethod
    def _https_only(cls, patterns: list[str]) -> list[str]:
        loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
        for p in patterns:
            if not (p.startswith("https://") or p.startswith(loopback)):
                raise ValueError(f"{p!r}: only https:// (or loopback http) patterns may be allow-listed")
        return patterns

    @property
    def enabled(self) -> bool:
        return self.provider != "none" or self.jwt is not None or self.introspection is not None

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.provider == "none":
            if self.remote and not (self.jwt or self.introspection):
                raise ValueError("auth.remote needs a way to verify tokens: configure auth.jwt or "
                                 "auth.introspection")
            if self.introspection and not self.jwt and not (self.remote and self.remote.authorization_servers):
                raise ValueError("introspection mode needs auth.remote.authorization_servers so clients "
                                 "know where to get tokens")
            return self
        title = PROVIDER_TITLES[self.provider]
        block: ProviderConfig | None = getattr(self, self.provider)
        if block is None:
            raise ValueError(f"{title} OAuth configuration is incomplete: "
                             f"the `{self.provider}:` section is missing")
        missing = [k for k in ("client_id", "client_secret") if not getattr(block, k)]
        if self.provider == "keycloak":
            missing += [k for k in ("realm", "server_url") if not getattr(block, k)]
        from sqlgate.auth.presets import PRESETS

        if self.provider in PRESETS:
            missing += PRESETS[self.provider].missing(block)
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
        if data.get("persistence", {}).get("dsn"):
            from sqlgate.auth.grants.postgres import redacted

            data["persistence"]["dsn"] = redacted(data["persistence"]["dsn"])
        for section, key in (("jwt", "secret"), ("introspection", "client_secret")):
            if data.get(section, {}).get(key):
                data[section][key] = "***"
        return data
