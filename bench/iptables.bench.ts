/**
 * Time to apply inbound capture for 10, 100 and 1 000 ports: istio-vm's method (read iptables-save, one
 * iptables-restore --noflush for the whole table) against the original istio-iptables.sh's (one `iptables` process
 * per rule, run by one shell). Both run in a network namespace this bench creates and deletes, for both back ends.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { applyInterception, cleanInterception } from "../src/intercept/applier.js";
import type { InterceptionSettings } from "../src/intercept/planner.js";
import { planInterception, restoreInput } from "../src/intercept/planner.js";
import type { ProcessRunner } from "../src/platform/process.js";
import { nodeProcessRunner } from "../src/platform/process.js";

const SIZES = [10, 100, 1000] as const;
const BACKENDS = ["nft", "legacy"] as const;

function row(caseName: string, value: string, note?: string): void {
  process.stdout.write(
    `${JSON.stringify({ table: "iptables", case: caseName, value, ...(note === undefined ? {} : { note }) })}\n`,
  );
}

async function must(command: string, args: readonly string[], input?: string): Promise<string> {
  const r = await nodeProcessRunner.run(command, args, {
    timeoutMs: 600_000,
    ...(input === undefined ? {} : { input }),
  });
  if (r.code !== 0)
    throw new Error(`${command} ${args.slice(0, 6).join(" ")} failed (${r.code}): ${r.stderr.slice(0, 500)}`);
  return r.stdout;
}

function settings(ports: number): InterceptionSettings {
  return {
    profile: "istiod",
    inboundPorts: Array.from({ length: ports }, (_, i) => 20_000 + i),
    inboundExcludePorts: [],
    serviceCidrs: [],
    excludeCidrs: [],
    envoyPort: 15001,
    inboundCapturePort: 15006,
    inboundTunnelPort: 15008,
    proxy: { uids: [1337], gids: [1337], source: "bench" },
    excludeInterfaces: [],
    ipv6: false,
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    row("apply capture", "skipped", "needs root (network namespaces)");
    return;
  }
  const ns = `iptv-bench-${randomBytes(3).toString("hex")}`;
  await must("ip", ["netns", "add", ns]);
  const runner: ProcessRunner = {
    run: (command, args, options) => nodeProcessRunner.run("ip", ["netns", "exec", ns, command, ...args], options),
  };
  try {
    for (const backend of BACKENDS) {
      const deps = { runner, choice: backend } as const;
      for (const size of SIZES) {
        const plan = planInterception(settings(size));
        const table = plan.families[0]?.tables[0];
        if (table === undefined) throw new Error("empty plan");
        const reps = size === 1000 ? 3 : 5;

        const restoreTimes: number[] = [];
        for (let i = 0; i < reps; i++) {
          await cleanInterception(deps);
          const start = performance.now();
          await applyInterception(deps, plan);
          restoreTimes.push(performance.now() - start);
        }
        const saved = await must("ip", ["netns", "exec", ns, `iptables-${backend}-save`, "-t", "nat"]);
        if (!saved.includes(`--dport ${20_000 + size - 1} -j ISTIO_IN_REDIRECT`)) throw new Error("restore incomplete");

        // The original's way: `iptables -t nat -N` per chain, then `iptables -t nat -A …` per rule.
        const tool = `iptables-${backend}`;
        const script = [
          "set -e",
          ...table.chains.map((c) => `${tool} -w -t nat -N ${c}`),
          ...table.rules.map((r) => `${tool} -w -t nat -A ${r.chain} ${r.spec}`),
        ].join("\n");
        const perRuleTimes: number[] = [];
        for (let i = 0; i < (size === 1000 ? 1 : 3); i++) {
          await cleanInterception(deps);
          const start = performance.now();
          await must("ip", ["netns", "exec", ns, "sh", "-s"], script);
          perRuleTimes.push(performance.now() - start);
        }
        await cleanInterception(deps);

        const ours = median(restoreTimes);
        const theirs = median(perRuleTimes);
        const rules = table.rules.length;
        row(
          `${size} ports (${rules} rules), ${backend}: istio-vm apply (save + 1 restore)`,
          `${ours.toFixed(1)} ms`,
          `median of ${reps}`,
        );
        row(
          `${size} ports (${rules} rules), ${backend}: 1 iptables call per rule`,
          `${theirs.toFixed(1)} ms`,
          `median of ${perRuleTimes.length}; restore input ${restoreInput(table).length} bytes`,
        );
        row(`${size} ports, ${backend}: speed-up`, `${(theirs / ours).toFixed(1)}×`);
      }
    }
  } finally {
    await nodeProcessRunner.run("ip", ["netns", "del", ns]);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
