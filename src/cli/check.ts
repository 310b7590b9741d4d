/**
 * `istio-vm check`: the original recipe's manual verification steps (`host istio-pilot.istio-system`, `curl …/v1/
 * registration/…`) plus everything else that makes a VM work, as named checks (src/checks/). A table for people
 * (a hint under every failure), --json for machines; exit 0 only when every check that ran passed.
 */
import { hostname } from "node:os";
import type { CommandModule } from "yargs";
import type { CheckResult } from "../checks/check.js";
import { CHECK_NAMES, CHECKS, buildChecks, runChecks } from "../checks/registry.js";
import { loadConfig, requireValid } from "../config/load.js";
import { duration } from "../config/types.js";
import { nodeDnsClient } from "../platform/dns.js";
import { UsageError } from "../platform/errors.js";
import { nodeHttpClient } from "../platform/http.js";
import { nodeTlsProber } from "../platform/tls.js";
import { programVersion } from "../version.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface CheckArgs {
  only: string[];
  timeout: string;
  verbose: boolean;
}

export function parseOnly(values: readonly string[]): string[] {
  const names = values
    .flatMap((v) => v.split(","))
    .map((v) => v.trim())
    .filter((v) => v !== "");
  const unknown = names.filter((n) => !CHECK_NAMES.includes(n));
  if (unknown.length > 0) {
    throw new UsageError(`--only: unknown check ${unknown.join(", ")}`, `the checks are: ${CHECK_NAMES.join(", ")}`);
  }
  return [...new Set(names)];
}

export function renderResults(results: readonly CheckResult[], verbose: boolean): string {
  const status = (r: CheckResult): string => (r.status === "pass" ? "ok" : r.status === "skip" ? "skipped" : "FAIL");
  const table = renderTable(
    ["CHECK", "STATUS", "DETAIL"],
    results.map((r) => [r.name, status(r), r.summary]),
  );
  const lines = table.trimEnd().split("\n");
  const out: string[] = [lines[0] ?? ""];
  results.forEach((r, i) => {
    out.push(lines[i + 1] ?? "");
    if (!r.ok || verbose) for (const d of r.details) out.push(`    ${d}`);
    if (r.hint !== undefined && !r.ok) out.push(`    hint: ${r.hint}`);
  });
  const failed = results.filter((r) => !r.ok).length;
  out.push("", failed === 0 ? `all ${results.length} checks passed` : `${failed} of ${results.length} checks failed`);
  return `${out.join("\n")}\n`;
}

export function checkCommand(runtime: () => CommandRuntime): CommandModule<object, CheckArgs> {
  return {
    command: "check",
    describe:
      "Check this VM: DNS, discovery (Pilot), CA, certificate, traffic capture and Envoy (exit 1 on any failure)",
    builder: (y) =>
      y
        .option("only", {
          type: "string",
          array: true,
          default: [] as string[],
          describe: `run only these checks (repeat or comma-separate): ${CHECK_NAMES.join(", ")}`,
        })
        .option("timeout", {
          type: "string",
          default: "5s",
          describe: "deadline of each network step (a lookup, a handshake, a request)",
        })
        .option("verbose", {
          alias: "v",
          type: "boolean",
          default: false,
          describe: "show what each server answered for passing checks too",
        })
        .epilogue(
          `Checks:\n${CHECKS.map((c) => `  ${c.name.padEnd(13)} ${c.description}`).join("\n")}\n\n` +
            "The dns check resolves the control-plane names of the profile (legacy: istio-pilot, istio-mixer, istio-ca and " +
            "their .<ns> forms; istiod: istiod, istiod.<ns>, istiod.<ns>.svc) and ISTIO_DNS_PROBE_NAME twice: through the " +
            "system resolver and straight at ISTIO_DNS_SERVER (dnsmasq), and compares both with ISTIO_DNSMASQ_DIR/kubedns. " +
            "The discovery check asks Pilot's v1 registration API (legacy) or opens an ADS stream to istiod with this VM's " +
            "node id (never AUTO_REGISTER_GROUP) and ACKs its CDS answer. Exit codes: 0 all passed, 1 a check failed, " +
            "2 invalid configuration or usage. The agent runs the discovery check at start and every DISCOVERY_CHECK_INTERVAL.",
        )
        .example("$0 check", "every check, as a table with a hint under each failure")
        .example("$0 check --only dns,discovery --json", "two checks, as JSON")
        .example("sudo $0 check --only interception", "reading iptables needs CAP_NET_ADMIN"),
    handler: async (args) => {
      const rt = runtime();
      const only = parseOnly(args.only);
      let timeoutMs: number;
      try {
        timeoutMs = duration.parse(args.timeout);
      } catch (error) {
        throw new UsageError(`--timeout: ${(error as Error).message}`);
      }
      if (timeoutMs <= 0) throw new UsageError("--timeout must be more than 0");
      const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
      const values = requireValid(loaded);
      const checks = buildChecks(
        {
          values,
          metadata: Object.fromEntries(Object.values(loaded.metadata).map((m) => [m.name, m.raw])),
          fs: rt.fs,
          runner: rt.runner,
          clock: rt.clock,
          logger: rt.logger,
          dns: nodeDnsClient,
          http: nodeHttpClient,
          tls: nodeTlsProber,
          hostname: hostname(),
          version: programVersion(),
          timeoutMs,
        },
        only,
      );
      const results = await runChecks(checks, new AbortController().signal);
      const ok = results.every((r) => r.ok);
      rt.out(rt.options.json ? renderJson({ ok, checks: results }) : renderResults(results, args.verbose));
      rt.exitCode = ok ? 0 : 1;
    },
  };
}
