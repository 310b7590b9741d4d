/**
 * `istio-vm check`: the original recipe's manual verification steps (`host istio-pilot.istio-system`, `curl …/v1/
 * registration/…`) plus everything else that makes a VM work, as named checks (src/checks/). A table for people
 * (a hint under every failure), --json for machines; exit 0 only when every check that ran passed.
 */
import type { CommandModule } from "yargs";
import type { CheckResult } from "../checks/check.js";
import { checkDepsFrom } from "../checks/check.js";
import { CHECK_NAMES, CHECKS, buildChecks, runChecks } from "../checks/registry.js";
import { loadConfig, requireValid } from "../config/load.js";
import { duration } from "../config/types.js";
import { UsageError } from "../platform/errors.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface CheckArgs {
  only: string[];
  timeout: string;
  verbose: boolean;
  wait: string | undefined;
}

/** `--wait` without a value: long enough for a first certificate, capture and Envoy on a slow VM. */
export const DEFAULT_WAIT_MS = 120_000;
/** Pause between rounds of `--wait`. */
export const WAIT_INTERVAL_MS = 1000;

/** `--wait` → how long to keep trying (undefined: run once). Throws a UsageError for a bad duration. */
export function parseWait(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (value.trim() === "") return DEFAULT_WAIT_MS;
  let ms: number;
  try {
    ms = duration.parse(value.trim());
  } catch (error) {
    throw new UsageError(`--wait: ${(error as Error).message}`, "give a duration such as 30s, 2m or 1h");
  }
  if (ms <= 0) throw new UsageError("--wait must be more than 0", "give a duration such as 30s, 2m or 1h");
  return ms;
}

/** One line for people while `--wait` retries: which checks fail and the first one's summary. */
export function renderWaiting(results: readonly CheckResult[], leftMs: number): string {
  const failing = results.filter((r) => !r.ok);
  const first = failing[0];
  return (
    `waiting (${Math.ceil(leftMs / 1000)}s left): ${failing.length} of ${results.length} checks failing ` +
    `(${failing.map((r) => r.name).join(", ")})${first === undefined ? "" : `: ${first.name}: ${first.summary}`}\n`
  );
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
        .option("wait", {
          type: "string",
          describe:
            "repeat the checks every second until all pass or DURATION has passed (--wait alone: 2m); what scripts " +
            "use to wait for the VM to be in the mesh after `systemctl start`",
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
            "2 invalid configuration or usage. The agent runs the discovery check at start and every DISCOVERY_CHECK_INTERVAL.\n\n" +
            "The agent reports READY to systemd as soon as it runs; the certificate, capture and Envoy follow. " +
            "`istio-vm check --wait[=DURATION]` waits for them: exit 0 once every check passes, 1 when one still " +
            "fails at the deadline (the last results are printed), 2 on a usage or configuration error.",
        )
        .example("$0 check", "every check, as a table with a hint under each failure")
        .example("$0 check --only dns,discovery --json", "two checks, as JSON")
        .example("$0 check --wait=5m", "wait up to 5 minutes for the VM to be in the mesh (scripts, cloud-init)")
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
      const waitMs = parseWait(args.wait);
      const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
      const values = requireValid(loaded);
      const checks = buildChecks({ ...checkDepsFrom(rt, { loaded, logger: rt.logger, timeoutMs }), values }, only);
      const signal = new AbortController().signal;
      const startedAt = rt.clock.monotonic();
      let rounds = 0;
      let results: CheckResult[];
      let lastLine = "";
      for (;;) {
        results = await runChecks(checks, signal);
        rounds++;
        if (waitMs === undefined || results.every((r) => r.ok)) break;
        const left = waitMs - (rt.clock.monotonic() - startedAt);
        if (left <= 0) break;
        const line = renderWaiting(results, left);
        // One line per change (and not under --json, whose stdout is one document).
        const what = line.replace(/^waiting \(\d+s left\)/, "");
        if (what !== lastLine && !rt.options.json) rt.err(line);
        lastLine = what;
        await rt.clock.sleep(Math.min(WAIT_INTERVAL_MS, left));
      }
      const ok = results.every((r) => r.ok);
      const waited =
        waitMs === undefined
          ? undefined
          : { waitedMs: Math.round(rt.clock.monotonic() - startedAt), rounds, timedOut: !ok };
      if (rt.options.json) {
        rt.out(renderJson({ ok, checks: results, ...(waited === undefined ? {} : { wait: waited }) }));
      } else {
        rt.out(renderResults(results, args.verbose));
        if (waited?.timedOut === true) {
          rt.out(`still failing after waiting ${duration.render(Math.round(waited.waitedMs / 1000) * 1000)}\n`);
        }
      }
      rt.exitCode = ok ? 0 : 1;
    },
  };
}
