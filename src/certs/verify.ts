/**
 * The checks a certificate/key pair must pass before it replaces the current one (and that `istio-vm certs status`
 * reports): every certificate of the chain is signed by the next and the last by a root of `root-cert.pem`, the leaf
 * names exactly the expected SPIFFE identity, every certificate is valid now, and the key is the leaf's key.
 *
 * Messages name what failed and never include key or certificate material.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { X509Certificate, createPrivateKey, webcrypto } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { describeKey } from "./keys.js";
import { reasonError } from "../platform/errors.js";

x509.cryptoProvider.set(webcrypto);

export type RejectReason = "malformed" | "chain" | "identity" | "expired" | "not-yet-valid" | "key-mismatch";

export class CertificateRejected extends reasonError<RejectReason>("CertificateRejected") {}

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** The certificate PEM blocks of a file, in order, each ending with a newline. */
export function splitPemCertificates(text: string): string[] {
  return [...text.matchAll(CERT_BLOCK)].map((m) => `${m[0]}\n`);
}

export interface CertificateInfo {
  /** The leaf's URI SANs. */
  readonly uris: readonly string[];
  readonly subject: string;
  readonly issuer: string;
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** "EC P-256", "RSA 2048". */
  readonly keyType: string;
  /** Number of certificates in cert-chain.pem. */
  readonly chainLength: number;
}

function parseCertificates(pems: readonly string[], what: string): X509Certificate[] {
  return pems.map((pem, i) => {
    try {
      return new X509Certificate(pem);
    } catch {
      throw new CertificateRejected("malformed", `${what}: certificate ${i + 1} is not a valid X.509 certificate`);
    }
  });
}

function uriSans(cert: X509Certificate): string[] {
  const parsed = new x509.X509Certificate(cert.raw);
  const san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
  if (san === null) return [];
  return san.names.items.filter((n) => n.type === "url").map((n) => n.value);
}

function describe(cert: X509Certificate, uris: readonly string[] = uriSans(cert)): CertificateInfo {
  return {
    uris,
    subject: (cert.subject as string | undefined)?.replaceAll("\n", ", ") ?? "",
    issuer: (cert.issuer as string | undefined)?.replaceAll("\n", ", ") ?? "",
    serialNumber: cert.serialNumber,
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    keyType: describeKey(cert.publicKey),
    chainLength: 1,
  };
}

/** Parses the leaf of a chain without verifying anything (status output of a pair that fails verification). */
export function describeLeaf(chainPem: string): CertificateInfo | undefined {
  const pems = splitPemCertificates(chainPem);
  const first = pems[0];
  if (first === undefined) return undefined;
  try {
    return { ...describe(new X509Certificate(first)), chainLength: pems.length };
  } catch {
    return undefined;
  }
}

/** True when `cert` is one of the trusted roots (same DER). */
function isTrustedRoot(cert: X509Certificate, roots: readonly X509Certificate[]): boolean {
  return roots.some((root) => root.raw.equals(cert.raw));
}

/**
 * Drops trailing certificates that are trusted roots: istiod's response ends with the root, which belongs in
 * root-cert.pem, not cert-chain.pem. Returns the PEM text for cert-chain.pem (leaf and intermediates).
 */
export function chainWithoutRoots(chain: readonly string[], rootPem: string): string {
  const roots = parseCertificates(splitPemCertificates(rootPem), "root-cert.pem");
  const kept = [...chain];
  while (kept.length > 1) {
    const tail = kept[kept.length - 1] ?? "";
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(tail);
    } catch {
      break;
    }
    if (!isTrustedRoot(cert, roots)) break;
    kept.pop();
  }
  return kept.map((pem) => (pem.endsWith("\n") ? pem : `${pem}\n`)).join("");
}

/** A certificate's validity window, with the label its messages use. */
interface ValidityWindow {
  readonly label: string;
  readonly from: number;
  readonly to: number;
}

function windowOf(cert: X509Certificate, label: string): ValidityWindow {
  return { label, from: new Date(cert.validFrom).getTime(), to: new Date(cert.validTo).getTime() };
}

function checkWindow({ label, from, to }: ValidityWindow, now: number): void {
  if (now < from) {
    throw new CertificateRejected("not-yet-valid", `${label} is not valid before ${new Date(from).toISOString()}`);
  }
  if (now >= to) throw new CertificateRejected("expired", `${label} expired at ${new Date(to).toISOString()}`);
}

export interface VerifyPairInput {
  readonly keyPem: string;
  readonly chainPem: string;
  readonly rootPem: string;
  /** The SPIFFE URI the leaf must carry, and only it. */
  readonly expectedIdentity: string;
  /** Milliseconds since the epoch. */
  readonly now: number;
}

export interface VerifiedPair {
  readonly info: CertificateInfo;
  readonly privateKey: KeyObject;
}

/**
 * The last pair that passed every check, and the validity windows it was checked against in order. Everything but
 * the windows is a function of the PEM texts and the identity, so the same texts need only the windows checked
 * again: a renewal verifies the new pair before the swap, and the next renewal and `certs status` read that pair
 * back (the parsing, the chain signatures and the SAN decoding cost milliseconds of CPU each time).
 */
let lastVerified:
  { readonly key: string; readonly windows: readonly ValidityWindow[]; readonly result: VerifiedPair } | undefined;

/** Throws `CertificateRejected` naming the first check that fails. */
export function verifyPair(input: VerifyPairInput): VerifiedPair {
  const key = [input.keyPem, input.chainPem, input.rootPem, input.expectedIdentity].join("\0");
  if (lastVerified?.key === key) {
    for (const window of lastVerified.windows) checkWindow(window, input.now);
    return lastVerified.result;
  }
  const windows: ValidityWindow[] = [];
  const result = verifyPairOnce(input, windows);
  lastVerified = { key, windows, result };
  return result;
}

function verifyPairOnce(input: VerifyPairInput, windows: ValidityWindow[]): VerifiedPair {
  const pems = splitPemCertificates(input.chainPem);
  if (pems.length === 0) throw new CertificateRejected("malformed", "cert-chain.pem holds no certificate");
  const chain = parseCertificates(pems, "cert-chain.pem");
  const rootPems = splitPemCertificates(input.rootPem);
  if (rootPems.length === 0) throw new CertificateRejected("malformed", "root-cert.pem holds no certificate");
  const roots = parseCertificates(rootPems, "root-cert.pem");
  const leaf = chain[0] as X509Certificate;

  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i] as X509Certificate;
    const label = i === 0 ? "the certificate" : `chain certificate ${i + 1}`;
    if (i > 0 && !cert.ca) throw new CertificateRejected("chain", `${label} is not a CA certificate`);
    const next = chain[i + 1];
    if (next !== undefined) {
      if (!cert.checkIssued(next) || !cert.verify(next.publicKey)) {
        throw new CertificateRejected("chain", `${label} is not signed by chain certificate ${i + 2}`);
      }
    } else if (!isTrustedRoot(cert, roots)) {
      const root = roots.find((r) => cert.checkIssued(r) && cert.verify(r.publicKey));
      if (root === undefined) {
        throw new CertificateRejected(
          "chain",
          `the chain does not lead to a root in root-cert.pem (issuer ${cert.issuer.replaceAll("\n", ", ")})`,
        );
      }
      windows.push(windowOf(root, "the root certificate"));
      checkWindow(windows[windows.length - 1] as ValidityWindow, input.now);
    }
    windows.push(windowOf(cert, label));
    checkWindow(windows[windows.length - 1] as ValidityWindow, input.now);
  }

  const uris = uriSans(leaf);
  if (uris.length !== 1 || uris[0] !== input.expectedIdentity) {
    throw new CertificateRejected(
      "identity",
      `the certificate is for ${uris.length === 0 ? "no SPIFFE identity" : uris.join(", ")}, expected ${input.expectedIdentity}`,
    );
  }

  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(input.keyPem);
  } catch {
    throw new CertificateRejected("malformed", "key.pem is not a valid private key");
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new CertificateRejected("key-mismatch", "key.pem is not the key of the certificate in cert-chain.pem");
  }
  return { info: { ...describe(leaf, uris), chainLength: chain.length }, privateKey };
}
