import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import { systemClock } from "../platform/clock.js";
import { silentLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import type { AgentDeps } from "./component.js";
import { AGENT_COMPONENTS } from "./components.js";
import { createAgentEvents } from "./events.js";
import { MetricsRegistry } from "./metrics.js";
import { fakePorts } from "../../test/fakes/ports.js";

/** The components the agent builds from these configuration files, in start order. */
async function built(files: Record<string, string>): Promise<string[]> {
  const fs = new MemoryFileSystem(files);
  const loaded = await loadConfig({ env: {}, fs });
  const deps: AgentDeps = {
    config: loaded.values,
    loaded,
    ...fakePorts({ env: {}, fs, runner: nodeProcessRunner, clock: systemClock }),
    logger: silentLogger,
    metrics: new MetricsRegistry(),
    events: createAgentEvents(),
  };
  const names: string[] = [];
  for (const factory of AGENT_COMPONENTS) {
    const component = await factory(deps);
    if (component !== undefined) names.push(component.name);
  }
  return names;
}

const names = (sidecar: string): Promise<string[]> => built({ "/var/lib/istio/envoy/sidecar.env": sidecar });

describe("the agent's components", () => {
  it("start in the order of docs/architecture.md: certificates, SDS, the xDS proxy, interception, Envoy, then the discovery watch", async () => {
    expect(await names("")).toEqual(["certificates", "sds", "xds-proxy", "interception", "envoy", "discovery"]);
  });

  it("the SDS server and the xDS proxy run with Envoy on the istiod profile only (legacy Envoy reads the files and dials Pilot)", async () => {
    expect(await names("ISTIO_AGENT_COMPONENTS=certificates\n")).toEqual(["certificates"]);
    const legacy = await built({ "/var/lib/istio/envoy/cluster.env": "ISTIO_CONTROL_PLANE=legacy\n" });
    expect(legacy).toContain("envoy");
    expect(legacy).not.toContain("sds");
    expect(legacy).not.toContain("xds-proxy");
  });

  it("ISTIO_AGENT_COMPONENTS selects a subset (the order stays), and an empty value runs the frame alone", async () => {
    expect(await names("ISTIO_AGENT_COMPONENTS=envoy,certificates\n")).toEqual([
      "certificates",
      "sds",
      "xds-proxy",
      "envoy",
    ]);
    expect(await names("ISTIO_AGENT_COMPONENTS=\n")).toEqual([]);
  });

  it("ISTIO_CUSTOM_IP_TABLES=true leaves capture to the admin", async () => {
    expect(await names("ISTIO_CUSTOM_IP_TABLES=true\n")).toEqual([
      "certificates",
      "sds",
      "xds-proxy",
      "envoy",
      "discovery",
    ]);
  });
});
