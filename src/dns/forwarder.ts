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

/** How an exchange ends: with the answer, or with a failure named after the server. */
interface Settle {
  answer(message: Buffer): void;
  fail(reason: string): void;
}

/**
 * One exchange with `server` on a fresh socket (`open`), settled once by `start`'s answer or failure, a socket error or `signal`;
 * settling closes the socket (`close`) and drops the abort listener, so a late event changes nothing.
 */
function exchangeOn<S extends { on(event: "error", listener: (error: Error) => void): unknown }>(
  server: string,
  signal: AbortSignal,
  open: () => S,
  close: (socket: S) => void,
  start: (socket: S, settle: Settle) => void,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = open();
    let settled = false;
    const finish = (end: () => void): void => {
      if (settled) return;
      settled = true;
      signal.removeEventListener("abort", onAbort);
      close(socket);
      end();
    };
    const fail = (reason: string): void => {
      finish(() => {
        reject(new Error(`${server}: ${reason}`));
      });
    };
    const onAbort = (): void => {
      fail("cancelled");
    };
    signal.addEventListener("abort", onAbort, { once: true });
    socket.on("error", (error) => {
      fail(error.message);
    });
    start(socket, {
      answer: (message) => {
        finish(() => {
          resolve(message);
        });
      },
      fail,
    });
  });
}

function exchangeUdp(query: Buffer, server: string, signal: AbortSignal): Promise<Buffer> {
  const { host, port } = splitServer(server);
  const address = host.replace(/%.*$/, "");
  return exchangeOn(
    server,
    signal,
    () => createSocket(isIP(address) === 6 ? "udp6" : "udp4"),
    (socket) => socket.close(),
    (socket, settle) => {
      socket.on("message", (message, rinfo) => {
        // Only the server we asked, with our id, may answer (anything else is stray or spoofed).
        if (rinfo.port !== port || rinfo.address !== address || message.length < 12) return;
        if (message.readUInt16BE(0) !== query.readUInt16BE(0)) return;
        settle.answer(message);
      });
      socket.send(query, port, host);
    },
  );
}

function exchangeTcp(query: Buffer, server: string, signal: AbortSignal): Promise<Buffer> {
  const { host, port } = splitServer(server);
  return exchangeOn(
    server,
    signal,
    () => connect({ host, port }),
    (socket) => socket.destroy(),
    (socket, settle) => {
      let buffered = Buffer.alloc(0);
      socket.on("close", () => {
        settle.fail("connection closed before an answer");
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
        if (message.length < 12 || message.readUInt16BE(0) !== query.readUInt16BE(0)) {
          settle.fail("answer with a foreign id");
        } else settle.answer(Buffer.from(message));
      });
    },
  );
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
