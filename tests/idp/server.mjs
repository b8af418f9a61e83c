// sqlgate's test IdP: a real OpenID Connect provider (panva `oidc-provider`, OpenID Certified)
// that runs headlessly on 127.0.0.1. Tests start it through tests/idp/launcher.py.
//
//   node server.mjs [--port 0] [--host 127.0.0.1]
//                   [--client-id ID --client-secret S ...]   repeatable; paired by position
//                   [--redirect-uri URI ...]                 exact URIs, shared by the static clients
//                   [--resource URI[=jwt|opaque] ...]        RFC 8707 resource servers (bare URI => jwt)
//                   [--access-token-ttl S] [--refresh-token-ttl S] [--code-ttl S]
//                   [--users users.json] [--auto-login USER] [--use-granted-resource]
//                   [--registration] [--realm NAME] [--signing-key private-rsa-jwk.json]
//
// Env fallbacks: PORT, HOST, CLIENT_ID / CLIENT_SECRET / REDIRECT_URIS / RESOURCES (comma
// separated lists), ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL, CODE_TTL, USERS_FILE, AUTO_LOGIN_USER,
// USE_GRANTED_RESOURCE=1, ENABLE_REGISTRATION=1, KEYCLOAK_REALM, SIGNING_KEY_FILE. Redirect URIs are exact: a `*`
// is refused at start (real IdPs compare strings; a wildcard here would hide redirect bugs).
//
// Clients: each static client may use code+PKCE, refresh_token and client_credentials; the first
// one also gets `<id>-introspector` / `<secret>-introspector`, an introspection-only client (what a
// resource server uses for RFC 7662). Refresh tokens are always issued and rotate on use.
// --realm NAME gives Keycloak's layout: issuer http://host:port/realms/NAME, endpoints under
// /protocol/openid-connect/{auth,token,userinfo,certs,token/introspect,revoke,logout} and DCR at
// /clients-registrations/openid-connect (with --registration).
//
// Prints exactly one stdout line once listening:  READY {"issuer": ..., "port": ..., ...}
// SIGTERM/SIGINT close the server and exit 0.
//
// Headless login: GET  <prefix>/interaction/:uid        -> HTML form (fields username, password)
//                 POST <prefix>/interaction/:uid/login  -> wrong password: 401 + the form again
//                 GET  <prefix>/interaction/:uid/abort  -> error=access_denied to the client
// Test-only shortcuts: --auto-login USER, or login_hint=USER&test_password=PW on the auth request.
// Consent is granted automatically (first-party IdP).
import http from 'node:http';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { Provider, errors } from 'oidc-provider';

const list = (v, fallback) => (v ?? fallback).split(',').map((s) => s.trim()).filter(Boolean);
const env = process.env;
const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: env.PORT ?? '0' },
    host: { type: 'string', default: env.HOST ?? '127.0.0.1' },
    'client-id': { type: 'string', multiple: true, default: list(env.CLIENT_ID, 'sql-mcp') },
    'client-secret': { type: 'string', multiple: true, default: list(env.CLIENT_SECRET, 'sql-mcp-secret') },
    'redirect-uri': { type: 'string', multiple: true, default: list(env.REDIRECT_URIS, 'http://127.0.0.1:8765/callback') },
    resource: { type: 'string', multiple: true, default: list(env.RESOURCES, 'http://127.0.0.1:8000/mcp=jwt,urn:sql-mcp:opaque=opaque') },
    'access-token-ttl': { type: 'string', default: env.ACCESS_TOKEN_TTL ?? '600' },
    'refresh-token-ttl': { type: 'string', default: env.REFRESH_TOKEN_TTL ?? '86400' },
    'code-ttl': { type: 'string', default: env.CODE_TTL ?? '60' },
    users: { type: 'string', default: env.USERS_FILE },
    'auto-login': { type: 'string', default: env.AUTO_LOGIN_USER },
    // RFC 8707: false (oidc-provider default) => a token request without `resource` yields an
    // opaque userinfo-only token; true => it re-uses the resource granted at /auth.
    'use-granted-resource': { type: 'boolean', default: env.USE_GRANTED_RESOURCE === '1' },
    registration: { type: 'boolean', default: env.ENABLE_REGISTRATION === '1' },
    realm: { type: 'string', default: env.KEYCLOAK_REALM },
    // RS256 signing key (a private JWK). Without it one is generated — but on Node 20 about one
    // start in a hundred hangs for minutes inside generateKeyPairSync('rsa'), so the launcher
    // passes a fresh key made in Python.
    'signing-key': { type: 'string', default: env.SIGNING_KEY_FILE },
  },
});

function die(msg) {
  process.stderr.write(`server.mjs: ${msg}\n`);
  process.exit(2);
}

const ttl = (name) => {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n <= 0) die(`--${name} must be a positive integer, got ${args[name]}`);
  return n;
};
const ACCESS_TTL = ttl('access-token-ttl');
const REFRESH_TTL = ttl('refresh-token-ttl');
const CODE_TTL = ttl('code-ttl');

// ---------------------------------------------------------------- clients
const ids = args['client-id'];
const secretsList = args['client-secret'];
if (secretsList.length !== ids.length && secretsList.length !== 1) {
  die(`give one --client-secret, or one per --client-id (${ids.length} ids, ${secretsList.length} secrets)`);
}
const redirectUris = args['redirect-uri'];
for (const uri of redirectUris) {
  if (uri.includes('*')) die(`redirect URIs are exact, no wildcards: ${uri}`);
  if (!URL.canParse(uri)) die(`not an absolute URL: ${uri}`);
}
const staticClients = ids.map((clientId, i) => ({
  client_id: clientId,
  client_secret: secretsList[secretsList.length === 1 ? 0 : i],
  redirect_uris: redirectUris,
  post_logout_redirect_uris: redirectUris,
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
}));
const introspector = {
  client_id: `${ids[0]}-introspector`,
  client_secret: `${staticClients[0].client_secret}-introspector`,
  grant_types: [],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
};

// ---------------------------------------------------------------- users
const DEFAULT_USERS = {
  alice: {
    password: 'alice-password',
    claims: {
      name: 'Alice Analyst', given_name: 'Alice', family_name: 'Analyst',
      preferred_username: 'alice', email: 'alice@example.test', email_verified: true,
      groups: ['sql-readers'],
    },
  },
  bob: {
    password: 'bob-password',
    claims: {
      name: 'Bob Admin', given_name: 'Bob', family_name: 'Admin',
      preferred_username: 'bob', email: 'bob@example.test', email_verified: true,
      groups: ['sql-readers', 'sql-admins'],
    },
  },
};
const USERS = args.users ? JSON.parse(fs.readFileSync(args.users, 'utf8')) : DEFAULT_USERS;
if (args['auto-login'] && !USERS[args['auto-login']]) die(`--auto-login: unknown user ${args['auto-login']}`);

function checkPassword(username, password) {
  const user = Object.hasOwn(USERS, username ?? '') ? USERS[username] : undefined;
  if (!user || typeof password !== 'string') return false;
  const a = crypto.createHash('sha256').update(user.password).digest();
  const b = crypto.createHash('sha256').update(password).digest();
  return crypto.timingSafeEqual(a, b);
}

// ---------------------------------------------------------------- resources (RFC 8707)
const RESOURCES = new Map(args.resource.map((spec) => {
  const i = spec.lastIndexOf('=');
  const format = i > 0 ? spec.slice(i + 1) : '';
  return ['jwt', 'opaque'].includes(format) ? [spec.slice(0, i), format] : [spec, 'jwt'];
}));
const RESOURCE_SCOPES = 'sql:read sql:write';

// ---------------------------------------------------------------- provider configuration
const PREFIX = args.realm ? `/realms/${args.realm}` : '';
const signingJwk = {
  ...(args['signing-key'] ? JSON.parse(fs.readFileSync(args['signing-key'], 'utf8'))
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' })),
  kid: `test-${crypto.randomBytes(4).toString('hex')}`, // fresh per start: tokens of another run never verify
  use: 'sig',
  alg: 'RS256',
};
const KEYCLOAK_ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  userinfo: '/protocol/openid-connect/userinfo',
  jwks: '/protocol/openid-connect/certs',
  introspection: '/protocol/openid-connect/token/introspect',
  revocation: '/protocol/openid-connect/revoke',
  end_session: '/protocol/openid-connect/logout',
  registration: '/clients-registrations/openid-connect',
  pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
};

const configuration = {
  clients: [...staticClients, introspector],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  extraParams: ['test_password'],
  claims: {
    // Like Keycloak's default client scopes: who the user is comes with plain `openid`, so an
    // OAuth proxy asking only for openid still learns preferred_username/email/name.
    openid: ['sub', 'preferred_username', 'email', 'email_verified', 'name'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false, // the ID token carries the profile claims too (Keycloak/Google-like)
  pkce: { required: () => true }, // S256 only: oidc-provider never accepts "plain"
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    AuthorizationCode: CODE_TTL,
    IdToken: 3600,
    RefreshToken: REFRESH_TTL,
    Interaction: 600,
    Session: 3600,
    Grant: Math.max(REFRESH_TTL, 86400),
  },
  // By default oidc-provider issues refresh tokens only for offline_access + prompt=consent;
  // real IdPs an OAuth proxy talks to (Keycloak, Google with access_type=offline) always do.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  async findAccount(ctx, sub) {
    if (!Object.hasOwn(USERS, sub)) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...USERS[sub].claims }) };
  },
  // claims inside JWT access tokens: what a resource server maps to SQL users and roles
  async extraTokenClaims(ctx, token) {
    if (!token.accountId || !Object.hasOwn(USERS, token.accountId)) return undefined;
    const c = USERS[token.accountId].claims;
    return {
      preferred_username: c.preferred_username, email: c.email, name: c.name, groups: c.groups,
      ...(args.realm ? { azp: token.clientId, realm_access: { roles: c.groups } } : {}),
    };
  },
  interactions: { url: (ctx, interaction) => `${PREFIX}/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    userinfo: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    registration: { enabled: args.registration },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf, // no resource => opaque userinfo token
      useGrantedResource: async () => args['use-granted-resource'],
      async getResourceServerInfo(ctx, resourceIndicator) {
        const format = RESOURCES.get(resourceIndicator);
        if (!format) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return {
          scope: RESOURCE_SCOPES,
          audience: resourceIndicator,
          accessTokenTTL: ACCESS_TTL,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
  ...(args.realm ? { routes: KEYCLOAK_ROUTES } : {}),
  renderError(ctx, out) { // machine-readable error pages: tests assert on `error`
    ctx.type = 'json';
    ctx.body = out;
  },
};

// ---------------------------------------------------------------- interactions (login form)
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function loginPage(uid, error) {
  const base = `${PREFIX}/interaction/${esc(uid)}`;
  return `<!doctype html><html><head><title>Test IdP sign-in</title></head><body>
<h1>Test IdP sign-in</h1>${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login" method="post" action="${base}/login">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button></form>
<a href="${base}/abort">Cancel</a></body></html>`;
}

function sendHtml(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.end(body);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

async function grantConsent(provider, req, res, details) {
  const { prompt: { details: missing }, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const result = { consent: { grantId: await grant.save() } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function handleInteraction(provider, req, res) {
  const m = new URL(req.url, 'http://x').pathname.match(/^\/interaction\/([\w-]+)(\/login|\/abort)?$/);
  if (!m) return false;
  const [, uid, action] = m;
  res.setHeader('cache-control', 'no-store');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
  const { prompt, params } = details;

  if (action === '/abort') {
    const result = { error: 'access_denied', error_description: 'End-User aborted interaction' };
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  } else if (prompt.name === 'login') {
    let user = args['auto-login'];
    if (action === '/login' && req.method === 'POST') {
      const form = await readForm(req);
      if (!checkPassword(form.username, form.password)) {
        sendHtml(res, 401, loginPage(uid, 'Invalid username or password.')); // like a real IdP
        return true;
      }
      user = form.username;
    } else if (!user && params.login_hint && checkPassword(params.login_hint, params.test_password)) {
      user = params.login_hint;
    }
    if (!user) sendHtml(res, 200, loginPage(uid));
    else await provider.interactionFinished(req, res, { login: { accountId: user } }, { mergeWithLastSubmission: false });
  } else if (prompt.name === 'consent') {
    await grantConsent(provider, req, res, details);
  } else {
    res.statusCode = 501;
    res.end(`prompt ${prompt.name} not implemented`);
  }
  return true;
}

// ---------------------------------------------------------------- server
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(args.port), args.host, resolve);
});
const { port } = server.address();
const issuer = `http://${args.host}:${port}${PREFIX}`;
const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('server_error', err));
const callback = provider.callback();

server.on('request', async (req, res) => {
  if (PREFIX) { // mount under /realms/NAME the way connect/express mounting does
    if (!req.url.startsWith(`${PREFIX}/`)) {
      res.statusCode = 404;
      res.setHeader('content-type', 'application/json');
      res.end('{"error":"not_found"}');
      return;
    }
    req.originalUrl = req.url;
    req.url = req.url.slice(PREFIX.length);
  }
  try {
    if (req.url.startsWith('/interaction/') && await handleInteraction(provider, req, res)) return;
  } catch (err) {
    if (res.headersSent) return;
    res.statusCode = err.statusCode || 400;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ error: err.error || 'invalid_request', error_description: err.error_description || err.message }));
    return;
  }
  callback(req, res);
});

process.stdout.write(`READY ${JSON.stringify({
  issuer,
  port,
  realm: args.realm ?? null,
  clients: staticClients.map((c) => c.client_id),
  introspector: introspector.client_id,
  redirect_uris: redirectUris,
  resources: Object.fromEntries(RESOURCES),
  users: Object.keys(USERS),
  startup_ms: Math.round(performance.now()),
})}\n`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
