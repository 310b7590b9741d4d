/**
 * Issue 14's start-up, memory and idle numbers, each beside its baseline measured in the same run, interleaved (one
 * run of the command, one of the baseline, …) so that a busy machine slows both alike: `istio-vm --version` and
 * `istio-vm config` against the bare runtime's start (`node -e 0` of the same runtime), agent start → READY=1 against
 * the same, the agent's RSS and heap after 10 s idle against an idle bare runtime, and the agent's CPU over 60 s idle
 * with a valid long-lived certificate and the lines it logs meanwhile. Runs the bundle on this machine's Node and, when it has been built
 * (npm run package), the single executable against the Node binary it was built from.
 */
import { spawn, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../test/support/cert-fixture.js";
import { NotifySocket } from "../test/support/notify-socket.js";
import { freePort } from "../test/support/net.js";
import {
  FRAME_ONLY,
  dropPageCache,
  median,
  mib,
  procStat,
  ratio,
  row,
  runtimes,
  sleep,
  startAgent,
  startIdleBare,
  vmRoot,
} from "./agent-support.js";
import type { Runtime } from "./agent-support.js";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 15);

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

async function agentStartToReady(
  command: string,
  args: string[],
  bare: string,
): Promise<{ cli: number; bare: number }> {
  const cli: number[] = [];
  const baseline: number[] = [];
  for (let i = 0; i < RUNS; i++) {
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

/**
 * The agent and an idle bare runtime side by side, both started with their executables' page cache dropped
 * (agent-support.ts: dropPageCache). From the agent's "ready" status: `settle` seconds, then `seconds` more; the
 * RSS, anonymous RSS and heap at the end, the CPU used in each part, and the lines logged in the second.
 */
async function idleAgent(
  runtime: Runtime,
  settle: number,
  seconds: number,
  sidecarExtra = FRAME_ONLY,
): Promise<{
  agent: ReturnType<typeof procStat>;
  bare: ReturnType<typeof procStat>;
  settleCpuSeconds: number;
  cpuSeconds: number;
  heapBytes: number;
  logLines: number;
}> {
  dropPageCache(runtime.files);
  const agent = await startAgent(runtime, sidecarExtra);
  const bare = await startIdleBare(runtime.bare);
  try {
    const ready = procStat(agent.pid);
    await sleep(settle * 1000);
    const mark = agent.logMark();
    const before = procStat(agent.pid);
    await sleep(seconds * 1000);
    const after = procStat(agent.pid);
    const bareAfter = procStat(bare.pid);
    const heapBytes = await agent.heapUsedBytes();
    return {
      agent: after,
      bare: bareAfter,
      settleCpuSeconds: before.cpuSeconds - ready.cpuSeconds,
      cpuSeconds: after.cpuSeconds - before.cpuSeconds,
      heapBytes,
      logLines: agent.linesSince(mark).length,
    };
  } finally {
    await agent.stop();
    await bare.stop();
  }
}

const RUNTIMES = runtimes();

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
  for (const runtime of RUNTIMES) {
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
    const idle = await idleAgent(runtime, 0, 10);
    row({
      table: "memory",
      case: `agent RSS after 10 s idle, ${runtime.label}`,
      value: mib(idle.agent.rssKiB),
      baseline: `${mib(idle.bare.rssKiB)} (idle node -e)`,
      ratio: ratio(idle.agent.rssKiB, idle.bare.rssKiB),
      note: `goal ≤ 1.5×; anonymous RSS ${mib(idle.agent.anonKiB)} vs ${mib(idle.bare.anonKiB)}; heap used ${mib(idle.heapBytes / 1024)}; no components configured; executables' page cache dropped first`,
    });
    // The first 10 s after "ready" hold V8's own clean-up after start-up (the memory reducer's full GC): reported
    // apart, the 60 s measured after them.
    const certs = await idleAgent(runtime, 10, 60, withCertificate);
    row({
      table: "idle",
      case: `agent CPU over 60 s idle, valid certificate, ${runtime.label}`,
      value: `${certs.cpuSeconds.toFixed(2)} s`,
      note: `goal ≤ 0.05 s; from 10 s after the agent's "ready" status (the 10 s before: ${certs.settleCpuSeconds.toFixed(2)} s); /proc/<pid>/stat has 10 ms resolution; RSS ${mib(certs.agent.rssKiB)} (${ratio(certs.agent.rssKiB, certs.bare.rssKiB)} the idle runtime's ${mib(certs.bare.rssKiB)}), heap used ${mib(certs.heapBytes / 1024)}`,
    });
    row({
      table: "idle",
      case: `agent log lines over 60 s idle, valid certificate, ${runtime.label}`,
      value: `${certs.logLines}`,
      note: "goal: 0 (a quiet journal); level info, as systemd runs it",
    });
  }
} finally {
  await fixture.close();
}
