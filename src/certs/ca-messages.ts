/**
 * The Istio CA messages (proto package `istio.v1.auth`), declared in proto/istio-ca.proto with the field numbers of
 * istio/istio `security/proto/ca_service.proto` (0.5–0.8) and istio/api `security/v1alpha1/ca.proto`
 * (docs/protocols.md), and encoded by protobufjs from the descriptor scripts/gen-descriptors.mjs compiles it into.
 * Both the agent's clients and the dev control plane's CA use them. The protobufjs root is built on first use, not at
 * import.
 *
 * Proto3 leaves a field at its default value off the wire; protobufjs writes every property it is given, so the
 * encoders pass only the fields that differ from their default (src/certs/__golden__/ca-messages.hex pins the bytes).
 */
import protobuf from "protobufjs";
import descriptor from "./ca-descriptor.json" with { type: "json" };

export const LEGACY_HANDLE_CSR_PATH = "/istio.v1.auth.IstioCAService/HandleCSR";
export const ISTIOD_CREATE_CERTIFICATE_PATH = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/** A message that is not valid protobuf for its type (truncated, a wrong wire type, a bad length). */
export class WireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WireError";
  }
}

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

interface CaTypes {
  readonly csrRequest: protobuf.Type;
  readonly csrResponse: protobuf.Type;
  readonly istioCertificateRequest: protobuf.Type;
  readonly istioCertificateResponse: protobuf.Type;
  readonly setFaultRequest: protobuf.Type;
}

let types: CaTypes | undefined;

function caTypes(): CaTypes {
  if (types !== undefined) return types;
  const root = protobuf.Root.fromJSON(descriptor.root);
  types = {
    csrRequest: root.lookupType("istio.v1.auth.CsrRequest"),
    csrResponse: root.lookupType("istio.v1.auth.CsrResponse"),
    istioCertificateRequest: root.lookupType("istio.v1.auth.IstioCertificateRequest"),
    istioCertificateResponse: root.lookupType("istio.v1.auth.IstioCertificateResponse"),
    setFaultRequest: root.lookupType("istio_vm.dev.SetFaultRequest"),
  };
  return types;
}

/** Only the fields that differ from their proto3 default, so protobufjs leaves the rest off the wire. */
function present(fields: Record<string, string | number | boolean | object>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== "" && v !== 0 && v !== false));
}

function encode(type: protobuf.Type, fields: Record<string, unknown>): Buffer {
  return Buffer.from(type.encode(type.fromObject(fields)).finish());
}

const CONVERT: protobuf.IConversionOptions = { longs: Number, defaults: true };

function decode(type: protobuf.Type, data: Uint8Array): Record<string, unknown> {
  try {
    // A plain Uint8Array, not a Buffer: protobufjs' Buffer reader clamps a string that runs past the end instead of
    // failing, and a truncated answer must not pass for a shorter certificate.
    const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return type.toObject(type.decode(view), CONVERT);
  } catch (error) {
    throw new WireError(`invalid ${type.name}: ${(error as Error).message}`);
  }
}

const utf8 = (value: unknown): string => Buffer.from(value as Uint8Array).toString("utf8");
/** A bytes field from text; "" stays "" so that `present` drops it. */
const bytes = (text: string): Buffer | "" => (text === "" ? "" : Buffer.from(text, "utf8"));

export function encodeCsrRequest(request: CsrRequest): Buffer {
  return encode(
    caTypes().csrRequest,
    present({
      csr_pem: bytes(request.csrPem),
      node_agent_credential: bytes(request.nodeAgentCredential),
      credential_type: request.credentialType,
      requested_ttl_minutes: request.requestedTtlMinutes,
    }),
  );
}

export function decodeCsrRequest(data: Uint8Array): CsrRequest {
  const m = decode(caTypes().csrRequest, data);
  return {
    csrPem: utf8(m["csr_pem"]),
    nodeAgentCredential: utf8(m["node_agent_credential"]),
    credentialType: m["credential_type"] as string,
    requestedTtlMinutes: m["requested_ttl_minutes"] as number,
  };
}

export function encodeCsrResponse(response: CsrResponse): Buffer {
  return encode(caTypes().csrResponse, {
    ...present({
      is_approved: response.isApproved,
      signed_cert: bytes(response.signedCert),
      cert_chain: bytes(response.certChain),
    }),
    // A status, even an empty one, is an embedded message on the wire.
    ...(response.status === undefined ? {} : { status: present(response.status) }),
  });
}

export function decodeCsrResponse(data: Uint8Array): CsrResponse {
  const m = decode(caTypes().csrResponse, data);
  const status = m["status"] as { code: number; message: string } | null;
  return {
    isApproved: m["is_approved"] as boolean,
    ...(status === null ? {} : { status: { code: status.code, message: status.message } }),
    signedCert: utf8(m["signed_cert"]),
    certChain: utf8(m["cert_chain"]),
  };
}

export function encodeIstioCertificateRequest(request: IstioCertificateRequest): Buffer {
  return encode(
    caTypes().istioCertificateRequest,
    present({ csr: request.csr, validity_duration: Math.trunc(request.validityDurationSeconds) }),
  );
}

export function decodeIstioCertificateRequest(data: Uint8Array): IstioCertificateRequest {
  const m = decode(caTypes().istioCertificateRequest, data);
  return { csr: m["csr"] as string, validityDurationSeconds: m["validity_duration"] as number };
}

export function encodeIstioCertificateResponse(response: IstioCertificateResponse): Buffer {
  return encode(caTypes().istioCertificateResponse, { cert_chain: [...response.certChain] });
}

export function decodeIstioCertificateResponse(data: Uint8Array): IstioCertificateResponse {
  return { certChain: decode(caTypes().istioCertificateResponse, data)["cert_chain"] as string[] };
}

/** The dev CA's admin request (proto/dev-ca-admin.proto): the fault to set, or "none". */
export function encodeSetFaultRequest(fault: string): Buffer {
  return encode(caTypes().setFaultRequest, present({ fault }));
}

export function decodeSetFaultRequest(data: Uint8Array): string {
  return decode(caTypes().setFaultRequest, data)["fault"] as string;
}
