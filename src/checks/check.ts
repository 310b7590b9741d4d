/**
 * What `istio-vm check` and the agent run: named checks that return results instead of throwing. A result says in a
 * few words what was found (`summary`), what each server answered (`details`) and, when it failed, what to look at
 * (`hint`). Checks are pluggable: each module exports a factory taking `CheckDeps`, and `registry.ts` lists them.
 */
import type { LoadedConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { Clock } from "../platform/clock.js";
import type { DnsClient } from "../platform/dns.js";
import type { FileSystem } from "../platform/fs.js";
import type { HttpClient } from "../platform/http.js";
import type { LinkFileSystem } from "../platform/links.js";
import type { Logger } from "../platform/logger.js";
import type { SystemPorts } from "../platform/ports.js";
import type { ProcessRunner } from "../platform/process.js";
import type { TlsProber } from "../platform/tls.js";
import type { UserDirectory } from "../platform/users.js";
import { programVersion } from "../version.js";

export type CheckStatus = "pass" | "fail" | "skip";

export interface CheckResult {
  readonly name: string;
  /** False only for "fail": a skipped check did not find a problem. */
  readonly ok: boolean;
  readonly status: CheckStatus;
  readonly summary: string;
  /** One line per thing looked at (a name and what each server answered, a URL and its status, …). */
  readonly details: readonly string[];
  /** What to look at; set on every failure. */
  readonly hint?: string;
  /** Structured findings for --json. */
  readonly data?: unknown;
}

export interface Check {
  readonly name: string;
  /** One line for `istio-vm check --help`. */
  readonly description: string;
  run(signal: AbortSignal): Promise<CheckResult>;
}

/** The outside world a check may use; `main.ts`/the CLI pass the real ones, tests real local servers. */
export interface CheckDeps {
  readonly values: ConfigValues;
  /** `ISTIO_META_*` / `ISTIO_METAJSON_*` variables outside the registry (name → raw value), for the probe node. */
  readonly metadata: Readonly<Record<string, string>>;
  readonly fs: FileSystem;
  readonly links: LinkFileSystem;
  readonly users: UserDirectory;
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly dns: DnsClient;
  readonly http: HttpClient;
  readonly tls: TlsProber;
  /** This machine's host name (the node id's POD_NAME when that is empty). */
  readonly hostname: string;
  readonly version: string;
  /** Deadline of each network step (a lookup, a handshake, a request). */
  readonly timeoutMs: number;
  /** This process's effective uid, where known: the DNS check skips its capture probe as the proxy's user. */
  readonly uid?: number;
}

/** CheckDeps from the composition root's ports and a loaded configuration (`check`, `install`, the agent's watch). */
export function checkDepsFrom(
  ports: SystemPorts,
  run: { readonly loaded: LoadedConfig; readonly logger: Logger; readonly timeoutMs: number },
): CheckDeps {
  return {
    values: run.loaded.values,
    metadata: Object.fromEntries(Object.values(run.loaded.metadata).map((m) => [m.name, m.raw])),
    fs: ports.fs,
    links: ports.links,
    users: ports.users,
    runner: ports.runner,
    clock: ports.clock,
    logger: run.logger,
    dns: ports.dns,
    http: ports.http,
    tls: ports.tls,
    hostname: ports.hostname(),
    version: programVersion(),
    timeoutMs: run.timeoutMs,
    ...(ports.uid === undefined ? {} : { uid: ports.uid }),
  };
}

export function pass(name: string, summary: string, details: readonly string[], data?: unknown): CheckResult {
  return { name, ok: true, status: "pass", summary, details, ...(data === undefined ? {} : { data }) };
}

export function fail(
  name: string,
  summary: string,
  hint: string,
  details: readonly string[] = [],
  data?: unknown,
): CheckResult {
  return { name, ok: false, status: "fail", summary, details, hint, ...(data === undefined ? {} : { data }) };
}

export function skip(name: string, summary: string, details: readonly string[] = []): CheckResult {
  return { name, ok: true, status: "skip", summary, details };
}

/** `host:port` → the parts (`[v6]:port` too). */
export function splitHostPort(value: { host: string; port: number }): { host: string; port: number; text: string } {
  const text = value.host.includes(":") ? `[${value.host}]:${value.port}` : `${value.host}:${value.port}`;
  return { host: value.host, port: value.port, text };
}

export function certPaths(values: ConfigValues): { root: string; chain: string; key: string } {
  const dir = values.OUTPUT_CERTS.replace(/\/+$/, "");
  return { root: `${dir}/root-cert.pem`, chain: `${dir}/cert-chain.pem`, key: `${dir}/key.pem` };
}
