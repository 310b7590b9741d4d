/**
 * The Envoy component inside the real agent (the built CLI as a subprocess, under a stand-in notify socket): READY=1
 * only once Envoy is ready, STATUS= and /healthz/ready and /metrics reflect it, SIGHUP with a changed Envoy setting
 * hot-restarts, SIGTERM drains and stops it — and when the agent is SIGKILLed, no stand-in survives it.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { freePort } from "../support/net.js";
import { NotifySocket } from "../support/notify-socket.js";
import { startPilotXds } from "../../src/devplane/pilot-xds.js";
import { ObjectStore } from "../../src/devplane/store.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Agent {
  child: ChildProcess;
  notify: NotifySocket;
  root: string;
  records: string;
  statusPort: number;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function standInPids(agent: Agent): number[] {
  return readdirSync(agent.records)
    .filter((n) => /^\d+\.json$/.test(n))
    .map((n) => Number(n.slice(0, -5)));
}

async function startAgent(): Promise<Agent> {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-envoy-agent-"));
  const records = join(root, "records");
  const shm = join(root, "dev/shm");
  for (const d of [records, shm, join(root, "etc/certs"), join(root, "var/lib/istio/envoy")]) {
    mkdirSync(d, { recursive: true });
  }
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  for (const f of ["cert-chain.pem", "key.pem", "root-cert.pem"]) writeFileSync(join(root, "etc/certs", f), f);
  const statusPort = await freePort();
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  // istiod (plain text, 15010-style): the agent's xDS proxy is ready once it answered the stand-in's CDS and LDS.
  const pilot = await startPilotXds({ store: new ObjectStore() });
  writeFileSync(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    [
      "ISTIO_SVC_IP=10.0.0.5",
      // Envoy alone: interception is never applied in the machine's own network namespace.
      "ISTIO_AGENT_COMPONENTS=envoy",
      `STATUS_PORT=${statusPort}`,
      `ENVOY_BINARY=${FAKE_ENVOY}`,
      `ENVOY_ADMIN_PORT=${await freePort()}`,
      "ENVOY_STATS_PORT=0",
      "ENVOY_STATUS_PORT=0",
      "ENVOY_USER=root",
      "ENVOY_DRAIN_DURATION=1s",
      // Long enough that both epochs are alive after a hot restart, when the agent gets SIGKILLed.
      "ENVOY_PARENT_SHUTDOWN_DURATION=60s",
      "ENVOY_LOG_LEVEL=info",
      "CONTROL_PLANE_AUTH_POLICY=NONE",
      `DISCOVERY_ADDRESS=${pilot.address}`,
      "",
    ].join("\n"),
  );
  const notify = new NotifySocket(join(root, "notify.sock"));
  const child = spawn(process.execPath, [CLI, "agent"], {
    env: {
      PATH: process.env["PATH"],
      ISTIO_VM_ROOT: root,
      NOTIFY_SOCKET: notify.path,
      FAKE_ENVOY_SOCKET_DIR: shm,
      FAKE_ENVOY_RECORD_DIR: records,
      FAKE_ENVOY_LISTEN: `127.0.0.1:${await freePort()}`,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => {
      resolve({ code, signal });
    });
  });
  const agent: Agent = { child, notify, root, records, statusPort, stderr: () => stderr, exit };
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    for (const pid of standInPids(agent)) if (alive(pid)) process.kill(pid, "SIGKILL");
    notify.close();
    rmSync(root, { recursive: true, force: true });
    return pilot.close();
  });
  return agent;
}

async function statusGet(agent: Agent, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${agent.statusPort}${path}`);
  return { status: res.status, body: await res.text() };
}

describe("the agent's Envoy component", () => {
  it("STATUS ready: once Envoy is ready; SIGHUP with a new Envoy setting hot-restarts; SIGKILL of the agent leaves no Envoy", async () => {
    const agent = await startAgent();
    await agent.notify.waitFor("READY", "1");
    const ready = await agent.notify.waitForStatus(/^ready: /);
    const [epoch0] = standInPids(agent);
    expect(epoch0).toBeDefined();
    expect(ready["STATUS"]).toMatch(/^ready: .*envoy epoch 0 \(pid \d+\) ready/);
    expect((await statusGet(agent, "/healthz/ready")).status).toBe(200);
    const metrics = (await statusGet(agent, "/metrics")).body;
    expect(metrics).toMatch(/^istio_vm_envoy_epoch 0$/m);
    expect(metrics).toMatch(/^istio_vm_envoy_ready 1$/m);

    // A changed Envoy log level changes the command line: SIGHUP makes epoch 1.
    const sidecar = join(agent.root, "var/lib/istio/envoy/sidecar.env");
    writeFileSync(sidecar, readFileSync(sidecar, "utf8").replace("ENVOY_LOG_LEVEL=info", "ENVOY_LOG_LEVEL=debug"));
    const before = agent.notify.messages.length;
    agent.child.kill("SIGHUP");
    await agent.notify.waitFor("READY", "1", before);
    await until("epoch 1 running", () => standInPids(agent).length === 2);
    for (;;) {
      const m = (await statusGet(agent, "/metrics")).body;
      if (/^istio_vm_envoy_epoch 1$/m.test(m) && /^istio_vm_envoy_ready 1$/m.test(m)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const pids = standInPids(agent);
    expect(pids.filter(alive)).toHaveLength(2); // the parent waits out its parent-shutdown time

    agent.child.kill("SIGKILL");
    await agent.exit;
    // The watchdog sees the agent's end and ends both process groups.
    await until("no stand-in left", () => pids.every((pid) => !alive(pid)), 15_000);
  });

  it("SIGTERM: the agent drains and stops Envoy, then exits 0", async () => {
    const agent = await startAgent();
    await agent.notify.waitForStatus(/^ready: /);
    const pids = standInPids(agent);
    agent.child.kill("SIGTERM");
    expect((await agent.exit).code).toBe(0);
    expect(pids.filter(alive)).toEqual([]);
    expect(agent.stderr()).toContain("draining Envoy's listeners");
    expect(readdirSync(join(agent.root, "etc/istio/proxy"))).toEqual([]);
  });
});
