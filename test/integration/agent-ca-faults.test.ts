/**
 * The agent's certificate loop against CA faults the way they happen, with real processes over a real network: a
 * "CA" network namespace runs `istio-vm dev --profile istiod` (its CA on 127.0.0.1:15012 there) behind a forwarding
 * process on the namespace's veth address, and a "VM" namespace runs the built `istio-vm agent` (certificates only)
 * with short-lived certificates (12 s, the dev CA's ISTIO_VM_DEV_CA_DEFAULT_TTL; renewal 6 s before NotAfter). Faults: the process serving the CA's
 * port killed (SIGKILL) and started again; the port refusing (iptables REJECT with a TCP reset); the CA black-holed
 * (iptables DROP: SYNs vanish). Each lasts across the certificate's NotAfter and ends; at each stage STATUS= and
 * /healthz/ready are checked, and after recovery the next attempt renews. Also: the CA unreachable when the agent
 * starts, READY=1 all the same, and `istio-vm check --wait` as the way to wait for the mesh.
 *
 * Rules are applied only inside the CA namespace; nothing changes in the machine's own namespace. Namespaces, veth
 * and every process are removed afterwards, also on failure.
 */
import type { ChildProcess } from "node:child_process";
import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { NotifySocket } from "../support/notify-socket.js";
import { requirements } from "../support/requirements.js";

const missing = requirements({ root: true, tools: ["ip", "iptables", "curl"] });

const id = randomBytes(3).toString("hex");
const CA_NS = `cafc-${id}`;
const VM_NS = `cafv-${id}`;
const SUBNET = `10.252.${(parseInt(id.slice(0, 2), 16) % 250) + 1}`;
const CA_IP = `${SUBNET}.1`;
const VM_IP = `${SUBNET}.2`;
const CA_PORT = 15012;
const STATUS_PORT = 15020;
const FORWARDER = new URL("../fixtures/tcp-forward.mjs", import.meta.url).pathname;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function tryRun(command: string, args: readonly string[]): void {
  try {
    run(command, args);
  } catch {
    // cleanup: best effort
  }
}

function runIn(ns: string, command: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      "ip",
      ["netns", "exec", ns, command, ...args],
      { env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...env }, timeout: 120_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** Starts a long-running process inside a namespace; resolves once its stdout contains `readyText`. */
async function startIn(
  ns: string,
  args: readonly string[],
  readyText: string,
  env: NodeJS.ProcessEnv = {},
): Promise<ChildProcess> {
  const child = spawn("ip", ["netns", "exec", ns, ...args], {
    env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${args.join(" ")} did not get ready: ${out}\n${err}`));
    }, 90_000);
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes(readyText)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${args.join(" ")} exited ${String(code)}: ${err}`));
    });
  });
  return child;
}

async function stopProcess(child: ChildProcess | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface Agent {
  readonly child: ChildProcess;
  readonly notify: NotifySocket;
  readonly root: string;
  stderr(): string;
}

describe.skipIf(missing !== undefined)("the agent's certificates against CA faults (istio-vm dev in a netns)", () => {
  const dir = mkdtempSync(join(tmpdir(), "istio-vm-ca-faults-"));
  const kubeconfig = join(dir, "kubeconfig");
  const bootstrap = join(dir, "bootstrap");
  let dev: ChildProcess | undefined;
  let forwarder: ChildProcess | undefined;
  let agent: Agent | undefined;

  const startForwarder = async (): Promise<void> => {
    forwarder = await startIn(
      CA_NS,
      [process.execPath, FORWARDER, CA_IP, String(CA_PORT), "127.0.0.1", String(CA_PORT)],
      "listening",
    );
  };

  const iptables = async (...args: string[]): Promise<void> => {
    const r = await runIn(CA_NS, "iptables", ["-w", ...args]);
    expect(r.code, r.stderr).toBe(0);
  };

  const faults = {
    killed: {
      apply: async () => {
        await stopProcess(forwarder, "SIGKILL");
      },
      clear: startForwarder,
    },
    refusing: {
      apply: () =>
        iptables("-I", "INPUT", "-p", "tcp", "--dport", String(CA_PORT), "-j", "REJECT", "--reject-with", "tcp-reset"),
      clear: () =>
        iptables("-D", "INPUT", "-p", "tcp", "--dport", String(CA_PORT), "-j", "REJECT", "--reject-with", "tcp-reset"),
    },
    "black-holed": {
      apply: () => iptables("-I", "INPUT", "-p", "tcp", "--dport", String(CA_PORT), "-j", "DROP"),
      clear: () => iptables("-D", "INPUT", "-p", "tcp", "--dport", String(CA_PORT), "-j", "DROP"),
    },
  } as const;

  const readiness = async (): Promise<{ status: number; body: string }> => {
    const r = await runIn(VM_NS, "curl", [
      "-sS",
      "-w",
      "\n%{http_code}",
      `http://127.0.0.1:${STATUS_PORT}/healthz/ready`,
    ]);
    const lines = r.stdout.trimEnd().split("\n");
    return { status: Number(lines.pop()), body: lines.join("\n") };
  };

  const metrics = async (): Promise<string> =>
    (await runIn(VM_NS, "curl", ["-sS", `http://127.0.0.1:${STATUS_PORT}/metrics`])).stdout;

  const startAgent = (): Agent => {
    const root = mkdtempSync(join(dir, "vm-"));
    for (const d of ["var/lib/istio/envoy", "var/lib/istio/tokens", "etc/certs"]) {
      mkdirSync(join(root, d), { recursive: true });
    }
    copyFileSync(join(bootstrap, "root-cert.pem"), join(root, "etc/certs/root-cert.pem"));
    copyFileSync(join(bootstrap, "istio-token"), join(root, "var/lib/istio/tokens/istio-token"));
    writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_CONTROL_PLANE=istiod\n");
    writeFileSync(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      [
        `ISTIO_SVC_IP=${VM_IP}`,
        "ISTIO_AGENT_COMPONENTS=certificates",
        `CA_ADDR=${CA_IP}:${CA_PORT}`,
        "CA_CALL_TIMEOUT=2s",
        // No lifetime requested: the dev CA's default, 12 s (below SECRET_TTL's 1m minimum). The CA backdates
        // NotBefore by 60 s, so the lifetime is 72 s and 0.0834 of it (6 s) is left at renewal.
        "SECRET_TTL=0",
        "SECRET_GRACE_PERIOD_RATIO=0.0834",
        "SECRET_GRACE_PERIOD_RATIO_JITTER=0",
        `STATUS_PORT=${STATUS_PORT}`,
        "",
      ].join("\n"),
    );
    const notify = new NotifySocket(join(root, "notify.sock"));
    const child = spawn("ip", ["netns", "exec", VM_NS, process.execPath, CLI, "agent"], {
      env: {
        PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin",
        ISTIO_VM_ROOT: root,
        NOTIFY_SOCKET: notify.path,
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    agent = { child, notify, root, stderr: () => stderr };
    return agent;
  };

  /** The next STATUS= (after message `since`) matching `pattern`; fails with what was sent instead of hanging. */
  const status = async (a: Agent, pattern: RegExp, since = 0, timeoutMs = 60_000): Promise<number> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = a.notify.messages.findIndex((m, n) => n >= since && pattern.test(m["STATUS"] ?? ""));
      if (index >= 0) return index;
      if (Date.now() > deadline || a.child.exitCode !== null) {
        throw new Error(
          `no STATUS= matching ${String(pattern)}:\n${a.notify.messages
            .slice(since)
            .map((m) => m["STATUS"] ?? JSON.stringify(m))
            .join("\n")}\n--- agent\n${a.stderr()}`,
        );
      }
      await sleep(100);
    }
  };

  beforeAll(async () => {
    try {
      run("ip", ["netns", "add", CA_NS]);
      run("ip", ["netns", "add", VM_NS]);
      run("ip", ["link", "add", `fc${id}`, "type", "veth", "peer", "name", `fv${id}`]);
      run("ip", ["link", "set", `fc${id}`, "netns", CA_NS]);
      run("ip", ["link", "set", `fv${id}`, "netns", VM_NS]);
      run("ip", ["-n", CA_NS, "addr", "add", `${CA_IP}/24`, "dev", `fc${id}`]);
      run("ip", ["-n", VM_NS, "addr", "add", `${VM_IP}/24`, "dev", `fv${id}`]);
      for (const [ns, device] of [
        [CA_NS, `fc${id}`],
        [VM_NS, `fv${id}`],
      ] as const) {
        run("ip", ["-n", ns, "link", "set", "lo", "up"]);
        run("ip", ["-n", ns, "link", "set", device, "up"]);
      }
      dev = await startIn(
        CA_NS,
        [
          process.execPath,
          CLI,
          "dev",
          "--profile",
          "istiod",
          "--listen",
          "127.0.0.1",
          "--port",
          "0",
          "--service-port",
          `ca=${CA_PORT}`,
          "--write-kubeconfig",
          kubeconfig,
          "--json",
        ],
        '"ready":true',
        { ISTIO_VM_DEV_CA_DEFAULT_TTL: "12s", HOME: dir },
      );
      await startForwarder();
      // The admin side: root-cert.pem and the service-account token from the cluster.
      const certs = await runIn(CA_NS, process.execPath, [CLI, "certs", "default", "default", "-o", bootstrap], {
        KUBECONFIG: kubeconfig,
        HOME: dir,
      });
      expect(certs.code, certs.stderr).toBe(0);
    } catch (error) {
      await cleanup();
      throw error;
    }
  }, 180_000);

  afterEach(async () => {
    await stopProcess(agent?.child);
    agent?.notify.close();
    agent = undefined;
    // Every test leaves the CA reachable for the next; the rules go with the namespace at the end anyway.
    if (forwarder === undefined || forwarder.exitCode !== null || forwarder.signalCode !== null) await startForwarder();
    await runIn(CA_NS, "iptables", ["-w", "-F", "INPUT"]);
  }, 60_000);

  async function cleanup(): Promise<void> {
    await stopProcess(agent?.child);
    agent?.notify.close();
    await stopProcess(forwarder);
    await stopProcess(dev);
    tryRun("ip", ["netns", "del", VM_NS]);
    tryRun("ip", ["netns", "del", CA_NS]);
    rmSync(dir, { recursive: true, force: true });
  }

  afterAll(cleanup, 60_000);

  it("CA unreachable at start: READY=1 at once, STATUS= says what it waits for, 503; CA back: ready, 200", async () => {
    await faults.refusing.apply();
    const a = startAgent();
    const ready = await a.notify.waitFor("READY", "1");
    expect(ready["STATUS"]).toMatch(/^starting: /);
    await status(
      a,
      new RegExp(
        `^waiting for a certificate: no certificate: CA ${CA_IP}:${CA_PORT}: UNAVAILABLE: .*ECONNREFUSED.*; fix: check CA_ADDR \\(${CA_IP}:${CA_PORT}\\)`,
      ),
    );
    const waiting = await readiness();
    expect(waiting.status).toBe(503);
    expect(waiting.body).toMatch(/^not ready\ncertificates: not ready: no certificate: /);
    // Scripts wait with `istio-vm check --wait`: while the CA refuses, a short wait ends in exit 1.
    const checkEnv = { ISTIO_VM_ROOT: a.root, CA_ADDR: `${CA_IP}:${CA_PORT}` };
    const short = await runIn(VM_NS, process.execPath, [CLI, "check", "--only", "certificate", "--wait=2s"], checkEnv);
    expect(short.code, short.stdout + short.stderr).toBe(1);
    expect(short.stdout).toContain("still failing after waiting 2s");
    expect(short.stderr).toMatch(/^waiting \(\d+s left\): 1 of 1 checks failing \(certificate\)/m);

    const waitingFor = runIn(VM_NS, process.execPath, [CLI, "check", "--only", "certificate", "--wait=60s"], checkEnv);
    await faults.refusing.clear();
    await status(a, /^ready: istiod mesh, .*; cert spiffe:\/\/cluster\.local\/ns\/default\/sa\/default expires /);
    expect((await readiness()).status).toBe(200);
    const waited = await waitingFor;
    expect(waited.code, waited.stdout + waited.stderr).toBe(0);
    expect(a.stderr()).toContain("certificate renewed");
  }, 120_000);

  it.each(Object.keys(faults) as (keyof typeof faults)[])(
    "the CA %s across NotAfter and back: ready while valid, 503 once expired, renewed at the next attempt",
    async (kind) => {
      const fault = faults[kind];
      const a = startAgent();
      await status(a, /^ready: .*; cert spiffe:\/\/\S+ expires /);
      expect((await readiness()).status).toBe(200);
      const firstRenewals = (await metrics()).match(/^istio_vm_cert_renewals_total (\d+)$/m)?.[1];
      expect(firstRenewals).toBe("1");

      await fault.apply();
      // Renewal fails while the certificate is still valid: still in the mesh.
      const failing = await status(a, /^ready: .*renewal failing \((unavailable|deadline)\)/);
      expect((await readiness()).status).toBe(200);
      // NotAfter passes: not ready, and STATUS= says so with the fix.
      const expired = await status(
        a,
        new RegExp(`^degraded: .*certificate expired at \\S+: CA ${CA_IP}:${CA_PORT}: .*; fix: check CA_ADDR`),
        failing,
      );
      const down = await readiness();
      expect(down.status).toBe(503);
      expect(down.body).toMatch(/certificates: not ready: certificate expired at /);
      const expiry = (await metrics()).match(/^istio_vm_cert_expiry_seconds (\S+)$/m)?.[1];
      expect(Number(expiry)).toBeLessThanOrEqual(0);

      const failuresBefore = a.stderr().split("certificate renewal failed").length - 1;
      await fault.clear();
      await status(a, /^ready: .*; cert spiffe:\/\/\S+ expires /, expired);
      expect((await readiness()).status).toBe(200);
      // Within one backoff step of recovery: at most the attempt already under way when the fault ended failed.
      const failuresAfter = a.stderr().split("certificate renewal failed").length - 1;
      expect(failuresAfter - failuresBefore).toBeLessThanOrEqual(1);
      const text = await metrics();
      expect(text).toMatch(/^istio_vm_cert_renewals_total 2$/m);
      expect(text).toMatch(
        kind === "black-holed"
          ? /^istio_vm_cert_renewal_failures_total\{reason="(deadline|unavailable)"\} \d+$/m
          : /^istio_vm_cert_renewal_failures_total\{reason="unavailable"\} \d+$/m,
      );
    },
    120_000,
  );
});
