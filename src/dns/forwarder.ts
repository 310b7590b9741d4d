/**
 * Forwards a query, as the client's bytes, to every upstream at once and returns the first usable answer as the
 * upstream's bytes (TTL, flags, EDNS untouched): istio-agent's DNS_FORWARD_PARALLEL (istio/istio
 * `pkg/dns/client/dns.go` queryUpstreamParallel). One difference, for fail-open: an upstream's SERVFAIL or REFUSED
 * is held back while another upstream may still answer, and returned only when none does better. Each exchange uses
 * a fresh socket (a random source port, RFC 5452) and checks the answer's id and source.
 */
import { createSocket } from "node:dgram";
import { connect, isIP } from "node:net";
import type { Clock } from "../platform/clock.js";
import { splitServer } from "./resolv-conf.js";

export type Transport = "udp" | "tcp";

/** What forwarding produced: the chosen answer, or nothing when no upstream answered in time. */
export type ForwardResult =
  | { readonly ok: true; readonly response: Buffer; readonly server: string }
  | { readonly ok: false; readonly errors: readonly string[] };

export interface Forwarder {
  forward(query: Buffer, transport: Transport, servers: readonly string[]): Promise<ForwardResult>;
}

const RCODE_SERVFAIL = 2;
const RCODE_REFUSED = 5;

function rcodeOf(response: Buffer): number {
  return (response[3] ?? 0) & 0x0f;
}

function exchangeUdp(query: Buffer, server: string, signal: AbortSignal): Promise<Buffer> {
  const { host, port } = splitServer(server);
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIP(host.replace(/%.*$/, "")) === 6 ? "udp6" : "udp4");
    let closed = false;
    const done = (): void => {
      if (closed) return;
      closed = true;
      signal.removeEventListener("abort", onAbort);
      socket.close();
    };
    const onAbort = (): void => {
      done();
      reject(new Error(`${server}: cancelled`));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    socket.on("error", (error) => {
      done();
      reject(new Error(`${server}: ${error.message}`));
    });
    socket.on("message", (message, rinfo) => {
      // Only the server we asked, with our id, may answer (anything else is stray or spoofed).
      if (rinfo.port !== port || rinfo.address !== host.replace(/%.*$/, "") || message.length < 12) return;
      if (message.readUInt16BE(0) !== query.readUInt16BE(0)) return;
      done();
      resolve(message);
    });
    socket.send(query, port, host);
  });
}

function exchangeTcp(query: Buffer, server: string, signal: AbortSignal): Promise<Buffer> {
  const { host, port } = splitServer(server);
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let buffered = Buffer.alloc(0);
    const done = (): void => {
      signal.removeEventListener("abort", onAbort);
      socket.destroy();
    };
    const onAbort = (): void => {
      done();
      reject(new Error(`${server}: cancelled`));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    socket.on("error", (error) => {
      done();
      reject(new Error(`${server}: ${error.message}`));
    });
    socket.on("close", () => {
      done();
      reject(new Error(`${server}: connection closed before an answer`));
    });
    socket.on("connect", () => {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(query.length);
      socket.write(Buffer.concat([length, query]));
    });
    socket.on("data", (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (buffered.length < 2) return;
      const size = buffered.readUInt16BE(0);
      if (buffered.length < 2 + size) return;
      const message = buffered.subarray(2, 2 + size);
      done();
      if (message.length < 12 || message.readUInt16BE(0) !== query.readUInt16BE(0)) {
        reject(new Error(`${server}: answer with a foreign id`));
      } else resolve(Buffer.from(message));
    });
  });
}

export interface ForwarderOptions {
  readonly clock: Clock;
  /** Per query, for all upstreams together (istio's DNS_FORWARD_TIMEOUT, 5 s). */
  readonly timeoutMs: number;
}

export function createForwarder(options: ForwarderOptions): Forwarder {
  return {
    forward(query, transport, servers) {
      const controller = new AbortController();
      const exchange = transport === "udp" ? exchangeUdp : exchangeTcp;
      return new Promise<ForwardResult>((resolve) => {
        const errors: string[] = [];
        let held: { response: Buffer; server: string } | undefined;
        let pending = servers.length;
        let settled = false;
        const finish = (result: ForwardResult): void => {
          if (settled) return;
          settled = true;
          controller.abort();
          resolve(result);
        };
        const settleOne = (): void => {
          pending -= 1;
          if (pending > 0) return;
          finish(held === undefined ? { ok: false, errors } : { ok: true, ...held });
        };
        if (servers.length === 0) {
          finish({ ok: false, errors: ["no upstream nameserver"] });
          return;
        }
        options.clock.sleep(options.timeoutMs, controller.signal).then(
          () => {
            errors.push(`no answer within ${String(options.timeoutMs)} ms`);
            finish(held === undefined ? { ok: false, errors } : { ok: true, ...held });
          },
          () => undefined,
        );
        for (const server of servers) {
          exchange(query, server, controller.signal).then(
            (response) => {
              const rcode = rcodeOf(response);
              if (rcode !== RCODE_SERVFAIL && rcode !== RCODE_REFUSED) finish({ ok: true, response, server });
              else {
                held ??= { response, server };
                settleOne();
              }
            },
            (error: unknown) => {
              if (!settled) errors.push((error as Error).message);
              settleOne();
            },
          );
        }
      });
    },
  };
}
