// The OpenID provider the single sign-on tests sign in through: npm's oidc-provider (a certified OpenID Connect
// implementation) with a login page of its own, a fixed set of users and their groups (users.json), one
// confidential client for the tracking server, authorization code flow with PKCE required, and the `groups`
// claim in the ID token (what mlflow-oidc-auth reads by default).
//
// Environment (all read once, at start):
//   OIDC_ISSUER                   the issuer URL the clients see, e.g. https://oidc.test:8443 (required)
//   OIDC_PORT                     port to listen on (default 8443)
//   OIDC_TLS_CERT_FILE/_KEY_FILE  PEM certificate chain and key: serve HTTPS; both unset: plain HTTP (the
//                                 "HTTP issuer in team mode" test needs one)
//   OIDC_CLIENT_ID                the tracking server's client id (default mlflow)
//   OIDC_CLIENT_SECRET_FILE       file holding its client secret (required)
//   OIDC_REDIRECT_URIS            comma-separated redirect URIs the client may use (required)
//   OIDC_POST_LOGOUT_REDIRECT_URIS comma-separated (optional)
//   OIDC_USERS_FILE               users and their groups (default users.json beside this file)
//   OIDC_ID_TOKEN_TTL_SECONDS     lifetime of ID and access tokens (default 3600)
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return value;
}

const list = (value) => (value || '').split(',').map((item) => item.trim()).filter(Boolean);
const here = dirname(fileURLToPath(import.meta.url));
const issuer = required('OIDC_ISSUER');
const port = Number(process.env.OIDC_PORT || 8443);
const certFile = process.env.OIDC_TLS_CERT_FILE;
const keyFile = process.env.OIDC_TLS_KEY_FILE;
const clientSecret = readFileSync(required('OIDC_CLIENT_SECRET_FILE'), 'utf8').trim();
const tokenTtl = Number(process.env.OIDC_ID_TOKEN_TTL_SECONDS || 3600);
// { "alice": { "password": "...", "email": "...", "name": "...", "groups": ["..."] }, ... }; a user without
// "groups" gets no groups claim at all.
const users = JSON.parse(readFileSync(process.env.OIDC_USERS_FILE || join(here, 'users.json'), 'utf8'));

// A fresh signing key per start: the relying party reads it from jwks_uri, as it would from any provider.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

function account(accountId) {
  const user = users[accountId];
  if (!user) return undefined;
  return {
    accountId,
    async claims() {
      const claims = { sub: accountId, email: user.email, email_verified: true, name: user.name, preferred_username: accountId };
      if (Array.isArray(user.groups)) claims.groups = user.groups;
      return claims;
    },
  };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID || 'mlflow',
      client_secret: clientSecret,
      redirect_uris: list(required('OIDC_REDIRECT_URIS')),
      post_logout_redirect_uris: list(process.env.OIDC_POST_LOGOUT_REDIRECT_URIS),
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  findAccount: async (ctx, id) => account(id),
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'], groups: ['groups'] },
  // The scope's claims go into the ID token too, not only to the UserInfo endpoint: mlflow-oidc-auth takes the
  // groups from the ID token unless told to trust UserInfo for them.
  conformIdTokenClaims: false,
  pkce: { methods: ['S256'], required: () => true },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      // Sign out of the provider too (logout=yes), without a confirmation click.
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><body>${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>')}<script>document.forms[0].submit()</script></body></html>`;
      },
    },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  ttl: {
    AccessToken: tokenTtl,
    IdToken: tokenTtl,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
    RefreshToken: 86400,
  },
});
// A tracking server behind TLS talks to the issuer directly; nothing sits in front of this provider.
provider.proxy = false;

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, error) {
  return `<!DOCTYPE html><html><head><title>Test provider: sign in</title></head><body>
<h1>Sign in</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Username <input name="login" id="login" autocomplete="username" autofocus></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password"></label>
<button type="submit" id="submit">Sign in</button>
</form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function passwordMatches(user, password) {
  const expected = Buffer.from(String(user.password));
  const given = Buffer.from(String(password));
  return expected.length === given.length && timingSafeEqual(expected, given);
}

// Consent is implied: the tracking server is the organisation's own application.
async function grantConsent(req, res, details) {
  const { prompt, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  const consent = details.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch');
  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') return send(res, 200, loginPage(uid));
    if (details.prompt.name === 'consent') return grantConsent(req, res, details);
    return send(res, 400, `unsupported prompt ${escape(details.prompt.name)}`);
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const user = users[login];
    if (!user || !passwordMatches(user, form.get('password') || '')) {
      return send(res, 401, loginPage(uid, 'Wrong username or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'method not allowed');
}

const oidc = provider.callback();
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?$/;

async function handle(req, res) {
  const match = INTERACTION.exec(new URL(req.url, issuer).pathname);
  if (!match) return oidc(req, res);
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (error) {
    console.error(`interaction failed: ${error}`);
    if (!res.headersSent) send(res, 400, escape(error.message || error));
  }
}

const server = certFile && keyFile
  ? https.createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, handle)
  : http.createServer(handle);
server.listen(port, () => {
  console.log(`oidc-provider ${issuer} listening on :${port} (${certFile ? 'https' : 'http'}), users: ${Object.keys(users).join(', ')}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
