/**
 * The dev Pilot's gRPC wire and caller identity, apart from the ADS state machine (src/devplane/pilot-xds.ts): gRPC
 * status codes, length-prefixed message frames, grpc-message encoding, and who a stream's peer is (a verified
 * client certificate's SPIFFE URIs or a bearer token) with istiod's check of that identity against the node.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import type { TLSSocket } from "node:tls";
import type { XdsNode } from "../xds/protos.js";

/** gRPC status codes used here (google.rpc.Code). */
export const GRPC = {
  OK: 0,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAUTHENTICATED: 16,
} as const;

export function bearerToken(headers: IncomingHttpHeaders): string | undefined {
  const value = headers["authorization"];
  const m = typeof value === "string" ? /^Bearer\s+(\S+)$/i.exec(value) : null;
  return m?.[1];
}

export function metadataText(node: XdsNode, key: string): string {
  const value = node.metadata[key];
  return typeof value === "string" ? value : "";
}

/** `spiffe://<td>/ns/<ns>/sa/<sa>` → its namespace and service account, or undefined for any other URI. */
export function parseSpiffeId(raw: string): { namespace: string; serviceAccount: string } | undefined {
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(raw);
  return m === null ? undefined : { namespace: m[1] ?? "", serviceAccount: m[2] ?? "" };
}

/**
 * istiod's checkConnectionIdentity (pilot/pkg/xds/auth.go, 1.24): the first identity whose SPIFFE namespace and
 * service account equal the node's (an empty node value matches any), or undefined. The node's namespace is its
 * NAMESPACE metadata, else the `<name>.<ns>` part of its id (model.ParseServiceNodeWithMetadata).
 */
export function matchingIdentity(node: XdsNode, identities: readonly string[]): string | undefined {
  const idNamespace = (node.id.split("~")[2] ?? "").split(".")[1] ?? "";
  const namespace = metadataText(node, "NAMESPACE") || idNamespace;
  const serviceAccount = metadataText(node, "SERVICE_ACCOUNT");
  return identities.find((raw) => {
    const id = parseSpiffeId(raw);
    if (id === undefined) return false;
    return (
      (namespace === "" || id.namespace === namespace) &&
      (serviceAccount === "" || id.serviceAccount === serviceAccount)
    );
  });
}

/** gRPC's percent-encoding of grpc-message: only '%' and bytes outside printable ASCII (grpc-js decodes with decodeURI). */
export function grpcMessage(text: string): string {
  return [...Buffer.from(text, "utf8")]
    .map((b) =>
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, "0")}`,
    )
    .join("");
}

/** One uncompressed gRPC message frame. */
export function frame(message: Buffer): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

/** URI SANs of the stream's verified client certificate ([] without one). */
export function spiffeIdentities(stream: ServerHttp2Stream): string[] {
  const socket = stream.session?.socket as TLSSocket | undefined;
  if (socket === undefined || typeof socket.getPeerCertificate !== "function" || !socket.authorized) return [];
  const cert = socket.getPeerCertificate();
  return (cert.subjectaltname ?? "")
    .split(", ")
    .filter((n) => n.startsWith("URI:"))
    .map((n) => n.slice(4));
}
