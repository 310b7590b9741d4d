import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import type { AddressInfo, Server } from "node:net";
import { describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { freePort } from "../../test/support/net.js";
import { meshPairs, startTlsPilot, vmCertFiles } from "../../test/support/mesh-pilot.js";
import { createAgentEvents } from "../agent/events.js";
import { MetricsRegistry } from "../agent/metrics.js";
import type { LoadedConfig } from "../config/load.js";
import { loadConfig } from "../config/load.js";
import type { AgentDeps } from "../agent/component.js";
import type { Clock } from "../platform/clock.js";
import { AutoRegistration } from "../devplane/pilot-autoreg.js";
import { ObjectStore } from "../devplane/store.js";
import { loadAssignment } from "../devplane/xds-resources.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { nodeHttpClient } from "../platform/http.js";
import { nodeTcpConnector } from "../platform/tcp.js";
import { HealthTracker } from "./checker.js";
import { createHealthComponent } from "./component.js";
import type { HealthReport } from "./report.js";

const CLUSTER = "outbound|80||vm-app.default.svc.cluster.local";

/** What the agent gives a component: `fs` and its configuration, real HTTP and processes, a quiet logger. */
function agentDeps(
  fs: MemoryFileSystem,
  loaded: LoadedConfig,
  env: Record<string, string>,
  clock: Clock,
  metrics = new MetricsRegistry(),
): AgentDeps {
  return {
    ...fakePorts({ fs, http: nodeHttpClient, hostname: () => "vm1" }),
    config: loaded.values,
    loaded,
    fs,
    runner: nodeProcessRunner,
    clock,
    logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
    metrics,
    events: createAgentEvents(),
    env,
  };
}

function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => socket.destroy());
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      resolve(server);
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => {
      resolve();
    });
  });
}

describe("HealthTracker", () => {
  it("reports the first state at once, then a change only after the threshold of consecutive results", () => {
    const t = new HealthTracker({ successThreshold: 2, failureThreshold: 3 });
    const ok = { healthy: true } as const;
    const bad = { healthy: false, message: "refused" } as const;
    expect([bad, bad, bad].map((o) => t.observe(o))).toEqual([
      undefined,
      undefined,
      { healthy: false, message: "refused" },
    ]);
    expect([bad, ok, bad, ok, ok, ok].map((o) => t.observe(o))).toEqual([
      undefined,
      undefined,
      undefined,
      undefined,
      { healthy: true },
      undefined,
    ]);
    expect(t.state).toBe("healthy");
  });
});

describe("health component against the dev istiod (real sockets)", () => {
  it("registers the VM, reports each probe change, and istiod moves the endpoint in and out of EDS", async () => {
    const mesh = await meshPairs("default", "vm");
    const store = new ObjectStore();
    store.create("workloadgroups", {
      metadata: { name: "vms", namespace: "default" },
      spec: { metadata: { labels: { app: "vm-app" } }, template: { serviceAccount: "vm", ports: { http: 8080 } } },
    });
    store.create("services", {
      metadata: { name: "vm-app", namespace: "default" },
      spec: { clusterIP: "10.96.0.20", selector: { app: "vm-app" }, ports: [{ name: "http", port: 80 }] },
    });
    const istiodClock = new FakeClock();
    const autoRegistration = new AutoRegistration({ store, clock: istiodClock, gracePeriodMs: 10_000 });
    const xds = await startTlsPilot(mesh, store, { requireClientCert: false, autoRegistration });
    const appPort = await freePort();
    let app: Server | undefined = await listen(appPort);
    const fs = new MemoryFileSystem({
      ...vmCertFiles(mesh),
    });
    const env = {
      ISTIO_VM_ROOT: "/vm",
      ISTIO_SVC_IP: "10.0.0.5",
      POD_NAMESPACE: "default",
      SERVICE_ACCOUNT: "vm",
      DISCOVERY_ADDRESS: xds.address,
      ISTIO_META_AUTO_REGISTER_GROUP: "vms",
      ISTIO_METAJSON_LABELS: '{"app":"vm-app"}',
      PROXY_CONFIG: JSON.stringify({ readinessProbe: { tcpSocket: { port: appPort }, periodSeconds: 5 } }),
      // No Envoy here: the probe is the application's alone.
      ISTIO_AGENT_COMPONENTS: "health",
    };
    const loaded = await loadConfig({ env, fs });
    expect(loaded.problems).toEqual([]);
    const clock = new FakeClock();
    const metrics = new MetricsRegistry();
    const component = createHealthComponent({ hostname: "vm1", http: nodeHttpClient, tcp: nodeTcpConnector })(
      agentDeps(fs, loaded, env, clock, metrics),
    );
    if (component === undefined) throw new Error("no health component");
    const controller = new AbortController();
    const entry = () => store.tryGet("workloadentries", "default", "vms-10.0.0.5");
    const healthy = () =>
      (
        entry()?.["status"] as { conditions?: { type: string; status: string; message?: string }[] } | undefined
      )?.conditions?.find((c) => c.type === "Healthy");
    const endpoints = () =>
      loadAssignment(store, CLUSTER).endpoints.flatMap((e) =>
        e.lb_endpoints.map(
          (l) => `${l.endpoint.address.socket_address.address}:${l.endpoint.address.socket_address.port_value}`,
        ),
      );
    try {
      await component.start(controller.signal);
      expect(component.status().summary).toBe(`probe tcp localhost:${appPort}: waiting for the first result`);

      await clock.runToNextTimer(); // the initial delay (0 s): the first probe
      await expect.poll(() => healthy()?.status).toBe("True");
      expect(entry()?.metadata.annotations).toMatchObject({
        "istio.io/autoRegistrationGroup": "vms",
        "proxy.istio.io/health-checks-enabled": "true",
      });
      expect(endpoints()).toEqual(["10.0.0.5:8080"]);
      expect(component.status().summary).toBe(`probe tcp localhost:${appPort}: healthy`);
      expect(metrics.render()).toMatch(/^istio_vm_health_healthy 1$/m);

      await close(app);
      app = undefined;
      await clock.runToNextTimer(); // the period: the app is gone
      await expect.poll(() => healthy()?.status).toBe("False");
      expect(healthy()?.message).toMatch(/ECONNREFUSED/);
      expect(endpoints()).toEqual([]);
      expect(component.status().summary).toMatch(/: unhealthy \(connect ECONNREFUSED/);
      expect(metrics.render()).toMatch(/^istio_vm_health_healthy 0$/m);

      // Still unhealthy: no new report, only a counted probe.
      const reports = xds.events.filter((e) => e.kind === "health").length;
      await clock.runToNextTimer();
      await expect.poll(() => metrics.render()).toMatch(/istio_vm_health_probes_total\{result="unhealthy"\} 2/);
      expect(xds.events.filter((e) => e.kind === "health").length).toBe(reports);

      app = await listen(appPort);
      await clock.runToNextTimer();
      await expect.poll(() => healthy()?.status).toBe("True");
      expect(endpoints()).toEqual(["10.0.0.5:8080"]);
      expect(metrics.render()).toMatch(/istio_vm_health_reports_total\{state="healthy"\} 2/);
    } finally {
      controller.abort();
      await component.stop();
      if (app !== undefined) await close(app);
    }
    // The agent's stream closed: istiod starts the grace period and then removes the entry.
    await expect.poll(() => entry()?.metadata.annotations?.["istio.io/disconnectedAt"]).toBeDefined();
    istiodClock.advance(10_000);
    await expect.poll(() => entry()).toBeUndefined();
    await xds.close();
    await autoRegistration.close();
  });

  it("with Envoy run by the agent, reports unhealthy until Envoy's admin /ready answers LIVE", async () => {
    const appPort = await freePort();
    const app = await listen(appPort);
    let envoyState = "PRE_INITIALIZING";
    const admin = createHttpServer((req, res) => {
      if (req.url !== "/ready") res.writeHead(404).end();
      else if (envoyState === "LIVE") res.writeHead(200).end("LIVE\n");
      else res.writeHead(503).end(`${envoyState}\n`);
    });
    await new Promise<void>((resolve) => admin.listen(0, "127.0.0.1", resolve));
    const adminPort = (admin.address() as AddressInfo).port;
    const fs = new MemoryFileSystem({});
    const env = {
      ISTIO_SVC_IP: "10.0.0.5",
      ENVOY_ADMIN_PORT: String(adminPort),
      PROXY_CONFIG: JSON.stringify({ readinessProbe: { tcpSocket: { host: "127.0.0.1", port: appPort } } }),
    };
    const loaded = await loadConfig({ env, fs });
    const clock = new FakeClock();
    const reports: HealthReport[] = [];
    const component = createHealthComponent({
      hostname: "vm1",
      http: nodeHttpClient,
      tcp: nodeTcpConnector,
      sink: (_deps, _values, signal) => ({
        sink: { report: (r) => reports.push(r) },
        running: new Promise<void>((resolve) => {
          signal.addEventListener("abort", () => {
            resolve();
          });
        }),
      }),
    })(agentDeps(fs, loaded, env, clock));
    if (component === undefined) throw new Error("no health component");
    const controller = new AbortController();
    try {
      await component.start(controller.signal);
      await clock.runToNextTimer();
      await expect.poll(() => reports.length).toBe(1);
      expect(reports[0]).toEqual({
        healthy: false,
        message: "Envoy proxy is NOT ready: server is not live, current state is: PRE_INITIALIZING",
      });
      envoyState = "LIVE";
      await clock.runToNextTimer();
      await expect.poll(() => reports.length).toBe(2);
      expect(reports[1]).toEqual({ healthy: true });
    } finally {
      controller.abort();
      await component.stop();
      await close(app);
      await new Promise<void>((resolve) => {
        admin.close(() => {
          resolve();
        });
      });
    }
  });

  it("is absent without a readinessProbe, and refuses one it cannot run", async () => {
    const fs = new MemoryFileSystem({});
    const deps = async (env: Record<string, string>): Promise<AgentDeps> =>
      agentDeps(fs, await loadConfig({ env, fs }), env, new FakeClock());
    const factory = createHealthComponent({ hostname: "vm1", http: nodeHttpClient, tcp: nodeTcpConnector });
    expect(factory(await deps({ ISTIO_SVC_IP: "10.0.0.5" }))).toBeUndefined();
    const legacy = { ISTIO_CONTROL_PLANE: "legacy", PROXY_CONFIG: '{"readinessProbe":{"tcpSocket":{"port":1}}}' };
    expect(factory(await deps({ ISTIO_SVC_IP: "10.0.0.5", ...legacy }))).toBeUndefined();
    const bad = await deps({ ISTIO_SVC_IP: "10.0.0.5", PROXY_CONFIG: '{"readinessProbe":{"grpc":{"port":1}}}' });
    expect(() => factory(bad)).toThrow(/PROXY_CONFIG readinessProbe: the grpc probe method is not supported/);
  });
});
