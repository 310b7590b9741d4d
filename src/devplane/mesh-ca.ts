/**
 * A real X.509 certificate authority for the dev control plane: a self-signed root and leaf certificates signed by it
 * (node:crypto keys, @peculiar/x509 encoding), verifiable by openssl and usable by Envoy, gRPC and node:tls.
 *
 * Two uses in `istio-vm dev`: the mesh CA (workload certificates for `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, as
 * Citadel/istiod issue them; the dev CA gRPC servers sign CSRs with `issue`) and the cluster CA (the Kubernetes API
 * server's serving certificate and the admin's client certificate). Same code, different subjects.
 *
 * Contract of `issue`: the leaf carries the requested public key, the SPIFFE identity (and/or DNS names and IP
 * addresses) as subjectAltName, `CA:FALSE`, digitalSignature+keyEncipherment, the requested extended key usages,
 * authority/subject key identifiers, and a validity of `notBefore`..`notAfter` (default: now − 1 min .. now + ttl).
 * `chainPem` is what Istio puts in `cert-chain.pem`: the leaf followed by any intermediates (none: the root signs).
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import type { KeyObject } from "node:crypto";
import { createPrivateKey, createPublicKey, randomBytes, webcrypto } from "node:crypto";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto);

export type KeyAlgorithm = "ec-p256" | "rsa-2048";

export const DEFAULT_TRUST_DOMAIN = "cluster.local";
/** Istio's default workload certificate lifetime (24 h). */
export const DEFAULT_LEAF_TTL_MS = 24 * 3600_000;
const DEFAULT_ROOT_TTL_MS = 10 * 365 * 24 * 3600_000;
/** Leaves start a minute in the past so a verifier whose clock is slightly behind accepts them. */
const BACKDATE_MS = 60_000;

export interface CertificateSubject {
  readonly commonName?: string;
  readonly organization?: string;
}

export interface IssueOptions {
  /** The public key to certify: PEM (SPKI) or a KeyObject (a private key's public half is used). */
  readonly publicKey: string | KeyObject;
  /** A SPIFFE URI, e.g. spiffe://cluster.local/ns/default/sa/vm. */
  readonly identity?: string;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly subject?: CertificateSubject;
  /** Lifetime from now (default 24 h); ignored when notAfter is given. */
  readonly ttlMs?: number;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  /** Extended key usages; both by default (workload certificates are used as client and server). */
  readonly clientAuth?: boolean;
  readonly serverAuth?: boolean;
}

export interface IssuedKeyPair {
  readonly keyPem: string;
  readonly certPem: string;
  /** `cert-chain.pem`: the leaf and any intermediates. */
  readonly chainPem: string;
}

export interface MeshCa {
  readonly trustDomain: string;
  readonly rootCertPem: string;
  readonly rootKey: KeyObject;
  /** `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. */
  spiffeId(namespace: string, serviceAccount: string): string;
  /** Signs a leaf certificate for a given public key; returns its PEM. */
  issue(options: IssueOptions): Promise<string>;
  /** Generates a key pair (EC P-256 unless asked otherwise) and issues a certificate for it. */
  issueKeyPair(
    options: Omit<IssueOptions, "publicKey"> & { readonly keyAlgorithm?: KeyAlgorithm },
  ): Promise<IssuedKeyPair>;
}

export interface CreateMeshCaOptions {
  readonly trustDomain?: string;
  /** The root's key algorithm (default EC P-256: fast; RSA-2048 is what Citadel used). */
  readonly keyAlgorithm?: KeyAlgorithm;
  /** Subject common name of the root (default "istio-vm dev mesh CA (<trust-domain>)"). */
  readonly commonName?: string;
  readonly rootTtlMs?: number;
  /** Time source (milliseconds since the epoch), for tests. */
  readonly now?: () => number;
}

const EC: webcrypto.EcKeyGenParams & webcrypto.EcKeyImportParams = { name: "ECDSA", namedCurve: "P-256" };
const RSA: webcrypto.RsaHashedKeyGenParams & webcrypto.RsaHashedImportParams = {
  name: "RSASSA-PKCS1-v1_5",
  hash: "SHA-256",
  modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]),
};

function algorithmFor(keyAlgorithm: KeyAlgorithm): typeof EC | typeof RSA {
  return keyAlgorithm === "ec-p256" ? EC : RSA;
}

function signingAlgorithm(keyAlgorithm: KeyAlgorithm): webcrypto.Algorithm | webcrypto.EcdsaParams {
  return keyAlgorithm === "ec-p256" ? { name: "ECDSA", hash: "SHA-256" } : { name: "RSASSA-PKCS1-v1_5" };
}

async function generateKeyPair(keyAlgorithm: KeyAlgorithm): Promise<CryptoKeyPair> {
  return await webcrypto.subtle.generateKey(algorithmFor(keyAlgorithm), true, ["sign", "verify"]);
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return createPrivateKey({ key: der, format: "der", type: "pkcs8" })
    .export({ format: "pem", type: "pkcs8" })
    .toString();
}

/** A random positive 128-bit serial number, as hex. */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString("hex");
}

function subjectName(subject: CertificateSubject | undefined): string {
  const parts: string[] = [];
  const escape = (v: string): string => v.replace(/([,+"\\<>;=])/g, "\\$1");
  if (subject?.organization !== undefined) parts.push(`O=${escape(subject.organization)}`);
  if (subject?.commonName !== undefined) parts.push(`CN=${escape(subject.commonName)}`);
  return parts.join(", ");
}

function spkiDer(publicKey: string | KeyObject): Buffer {
  const key = typeof publicKey === "string" || publicKey.type !== "public" ? createPublicKey(publicKey) : publicKey;
  return key.export({ format: "der", type: "spki" });
}

function keyAlgorithmOf(key: KeyObject): KeyAlgorithm {
  if (key.asymmetricKeyType === "ec") return "ec-p256";
  if (key.asymmetricKeyType === "rsa") return "rsa-2048";
  throw new Error(`unsupported CA key type ${String(key.asymmetricKeyType)} (use EC P-256 or RSA)`);
}

/** Builds a CA object over an existing root certificate and key (e.g. one loaded from disk). */
export async function loadMeshCa(options: {
  readonly rootCertPem: string;
  readonly rootKeyPem: string;
  readonly trustDomain?: string;
  readonly now?: () => number;
}): Promise<MeshCa> {
  const rootKey = createPrivateKey(options.rootKeyPem);
  const keyAlgorithm = keyAlgorithmOf(rootKey);
  const pkcs8 = rootKey.export({ format: "der", type: "pkcs8" });
  const signingKey = await webcrypto.subtle.importKey("pkcs8", pkcs8, algorithmFor(keyAlgorithm), false, ["sign"]);
  const rootCert = new x509.X509Certificate(options.rootCertPem);
  return makeCa({
    trustDomain: options.trustDomain ?? DEFAULT_TRUST_DOMAIN,
    rootCert,
    rootCertPem: rootCert.toString("pem") + "\n",
    rootKey,
    signingKey,
    keyAlgorithm,
    now: options.now ?? Date.now,
  });
}

export async function createMeshCa(options: CreateMeshCaOptions = {}): Promise<MeshCa> {
  const trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  const keyAlgorithm = options.keyAlgorithm ?? "ec-p256";
  const now = options.now ?? Date.now;
  const keys = await generateKeyPair(keyAlgorithm);
  const start = now() - BACKDATE_MS;
  const rootCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: subjectName({
      organization: trustDomain,
      commonName: options.commonName ?? `istio-vm dev mesh CA (${trustDomain})`,
    }),
    notBefore: new Date(start),
    notAfter: new Date(start + (options.rootTtlMs ?? DEFAULT_ROOT_TTL_MS)),
    keys,
    signingAlgorithm: signingAlgorithm(keyAlgorithm),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const rootKey = createPrivateKey(await privateKeyPem(keys.privateKey));
  return makeCa({
    trustDomain,
    rootCert,
    rootCertPem: rootCert.toString("pem") + "\n",
    rootKey,
    signingKey: keys.privateKey,
    keyAlgorithm,
    now,
  });
}

function makeCa(parts: {
  trustDomain: string;
  rootCert: x509.X509Certificate;
  rootCertPem: string;
  rootKey: KeyObject;
  signingKey: CryptoKey;
  keyAlgorithm: KeyAlgorithm;
  now: () => number;
}): MeshCa {
  const issue = async (options: IssueOptions): Promise<string> => {
    const names: x509.JsonGeneralName[] = [];
    if (options.identity !== undefined) names.push({ type: "url", value: options.identity });
    for (const dns of options.dnsNames ?? []) names.push({ type: "dns", value: dns });
    for (const ip of options.ipAddresses ?? []) names.push({ type: "ip", value: ip });
    const subject = subjectName(options.subject);
    if (names.length === 0 && subject === "") {
      throw new Error("a certificate needs an identity, a DNS name, an IP address or a subject");
    }
    const notBefore = options.notBefore ?? new Date(parts.now() - BACKDATE_MS);
    const notAfter = options.notAfter ?? new Date(parts.now() + (options.ttlMs ?? DEFAULT_LEAF_TTL_MS));
    if (notAfter.getTime() <= notBefore.getTime()) throw new Error("certificate notAfter must be after notBefore");
    const usages: x509.ExtendedKeyUsage[] = [];
    if (options.serverAuth ?? true) usages.push(x509.ExtendedKeyUsage.serverAuth);
    if (options.clientAuth ?? true) usages.push(x509.ExtendedKeyUsage.clientAuth);
    const publicKey = new x509.PublicKey(spkiDer(options.publicKey));
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      await x509.AuthorityKeyIdentifierExtension.create(parts.rootCert, false),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
    ];
    if (usages.length > 0) extensions.push(new x509.ExtendedKeyUsageExtension(usages, false));
    // RFC 5280 4.2.1.6: with an empty subject the subjectAltName must be critical (Istio's leaves look like that).
    if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, subject === ""));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      subject,
      issuer: parts.rootCert.subject,
      notBefore,
      notAfter,
      publicKey,
      signingKey: parts.signingKey,
      signingAlgorithm: signingAlgorithm(parts.keyAlgorithm),
      extensions,
    });
    return cert.toString("pem") + "\n";
  };
  return {
    trustDomain: parts.trustDomain,
    rootCertPem: parts.rootCertPem,
    rootKey: parts.rootKey,
    spiffeId: (namespace, serviceAccount) => `spiffe://${parts.trustDomain}/ns/${namespace}/sa/${serviceAccount}`,
    issue,
    async issueKeyPair(options) {
      const keys = await generateKeyPair(options.keyAlgorithm ?? "ec-p256");
      const keyPem = await privateKeyPem(keys.privateKey);
      const certPem = await issue({ ...options, publicKey: createPublicKey(keyPem) });
      return { keyPem, certPem, chainPem: certPem };
    },
  };
}
