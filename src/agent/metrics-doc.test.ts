/**
 * docs/metrics.md against what the agent serves: the agent runs with every component constructed (their metrics are
 * registered at construction), /metrics is scraped over HTTP, and the document's table must list exactly the served
 * families with their types and the labels the registry declares for them.
 */
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { ManualSignals, RecordingNotifier } from "../../test/fakes/notifier.js";
import { freePort } from "../../test/support/net.js";
import { systemClock } from "../platform/clock.js";
import { silentLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { runAgent } from "./agent.js";
import type { ComponentLoader } from "./component.js";
import { AGENT_COMPONENTS } from "./components.js";
import type { MetricDescription, MetricsRegistry } from "./metrics.js";
import { fakePorts } from "../../test/fakes/ports.js";

const DOC = new URL("../../docs/metrics.md", import.meta.url).pathname;

interface Row {
  name: string;
  type: string;
  labels: string[];
}

/** The rows of the document's table: | `name` | type | `label`, `label` | meaning |. */
function documented(text: string): Row[] {
  return text
    .split("\n")
    .filter((line) => line.startsWith("| `"))
    .map((line) => {
      const cells = line
        .slice(2, -2)
        .split(" | ")
        .map((c) => c.trim());
      const [name = "", type = "", labels = ""] = cells;
      return {
        name: name.replaceAll("`", ""),
        type,
        labels: labels === "" ? [] : labels.split(",").map((l) => l.trim().replaceAll("`", "")),
      };
    });
}

/** Scrapes the agent's /metrics with every component constructed; returns the served families and the registry's. */
async function scrape(): Promise<{ served: Map<string, string>; declared: MetricDescription[]; text: string }> {
  const port = await freePort();
  const fs = new MemoryFileSystem({
    "/var/lib/istio/envoy/cluster.env":
      "ISTIO_SERVICE_CIDR=10.96.0.0/12\nISTIO_META_DNS_CAPTURE=true\nISTIO_META_AUTO_REGISTER_GROUP=vms\n" +
      `PROXY_CONFIG='{"readinessProbe":{"tcpSocket":{"port":8080}}}'\n`,
    "/var/lib/istio/envoy/sidecar.env": `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n`,
  });
  let registry: MetricsRegistry | undefined;
  // Each real component is constructed (registering its metrics) but not started: starting needs a CA, iptables
  // and Envoy, and the metrics do not depend on it.
  // Components load their modules first (src/agent/components.ts): /metrics is read once all of them were built.
  let built = 0;
  let allBuilt: () => void = () => undefined;
  const constructed = new Promise<void>((resolve) => (allBuilt = resolve));
  const components: ComponentLoader[] = AGENT_COMPONENTS.map((factory) => async (deps) => {
    registry = deps.metrics;
    expect(await factory(deps), "every component is configured by default").toBeDefined();
    if (++built === AGENT_COMPONENTS.length) allBuilt();
    return undefined;
  });
  const signals = new ManualSignals();
  let setAddress: (a: string) => void = () => undefined;
  const address = new Promise<string>((resolve) => (setAddress = resolve));
  const run = runAgent({
    ...fakePorts({ env: {}, fs, runner: nodeProcessRunner, clock: systemClock }),
    logger: silentLogger,
    notifier: new RecordingNotifier(),
    signals,
    components,
    version: "0.0.0-test",
    onListening: setAddress,
  });
  try {
    await constructed;
    const text = await (await fetch(`http://${await address}/metrics`)).text();
    const served = new Map<string, string>();
    for (const match of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) served.set(match[1] ?? "", match[2] ?? "");
    if (registry === undefined) throw new Error("no component was constructed");
    return { served, declared: registry.describe(), text };
  } finally {
    signals.raise("SIGTERM");
    expect(await run).toBe(0);
  }
}

describe("docs/metrics.md", () => {
  it("lists exactly the metrics /metrics serves, with their types and declared labels", async () => {
    const { served, declared } = await scrape();
    expect(served.size).toBeGreaterThan(10);
    // The registry's description is what is served.
    expect(new Map(declared.map((d) => [d.name, d.type]))).toEqual(served);
    const rows = documented(await readFile(DOC, "utf8"));
    expect(rows.map((r) => r.name).sort(), "metrics in the document vs served").toEqual([...served.keys()].sort());
    for (const d of declared) {
      const row = rows.find((r) => r.name === d.name);
      expect({ type: row?.type, labels: row?.labels }, d.name).toEqual({ type: d.type, labels: [...d.labels] });
    }
  });

  it("serves only names that follow Prometheus' conventions", async () => {
    const { served } = await scrape();
    for (const [name, type] of served) {
      expect(name.endsWith("_total"), `${name} is a ${type}`).toBe(type === "counter");
      expect(name, "units are base units").not.toMatch(/_(milliseconds|ms|kilobytes|megabytes|minutes|hours)(_|$)/);
    }
  });
});
