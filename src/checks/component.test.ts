import { describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { createAgentEvents } from "../agent/events.js";
import { MetricsRegistry } from "../agent/metrics.js";
import { loadConfig } from "../config/load.js";
import type { DnsClient } from "../platform/dns.js";
import { nodeHttpClient } from "../platform/http.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { nodeTlsProber } from "../platform/tls.js";
import { AdsProbeError } from "../xds/ads-client.js";
import type { AdsProbeOptions, AdsProbeResult } from "../xds/ads-client.js";
import { createDiscoveryCheckComponent } from "./component.js";
import { fakePorts } from "../../test/fakes/ports.js";

const dns: DnsClient = {
  lookupSystem: () => Promise.resolve({ ok: true, addresses: ["192.0.2.10"] }),
  queryServer: () => Promise.resolve({ ok: true, addresses: ["192.0.2.10"] }),
};

describe("discovery watch component", () => {
  it("checks at start and every DISCOVERY_CHECK_INTERVAL; readiness and metrics follow the result", async () => {
    const fs = new MemoryFileSystem({ "/vm/etc/certs/root-cert.pem": "root" });
    const env = { ISTIO_VM_ROOT: "/vm", ISTIO_SVC_IP: "10.0.0.5", DISCOVERY_CHECK_INTERVAL: "30s" };
    const loaded = await loadConfig({ env, fs });
    const clock = new FakeClock();
    const metrics = new MetricsRegistry();
    const events = createAgentEvents();
    let changes = 0;
    events.on("status-changed", () => changes++);
    const calls: AdsProbeOptions[] = [];
    let next: "ok" | "unavailable" = "ok";
    const prober = (options: AdsProbeOptions): Promise<AdsProbeResult> => {
      calls.push(options);
      return next === "ok"
        ? Promise.resolve({ clusters: ["a", "b"], versionInfo: "3", nonce: "n" })
        : Promise.reject(new AdsProbeError(14, "connect ECONNREFUSED 192.0.2.10:15012"));
    };
    const factory = createDiscoveryCheckComponent({ prober, timeoutMs: 1000 });
    const component = factory({
      config: loaded.values,
      loaded,
      ...fakePorts({
        env,
        fs,
        runner: nodeProcessRunner,
        clock,
        dns,
        http: nodeHttpClient,
        tls: nodeTlsProber,
        hostname: () => "vm1",
      }),
      logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
      metrics,
      events,
    });
    if (component === undefined) throw new Error("no component");
    const controller = new AbortController();

    expect(component.status().ready).toBe(false);
    await component.start(controller.signal);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.target).toBe("istiod.istio-system.svc:15012");
    expect(calls[0]?.tls?.servername).toBe("istiod.istio-system.svc");
    expect(component.status()).toEqual({ ready: true, summary: "pilot ok (2 clusters, ACKed version 3)" });
    expect(metrics.render()).toMatch(/istio_vm_discovery_check_ok 1/);
    expect(changes).toBe(1);

    next = "unavailable";
    const due = await clock.nextTimer();
    expect(due - clock.now()).toBe(30_000);
    clock.advanceTo(due);
    await clock.nextTimer();
    expect(calls).toHaveLength(2);
    expect(component.status().ready).toBe(false);
    expect(component.status().summary).toBe(
      "discovery failing: ADS to istiod.istio-system.svc:15012 failed: gRPC UNAVAILABLE",
    );
    expect(metrics.render()).toMatch(/istio_vm_discovery_check_ok 0/);
    expect(changes).toBe(2);

    // Same failure again: no new status event.
    clock.advanceTo(await clock.nextTimer());
    await clock.nextTimer();
    expect(calls).toHaveLength(3);
    expect(changes).toBe(2);

    next = "ok";
    clock.advanceTo(await clock.nextTimer());
    await clock.nextTimer();
    expect(component.status().ready).toBe(true);
    expect(changes).toBe(3);

    await component.stop();
    expect(clock.pending).toBe(0);
  });
});
