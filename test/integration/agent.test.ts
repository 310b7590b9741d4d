import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { freePort } from "../support/net.js";
import { NotifySocket } from "../support/notify-socket.js";

interface Running {
  child: ChildProcess;
  notify: NotifySocket;
  stderr: () => string;
  exit: Promise<number | null>;
}

/**
 * The agent's frame alone: these runs happen in the machine's own network namespace, where capture must never be
 * applied; the components are tested in their own suites (interception inside namespaces the tests create).
 */
const FRAME_ONLY = "ISTIO_AGENT_COMPONENTS=\n";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

function vmRoot(sidecar: string): string {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-agent-"));
  cleanups.push(() => {
    rmSync(root, { recursive: true, force: true });
  });
  mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(join(root, "var/lib/istio/envoy/sidecar.env"), sidecar);
  return root;
}

function startAgent(root: string, extraEnv: NodeJS.ProcessEnv = {}): Running {
  const notify = new NotifySocket(join(root, "notify.sock"));
  const child = spawn(process.execPath, [CLI, "agent"], {
    env: {
      PATH: process.env["PATH"],
      ISTIO_VM_ROOT: root,
      NOTIFY_SOCKET: notify.path,
      ...extraEnv,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<number | null>((resolve) => {
    child.on("exit", (code) => {
      resolve(code);
    });
  });
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    notify.close();
  });
  return { child, notify, stderr: () => stderr, exit };
}

describe("istio-vm agent (the built CLI, a real notify socket)", () => {
  it("READY, STATUS, WATCHDOG, health, RELOADING on SIGHUP, STOPPING on SIGTERM, exit 0", async () => {
    const port = await freePort();
    const root = vmRoot(`ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n${FRAME_ONLY}`);
    const agent = startAgent(root, { WATCHDOG_USEC: "200000" });

    await agent.notify.waitFor("READY", "1");
    const ready = await agent.notify.waitForStatus(/^ready: /);
    expect(ready["STATUS"]).toBe("ready: istiod mesh, VM 10.0.0.5 as spiffe://cluster.local/ns/default/sa/default");
    await agent.notify.waitFor("WATCHDOG", "1");

    const health = await fetch(`http://127.0.0.1:${port}/healthz/ready`);
    expect(health.status).toBe(200);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toContain("# TYPE istio_vm_agent_ready gauge");
    expect(metrics).toContain("istio_vm_agent_ready 1");

    const mark = agent.notify.messages.length;
    agent.child.kill("SIGHUP");
    await agent.notify.waitFor("RELOADING", "1", mark);
    await agent.notify.waitFor("READY", "1", mark);

    agent.child.kill("SIGTERM");
    await agent.notify.waitFor("STOPPING", "1");
    expect(await agent.exit).toBe(0);
    expect(agent.stderr()).toContain("agent stopped exitCode=0");
  });

  it("an invalid configuration: exit 2, every problem on stderr, STATUS explains, no READY", async () => {
    const root = vmRoot("ISTIO_INBOUND_PORTS=70000\nISTIO_SVC_IP=10.0.0\n");
    const agent = startAgent(root);
    expect(await agent.exit).toBe(2);
    expect(agent.stderr()).toContain("ISTIO_INBOUND_PORTS: port 70000 is out of range (1–65535)");
    expect(agent.stderr()).toContain("ISTIO_SVC_IP: '10.0.0' is not an IP address");
    const status = await agent.notify.waitFor("STATUS");
    expect(status["STATUS"]).toMatch(/^invalid configuration: /);
    expect(agent.notify.messages.some((m) => m["READY"] !== undefined)).toBe(false);
  });

  it("a status port held by another process: exit 1 with a hint", async () => {
    const port = await freePort();
    const { createServer } = await import("node:net");
    const holder = createServer().listen(port, "127.0.0.1");
    cleanups.push(() => holder.close());
    const root = vmRoot(`ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n${FRAME_ONLY}`);
    const agent = startAgent(root);
    expect(await agent.exit).toBe(1);
    expect(agent.stderr()).toContain("cannot serve the status endpoint");
    expect(agent.stderr()).toContain("another process holds the port");
  });
});
