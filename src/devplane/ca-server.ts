/**
 * The dev control plane's mesh CA: a gRPC server speaking both Istio CA protocols over TLS, signing with the dev mesh
 * root (mesh-ca.ts). A test double with real wire protocols and real certificates:
 *
 * - `istio.v1.auth.IstioCAService/HandleCSR` (legacy, Istio 0.2–0.8): the caller must present a client certificate
 *   that chains to the root; the CSR's only SAN must be the caller's own identity (the 0.2–0.5 authorization rule;
 *   0.6+ dropped the check, which let any workload obtain any identity). The answer uses the 0.8 layout (leaf in field
 *   3, chain in field 4) or, with `legacyLayout: "0.7"`, the older one (leaf + chain in field 3).
 * - `istio.v1.auth.IstioCertificateService/CreateCertificate` (istiod): the caller is authenticated by its client
 *   certificate, else by a Kubernetes service-account JWT in `authorization: Bearer` (checked by `verifyToken`). As in
 *   istiod, the issued identity is the caller's, not what the CSR asks for. The answer is leaf, root.
 *
 * TTL: the requested lifetime, capped at `maxTtlMs`; `defaultTtlMs` when none is requested.
 *
 * Fault injection (`server.fault = …`, or `parseCaFault` for a command-line flag; ca-faults.ts): deny, delay,
 * unavailable, garbage (an answer that is not a valid protobuf message), wrong-identity, expired, foreign-chain
 * (signed by another root).
 */
import * as grpc from "@grpc/grpc-js";
import { generateKeyPairSync } from "node:crypto";
import {
  ISTIOD_CREATE_CERTIFICATE_PATH,
  LEGACY_HANDLE_CSR_PATH,
  decodeCsrRequest,
  decodeIstioCertificateRequest,
  encodeCsrResponse,
  encodeIstioCertificateResponse,
} from "../certs/ca-messages.js";
import type {
  CsrRequest,
  CsrResponse,
  IstioCertificateRequest,
  IstioCertificateResponse,
} from "../certs/ca-messages.js";
import type { ParsedCsr } from "../certs/csr.js";
import { parseCsr } from "../certs/csr.js";
import { parseSpiffeUri } from "../certs/identity.js";
import type { Logger } from "../platform/logger.js";
import { silentLogger } from "../platform/logger.js";
import type { MeshCa } from "./mesh-ca.js";
import { createMeshCa } from "./mesh-ca.js";
import type { CaFault } from "./ca-faults.js";
import { faultAdminService } from "./ca-faults.js";

/** Resolves a service-account JWT to its identity, or undefined when it is not valid (TokenReview's job in istiod). */
export type TokenVerifier = (token: string) => Promise<{ namespace: string; serviceAccount: string } | undefined>;

export interface CaCall {
  readonly protocol: "legacy" | "istiod";
  /** How the caller authenticated; undefined when it did not. */
  readonly authenticatedBy: "certificate" | "token" | undefined;
  readonly identity: string | undefined;
  /** "issued", a fault kind, or the gRPC status name of a refusal. */
  readonly outcome: string;
  /** The caller's address and port: calls over one connection share it. */
  readonly peer: string;
}

export interface DevCaServerOptions {
  readonly mesh: MeshCa;
  /** Listen address (default 127.0.0.1) and port (default 0: any free port). */
  readonly host?: string;
  readonly port?: number;
  /** More addresses to listen on (e.g. every host of `istio-vm dev --listen`); same port when `port` is fixed. */
  readonly extraHosts?: readonly string[];
  /** The fault in force from the start (`ISTIO_VM_DEV_CA_FAULT` for `istio-vm dev`). */
  readonly fault?: CaFault;
  /** DNS names of the serving certificate (the TLS server names clients verify). */
  readonly serverNames?: readonly string[];
  readonly defaultTtlMs?: number;
  readonly maxTtlMs?: number;
  readonly verifyToken?: TokenVerifier;
  readonly legacyLayout?: "0.7" | "0.8";
  readonly logger?: Logger;
}

export interface DevCaServer {
  readonly host: string;
  readonly port: number;
  /** Every address listened on, `host:port`. */
  readonly addresses: readonly string[];
  /** The fault applied to the next calls; undefined: answer normally. */
  fault: CaFault | undefined;
  /** Every call, in order (for tests and `istio-vm dev` logs). */
  readonly calls: readonly CaCall[];
  /** Serving certificate's root (the mesh root): what clients put in root-cert.pem. */
  readonly rootCertPem: string;
  close(): Promise<void>;
}

export const DEFAULT_CA_SERVER_NAMES: readonly string[] = [
  "istio-ca",
  "istio-ca.istio-system",
  "istio-citadel",
  "istio-citadel.istio-system",
  "istiod",
  "istiod.istio-system",
  "istiod.istio-system.svc",
  "localhost",
];

const HOUR = 3_600_000;

/** A certificate provider that never changes: what grpc-js needs to request (but not require) client certificates. */
class StaticCertificates {
  readonly #certificate: Buffer;
  readonly #privateKey: Buffer;
  readonly #ca: Buffer;
  constructor(certificate: string, privateKey: string, ca: string) {
    this.#certificate = Buffer.from(certificate);
    this.#privateKey = Buffer.from(privateKey);
    this.#ca = Buffer.from(ca);
  }
  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    // Asynchronously: grpc-js registers its watcher only after this call returns.
    queueMicrotask(() => {
      listener({ caCertificate: this.#ca });
    });
  }
  removeCaCertificateListener(): void {
    // static: nothing to stop
  }
  addIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    queueMicrotask(() => {
      listener({ certificate: this.#certificate, privateKey: this.#privateKey });
    });
  }
  removeIdentityCertificateListener(): void {
    // static: nothing to stop
  }
}

class Refusal extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) {
    super(message);
    this.code = code;
  }
}

/** Bytes that are not a valid protobuf message (a length-delimited field longer than the message). */
const GARBAGE = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 0x47, 0x41, 0x52, 0x42]);
interface Garbage {
  readonly garbage: true;
}
function isGarbage(value: unknown): value is Garbage {
  return typeof value === "object" && value !== null && "garbage" in value;
}

function peerIdentity(call: grpc.ServerUnaryCall<unknown, unknown>): string | undefined {
  const san = call.getAuthContext().sslPeerCertificate?.subjectaltname;
  if (san === undefined) return undefined;
  const uris = san
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice(4));
  return uris.length === 1 ? uris[0] : undefined;
}

function bearer(call: grpc.ServerUnaryCall<unknown, unknown>): string | undefined {
  const value = call.metadata.get("authorization")[0];
  if (typeof value !== "string") return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(value);
  return m?.[1];
}

const serialize =
  <Res>(encode: (value: Res) => Buffer) =>
  (value: Res | Garbage): Buffer =>
    isGarbage(value) ? GARBAGE : encode(value);

const LEGACY_SERVICE: grpc.ServiceDefinition = {
  HandleCSR: {
    path: LEGACY_HANDLE_CSR_PATH,
    requestStream: false,
    responseStream: false,
    requestDeserialize: decodeCsrRequest,
    requestSerialize: () => Buffer.alloc(0),
    responseSerialize: serialize(encodeCsrResponse),
    responseDeserialize: () => ({}),
  },
};
const ISTIOD_SERVICE: grpc.ServiceDefinition = {
  CreateCertificate: {
    path: ISTIOD_CREATE_CERTIFICATE_PATH,
    requestStream: false,
    responseStream: false,
    requestDeserialize: decodeIstioCertificateRequest,
    requestSerialize: () => Buffer.alloc(0),
    responseSerialize: serialize(encodeIstioCertificateResponse),
    responseDeserialize: () => ({}),
  },
};

/** Parses a CSR, or refuses the call as istiod does (INVALID_ARGUMENT). */
async function parseCsrOrRefuse(csrPem: string): Promise<ParsedCsr> {
  try {
    return await parseCsr(csrPem);
  } catch (error) {
    throw new Refusal(grpc.status.INVALID_ARGUMENT, `CSR parsing error (${(error as Error).message})`);
  }
}

/** Signs a parsed CSR for `identity` (or what the fault makes of it); returns leaf and root PEMs. */
function createSigner(
  mesh: MeshCa,
  ttl: { readonly defaultTtl: number; readonly maxTtl: number },
): (csr: ParsedCsr, identity: string, ttlRequestedMs: number, fault: CaFault | undefined) => Promise<[string, string]> {
  let foreign: Promise<MeshCa> | undefined;
  return async (csr, identity, ttlRequestedMs, fault) => {
    if (ttlRequestedMs > ttl.maxTtl) {
      throw new Refusal(
        grpc.status.INTERNAL,
        `CSR signing error (requested TTL ${Math.round(ttlRequestedMs / 1000)}s is greater than the max allowed TTL ${Math.round(ttl.maxTtl / 1000)}s)`,
      );
    }
    const ttlMs = ttlRequestedMs > 0 ? ttlRequestedMs : ttl.defaultTtl;
    let issuer = mesh;
    let issuedIdentity = identity;
    let validity: { notBefore?: Date; notAfter?: Date; ttlMs?: number } = { ttlMs };
    if (fault?.kind === "wrong-identity") {
      const parsed = parseSpiffeUri(identity);
      issuedIdentity = mesh.spiffeId(parsed?.namespace ?? "default", `${parsed?.serviceAccount ?? "vm"}-impostor`);
    } else if (fault?.kind === "expired") {
      const now = Date.now();
      validity = { notBefore: new Date(now - 2 * HOUR), notAfter: new Date(now - HOUR) };
    } else if (fault?.kind === "foreign-chain") {
      foreign ??= createMeshCa({ trustDomain: mesh.trustDomain, commonName: "a different root" });
      issuer = await foreign;
    }
    const leaf = await issuer.issue({ publicKey: csr.publicKey, identity: issuedIdentity, ...validity });
    return [leaf, issuer.rootCertPem];
  };
}

/** The serving certificate (for every name clients may verify), as grpc-js's certificate provider. */
async function servingCertificates(mesh: MeshCa, serverNames: readonly string[]): Promise<StaticCertificates> {
  const servingKey = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const servingCert = await mesh.issue({
    publicKey: servingKey.publicKey,
    dnsNames: serverNames,
    ipAddresses: ["127.0.0.1", "::1"],
    subject: { organization: mesh.trustDomain, commonName: "istio-vm dev CA" },
    ttlMs: 365 * 24 * HOUR,
    clientAuth: false,
  });
  return new StaticCertificates(
    servingCert,
    servingKey.privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    mesh.rootCertPem,
  );
}

export async function startDevCaServer(options: DevCaServerOptions): Promise<DevCaServer> {
  const mesh = options.mesh;
  const logger = options.logger ?? silentLogger;
  const host = options.host ?? "127.0.0.1";
  const defaultTtl = options.defaultTtlMs ?? 24 * HOUR;
  const maxTtl = options.maxTtlMs ?? 90 * 24 * HOUR;
  const calls: CaCall[] = [];

  const provider = await servingCertificates(mesh, options.serverNames ?? DEFAULT_CA_SERVER_NAMES);

  const server: DevCaServer & { fault: CaFault | undefined } = {
    host,
    port: 0,
    addresses: [],
    fault: options.fault,
    calls,
    rootCertPem: mesh.rootCertPem,
    close: () =>
      new Promise<void>((resolve) => {
        grpcServer.tryShutdown(() => {
          resolve();
        });
        // In-flight calls (a delay fault) must not hold the shutdown.
        setTimeout(() => {
          grpcServer.forceShutdown();
          resolve();
        }, 500).unref();
      }),
  };

  /** Takes the current fault for one call, counting down `times`. */
  const takeFault = (): CaFault | undefined => {
    const fault = server.fault;
    if (fault?.times !== undefined) server.fault = fault.times <= 1 ? undefined : { ...fault, times: fault.times - 1 };
    return fault;
  };

  const sign = createSigner(mesh, { defaultTtl, maxTtl });

  const record = (entry: CaCall): void => {
    calls.push(entry);
    logger.info("CA call", {
      protocol: entry.protocol,
      identity: entry.identity,
      authenticatedBy: entry.authenticatedBy,
      outcome: entry.outcome,
    });
  };

  /** Common frame of both handlers: faults first, then authentication, then the protocol's own answer. */
  const handle =
    <Req, Res>(
      protocol: CaCall["protocol"],
      body: (
        call: grpc.ServerUnaryCall<Req, Res | Garbage>,
        fault: CaFault | undefined,
      ) => Promise<{ response: Res; identity: string; by: CaCall["authenticatedBy"] }>,
    ) =>
    (call: grpc.ServerUnaryCall<Req, Res | Garbage>, callback: grpc.sendUnaryData<Res | Garbage>): void => {
      const fault = takeFault();
      const peer = call.getPeer();
      const run = async (): Promise<void> => {
        if (fault?.kind === "delay") await new Promise((resolve) => setTimeout(resolve, fault.delayMs ?? 0));
        if (fault?.kind === "unavailable")
          throw new Refusal(grpc.status.UNAVAILABLE, "CA unavailable (fault injected)");
        const result = await body(call, fault);
        if (fault?.kind === "garbage") {
          record({ protocol, authenticatedBy: result.by, identity: result.identity, outcome: "garbage", peer });
          callback(null, { garbage: true });
          return;
        }
        record({
          protocol,
          authenticatedBy: result.by,
          identity: result.identity,
          outcome: fault?.kind ?? "issued",
          peer,
        });
        callback(null, result.response);
      };
      run().catch((error: unknown) => {
        const refusal =
          error instanceof Refusal
            ? error
            : new Refusal(grpc.status.INTERNAL, `CSR signing error (${(error as Error).message})`);
        record({
          protocol,
          authenticatedBy: undefined,
          identity: peerIdentity(call),
          outcome: grpc.status[refusal.code],
          peer,
        });
        callback({ code: refusal.code, details: refusal.message });
      });
    };

  const legacy = handle<CsrRequest, CsrResponse>("legacy", async (call, fault) => {
    const identity = peerIdentity(call);
    if (identity === undefined) throw new Refusal(grpc.status.UNAUTHENTICATED, "request authenticate failure");
    if (fault?.kind === "deny") {
      return {
        identity,
        by: "certificate",
        response: {
          isApproved: false,
          status: { code: grpc.status.PERMISSION_DENIED, message: "request is not authorized (fault injected)" },
          signedCert: "",
          certChain: "",
        },
      };
    }
    const csr = await parseCsrOrRefuse(call.request.csrPem);
    if (csr.uris.length !== 1 || csr.otherNames.length > 0 || csr.uris[0] !== identity) {
      throw new Refusal(
        grpc.status.PERMISSION_DENIED,
        `request is not authorized (the CSR must name only ${identity})`,
      );
    }
    const [leaf, root] = await sign(csr, identity, call.request.requestedTtlMinutes * 60_000, fault);
    const response: CsrResponse =
      options.legacyLayout === "0.7"
        ? { isApproved: true, signedCert: leaf + root, certChain: "" }
        : { isApproved: true, signedCert: leaf, certChain: root };
    return { identity, by: "certificate", response };
  });

  const istiod = handle<IstioCertificateRequest, IstioCertificateResponse>("istiod", async (call, fault) => {
    let identity = peerIdentity(call);
    let by: CaCall["authenticatedBy"] = identity === undefined ? undefined : "certificate";
    if (identity === undefined) {
      const token = bearer(call);
      const subject =
        token === undefined || options.verifyToken === undefined ? undefined : await options.verifyToken(token);
      if (subject !== undefined) {
        identity = mesh.spiffeId(subject.namespace, subject.serviceAccount);
        by = "token";
      }
    }
    if (identity === undefined) {
      throw new Refusal(grpc.status.UNAUTHENTICATED, "authenticate failure: no valid client certificate or token");
    }
    if (fault?.kind === "deny")
      throw new Refusal(grpc.status.PERMISSION_DENIED, "request is not authorized (fault injected)");
    const csr = await parseCsrOrRefuse(call.request.csr);
    const [leaf, root] = await sign(csr, identity, call.request.validityDurationSeconds * 1000, fault);
    return { identity, by, response: { certChain: [leaf, root] } };
  });

  const grpcServer = new grpc.Server();
  grpcServer.addService(LEGACY_SERVICE, { HandleCSR: legacy as grpc.UntypedHandleCall });
  grpcServer.addService(ISTIOD_SERVICE, { CreateCertificate: istiod as grpc.UntypedHandleCall });
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
  const admin = faultAdminService(server, logger);
  grpcServer.addService(admin.definition, admin.implementation);
  const bind = (address: string): Promise<number> =>
    new Promise<number>((resolve, reject) => {
      grpcServer.bindAsync(address, credentials, (error, bound) => {
        if (error !== null) reject(error);
        else resolve(bound);
      });
    });
  const bracket = (h: string): string => (h.includes(":") ? `[${h}]` : h);
  const port = await bind(`${bracket(host)}:${options.port ?? 0}`);
  const addresses = [`${bracket(host)}:${port}`];
  for (const extra of options.extraHosts ?? []) {
    const extraPort = await bind(`${bracket(extra)}:${options.port ?? 0}`);
    addresses.push(`${bracket(extra)}:${extraPort}`);
  }
  Object.assign(server, { port, addresses });
  logger.info("dev CA listening", { addresses: addresses.join(","), protocols: "HandleCSR, CreateCertificate" });
  return server;
}
