/**
 * Every check `istio-vm check` runs, in report order. A new check is one entry here (a name and a factory over
 * `CheckDeps`); `--only` selects by these names.
 */
import { AgentError, describeError } from "../platform/errors.js";
import { caCheck } from "./ca.js";
import { certificateCheck } from "./certificate.js";
import type { Check, CheckDeps, CheckResult } from "./check.js";
import { fail } from "./check.js";
import { discoveryCheck } from "./discovery.js";
import { dnsCheck } from "./dns.js";
import { envoyCheck } from "./envoy.js";
import { interceptionCheck } from "./interception.js";
import { sdsCheck } from "./sds.js";
import { xdsProxyCheck } from "./xds-proxy.js";

export interface CheckEntry {
  readonly name: string;
  /** One line for `istio-vm check --help`. */
  readonly description: string;
  readonly factory: (deps: CheckDeps) => Check;
}

export const CHECKS: readonly CheckEntry[] = [
  {
    name: "dns",
    description: "mesh names resolve via the system resolver and dnsmasq, as kubedns says",
    factory: dnsCheck,
  },
  {
    name: "discovery",
    description: "Pilot answers: v1 registration with hosts (legacy), ADS CDS with clusters (istiod)",
    factory: (deps) => discoveryCheck(deps),
  },
  { name: "ca", description: "TCP + TLS to CA_ADDR, identity ISTIOD_SAN, chain to root-cert.pem", factory: caCheck },
  {
    name: "certificate",
    description: "workload certificate valid, this VM's identity, chains to the root, time left",
    factory: certificateCheck,
  },
  {
    name: "interception",
    description: "istio-vm's iptables rules present and equal to the plan",
    factory: interceptionCheck,
  },
  {
    name: "sds",
    description: "istiod: the agent's SDS socket serves Envoy the chain in cert-chain.pem",
    factory: sdsCheck,
  },
  {
    name: "xds-proxy",
    description: "istiod: the agent proxies Envoy's xDS (socket 0600, istiod answered CDS and LDS)",
    factory: xdsProxyCheck,
  },
  { name: "envoy", description: "Envoy's admin /ready answers 200", factory: envoyCheck },
];

export const CHECK_NAMES: readonly string[] = CHECKS.map((c) => c.name);

/** The checks to run, in report order; `only` (names) selects some. Unknown names are the caller's usage error. */
export function buildChecks(deps: CheckDeps, only?: readonly string[]): Check[] {
  return CHECKS.filter((c) => only === undefined || only.length === 0 || only.includes(c.name)).map((c) =>
    c.factory(deps),
  );
}

/** Runs one check; a check that throws becomes a failed result (checks report, they do not crash the command). */
export async function runCheck(check: Check, signal: AbortSignal): Promise<CheckResult> {
  try {
    return await check.run(signal);
  } catch (error) {
    // A user-facing error (a missing file, an unknown user) is a failed check with its own hint, not a crash.
    if (error instanceof AgentError) {
      return fail(
        check.name,
        error.message,
        error.hint ?? `fix ${error.subject ?? "the problem above"} and run the check again`,
      );
    }
    return fail(
      check.name,
      `check crashed: ${describeError(error)}`,
      "this is a bug in istio-vm: please report it with the output of `istio-vm check --json`",
    );
  }
}

/** Runs the checks concurrently (they are independent); results come back in the checks' order. */
export async function runChecks(checks: readonly Check[], signal: AbortSignal): Promise<CheckResult[]> {
  return await Promise.all(checks.map((c) => runCheck(c, signal)));
}
