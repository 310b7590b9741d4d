import { beforeEach, describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { ManualSignals, RecordingNotifier } from "../../test/fakes/notifier.js";
import { systemClock } from "../platform/clock.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import type { AgentComponent, ComponentFactory } from "./component.js";
import type { AgentOptions } from "./agent.js";
import { runAgent } from "./agent.js";
import { freePort } from "../../test/support/net.js";
import { fakePorts } from "../../test/fakes/ports.js";

const CLUSTER = "/var/lib/istio/envoy/cluster.env";
const SIDECAR = "/var/lib/istio/envoy/sidecar.env";

interface Harness {
  notifier: RecordingNotifier;
  signals: ManualSignals;
  logs: string[];
  events: string[];
  fs: MemoryFileSystem;
  run: Promise<number>;
  address: Promise<string>;
}

function start(files: Record<string, string>, components: ComponentFactory[] = [], watchdogUsec?: number): Harness {
  const notifier = new RecordingNotifier(watchdogUsec);
  const signals = new ManualSignals();
  const logs: string[] = [];
  const events: string[] = [];
  const fs = new MemoryFileSystem(files);
  let setAddress: (a: string) => void = () => undefined;
  const address = new Promise<string>((resolve) => (setAddress = resolve));
  const options: AgentOptions = {
    ...fakePorts({ env: {}, fs, runner: nodeProcessRunner, clock: systemClock }),
    logger: createLogger({ level: "debug", format: "plain", write: (l) => logs.push(l) }),
    notifier,
    signals,
    components,
    version: "0.0.0-test",
    onListening: setAddress,
  };
  return { notifier, signals, logs, events, fs, run: runAgent(options), address };
}

let VALID: Record<string, string> = {};
beforeEach(async () => {
  VALID = {
    [CLUSTER]: "ISTIO_SERVICE_CIDR=10.96.0.0/12\n",
    [SIDECAR]: `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${await freePort()}\n`,
  };
});

function recording(name: string, events: string[], ready = true): ComponentFactory {
  return (): AgentComponent => ({
    name,
    start: () => {
      events.push(`start ${name}`);
      return Promise.resolve();
    },
    stop: () => {
      events.push(`stop ${name}`);
      return Promise.resolve();
    },
    reload: (config) => {
      events.push(`reload ${name} ${config.ISTIO_SVC_IP}`);
      return Promise.resolve();
    },
    status: () => ({ ready, summary: `${name} ok` }),
  });
}

describe("runAgent", () => {
  it("a bad configuration: every problem logged, STATUS says why, exit 2, nothing started", async () => {
    const events: string[] = [];
    const h = start({ [CLUSTER]: "ISTIO_CONTROL_PLANE=consul\n", [SIDECAR]: "ISTIO_INBOUND_PORTS=70000\n" }, [
      recording("certificates", events),
    ]);
    expect(await h.run).toBe(2);
    expect(events).toEqual([]);
    expect(h.logs.join("")).toContain("ISTIO_INBOUND_PORTS: port 70000 is out of range");
    expect(h.logs.join("")).toContain("ISTIO_SVC_IP: not set");
    expect(h.notifier.lastStatus()).toMatch(/^invalid configuration: .* \(and 2 more, see the journal\)$/);
    expect(h.notifier.messages.some((m) => m["READY"] !== undefined)).toBe(false);
  });

  it("READY=1 first, then the components in order; serves health and metrics, stops in reverse on SIGTERM", async () => {
    const events: string[] = [];
    const h = start(VALID, [recording("certificates", events), recording("interception", events)]);
    const first = await h.notifier.waitFor("READY", "1");
    expect(first["STATUS"]).toMatch(/^starting: /);
    const ready = await h.notifier.waitForStatus(/^ready: /);
    expect(events).toEqual(["start certificates", "start interception"]);
    expect(ready["STATUS"]).toBe(
      "ready: istiod mesh, VM 10.0.0.5 as spiffe://cluster.local/ns/default/sa/default; certificates ok; interception ok",
    );
    const base = `http://${await h.address}`;
    const health = await fetch(`${base}/healthz/ready`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe(
      "ready\ncertificates: ready: certificates ok\ninterception: ready: interception ok\n",
    );
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain('istio_vm_agent_info{version="0.0.0-test",profile="istiod"} 1');
    expect(metrics).toMatch(/^process_resident_memory_bytes \d+$/m);
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
    expect(events).toEqual(["start certificates", "start interception", "stop interception", "stop certificates"]);
    expect(h.notifier.messages.at(-1)).toEqual({ STOPPING: "1", STATUS: "stopping (SIGTERM)" });
  });

  it("health is 503 while a component is not ready, and STATUS says degraded", async () => {
    const h = start(VALID, [recording("envoy", [], false)]);
    await h.notifier.waitForStatus(/^degraded: /);
    const health = await fetch(`http://${await h.address}/healthz/ready`);
    expect(health.status).toBe(503);
    expect(await health.text()).toContain("envoy: not ready: envoy ok");
    expect(h.notifier.lastStatus()).toMatch(/^degraded: /);
    h.signals.raise("SIGINT");
    expect(await h.run).toBe(0);
  });

  it("SIGHUP: RELOADING=1, the new configuration reaches the components, READY=1 again", async () => {
    const events: string[] = [];
    const h = start(VALID, [recording("envoy", events)]);
    await h.notifier.waitFor("READY", "1");
    await h.fs.writeFileAtomic(SIDECAR, (VALID[SIDECAR] ?? "").replace("10.0.0.5", "10.0.0.6"), { mode: 0o644 });
    const before = h.notifier.messages.length;
    h.signals.raise("SIGHUP");
    await h.notifier.waitFor("RELOADING", "1");
    await expect.poll(() => h.notifier.messages.slice(before).some((m) => m["READY"] === "1")).toBe(true);
    expect(events).toContain("reload envoy 10.0.0.6");
    expect(h.notifier.lastStatus()).toContain("VM 10.0.0.6");
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
  });

  it("a reload with a broken file keeps the running configuration and says so", async () => {
    const events: string[] = [];
    const h = start(VALID, [recording("envoy", events)]);
    await h.notifier.waitFor("READY", "1");
    await h.fs.writeFileAtomic(SIDECAR, "ISTIO_SVC_IP=not-an-ip\n", { mode: 0o644 });
    const before = h.notifier.messages.length;
    h.signals.raise("SIGHUP");
    await expect.poll(() => h.notifier.messages.slice(before).some((m) => m["READY"] === "1")).toBe(true);
    expect(events).toEqual(["start envoy"]);
    expect(h.notifier.lastStatus()).toContain("reload rejected, running the previous configuration: ISTIO_SVC_IP");
    expect(h.notifier.lastStatus()).toContain("VM 10.0.0.5");
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
  });

  it("a component that fails to start: the started ones are stopped, exit 1, STATUS says why", async () => {
    const events: string[] = [];
    const failing: ComponentFactory = () => ({
      name: "interception",
      start: () => Promise.reject(new Error("iptables-restore: line 3 failed")),
      stop: () => {
        events.push("stop interception");
        return Promise.resolve();
      },
      status: () => ({ ready: false, summary: "capture failed" }),
    });
    const h = start(VALID, [recording("certificates", events), failing]);
    expect(await h.run).toBe(1);
    expect(events).toEqual(["start certificates", "stop interception", "stop certificates"]);
    expect(h.notifier.messages.filter((m) => m["STATUS"]?.startsWith("ready") === true)).toEqual([]);
    expect(
      h.notifier.messages.some((m) => /start failed: iptables-restore: line 3 failed/.test(m["STATUS"] ?? "")),
    ).toBe(true);
    expect(h.logs.join("")).toContain(
      'agent start failed component=interception error="iptables-restore: line 3 failed"',
    );
  });

  it("a fatal component error stops everything and exits 1 (systemd restarts the unit)", async () => {
    const events: string[] = [];
    let raise: (e: Error) => void = () => undefined;
    const fatal: ComponentFactory = (deps) => {
      raise = (e) => {
        deps.events.emit("fatal", e);
      };
      return recording("envoy", events)(deps);
    };
    const h = start(VALID, [fatal]);
    await h.notifier.waitForStatus(/^ready: /);
    raise(new Error("Envoy restart budget exhausted"));
    expect(await h.run).toBe(1);
    expect(events).toEqual(["start envoy", "stop envoy"]);
  });

  it("READY=1 does not wait for a component that waits (a CA down at boot): STATUS= says what for, health is 503", async () => {
    const events: string[] = [];
    let finish: () => void = () => undefined;
    let waitingSummary = "no certificate: CA 127.0.0.1:15012: UNAVAILABLE: connect ECONNREFUSED; fix: check CA_ADDR";
    const waiting: ComponentFactory = () => ({
      name: "certificates",
      start: () => {
        events.push("start certificates");
        return new Promise<void>((resolve) => {
          finish = () => {
            waitingSummary = "cert spiffe://… expires later";
            resolve();
          };
        });
      },
      stop: () => {
        events.push("stop certificates");
        return Promise.resolve();
      },
      status: () => ({ ready: waitingSummary.startsWith("cert "), summary: waitingSummary }),
    });
    const h = start(VALID, [waiting, recording("interception", events)]);
    await h.notifier.waitFor("READY", "1");
    const status = await h.notifier.waitForStatus(/^waiting for a certificate: /);
    expect(status["STATUS"]).toBe(
      "waiting for a certificate: no certificate: CA 127.0.0.1:15012: UNAVAILABLE: connect ECONNREFUSED; fix: check CA_ADDR; " +
        "istiod mesh, VM 10.0.0.5 as spiffe://cluster.local/ns/default/sa/default",
    );
    expect(events).toEqual(["start certificates"]);
    const base = `http://${await h.address}`;
    const waitingHealth = await fetch(`${base}/healthz/ready`);
    expect(waitingHealth.status).toBe(503);
    expect(await waitingHealth.text()).toBe(
      "not ready\ncertificates: not ready: no certificate: CA 127.0.0.1:15012: UNAVAILABLE: connect ECONNREFUSED; fix: check CA_ADDR\n" +
        "(the components after certificates start once it is ready)\n",
    );
    expect(await (await fetch(`${base}/metrics`)).text()).toContain("istio_vm_agent_ready 0");
    finish();
    await h.notifier.waitForStatus(/^ready: /);
    expect(events).toEqual(["start certificates", "start interception"]);
    expect((await fetch(`${base}/healthz/ready`)).status).toBe(200);
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
    expect(events).toEqual(["start certificates", "start interception", "stop interception", "stop certificates"]);
  });

  it("SIGHUP while a component waits reaches it, and the components after it start with the new configuration", async () => {
    const events: string[] = [];
    let finish: () => void = () => undefined;
    const waiting: ComponentFactory = () => ({
      name: "certificates",
      start: () =>
        new Promise<void>((resolve) => {
          finish = resolve;
        }),
      stop: () => Promise.resolve(),
      reload: (config) => {
        events.push(`reload certificates ${config.ISTIO_SVC_IP}`);
        return Promise.resolve();
      },
      status: () => ({ ready: true, summary: "certificates" }),
    });
    const later: ComponentFactory = (deps) => {
      events.push(`build envoy ${deps.config.ISTIO_SVC_IP}`);
      return recording("envoy", events)(deps);
    };
    const h = start(VALID, [waiting, later]);
    await h.notifier.waitForStatus(/^waiting for a certificate: /);
    await h.fs.writeFileAtomic(SIDECAR, (VALID[SIDECAR] ?? "").replace("10.0.0.5", "10.0.0.6"), { mode: 0o644 });
    h.signals.raise("SIGHUP");
    await expect.poll(() => events).toContain("reload certificates 10.0.0.6");
    finish();
    await h.notifier.waitForStatus(/^ready: .*VM 10\.0\.0\.6/);
    expect(events).toEqual(["reload certificates 10.0.0.6", "build envoy 10.0.0.6", "start envoy"]);
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
  });

  it("SIGTERM while a component waits ends its start and stops it: exit 0", async () => {
    const events: string[] = [];
    const waiting: ComponentFactory = () => ({
      name: "certificates",
      start: (signal) =>
        new Promise<void>((_, reject) => {
          signal.addEventListener("abort", () => {
            events.push("start aborted");
            reject(signal.reason as Error);
          });
        }),
      stop: () => {
        events.push("stop certificates");
        return Promise.resolve();
      },
      status: () => ({ ready: false, summary: "waiting" }),
    });
    const h = start(VALID, [waiting, recording("envoy", events)]);
    await h.notifier.waitForStatus(/^waiting for a certificate: /);
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
    expect(events).toEqual(["start aborted", "stop certificates"]);
  });

  it("pings the watchdog at half the interval systemd asked for", async () => {
    const h = start(VALID, [], 40_000);
    await h.notifier.waitFor("WATCHDOG", "1");
    h.signals.raise("SIGTERM");
    expect(await h.run).toBe(0);
  });
});
