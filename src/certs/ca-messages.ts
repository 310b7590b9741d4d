/**
 * The Istio CA messages (proto package `istio.v1.auth`), with the field numbers of istio/istio
 * `security/proto/ca_service.proto` (0.5–0.8) and istio/api `security/v1alpha1/ca.proto` (docs/protocols.md). Both the
 * agent's clients and the dev control plane's CA use them.
 */
import { WireWriter, getBytes, getInt, getInt32, getRepeatedString, getString, readFields } from "./protobuf-wire.js";

export const LEGACY_HANDLE_CSR_PATH = "/istio.v1.auth.IstioCAService/HandleCSR";
export const ISTIOD_CREATE_CERTIFICATE_PATH = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/** Legacy `CsrRequest` (0.5+; `Request` before, same numbers). */
export interface CsrRequest {
  /** Field 1, bytes: the PEM CSR. */
  readonly csrPem: string;
  /** Field 2, bytes (0.3+): on-prem the PEM of cert-chain.pem. The CA ignores it. */
  readonly nodeAgentCredential: string;
  /** Field 3, string: `onprem`, `gcp` or `aws`. */
  readonly credentialType: string;
  /** Field 4, int32 (0.5+). */
  readonly requestedTtlMinutes: number;
}

/** Legacy `CsrResponse`: field 3 is leaf + chain in 0.2–0.7, the leaf alone in 0.8 with the chain in field 4. */
export interface CsrResponse {
  readonly isApproved: boolean;
  readonly status?: { readonly code: number; readonly message: string };
  /** Field 3: `signed_cert_chain` (0.2–0.7) or `signed_cert` (0.8). */
  readonly signedCert: string;
  /** Field 4: `cert_chain` (0.8); empty before. */
  readonly certChain: string;
}

export interface IstioCertificateRequest {
  /** Field 1, string: the PEM CSR. */
  readonly csr: string;
  /** Field 3, int64: requested lifetime in seconds (≤ 0: the CA's default). */
  readonly validityDurationSeconds: number;
}

export interface IstioCertificateResponse {
  /** Field 1, repeated string: leaf first, root last, one PEM certificate per element. */
  readonly certChain: readonly string[];
}

export function encodeCsrRequest(request: CsrRequest): Buffer {
  return new WireWriter()
    .bytes(1, request.csrPem)
    .bytes(2, request.nodeAgentCredential)
    .bytes(3, request.credentialType)
    .int(4, request.requestedTtlMinutes)
    .finish();
}

export function decodeCsrRequest(data: Uint8Array): CsrRequest {
  const f = readFields(data);
  return {
    csrPem: getString(f, 1),
    nodeAgentCredential: getString(f, 2),
    credentialType: getString(f, 3),
    requestedTtlMinutes: getInt32(f, 4),
  };
}

export function encodeCsrResponse(response: CsrResponse): Buffer {
  const w = new WireWriter().int(1, response.isApproved);
  if (response.status !== undefined) {
    w.message(2, new WireWriter().int(1, response.status.code).bytes(2, response.status.message));
  }
  return w.bytes(3, response.signedCert).bytes(4, response.certChain).finish();
}

export function decodeCsrResponse(data: Uint8Array): CsrResponse {
  const f = readFields(data);
  const statusBytes = f.has(2) ? getBytes(f, 2) : undefined;
  let status: CsrResponse["status"];
  if (statusBytes !== undefined) {
    const s = readFields(statusBytes);
    status = { code: getInt32(s, 1), message: getString(s, 2) };
  }
  return {
    isApproved: getInt(f, 1) !== 0n,
    ...(status === undefined ? {} : { status }),
    signedCert: getString(f, 3),
    certChain: getString(f, 4),
  };
}

export function encodeIstioCertificateRequest(request: IstioCertificateRequest): Buffer {
  return new WireWriter()
    .bytes(1, request.csr)
    .int(3, BigInt(Math.trunc(request.validityDurationSeconds)))
    .finish();
}

export function decodeIstioCertificateRequest(data: Uint8Array): IstioCertificateRequest {
  const f = readFields(data);
  return { csr: getString(f, 1), validityDurationSeconds: Number(BigInt.asIntN(64, getInt(f, 3))) };
}

export function encodeIstioCertificateResponse(response: IstioCertificateResponse): Buffer {
  return new WireWriter().repeatedString(1, response.certChain).finish();
}

export function decodeIstioCertificateResponse(data: Uint8Array): IstioCertificateResponse {
  return { certChain: getRepeatedString(readFields(data), 1) };
}
