// sqlgate test IdP: a real OpenID Connect provider (panva oidc-provider, OpenID Certified) that
// runs headlessly on 127.0.0.1 for the OAuth tests. Based on ../../../shared/reference/idp/server.mjs.
//   node server.mjs [--port 0] [--host 127.0.0.1] [--client-id ID] [--client-secret S]
//                   [--redirect-uri URI ...] [--resource URI[=jwt|opaque] ...]
//                   [--users users.json] [--auto-login USER] [--access-token-ttl S]
//                   [--refresh-token-ttl S] [--use-granted-resource] [--registration] [--realm NAME]
//
// Every option also has an env var (PORT, HOST, CLIENT_ID, CLIENT_SECRET,
// REDIRECT_URIS (comma separated), RESOURCES (comma separated), USERS_FILE,
// AUTO_LOGIN_USER, ACCESS_TOKEN_TTL, REFRESH_TOKEN_TTL, USE_GRANTED_RESOURCE=1,
// ENABLE_REGISTRATION=1, KEYCLOAK_REALM).
// --realm NAME serves a Keycloak-shaped layout: issuer http://host:port/realms/NAME and
// /protocol/openid-connect/{auth,token,userinfo,certs,token/introspect,revoke,logout}.
// Clients: CLIENT_ID/CLIENT_SECRET (code+PKCE, refresh_token, client_credentials) and
// CLIENT_ID-introspector / CLIENT_SECRET-introspector (introspection only).
//
// On start it prints exactly one line on stdout:
//   READY {"issuer":"http://127.0.0.1:PORT","port":PORT,...}
// so a pytest fixture can `Popen(..., stdout=PIPE)` and read the issuer (use --port 0
// for an ephemeral port). SIGTERM/SIGINT stop it cleanly.
//
// Headless login (the login page is real HTML, but trivially scriptable):
//   * GET  /interaction/:uid           -> login form: <form method=post action=/interaction/:uid/login>
//                                          fields `username`, `password`
//   * POST /interaction/:uid/login     -> checks the password against the static users;
//                                          wrong password => 401 + form again (like a real IdP)
//   * authorization request with login_hint=<user>&test_password=<pw> (non-standard, test-only)
//                                       -> logs in without showing the form
//   * --auto-login USER                 -> every login prompt is answered as USER (no form)
//   * consent is auto-granted (first-party style); GET /interaction/:uid/abort => access_denied
import http from 'node:http';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { Provider, errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PORT ?? '0' },
    host: { type: 'string', default: process.env.HOST ?? '127.0.0.1' },
    'client-id': { type: 'string', default: process.env.CLIENT_ID ?? 'sql-mcp' },
    'client-secret': { type: 'string', default: process.env.CLIENT_SECRET ?? 'sql-mcp-secret' },
    'redirect-uri': {
      type: 'string',
      multiple: true,
      default: (process.env.REDIRECT_URIS ?? 'http://127.0.0.1:8765/callback').split(','),
    },
    // resource indicator (RFC 8707) => access token format. "X" alone means jwt.
    resource: {
      type: 'string',
      multiple: true,
      default: (process.env.RESOURCES ?? 'http://127.0.0.1:8000/mcp=jwt,urn:sql-mcp:opaque=opaque').split(','),
    },
    users: { type: 'string', default: process.env.USERS_FILE },
    // RFC 8707: if false (oidc-provider default) a token request without `resource` yields an
    // opaque userinfo-only token; if true it re-uses the resource granted at /auth.
    'use-granted-resource': { type: 'boolean', default: process.env.USE_GRANTED_RESOURCE === '1' },
    'auto-login': { type: 'string', default: process.env.AUTO_LOGIN_USER },
    'access-token-ttl': { type: 'string', default: process.env.ACCESS_TOKEN_TTL ?? '600' },
    'refresh-token-ttl': { type: 'string', default: process.env.REFRESH_TOKEN_TTL ?? '86400' },
    registration: { type: 'boolean', default: process.env.ENABLE_REGISTRATION === '1' },
    // Keycloak-shaped layout: issuer http://host:port/realms/NAME and Keycloak's endpoint paths
    realm: { type: 'string', default: process.env.KEYCLOAK_REALM },
  },
});

const t0 = process.hrtime.bigint();

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

function checkPassword(username, password) {
  const u = USERS[username];
  if (!u || typeof password !== 'string') return false;
  const a = Buffer.from(u.password);
  const b = Buffer.from(password);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// ---------------------------------------------------------------- resources
const RESOURCES = new Map(args.resource.filter(Boolean).map((r) => {
  const i = r.lastIndexOf('=');
  if (i > 0 && ['jwt', 'opaque'].includes(r.slice(i + 1))) return [r.slice(0, i), r.slice(i + 1)];
  return [r, 'jwt'];
}));
const RESOURCE_SCOPES = 'sql:read sql:write';

// ---------------------------------------------------------------- keys (ephemeral, per start)
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: `test-${crypto.randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [{
    client_id: args['client-id'],
    client_secret: args['client-secret'],
    redirect_uris: args['redirect-uri'],
    post_logout_redirect_uris: args['redirect-uri'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }, {
    // a resource-server-only client, e.g. for the MCP server's RFC 7662 introspection calls
    client_id: `${args['client-id']}-introspector`,
    client_secret: `${args['client-secret']}-introspector`,
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  clientDefaults: { token_endpoint_auth_method: 'client_secret_basic' },
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false, // put profile/email claims in the ID token too (Keycloak/Google-like)
  pkce: { required: () => true }, // S256 only (oidc-provider never allows "plain")
  ttl: {
    AccessToken: Number(args['access-token-ttl']),
    ClientCredentials: Number(args['access-token-ttl']),
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: Number(args['refresh-token-ttl']),
    Interaction: 600,
    Session: 3600,
    Grant: 86400,
  },
  // Keycloak-like: always issue a refresh token when the client may use the grant.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  async findAccount(ctx, sub) {
    const u = USERS[sub];
    if (!u) return undefined;
    return { accountId: sub, async claims() { return { sub, ...u.claims }; } };
  },
  // extra claims inside JWT access tokens (what an MCP resource server maps to SQL roles)
  async extraTokenClaims(ctx, token) {
    if (!token.accountId || !USERS[token.accountId]) return undefined;
    const c = USERS[token.accountId].claims;
    return {
      preferred_username: c.preferred_username, email: c.email, groups: c.groups,
      // Keycloak-style claims in --realm mode
      ...(args.realm ? { azp: token.clientId, realm_access: { roles: c.groups } } : {}),
    };
  },
  interactions: { url: (ctx, interaction) => `${args.realm ? `/realms/${args.realm}` : ''}/interaction/${interaction.uid}` },
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
      defaultResource: async (ctx, client, oneOf) => oneOf, // no resource => userinfo-only opaque token
      useGrantedResource: async () => args['use-granted-resource'],
      async getResourceServerInfo(ctx, resourceIndicator) {
        const format = RESOURCES.get(resourceIndicator);
        if (!format) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return {
          scope: RESOURCE_SCOPES,
          audience: resourceIndicator,
          accessTokenTTL: Number(args['access-token-ttl']),
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
        };
      },
    },
  },
  ...(args.realm ? {
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      userinfo: '/protocol/openid-connect/userinfo',
      jwks: '/protocol/openid-connect/certs',
      introspection: '/protocol/openid-connect/token/introspect',
      revocation: '/protocol/openid-connect/revoke',
      end_session: '/protocol/openid-connect/logout',
    },
  } : {}),
  renderError(ctx, out) { // terse, parseable error page
    ctx.type = 'json';
    ctx.body = out;
  },
};

// ---------------------------------------------------------------- interactions (headless-friendly)
const PREFIX = () => (args.realm ? `/realms/${args.realm}` : '');
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function loginPage(uid, error) {
  return `<!doctype html><html><head><title>Test IdP sign-in</title></head><body>
<h1>Test IdP sign-in</h1>${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login" method="post" action="${PREFIX()}/interaction/${esc(uid)}/login">
<input name="username" autocomplete="username"><input name="password" type="password">
<button type="submit">Sign in</button></form>
<a href="${PREFIX()}/interaction/${esc(uid)}/abort">Cancel</a></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

async function autoConsent(provider, req, res, details) {
  const { prompt: { details: missing }, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const result = { consent: { grantId: await grant.save() } };
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function handleInteraction(provider, req, res) {
  const url = new URL(req.url, 'http://x');
  const m = url.pathname.match(/^\/interaction\/([\w-]+)(\/login|\/abort)?$/);
  if (!m) return false;
  const [, uid, action] = m;
  res.setHeader('cache-control', 'no-store');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
  const { prompt, params } = details;

  if (action === '/abort') {
    await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
    return true;
  }

  if (prompt.name === 'login') {
    let user;
    if (action === '/login' && req.method === 'POST') {
      const form = await readForm(req);
      if (!checkPassword(form.username, form.password)) {
        res.statusCode = 401;
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(loginPage(uid, 'Invalid username or password.'));
        return true;
      }
      user = form.username;
    } else if (args['auto-login'] && USERS[args['auto-login']]) {
      user = args['auto-login'];
    } else if (params.login_hint && params.test_password !== undefined) {
      if (checkPassword(params.login_hint, params.test_password)) user = params.login_hint;
    }
    if (!user) {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(loginPage(uid));
      return true;
    }
    await provider.interactionFinished(req, res, { login: { accountId: user } }, { mergeWithLastSubmission: false });
    return true;
  }
  if (prompt.name === 'consent') {
    await autoConsent(provider, req, res, details);
    return true;
  }
  res.statusCode = 501;
  res.end(`prompt ${prompt.name} not implemented`);
  return true;
}

// ---------------------------------------------------------------- server
const server = http.createServer();
await new Promise((resolve) => server.listen(Number(args.port), args.host, resolve));
const { port } = server.address();
const prefix = args.realm ? `/realms/${args.realm}` : '';
const issuer = `http://${args.host}:${port}${prefix}`;
const provider = new Provider(issuer, {
  ...configuration,
  extraParams: ['test_password'],
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
const callback = provider.callback();
server.on('request', async (req, res) => {
  if (prefix) { // mount the provider under /realms/NAME (as express/connect mounting does)
    if (!req.url.startsWith(`${prefix}/`)) { res.statusCode = 404; res.end(); return; }
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length);
  }
  try {
    if (req.url.startsWith('/interaction/') && await handleInteraction(provider, req, res)) return;
  } catch (err) {
    res.statusCode = err.statusCode || 400;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ error: err.error || 'invalid_request', error_description: err.error_description || err.message }));
    return;
  }
  callback(req, res);
});

const startupMs = Number(process.hrtime.bigint() - t0) / 1e6;
process.stdout.write(`READY ${JSON.stringify({
  issuer, port, client_id: args['client-id'], redirect_uris: args['redirect-uri'],
  resources: Object.fromEntries(RESOURCES), users: Object.keys(USERS), startup_ms: Math.round(startupMs),
})}\n`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
}
