// Healthy once the provider serves its discovery document on its own port (liveness only: the certificate
// is checked by the clients, which know the CA).
import http from 'node:http';
import https from 'node:https';

const secure = Boolean(process.env.OIDC_TLS_CERT_FILE);
const client = secure ? https : http;
const request = client.get(
  { host: '127.0.0.1', port: Number(process.env.OIDC_PORT || 8443), path: '/.well-known/openid-configuration', rejectUnauthorized: false, timeout: 2000 },
  (response) => process.exit(response.statusCode === 200 ? 0 : 1),
);
request.on('error', () => process.exit(1));
request.on('timeout', () => { request.destroy(); process.exit(1); });
