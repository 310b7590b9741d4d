/**
 * Workload keys: EC P-256 by default (what istiod's agents use with ECC_SIGNATURE_ALGORITHM=ECDSA, and 1000× faster to
 * generate than RSA), RSA-2048 (or larger) on request. A new key for every certificate, never reused.
 */
import { createPrivateKey, webcrypto } from "node:crypto";
import type { KeyObject } from "node:crypto";

export type WorkloadKeyType = "EC" | "RSA";

export interface WorkloadKeySpec {
  readonly type: WorkloadKeyType;
  /** RSA modulus length; ignored for EC. */
  readonly rsaBits?: number;
}

export interface WorkloadKey {
  readonly spec: WorkloadKeySpec;
  /** PKCS#8 PEM, as written to key.pem (mode 0600). */
  readonly pem: string;
  readonly privateKey: KeyObject;
  /** The same key for WebCrypto (the CSR is signed with it). */
  readonly cryptoKeys: webcrypto.CryptoKeyPair;
}

const EC_PARAMS: webcrypto.EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };

function rsaParams(bits: number): webcrypto.RsaHashedKeyGenParams {
  return { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) };
}

/** The WebCrypto signature algorithm for a key of this type (SHA-256 in both cases). */
export function signatureAlgorithm(type: WorkloadKeyType): webcrypto.Algorithm | webcrypto.EcdsaParams {
  return type === "EC" ? { name: "ECDSA", hash: "SHA-256" } : { name: "RSASSA-PKCS1-v1_5" };
}

export async function generateWorkloadKey(spec: WorkloadKeySpec): Promise<WorkloadKey> {
  const bits = spec.rsaBits ?? 2048;
  if (spec.type === "RSA" && (!Number.isInteger(bits) || bits < 2048)) {
    throw new Error(`RSA keys must have at least 2048 bits (got ${bits})`);
  }
  const params = spec.type === "EC" ? EC_PARAMS : rsaParams(bits);
  const cryptoKeys = await webcrypto.subtle.generateKey(params, true, ["sign", "verify"]);
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", cryptoKeys.privateKey));
  const privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  const pem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
  return { spec: spec.type === "EC" ? { type: "EC" } : { type: "RSA", rsaBits: bits }, pem, privateKey, cryptoKeys };
}

/** Describes a key for status output: "EC P-256", "RSA 2048". */
export function describeKey(key: KeyObject): string {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec")
    return `EC ${details?.namedCurve === "prime256v1" ? "P-256" : (details?.namedCurve ?? "")}`.trim();
  if (key.asymmetricKeyType === "rsa") return `RSA ${details?.modulusLength ?? ""}`.trim();
  return String(key.asymmetricKeyType);
}
