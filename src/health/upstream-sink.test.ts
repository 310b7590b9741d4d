/**
 * Health reports go on the xDS proxy's upstream (as istio-agent sends them) when the agent runs a proxy, else on the
 * health component's own stream. The proxy side (same stream as Envoy's, the latest report re-sent on a new stream)
 * is tested in src/xds/proxy.test.ts against the dev Pilot.
 */
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { createAgentEvents } from "../agent/events.js";
import { MetricsRegistry } from "../agent/metrics.js";
import type { AgentDeps } from "../agent/component.js";
import { loadConfig } from "../config/load.js";
import { silentLogger } from "../platform/logger.js";
import type { AgentReport, AgentXdsChannel } from "../xds/agent-channel.js";
import { createAgentXdsChannels } from "../xds/agent-channel.js";
import { HEALTH_INFO_TYPE_URL } from "../xds/protos.js";
import { upstreamHealthSink } from "./upstream-sink.js";

async function deps(withProxy: AgentXdsChannel | undefined): Promise<AgentDeps> {
  const fs = new MemoryFileSystem();
  const loaded = await loadConfig({ env: {}, fs });
  const xds = createAgentXdsChannels();
  if (withProxy !== undefined) xds.provide(withProxy);
  return {
    ...fakePorts({ fs }),
    config: loaded.values,
    loaded,
    logger: silentLogger,
    metrics: new MetricsRegistry(),
    events: createAgentEvents(),
    xds,
  };
}

describe("health reports on the xDS proxy's upstream", () => {
  it("become HealthInformation reports on the proxy's channel: no error_detail when healthy, code 13 when not", async () => {
    const sent: AgentReport[] = [];
    const channel: AgentXdsChannel = {
      subscribe: () => () => undefined,
      report: (r) => sent.push(r),
    };
    let fallbackUsed = false;
    const controller = new AbortController();
    const d = await deps(channel);
    const { sink, running } = upstreamHealthSink(() => {
      fallbackUsed = true;
      return { sink: { report: () => undefined }, running: Promise.resolve() };
    })(d, () => d.config, controller.signal);
    sink.report({ healthy: false, message: "HTTP GET /ready: 503" });
    sink.report({ healthy: true });
    expect(sent).toEqual([
      { typeUrl: HEALTH_INFO_TYPE_URL, errorDetail: { code: 13, message: "HTTP GET /ready: 503" } },
      { typeUrl: HEALTH_INFO_TYPE_URL },
    ]);
    expect(fallbackUsed).toBe(false);
    controller.abort();
    await running;
  });

  it("without a proxy, the health component's own stream is used", async () => {
    const d = await deps(undefined);
    let fallbackUsed = false;
    upstreamHealthSink(() => {
      fallbackUsed = true;
      return { sink: { report: () => undefined }, running: Promise.resolve() };
    })(d, () => d.config, new AbortController().signal);
    expect(fallbackUsed).toBe(true);
  });
});
