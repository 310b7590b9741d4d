/**
 * Certificate signing requests as the Istio CAs expect them: PEM `CERTIFICATE REQUEST`, empty subject, exactly one
 * subjectAltName extension holding exactly one URI, the workload's SPIFFE identity (critical, as RFC 5280 wants with an
 * empty subject). Signed with the workload key (SHA-256); `openssl req -verify` accepts it.
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPublicKey, webcrypto } from "node:crypto";
import type { KeyObject } from "node:crypto";
import type { WorkloadKey } from "./keys.js";
import { signatureAlgorithm } from "./keys.js";

x509.cryptoProvider.set(webcrypto);

const SAN_OID = "2.5.29.17";

export async function createCsr(key: WorkloadKey, identity: string): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys: key.cryptoKeys,
    signingAlgorithm: signatureAlgorithm(key.spec.type),
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }], true)],
  });
  return csr.toString("pem") + "\n";
}

export interface ParsedCsr {
  readonly publicKey: KeyObject;
  /** The URI SANs, in order. */
  readonly uris: readonly string[];
  /** Every other SAN (DNS, IP, e-mail…), rendered "type:value". */
  readonly otherNames: readonly string[];
}

/** Parses and verifies the self-signature of a PEM CSR; throws with a short reason when it is malformed or forged. */
export async function parseCsr(pem: string): Promise<ParsedCsr> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch {
    throw new Error("not a PEM certificate request");
  }
  if (!(await csr.verify())) throw new Error("the request's signature does not verify");
  const uris: string[] = [];
  const otherNames: string[] = [];
  for (const extension of csr.extensions) {
    if (extension.type !== SAN_OID) continue;
    const san = new x509.SubjectAlternativeNameExtension(extension.rawData);
    for (const name of san.names.items) {
      if (name.type === "url") uris.push(name.value);
      else otherNames.push(`${name.type}:${name.value}`);
    }
  }
  const publicKey = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: "der", type: "spki" });
  return { publicKey, uris, otherNames };
}
