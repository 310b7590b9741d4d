/**
 * A TCP connect followed by a TLS handshake, as separate steps, so a check can say which one failed: nothing
 * listening (TCP) is a different fix from a server presenting the wrong identity or an unknown root (TLS).
 */
import type * as Net from "node:net";
import type { Socket } from "node:net";
import type * as Tls from "node:tls";
import type { PeerCertificate } from "node:tls";
import { timerDelay } from "./clock.js";
import { loadBuiltin } from "./fs.js";

export interface TlsProbeRequest {
  readonly host: string;
  readonly port: number;
  /** SNI and the name the server certificate must carry. */
  readonly servername: string;
  /** Trust anchors (PEM). */
  readonly ca: string | Buffer;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** ALPN protocols to offer; gRPC servers (grpc-go ≥ 1.67) refuse TLS clients that do not offer h2. */
  readonly alpn?: readonly string[];
  readonly timeoutMs: number;
}

export interface PeerIdentity {
  readonly subject: string;
  /** subjectAltName entries as node prints them: "DNS:istio-ca", "URI:spiffe://…". */
  readonly altNames: readonly string[];
  readonly validTo: string;
  readonly issuer: string;
}

export type TlsProbeResult =
  | { readonly ok: true; readonly address: string; readonly peer: PeerIdentity; readonly alpn: string | false }
  | {
      readonly ok: false;
      readonly step: "tcp" | "tls";
      readonly code: string;
      readonly message: string;
      /** The remote address when TCP got through. */
      readonly address?: string;
      /** What the server presented, when the handshake got that far. */
      readonly peer?: PeerIdentity;
    };

export interface TlsProber {
  probe(request: TlsProbeRequest): Promise<TlsProbeResult>;
}

/** `cert` may be null or `{}` after a failed handshake, whatever the declared type says. */
function identity(cert: PeerCertificate | null | undefined): PeerIdentity | undefined {
  if (cert === undefined || cert === null || Object.keys(cert).length === 0) return undefined;
  // Istio's leaves have an empty subject: node then leaves `subject` undefined despite its type.
  const name = (n: object | undefined): string =>
    Object.entries(n ?? {})
      .map(([k, v]) => `${k}=${String(v)}`)
      .join(", ");
  const subject = name(cert.subject);
  const issuer = name(cert.issuer);
  const altNames = (cert.subjectaltname ?? "").split(", ").filter((s) => s !== "");
  return { subject, issuer, altNames, validTo: cert.valid_to };
}

function codeOf(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  return typeof code === "string" ? code : "ERROR";
}

function connectTcp(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const { connect: netConnect } = loadBuiltin("node:net") as typeof Net;
    const socket = netConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        Object.assign(new Error(`TCP connect to ${host}:${port} timed out after ${timeoutMs} ms`), {
          code: "ETIMEDOUT",
        }),
      );
    }, timerDelay(timeoutMs));
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

export const nodeTlsProber: TlsProber = {
  async probe(req) {
    const started = Date.now();
    let socket: Socket;
    try {
      socket = await connectTcp(req.host, req.port, req.timeoutMs);
    } catch (error) {
      return { ok: false, step: "tcp", code: codeOf(error), message: (error as Error).message };
    }
    const address = `${socket.remoteAddress ?? req.host}:${socket.remotePort ?? req.port}`;
    const remaining = Math.max(1, req.timeoutMs - (Date.now() - started));
    // Loaded on first use, as in http.ts: commands that probe nothing do not load TLS.
    const { checkServerIdentity: tlsCheck, connect: tlsConnect } = loadBuiltin("node:tls") as typeof Tls;
    return await new Promise<TlsProbeResult>((resolve) => {
      let presented: PeerIdentity | undefined;
      const tls = tlsConnect({
        socket,
        servername: req.servername,
        ca: req.ca,
        ...(req.cert === undefined ? {} : { cert: req.cert }),
        ...(req.key === undefined ? {} : { key: req.key }),
        ...(req.alpn === undefined ? {} : { ALPNProtocols: [...req.alpn] }),
        rejectUnauthorized: true,
        checkServerIdentity: (host, cert) => {
          presented = identity(cert);
          // The default check (RFC 6125 against the SNI name), kept; the presented identity is only recorded.
          return tlsCheck(host, cert);
        },
      });
      const timer = setTimeout(() => {
        tls.destroy();
        resolve({
          ok: false,
          step: "tls",
          code: "ETIMEDOUT",
          message: `TLS handshake with ${address} timed out`,
          address,
        });
      }, timerDelay(remaining));
      tls.once("secureConnect", () => {
        clearTimeout(timer);
        const peer = identity(tls.getPeerCertificate()) ?? presented;
        const alpn = tls.alpnProtocol ?? false;
        tls.destroy();
        if (peer === undefined) {
          resolve({
            ok: false,
            step: "tls",
            code: "NO_PEER_CERT",
            message: "the server presented no certificate",
            address,
          });
        } else resolve({ ok: true, address, peer, alpn });
      });
      tls.once("error", (error: Error) => {
        clearTimeout(timer);
        // A certificate that fails verification is still useful to show: read it before giving up.
        const peer = presented ?? identity(tls.getPeerCertificate());
        tls.destroy();
        resolve({
          ok: false,
          step: "tls",
          code: codeOf(error),
          message: error.message,
          address,
          ...(peer === undefined ? {} : { peer }),
        });
      });
    });
  },
};
