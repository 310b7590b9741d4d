/**
 * The agent's discovery watch, end to end: the built `istio-vm agent` runs only its discovery component against the
 * dev Pilot's v1 REST API (or, with ENVOY_XDS_API=v2, its ADS v2) on loopback, and /healthz/ready and systemd's
 * STATUS= follow Pilot's health.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { startPilotRest } from "../../src/devplane/pilot-rest.js";
import { startPilotXds } from "../../src/devplane/pilot-xds.js";
import { ADS_V2 } from "../../src/devplane/pilot-xds-v2.js";
import { ObjectStore } from "../../src/devplane/store.js";
import { CLI } from "../support/cli.js";
import { freePort } from "../support/net.js";
import { NotifySocket } from "../support/notify-socket.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function readiness(port: number): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz/ready`);
  return { status: res.status, body: await res.text() };
}

/** Polls until `want` holds (the watch runs every second); fails after 30 s instead of hanging. */
async function until(
  port: number,
  want: (r: { status: number; body: string }) => boolean,
): Promise<{ status: number; body: string }> {
  for (let i = 0; i < 300; i++) {
    const r = await readiness(port);
    if (want(r)) return r;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`readiness never changed: ${JSON.stringify(await readiness(port))}`);
}

describe("istio-vm agent discovery watch", () => {
  it("is ready while Pilot answers, not ready while it answers 503, and says so in STATUS=", async () => {
    const store = new ObjectStore();
    store.create("services", {
      metadata: { name: "istio-pilot", namespace: "istio-system" },
      spec: { ports: [{ name: "http-discovery", port: 8080 }] },
    });
    store.create("endpoints", {
      metadata: { name: "istio-pilot", namespace: "istio-system" },
      subsets: [{ addresses: [{ ip: "10.1.0.8" }], ports: [{ name: "http-discovery", port: 8080 }] }],
    });
    const pilot = await startPilotRest({ store });
    cleanups.push(() => pilot.close());

    const root = mkdtempSync(join(tmpdir(), "istio-vm-watch-"));
    cleanups.push(() => {
      rmSync(root, { recursive: true, force: true });
    });
    mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
    writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_CONTROL_PLANE=legacy\n");
    const statusPort = await freePort();
    writeFileSync(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      [
        "ISTIO_SVC_IP=10.0.0.5",
        `STATUS_PORT=${statusPort}`,
        "ISTIO_AGENT_COMPONENTS=discovery",
        `PILOT_ADDRESS=127.0.0.1:${pilot.port}`,
        "DISCOVERY_CHECK_INTERVAL=1s",
        "",
      ].join("\n"),
    );
    const notify = new NotifySocket(join(root, "notify.sock"));
    const child = spawn(process.execPath, [CLI, "agent"], {
      env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on("exit", resolve));
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      notify.close();
    });

    await notify.waitFor("READY", "1");
    const ready = await notify.waitForStatus(/^ready: /);
    // The legacy profile's ENVOY_XDS_API=v1: the check fetches this node's CDS and LDS, as v1 Envoy does.
    expect(ready["STATUS"], stderr).toContain("pilot ok (v1: 1 cluster, 2 listeners)");
    const ok = await readiness(statusPort);
    expect(ok.status).toBe(200);
    expect(ok.body).toContain("discovery: ready: pilot ok");

    const statusSince = async (from: number, text: string): Promise<number> => {
      for (let i = 0; i < 300; i++) {
        const index = notify.messages.findIndex((m, n) => n >= from && (m["STATUS"] ?? "").includes(text));
        if (index >= 0) return index;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`no STATUS= with "${text}": ${JSON.stringify(notify.messages.slice(from))}`);
    };

    const beforeFault = notify.messages.length;
    pilot.setFault("registry-unavailable");
    const failing = await until(statusPort, (r) => r.status === 503);
    expect(failing.body).toContain(
      "discovery: not ready: discovery failing: Pilot answered HTTP 503 (service registry unavailable)",
    );
    const failedAt = await statusSince(beforeFault, "discovery failing: Pilot answered HTTP 503");
    pilot.setFault("none");
    await until(statusPort, (r) => r.status === 200);
    await statusSince(failedAt + 1, "pilot ok");
    expect(stderr).toMatch(/discovery check failed .*hint=/);
    expect(stderr).toMatch(/discovery recovered/);

    child.kill("SIGTERM");
    expect(await exit).toBe(0);
  });

  it("ENVOY_XDS_API=v2: the watch is an ADS v2 fetch (CDS, LDS) and readiness follows Pilot's stream", async () => {
    const store = new ObjectStore();
    store.create("services", {
      metadata: { name: "mysqldb", namespace: "default" },
      spec: { clusterIP: "10.96.0.20", ports: [{ name: "mysql", port: 3306 }] },
    });
    store.create("endpoints", {
      metadata: { name: "mysqldb", namespace: "default" },
      subsets: [{ addresses: [{ ip: "10.0.0.5" }], ports: [{ name: "mysql", port: 3306 }] }],
    });
    const pilot = await startPilotXds({ store, v3OnlyWhenAsked: true, alsoServe: ADS_V2 });
    cleanups.push(() => pilot.close());
    const root = mkdtempSync(join(tmpdir(), "istio-vm-watch-"));
    cleanups.push(() => {
      rmSync(root, { recursive: true, force: true });
    });
    mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
    writeFileSync(
      join(root, "var/lib/istio/envoy/cluster.env"),
      "ISTIO_CONTROL_PLANE=legacy\nENVOY_XDS_API=v2\nCONTROL_PLANE_AUTH_POLICY=NONE\n",
    );
    const statusPort = await freePort();
    writeFileSync(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      [
        "ISTIO_SVC_IP=10.0.0.5",
        "ISTIO_INBOUND_PORTS=3306",
        `STATUS_PORT=${statusPort}`,
        "ISTIO_AGENT_COMPONENTS=discovery",
        `DISCOVERY_ADDRESS=${pilot.address}`,
        "DISCOVERY_CHECK_INTERVAL=1s",
        "",
      ].join("\n"),
    );
    const notify = new NotifySocket(join(root, "notify.sock"));
    const child = spawn(process.execPath, [CLI, "agent"], {
      env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on("exit", resolve));
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      notify.close();
    });
    await notify.waitFor("READY", "1");
    const ready = await notify.waitForStatus(/^ready: /);
    expect(ready["STATUS"], stderr).toContain("pilot ok (v2 ADS: 3 clusters, 3 listeners, inbound 3306, ACKed)");
    expect(
      pilot.events.some((e) => e.kind === "ack" && e.typeUrl === "type.googleapis.com/envoy.api.v2.Listener"),
    ).toBe(true);
    // Pilot stops serving v2 streams (a reset on every request): not ready, with the gRPC status.
    pilot.setFault("stream-reset");
    const failing = await until(statusPort, (r) => r.status === 503);
    expect(failing.body).toContain("discovery: not ready: discovery failing: ADS v2 to");
    pilot.setFault("none");
    await until(statusPort, (r) => r.status === 200);
    child.kill("SIGTERM");
    expect(await exit).toBe(0);
  });
});
