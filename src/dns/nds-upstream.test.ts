/**
 * The DNS proxy's NDS on the xDS proxy's upstream stream: with a proxy in the agent, the name table comes on the one
 * stream that carries Envoy's CDS (one connection to istiod, Envoy's node, DNS_CAPTURE set by the bootstrap's node);
 * without one, the DNS component's own stream is used.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AdsTestClient, CDS_TYPE } from "../../test/support/ads-client.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { freePort } from "../../test/support/net.js";
import { answerLines, askA } from "../../test/support/dns-query.js";
import { REVIEWS, meshPairs, startTlsPilot, storeWithServices, vmCertFiles } from "../../test/support/mesh-pilot.js";
import { createAgentEvents } from "../agent/events.js";
import { MetricsRegistry } from "../agent/metrics.js";
import { loadConfig } from "../config/load.js";
import { systemClock } from "../platform/clock.js";
import { nodeFileSystem } from "../platform/fs.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { createAgentXdsChannels } from "../xds/agent-channel.js";
import { agentAdsConnection } from "../xds/agent-connection.js";
import { NAME_TABLE_TYPE_URL } from "../xds/nds.js";
import { buildNodeBlock } from "../xds/node-block.js";
import { XdsProxy } from "../xds/proxy.js";
import type { NameTableSource } from "./component.js";
import { createDnsProxyComponent } from "./component.js";
import { upstreamNameTableSource } from "./nds-upstream.js";

describe("NDS on the xDS proxy's upstream", () => {
  it("rides the stream that carries Envoy's CDS, with the bootstrap's node (DNS_CAPTURE), and feeds the DNS proxy", async () => {
    const mesh = await meshPairs("bookinfo", "vm");
    const xds = await startTlsPilot(mesh, storeWithServices(REVIEWS));
    const dir = await mkdtemp(join(tmpdir(), "istio-vm-nds-upstream-"));
    const port = await freePort();
    const fs = new MemoryFileSystem({
      "/vm/etc/resolv.conf": "nameserver 192.0.2.53\n",
      ...vmCertFiles(mesh),
    });
    const env = {
      ISTIO_VM_ROOT: "/vm",
      ISTIO_SVC_IP: "10.0.0.5",
      POD_NAMESPACE: "bookinfo",
      SERVICE_ACCOUNT: "vm",
      ISTIO_META_DNS_CAPTURE: "true",
      DNS_PROXY_PORT: String(port),
      PILOT_ADDRESS: xds.address,
    };
    const loaded = await loadConfig({ env, fs });
    const node = buildNodeBlock({ config: loaded.values, extraMetadata: {}, hostname: "vm1" });
    const proxy = new XdsProxy({
      socketPath: join(dir, "xds", "XDS"),
      fs: nodeFileSystem,
      clock: systemClock,
      logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
      connection: () => agentAdsConnection(fs, loaded.values, node),
    });
    await proxy.listen();
    const channels = createAgentXdsChannels();
    channels.provide(proxy);
    const ownStream: NameTableSource = () => Promise.reject(new Error("the DNS component's own stream was used"));
    const component = createDnsProxyComponent({
      hostname: "vm1",
      source: upstreamNameTableSource(ownStream),
      resolvConfPollMs: 5000,
      forwardTimeoutMs: 1000,
    })({
      ...fakePorts({ env, fs, runner: nodeProcessRunner, clock: systemClock }),
      config: loaded.values,
      loaded,
      logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
      metrics: new MetricsRegistry(),
      events: createAgentEvents(),
      xds: channels,
    });
    if (component === undefined) throw new Error("no component");
    const controller = new AbortController();
    const envoy = new AdsTestClient(join(dir, "xds", "XDS"), node);
    try {
      await component.start(controller.signal);
      envoy.request(CDS_TYPE);
      await envoy.nextOf(CDS_TYPE);
      await expect.poll(async () => answerLines(await askA(port, "reviews"))).toEqual(["A 10.96.0.10"]);
      const nds = xds.events.find((e) => e.kind === "request" && e.typeUrl === NAME_TABLE_TYPE_URL);
      const cds = xds.events.find((e) => e.kind === "request" && e.typeUrl === CDS_TYPE);
      expect(nds?.stream).toBe(cds?.stream);
      expect(nds?.metadata?.["DNS_CAPTURE"]).toBe("true");
      expect(nds?.peerIdentities).toEqual([mesh.ca.spiffeId("bookinfo", "vm")]);
      await expect.poll(() => xds.events.some((e) => e.kind === "ack" && e.typeUrl === NAME_TABLE_TYPE_URL)).toBe(true);
      expect(xds.connections()).toHaveLength(1);
    } finally {
      envoy.close();
      controller.abort();
      await component.stop();
      await proxy.close();
      await xds.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("without a proxy in the agent, the DNS component's own stream is used", async () => {
    const used: string[] = [];
    const own: NameTableSource = () => {
      used.push("own");
      return Promise.resolve();
    };
    const fs = new MemoryFileSystem({});
    const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: "/vm" }, fs });
    await upstreamNameTableSource(own)(
      {
        ...fakePorts({ env: {}, fs, runner: nodeProcessRunner, clock: systemClock }),
        config: loaded.values,
        loaded,
        logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
        metrics: new MetricsRegistry(),
        events: createAgentEvents(),
        xds: createAgentXdsChannels(),
      },
      () => loaded.values,
      { onTable: () => undefined, onDisconnect: () => undefined },
      new AbortController().signal,
    );
    expect(used).toEqual(["own"]);
  });
});
