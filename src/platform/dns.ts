/**
 * Name resolution as a port, for the DNS checks: the system resolver (getaddrinfo, as every program on the VM
 * resolves, honouring /etc/resolv.conf and /etc/hosts) and a query straight at one DNS server. Both run under a real
 * deadline: node:dns' `timeout` × `tries` is not one (a 300 ms × 2 resolver was seen to take 1.2 s: c-ares,
 * `ares_init_options` ARES_OPT_TIMEOUTMS, gives the first try that timeout and later tries longer ones), so a timer
 * calls `resolver.cancel()`.
 */
import type * as Dns from "node:dns";
import { timerDelay } from "./clock.js";
import { loadBuiltin } from "./fs.js";

/** node:dns, loaded on first use (commands that resolve nothing do not pay for it). */
const nodeDns = (): typeof Dns => loadBuiltin("node:dns") as typeof Dns;

export type DnsOutcome =
  | { readonly ok: true; readonly addresses: readonly string[] }
  | {
      readonly ok: false;
      /** ENOTFOUND/NXDOMAIN-like, ENODATA, ECONNREFUSED, TIMEOUT, … */
      readonly code: string;
      readonly message: string;
    };

export interface DnsClient {
  /** getaddrinfo through the system resolver; IPv4 and IPv6 addresses. */
  lookupSystem(name: string, timeoutMs: number): Promise<DnsOutcome>;
  /** A and AAAA queries sent to `server` (`ip:port` or `[ip]:port`) only. */
  queryServer(name: string, server: string, timeoutMs: number): Promise<DnsOutcome>;
}

function failure(error: unknown): DnsOutcome {
  const e = error as NodeJS.ErrnoException;
  const code = typeof e.code === "string" ? e.code : "ERROR";
  return { ok: false, code, message: e.message };
}

const timeoutOutcome = (ms: number): DnsOutcome => ({
  ok: false,
  code: "TIMEOUT",
  message: `no answer within ${ms} ms`,
});

export const nodeDnsClient: DnsClient = {
  lookupSystem(name, timeoutMs) {
    // getaddrinfo runs on libuv's thread pool and cannot be cancelled: the deadline abandons it instead.
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        resolve(timeoutOutcome(timeoutMs));
      }, timerDelay(timeoutMs));
      nodeDns().lookup(name, { all: true, family: 0 }, (error, addresses) => {
        clearTimeout(timer);
        if (error !== null) resolve(failure(error));
        else resolve({ ok: true, addresses: addresses.map((a) => a.address) });
      });
    });
  },

  async queryServer(name, server, timeoutMs) {
    const resolver = new (nodeDns().promises.Resolver)({ timeout: Math.max(1, Math.floor(timeoutMs / 2)), tries: 2 });
    try {
      resolver.setServers([server]);
    } catch (error) {
      return failure(error);
    }
    const deadline = { passed: false };
    const timer = setTimeout(() => {
      deadline.passed = true;
      resolver.cancel();
    }, timerDelay(timeoutMs));
    try {
      const [v4, v6] = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
      if (deadline.passed) return timeoutOutcome(timeoutMs);
      const addresses = [
        ...(v4.status === "fulfilled" ? v4.value : []),
        ...(v6.status === "fulfilled" ? v6.value : []),
      ];
      if (addresses.length > 0) return { ok: true, addresses };
      // Both failed (or both empty): report the A query's error, the one that says NXDOMAIN vs refused vs timeout.
      if (v4.status === "rejected") return failure(v4.reason);
      if (v6.status === "rejected") return failure(v6.reason);
      return { ok: false, code: "ENODATA", message: `${name} has no A or AAAA records` };
    } finally {
      clearTimeout(timer);
    }
  },
};
