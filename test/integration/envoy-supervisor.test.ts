/**
 * The Envoy supervisor with real processes: the stand-in (test/fixtures/fake-envoy.mjs) started through the real
 * process-group spawner, its admin spoken to over HTTP on 127.0.0.1, hot restarts between real processes.
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { bootstrapPath } from "../../src/envoy/bootstrap.js";
import type { SupervisorOptions } from "../../src/envoy/supervisor.js";
import { EnvoySupervisor } from "../../src/envoy/supervisor.js";
import { createChildSpawner } from "../../src/platform/child.js";
import { systemClock } from "../../src/platform/clock.js";
import { nodeFileSystem } from "../../src/platform/fs.js";
import { nodeHttpClient } from "../../src/platform/http.js";
import { createLogger } from "../../src/platform/logger.js";
import { freePort } from "../support/net.js";
import { requirements } from "../support/requirements.js";
import { systemUsers } from "../../src/platform/users.js";
import { nodeProcessRunner } from "../../src/platform/process.js";
import { nodeLinkFileSystem } from "../../src/platform/links.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));

interface Record {
  pid: number;
  pgid: number;
  uid: number;
  gid: number;
  epoch: number;
  argv: string[];
}

interface Vm {
  root: string;
  records: string;
  shm: string;
  control: string;
  adminPort: number;
  lines: string[];
  supervisor: EnvoySupervisor;
  fatal: Error[];
  certs: string;
  proxyDir: string;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is dead for our purpose (its parent has not reaped it yet).
  try {
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

function records(vm: Vm): Record[] {
  return readdirSync(vm.records)
    .filter((n) => /^\d+\.json$/.test(n))
    .map((n) => JSON.parse(readFileSync(join(vm.records, n), "utf8")) as Record)
    .sort((a, b) => a.pid - b.pid);
}

function exitRecord(vm: Vm, pid: number): { code: number; reason: string } | undefined {
  const path = join(vm.records, `${pid}.exit.json`);
  return existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as { code: number; reason: string }) : undefined;
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

async function adminGet(vm: Vm, path: string): Promise<{ status: number; body: string }> {
  const res = await nodeHttpClient.request({ url: `http://127.0.0.1:${vm.adminPort}${path}`, timeoutMs: 2000 });
  return { status: res.status, body: res.body.toString("utf8") };
}

/** The legacy profile keeps certificate files and hot restart; the default (istiod) serves them over SDS. */
const LEGACY = "ISTIO_CONTROL_PLANE=legacy\n";

function writeCerts(dir: string, serial: string): void {
  writeFileSync(join(dir, "cert-chain.pem"), `chain ${serial}\n`);
  writeFileSync(join(dir, "key.pem"), `key ${serial}\n`, { mode: 0o600 });
  writeFileSync(join(dir, "root-cert.pem"), "root\n");
}

async function makeVm(
  options: { sidecar?: string; cluster?: string; tuning?: Partial<SupervisorOptions>; world?: boolean } = {},
): Promise<Vm> {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-envoy-"));
  const records = join(root, "records");
  const shm = join(root, "dev/shm");
  const certs = join(root, "etc/certs");
  const proxyDir = join(root, "etc/istio/proxy");
  for (const d of [records, shm, certs, join(root, "var/lib/istio/envoy"), join(root, "etc")]) {
    mkdirSync(d, { recursive: true });
  }
  if (options.world === true) {
    // The stand-in runs as nobody: it must reach the bootstrap and write its records and sockets.
    for (const d of [root, join(root, "etc"), join(root, "dev")]) chmodSync(d, 0o755);
    chmodSync(records, 0o1777);
    chmodSync(shm, 0o1777);
  }
  writeFileSync(
    join(root, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
  );
  writeCerts(certs, "1");
  if (options.cluster !== undefined) writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), options.cluster);
  const control = join(root, "control.json");
  writeFileSync(control, "{}");
  chmodSync(control, 0o644);
  const adminPort = await freePort();
  const capturePort = await freePort();
  writeFileSync(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    [
      "ISTIO_SVC_IP=10.0.0.5",
      `ENVOY_BINARY=${FAKE_ENVOY}`,
      `ENVOY_ADMIN_PORT=${adminPort}`,
      "ENVOY_STATS_PORT=0",
      "ENVOY_STATUS_PORT=0",
      "ENVOY_USER=root",
      "ENVOY_DRAIN_DURATION=1s",
      "ENVOY_PARENT_SHUTDOWN_DURATION=2s",
      "ENVOY_LOG_LEVEL=info",
      options.sidecar ?? "",
    ].join("\n"),
  );
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: root }, fs: nodeFileSystem });
  expect(loaded.problems).toEqual([]);
  const lines: string[] = [];
  const fatal: Error[] = [];
  const supervisor = new EnvoySupervisor({
    config: loaded.values,
    extraMetadata: {},
    hostname: "vm-1",
    fs: nodeFileSystem,
    links: nodeLinkFileSystem,
    users: systemUsers({ ISTIO_VM_ROOT: root }, nodeFileSystem, nodeProcessRunner),
    spawner: createChildSpawner(),
    http: nodeHttpClient,
    clock: systemClock,
    logger: createLogger({ level: "debug", format: "journal", write: (l) => lines.push(l) }),
    env: {
      PATH: process.env["PATH"],
      FAKE_ENVOY_SOCKET_DIR: shm,
      FAKE_ENVOY_RECORD_DIR: records,
      FAKE_ENVOY_CONTROL: control,
      FAKE_ENVOY_LISTEN: `127.0.0.1:${capturePort}`,
      NOTIFY_SOCKET: "/must/not/reach/envoy",
    },
    uid: process.getuid?.() ?? 0,
    debounceMs: 100,
    certPollMs: 0,
    readyPollMs: 50,
    killTimeoutMs: 1000,
    policy: { baseDelayMs: 50, maxDelayMs: 400, budget: 4, windowMs: 60_000 },
    onFatal: (e) => fatal.push(e),
    ...options.tuning,
  });
  const vm: Vm = { root, records, shm, control, adminPort, lines, supervisor, fatal, certs, proxyDir };
  cleanups.push(async () => {
    await supervisor.stop();
    // Whatever a failed test left: only the stand-ins this test started (their pids are in its records).
    for (const r of records.length === 0 ? [] : readdirSync(records).filter((n) => /^\d+\.json$/.test(n))) {
      const pid = Number(r.slice(0, -5));
      if (alive(pid)) process.kill(pid, "SIGKILL");
    }
    rmSync(root, { recursive: true, force: true });
  });
  return vm;
}

function control(vm: Vm, value: unknown): void {
  writeFileSync(vm.control, JSON.stringify(value));
}

describe("Envoy supervisor with the stand-in", () => {
  it("starts epoch 0 in its own process group with Envoy's flags, ready on /ready, bootstrap 0600", async () => {
    const vm = await makeVm();
    await vm.supervisor.start(new AbortController().signal);
    expect(vm.supervisor.status()).toMatchObject({ state: "running", epoch: 0, ready: true, epochsRunning: 1 });
    expect(await adminGet(vm, "/ready")).toEqual({ status: 200, body: "LIVE\n" });
    const [record] = records(vm);
    expect(record?.pgid).toBe(record?.pid);
    expect(record?.pgid).not.toBe(process.pid);
    const path = bootstrapPath(vm.proxyDir, 0);
    // istiod profile: no --service-cluster; Envoy takes node.cluster from the bootstrap (Istio's rule).
    expect(record?.argv.slice(0, 12)).toEqual([
      "-c",
      path,
      "--restart-epoch",
      "0",
      "--drain-time-s",
      "1",
      "--parent-shutdown-time-s",
      "2",
      "--service-node",
      "sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local",
      "--base-id",
      "0",
    ]);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const info = JSON.parse((await adminGet(vm, "/server_info")).body) as { node: { id: string; cluster: string } };
    expect(info.node.id).toBe("sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local");
    expect(info.node.cluster).toBe("istio-proxy.default");
    // Envoy's output reaches the agent's log tagged with its epoch, at the priority of its level.
    expect(vm.lines.some((l) => l.startsWith("<6>envoy[epoch 0]: [info][main]"))).toBe(true);
  });

  it("istiod profile: new certificates (event or files) start no epoch: Envoy gets them over SDS", async () => {
    const vm = await makeVm({ tuning: { certPollMs: 100 } });
    await vm.supervisor.start(new AbortController().signal);
    const [first] = records(vm);
    writeCerts(vm.certs, "2");
    vm.supervisor.certificatesChanged();
    // Several poll periods: the files changed on disk and were announced, and still nothing restarts.
    await new Promise((r) => setTimeout(r, 600));
    expect(vm.supervisor.status()).toMatchObject({ epoch: 0, restarts: 0, epochsRunning: 1 });
    expect(records(vm).map((r) => r.pid)).toEqual([first?.pid]);
  });

  it("legacy: new certificates: epoch 1 starts, takes over, and epoch 0 exits with its bootstrap deleted", async () => {
    const vm = await makeVm({ cluster: LEGACY });
    await vm.supervisor.start(new AbortController().signal);
    const [first] = records(vm);
    // An event with unchanged files restarts nothing.
    vm.supervisor.certificatesChanged();
    await new Promise((r) => setTimeout(r, 400));
    expect(vm.supervisor.status().epoch).toBe(0);

    writeCerts(vm.certs, "2");
    vm.supervisor.certificatesChanged();
    vm.supervisor.certificatesChanged();
    await until("epoch 1 ready", () => vm.supervisor.status().epoch === 1 && vm.supervisor.status().ready);
    const info = JSON.parse((await adminGet(vm, "/server_info")).body) as {
      command_line_options: { restart_epoch: number };
    };
    expect(info.command_line_options.restart_epoch).toBe(1);
    await until("epoch 0 gone", () => first !== undefined && !alive(first.pid));
    expect(exitRecord(vm, first?.pid ?? 0)?.reason).toBe("terminated by epoch 1 (hot restart)");
    await until("epoch 0's record removed", () => vm.supervisor.status().epochsRunning === 1);
    expect(existsSync(bootstrapPath(vm.proxyDir, 0))).toBe(false);
    expect(existsSync(bootstrapPath(vm.proxyDir, 1))).toBe(true);
    expect(records(vm).map((r) => r.epoch)).toEqual([0, 1]);
    expect(vm.supervisor.status().restarts).toBe(1);
  });

  it("legacy: notices certificate files changed on disk without an event (polling)", async () => {
    const vm = await makeVm({ tuning: { certPollMs: 100 }, cluster: LEGACY });
    await vm.supervisor.start(new AbortController().signal);
    writeCerts(vm.certs, "3");
    await until("epoch 1 ready", () => vm.supervisor.status().epoch === 1 && vm.supervisor.status().ready);
  });

  it("a crash aborts every epoch and restarts from epoch 0 after a backoff, reported in status", async () => {
    const vm = await makeVm();
    await vm.supervisor.start(new AbortController().signal);
    const [first] = records(vm);
    control(vm, { crashPids: [first?.pid] });
    await until("a failure reported", () => vm.supervisor.status().recentFailures === 1);
    expect(vm.supervisor.status().lastError).toContain("signal SIGSEGV");
    await until("a new epoch 0 ready", () => {
      const s = vm.supervisor.status();
      return s.ready && s.epoch === 0 && s.pid !== first?.pid;
    });
    expect(records(vm).map((r) => r.epoch)).toEqual([0, 0]);
    expect(vm.lines.join("")).toContain("restarting Envoy from epoch 0 in 50 ms");
    expect(vm.fatal).toEqual([]);
  });

  it("gives up after the failure budget: start rejects, the fatal hook fires, nothing is left running", async () => {
    const vm = await makeVm();
    control(vm, { epochs: { "*": { exitOnStart: 1 } } });
    await expect(vm.supervisor.start(new AbortController().signal)).rejects.toMatchObject({ code: "ENVOY_FAILED" });
    expect(vm.fatal).toHaveLength(1);
    expect(vm.supervisor.status().state).toBe("failed");
    expect(records(vm)).toHaveLength(4);
    expect(records(vm).filter((r) => alive(r.pid))).toEqual([]);
  });

  it("refuses to start without an Envoy executable, saying where it looked", async () => {
    const vm = await makeVm({ sidecar: "ENVOY_BINARY=/nonexistent/envoy" });
    await expect(vm.supervisor.start(new AbortController().signal)).rejects.toMatchObject({
      code: "ENVOY_NOT_FOUND",
      subject: "/nonexistent/envoy",
    });
    expect(records(vm)).toEqual([]);
  });

  it("stop drains the listeners first, then SIGTERM; the bootstrap files go", async () => {
    const vm = await makeVm();
    await vm.supervisor.start(new AbortController().signal);
    const [first] = records(vm);
    await vm.supervisor.stop();
    expect(alive(first?.pid ?? 0)).toBe(false);
    const text = vm.lines.join("");
    const drained = text.indexOf("draining listeners gracefully for 1s");
    const terminated = text.indexOf("caught SIGTERM");
    expect(drained).toBeGreaterThan(0);
    expect(terminated).toBeGreaterThan(drained);
    expect(exitRecord(vm, first?.pid ?? 0)?.reason).toBe("SIGTERM");
    expect(readdirSync(vm.proxyDir)).toEqual([]);
  });

  it("an Envoy that ignores SIGTERM is SIGKILLed after the timeout", async () => {
    const vm = await makeVm();
    control(vm, { epochs: { "*": { ignoreSigterm: true } } });
    await vm.supervisor.start(new AbortController().signal);
    const [first] = records(vm);
    await vm.supervisor.stop();
    expect(alive(first?.pid ?? 0)).toBe(false);
    expect(exitRecord(vm, first?.pid ?? 0)).toBeUndefined();
    expect(vm.lines.join("")).toContain("Epoch 0 ignored SIGTERM for 1000 ms; killed");
  });

  it("a readiness failure keeps the supervisor waiting, then ready once /ready turns 200", async () => {
    const vm = await makeVm();
    control(vm, { epochs: { "*": { notReady: true } } });
    let ready = false;
    const started = vm.supervisor.start(new AbortController().signal).then(() => (ready = true));
    await until("the stand-in's admin up", () => records(vm).length === 1);
    await until("admin answering", () => vm.lines.some((l) => l.includes("admin address")));
    expect((await adminGet(vm, "/ready")).status).toBe(503);
    expect(ready).toBe(false);
    expect(vm.supervisor.status().ready).toBe(false);
    control(vm, {});
    await started;
    expect(vm.supervisor.status().ready).toBe(true);
  });

  async function staleEnvoy(vm: Vm, serviceNode: string): Promise<{ exit: Promise<unknown>; running: () => boolean }> {
    // A previous run's Envoy (or somebody else's), not started by this supervisor, on the same admin port.
    const staleBootstrap = join(vm.root, "stale.json");
    writeFileSync(
      staleBootstrap,
      JSON.stringify({ admin: { address: { socket_address: { address: "127.0.0.1", port_value: vm.adminPort } } } }),
    );
    const { spawn } = await import("node:child_process");
    const stale = spawn(FAKE_ENVOY, ["-c", staleBootstrap, "--base-id", "7", "--service-node", serviceNode], {
      env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: vm.shm, FAKE_ENVOY_RECORD_DIR: vm.records },
      stdio: "ignore",
    });
    cleanups.push(() => {
      if (stale.exitCode === null && stale.signalCode === null) stale.kill("SIGKILL");
    });
    const exit = new Promise((r) => stale.on("exit", r));
    await until("stale admin up", () => records(vm).length === 1);
    for (;;) {
      try {
        await adminGet(vm, "/ready");
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    return { exit, running: () => stale.exitCode === null && stale.signalCode === null };
  }

  it("asks an Envoy of this VM's left holding the admin port to quit before epoch 0", async () => {
    const vm = await makeVm();
    const stale = await staleEnvoy(vm, "sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local");
    await vm.supervisor.start(new AbortController().signal);
    await stale.exit;
    expect(vm.lines.join("")).toContain("an Envoy left over from an earlier run holds the admin port");
    const info = JSON.parse((await adminGet(vm, "/server_info")).body) as { command_line_options: { base_id: string } };
    expect(info.command_line_options.base_id).toBe("0");
  });

  it("leaves somebody else's Envoy on the admin port alone and fails with ENVOY_ADMIN_PORT_BUSY", async () => {
    const vm = await makeVm({ tuning: { policy: { baseDelayMs: 10, maxDelayMs: 10, budget: 2, windowMs: 60_000 } } });
    const stale = await staleEnvoy(vm, "router~10.9.9.9~edge.gw~gw.svc.cluster.local");
    await expect(vm.supervisor.start(new AbortController().signal)).rejects.toMatchObject({ code: "ENVOY_FAILED" });
    expect(vm.supervisor.status().lastError).toContain("an Envoy that is not this VM's holds 127.0.0.1:");
    expect(stale.running()).toBe(true);
  });

  const asRoot = requirements({ root: true });
  it.skipIf(asRoot !== undefined)(
    "runs Envoy as ENVOY_USER and removes stale shared memory of another user that would block it",
    async () => {
      const vm = await makeVm({ sidecar: "ENVOY_USER=nobody", world: true });
      // root's leftover region in a sticky directory: nobody can neither remove nor reopen it (#809).
      const stale = join(vm.shm, "envoy_shared_memory_0");
      writeFileSync(stale, "");
      chownSync(stale, 0, 0);
      // Another Envoy's region (base id 7), which is none of this agent's business.
      const other = join(vm.shm, "envoy_shared_memory_70");
      writeFileSync(other, "");
      await vm.supervisor.start(new AbortController().signal);
      const [record] = records(vm);
      expect(record).toMatchObject({ uid: 65534, gid: 65534 });
      expect(statSync(stale).uid).toBe(65534);
      expect(statSync(bootstrapPath(vm.proxyDir, 0)).uid).toBe(65534);
      expect(vm.lines.join("")).toContain("removed stale Envoy shared memory owned by another user");
      expect(statSync(other).uid).toBe(0);
    },
  );
});
