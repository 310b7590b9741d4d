/**
 * The credentials a VM starts with (setupMeshEx.sh machineCerts, istioctl x workload entry configure):
 * - legacy: the PEMs of secret `istio.<sa>` that the old CA keeps per service account. `root-cert.pem` always;
 *   `cert-chain.pem` and `key.pem` only when asked (0.6+), since the node agent can bootstrap with other identities.
 * - istiod: `root-cert.pem` from ConfigMap `istio-ca-root-cert` and a service-account token (TokenRequest, audience
 *   `istio-ca`), which the agent presents to istiod for its first certificate.
 *
 * Everything is fetched and verified before anything is written, so a bad secret never leaves a half-replaced set of
 * files behind. Verification uses node:crypto's X509Certificate.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { join } from "node:path";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import { duration } from "../config/types.js";
import type { KubeClient } from "./client.js";
import { isNotFound } from "./client.js";
import { corePath, getIfExists } from "./profile.js";

/** The modes of the credential files the admin side writes, here and as bundle members (src/provision/bundle.ts). */
export const SECRET_MODE = 0o600;
export const PUBLIC_MODE = 0o644;

export interface OutputFile {
  readonly name: string;
  readonly content: string;
  readonly mode: number;
}

export interface CertSummary {
  readonly subject: string;
  readonly identity?: string;
  readonly notBefore: string;
  readonly notAfter: string;
  /** Fraction of the lifetime still ahead (0–1). */
  readonly remaining: number;
}

export interface BootstrapBundle {
  readonly files: readonly OutputFile[];
  readonly root: CertSummary;
  readonly leaf?: CertSummary;
  readonly token?: { readonly audience: readonly string[]; readonly expiresAt: string };
  readonly warnings: readonly string[];
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function certError(code: string, message: string, subject: string, hint?: string): AgentError {
  return new AgentError({ code, message, subject, ...(hint === undefined ? {} : { hint }) });
}

export function parseCertificates(pem: string, subject: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) throw certError("CERT_INVALID", "no PEM certificate found", subject);
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw certError("CERT_INVALID", `unparsable certificate: ${(error as Error).message}`, subject);
    }
  });
}

export function uriSans(cert: X509Certificate): string[] {
  // node renders the extension as "URI:spiffe://…, DNS:…"; a comma cannot appear unescaped in a SPIFFE ID.
  return (cert.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice(4));
}

/** node returns undefined (despite its types) for an empty distinguished name, as workload certificates have. */
function dn(text: string | undefined): string {
  return (text ?? "").replaceAll("\n", ", ");
}

function summarize(cert: X509Certificate, now: number): CertSummary {
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  const lifetime = Math.max(1, notAfter - notBefore);
  const identity = uriSans(cert)[0];
  return {
    subject: dn(cert.subject),
    ...(identity === undefined ? {} : { identity }),
    notBefore: new Date(notBefore).toISOString(),
    notAfter: new Date(notAfter).toISOString(),
    remaining: Math.min(1, Math.max(0, (notAfter - now) / lifetime)),
  };
}

/** A duration for people: whole minutes (certificate times have one-second resolution). */
function roughly(ms: number): string {
  return ms < 60_000 ? "under a minute" : duration.render(Math.round(ms / 60_000) * 60_000);
}

function checkValidity(cert: X509Certificate, what: string, now: number, warnings: string[]): void {
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (now < notBefore) {
    throw certError(
      "CERT_NOT_YET_VALID",
      `${what} is not valid before ${new Date(notBefore).toISOString()}`,
      what,
      "check the clocks of this machine and of the CA",
    );
  }
  if (now >= notAfter) {
    throw certError(
      "CERT_EXPIRED",
      `${what} expired at ${new Date(notAfter).toISOString()}`,
      what,
      "the CA refreshes istio.<sa> secrets shortly before expiry; check that the CA is running",
    );
  }
  const lifetime = notAfter - notBefore;
  if (notAfter - now < lifetime / 2) {
    warnings.push(
      `${what} has ${roughly(notAfter - now)} of its ${roughly(lifetime)} lifetime left (expires ${new Date(notAfter).toISOString()}): install it soon, the VM cannot renew an expired bootstrap certificate`,
    );
  }
}

function verifyRoot(rootPem: string, subject: string, now: number, warnings: string[]): X509Certificate {
  const [root, ...rest] = parseCertificates(rootPem, subject);
  if (root === undefined) throw certError("CERT_INVALID", "no root certificate", subject);
  if (rest.length > 0)
    warnings.push(`${subject} holds ${rest.length + 1} certificates; all are written as trusted roots`);
  if (!root.ca) throw certError("ROOT_NOT_CA", "the root certificate is not a CA certificate", subject);
  checkValidity(root, "root certificate", now, warnings);
  return root;
}

export interface WorkloadCertInput {
  readonly rootPem: string;
  readonly chainPem: string;
  readonly keyPem: string;
  readonly expectedIdentity: string;
  readonly now: number;
  readonly subject: string;
}

/**
 * Checks what the original copied blindly: the key belongs to the leaf, every certificate of the chain is signed by
 * the next and the last by the root, the leaf's URI SAN is the expected SPIFFE ID, and the leaf is valid now (with a
 * warning when under half of its lifetime is left). Returns warnings; throws on the first hard failure.
 */
export function verifyWorkloadCerts(input: WorkloadCertInput): {
  root: CertSummary;
  leaf: CertSummary;
  warnings: string[];
} {
  const warnings: string[] = [];
  const root = verifyRoot(input.rootPem, `${input.subject} root-cert.pem`, input.now, warnings);
  const chain = parseCertificates(input.chainPem, `${input.subject} cert-chain.pem`);
  const leaf = chain[0];
  if (leaf === undefined) throw certError("CERT_INVALID", "empty certificate chain", input.subject);
  let key;
  try {
    key = createPrivateKey(input.keyPem);
  } catch (error) {
    throw certError(
      "KEY_INVALID",
      `key.pem is not a private key: ${(error as Error).message}`,
      `${input.subject} key.pem`,
    );
  }
  if (!leaf.checkPrivateKey(key)) {
    throw certError(
      "KEY_MISMATCH",
      "key.pem does not belong to the certificate in cert-chain.pem",
      input.subject,
      "the secret is inconsistent; delete it so the CA issues a new one",
    );
  }
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i];
    const next = chain[i + 1];
    if (cert === undefined) continue;
    if (next === undefined) {
      // The chain may end with the root itself, or with the certificate the root signed.
      const endsAtRoot = cert.fingerprint256 === root.fingerprint256;
      if (!endsAtRoot && !(cert.checkIssued(root) && cert.verify(root.publicKey))) {
        throw certError(
          "CHAIN_UNTRUSTED",
          `cert-chain.pem does not verify to root-cert.pem (last certificate issued by "${dn(cert.issuer)}", root is "${dn(root.subject)}")`,
          input.subject,
          "the CA's root changed after the secret was issued; wait for the CA to refresh it, or delete the secret",
        );
      }
    } else if (!(cert.checkIssued(next) && cert.verify(next.publicKey))) {
      throw certError(
        "CHAIN_BROKEN",
        `certificate ${i + 1} of cert-chain.pem is not signed by certificate ${i + 2}`,
        input.subject,
      );
    }
  }
  const ids = uriSans(leaf);
  if (!ids.includes(input.expectedIdentity)) {
    throw certError(
      "IDENTITY_MISMATCH",
      `the certificate's identity is ${ids.length === 0 ? "missing (no URI SAN)" : ids.join(", ")}, expected ${input.expectedIdentity}`,
      input.subject,
      "check the service account, namespace and --trust-domain",
    );
  }
  checkValidity(leaf, "workload certificate", input.now, warnings);
  return { root: summarize(root, input.now), leaf: summarize(leaf, input.now), warnings };
}

export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

interface SecretObject {
  readonly type?: string;
  readonly data?: Readonly<Record<string, string>>;
}

function decodeKey(secret: SecretObject, key: string, subject: string): string {
  const value = secret.data?.[key];
  if (value === undefined || value === "") {
    throw certError(
      "SECRET_INCOMPLETE",
      `secret has no data key ${key}`,
      subject,
      "the CA writes cert-chain.pem, key.pem and root-cert.pem; check that it is running",
    );
  }
  return Buffer.from(value, "base64").toString("utf8");
}

export interface LegacyCertOptions {
  readonly serviceAccount: string;
  readonly namespace: string;
  /** Also cert-chain.pem and key.pem (the original's `all`). */
  readonly all: boolean;
  readonly trustDomain: string;
  readonly secretPrefix?: string;
  readonly now: number;
}

/** One GET. */
export async function fetchLegacyCerts(client: KubeClient, options: LegacyCertOptions): Promise<BootstrapBundle> {
  const name = `${options.secretPrefix ?? "istio."}${options.serviceAccount}`;
  const subject = `secret ${options.namespace}/${name}`;
  const secret = await getIfExists<SecretObject>(client, corePath("secrets", options.namespace, name));
  if (secret === undefined) {
    throw new AgentError({
      code: "SECRET_NOT_FOUND",
      message: `${subject} does not exist`,
      subject,
      hint: `the legacy CA creates istio.<sa> for every service account: check that service account ${options.serviceAccount} exists in ${options.namespace} and that the CA runs`,
    });
  }
  const rootPem = decodeKey(secret, "root-cert.pem", subject);
  if (!options.all) {
    const warnings: string[] = [];
    const root = verifyRoot(rootPem, `${subject} root-cert.pem`, options.now, warnings);
    return {
      files: [{ name: "root-cert.pem", content: rootPem, mode: PUBLIC_MODE }],
      root: summarize(root, options.now),
      warnings,
    };
  }
  const chainPem = decodeKey(secret, "cert-chain.pem", subject);
  const keyPem = decodeKey(secret, "key.pem", subject);
  const verified = verifyWorkloadCerts({
    rootPem,
    chainPem,
    keyPem,
    expectedIdentity: spiffeId(options.trustDomain, options.namespace, options.serviceAccount),
    now: options.now,
    subject,
  });
  return {
    files: [
      { name: "root-cert.pem", content: rootPem, mode: PUBLIC_MODE },
      { name: "cert-chain.pem", content: chainPem, mode: PUBLIC_MODE },
      { name: "key.pem", content: keyPem, mode: SECRET_MODE },
    ],
    root: verified.root,
    leaf: verified.leaf,
    warnings: verified.warnings,
  };
}

export interface IstiodBootstrapOptions {
  readonly serviceAccount: string;
  readonly namespace: string;
  readonly audience: string;
  /** Token lifetime in seconds (istioctl: 3600). */
  readonly tokenSeconds: number;
  readonly now: number;
}

interface ConfigMapObject {
  readonly data?: Readonly<Record<string, string>>;
}

interface TokenRequestObject {
  readonly status?: { readonly token?: string; readonly expirationTimestamp?: string };
}

/** Two requests: the root ConfigMap, then the TokenRequest. */
export async function fetchIstiodBootstrap(
  client: KubeClient,
  options: IstiodBootstrapOptions,
): Promise<BootstrapBundle> {
  const cmSubject = `configmap ${options.namespace}/istio-ca-root-cert`;
  const configMap = await getIfExists<ConfigMapObject>(
    client,
    corePath("configmaps", options.namespace, "istio-ca-root-cert"),
  );
  const rootPem = configMap?.data?.["root-cert.pem"];
  if (rootPem === undefined || rootPem === "") {
    throw new AgentError({
      code: "ROOT_CERT_NOT_FOUND",
      message: configMap === undefined ? `${cmSubject} does not exist` : `${cmSubject} has no key root-cert.pem`,
      subject: cmSubject,
      hint: `istiod publishes the root certificate in every namespace it watches; check that ${options.namespace} exists and istiod runs`,
    });
  }
  const warnings: string[] = [];
  const root = verifyRoot(rootPem, `${cmSubject} root-cert.pem`, options.now, warnings);
  const tokenPath = `${corePath("serviceaccounts", options.namespace, options.serviceAccount)}/token`;
  const request = {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { audiences: [options.audience], expirationSeconds: options.tokenSeconds },
  };
  let response: TokenRequestObject;
  try {
    response = await client.create<TokenRequestObject>(tokenPath, request);
  } catch (error) {
    if (isNotFound(error)) {
      throw new AgentError({
        code: "SERVICE_ACCOUNT_NOT_FOUND",
        message: `service account ${options.namespace}/${options.serviceAccount} does not exist`,
        subject: `serviceaccount ${options.namespace}/${options.serviceAccount}`,
        hint: `create it: kubectl -n ${options.namespace} create serviceaccount ${options.serviceAccount}`,
        cause: error,
      });
    }
    throw error;
  }
  const token = response.status?.token;
  if (token === undefined || token === "") {
    throw certError("TOKEN_MISSING", "the TokenRequest response carries no token", tokenPath);
  }
  const expiresAt =
    response.status?.expirationTimestamp ?? new Date(options.now + options.tokenSeconds * 1000).toISOString();
  const granted = Date.parse(expiresAt) - options.now;
  if (Number.isFinite(granted) && granted < options.tokenSeconds * 1000 - 60_000) {
    warnings.push(
      `the API server shortened the token's lifetime to ${duration.render(Math.max(0, Math.floor(granted / 1000) * 1000))}`,
    );
  }
  warnings.push(
    `istio-token is a bearer credential for ${options.namespace}/${options.serviceAccount} until ${expiresAt}: copy it only to the VM (mode 0600) and install it before then`,
  );
  return {
    files: [
      { name: "root-cert.pem", content: rootPem, mode: PUBLIC_MODE },
      { name: "istio-token", content: token, mode: SECRET_MODE },
    ],
    root: summarize(root, options.now),
    token: { audience: [options.audience], expiresAt },
    warnings,
  };
}

/**
 * Writes every file of a verified bundle into `dir` (created 0755 if missing), each atomically with its mode.
 * Called only after fetching and verifying succeeded.
 */
export async function writeBundle(fs: FileSystem, dir: string, files: readonly OutputFile[]): Promise<string[]> {
  const existing = await fs.stat(dir);
  if (existing !== undefined && !existing.isDirectory) {
    throw new AgentError({
      code: "OUTPUT_NOT_DIRECTORY",
      message: `${dir} is not a directory`,
      subject: dir,
      kind: "usage",
    });
  }
  if (existing === undefined) await fs.mkdirp(dir, 0o755);
  const written: string[] = [];
  for (const file of files) {
    const path = join(dir, file.name);
    await fs.writeFileAtomic(path, file.content, { mode: file.mode });
    written.push(path);
  }
  return written;
}
