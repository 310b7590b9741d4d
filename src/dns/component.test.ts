import { describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { freePort } from "../../test/support/net.js";
import { answerLines, askA } from "../../test/support/dns-query.js";
import { REVIEWS, meshPairs, startTlsPilot, storeWithServices, vmCertFiles } from "../../test/support/mesh-pilot.js";
import { createAgentEvents } from "../agent/events.js";
import { systemClock } from "../platform/clock.js";
import { NAME_TABLE_TYPE_URL } from "../xds/nds.js";
import { MetricsRegistry } from "../agent/metrics.js";
import type { LoadedConfig } from "../config/load.js";
import { loadConfig } from "../config/load.js";
import type { AgentDeps } from "../agent/component.js";
import type { Clock } from "../platform/clock.js";
import type { FileSystem } from "../platform/fs.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import type { NameTableSource } from "./component.js";
import { adsNameTableSource, createDnsProxyComponent, listenAddresses } from "./component.js";
import { parseResolvConf } from "./resolv-conf.js";
import type { NameTable } from "./name-table.js";
import { decodeStoredTable, encodeStoredTable } from "./table-store.js";
import { fakePorts } from "../../test/fakes/ports.js";

const TABLE_PATH = "/vm/var/lib/istio/nds/name-table.json";
const RESOLV = "/vm/etc/resolv.conf";

/** What the agent gives the component: its configuration, `fs`, real processes, a quiet logger. */
function agentDeps(
  loaded: LoadedConfig,
  env: Record<string, string>,
  fs: FileSystem,
  clock: Clock,
  metrics = new MetricsRegistry(),
): AgentDeps {
  return {
    config: loaded.values,
    loaded,
    ...fakePorts({ env, fs, runner: nodeProcessRunner, clock }),
    logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
    metrics,
    events: createAgentEvents(),
  };
}

/** A VM under /vm in namespace bookinfo with the DNS proxy on (istiod profile) at `port`. */
function proxyEnv(port: number): Record<string, string> {
  return {
    ISTIO_VM_ROOT: "/vm",
    ISTIO_SVC_IP: "10.0.0.5",
    POD_NAMESPACE: "bookinfo",
    ISTIO_META_DNS_CAPTURE: "true",
    DNS_PROXY_PORT: String(port),
  };
}

describe("dns component", () => {
  it("answers from the persisted table before istiod, then from istiod's, persists it, and follows resolv.conf", async () => {
    const port = await freePort();
    const fs = new MemoryFileSystem({
      [RESOLV]: "nameserver 192.0.2.53\nsearch first.svc.cluster.local\n",
      [TABLE_PATH]: encodeStoredTable({
        table: { "old.bookinfo.svc.cluster.local": { ips: ["10.96.0.1"], shortname: "old", namespace: "bookinfo" } },
        receivedAt: Date.parse("2026-12-05T11:00:00Z"),
      }),
    });
    const env = proxyEnv(port);
    const loaded = await loadConfig({ env, fs });
    const clock = new FakeClock(Date.parse("2026-12-05T12:00:00Z"));
    const metrics = new MetricsRegistry();
    let push: ((table: NameTable) => void) | undefined;
    let drop: ((reason: string) => void) | undefined;
    const source: NameTableSource = (_deps, _values, handlers, signal) => {
      push = (table) => {
        handlers.onTable(table);
      };
      drop = (reason) => {
        handlers.onDisconnect(reason);
      };
      return new Promise((resolve) => {
        signal.addEventListener("abort", () => {
          resolve();
        });
      });
    };
    const component = createDnsProxyComponent({
      hostname: "vm1",
      source,
      resolvConfPollMs: 5000,
      forwardTimeoutMs: 1000,
    })(agentDeps(loaded, env, fs, clock, metrics));
    if (component === undefined) throw new Error("no component");
    const controller = new AbortController();
    try {
      await component.start(controller.signal);
      // Before istiod: the table the last run persisted.
      expect(answerLines(await askA(port, "old"))).toEqual(["A 10.96.0.1"]);
      expect(component.status()).toEqual({
        ready: true,
        summary: `dns 127.0.0.1:${String(port)}: 1 names (from disk, 3600s old)`,
      });
      expect(metrics.render()).toMatch(/istio_vm_dns_table_age_seconds 3600/);

      push?.({ "new.bookinfo.svc.cluster.local": { ips: ["10.96.0.2"], shortname: "new", namespace: "bookinfo" } });
      await expect
        .poll(() => fs.files.has(TABLE_PATH) && decodeStoredTable(fs.files.get(TABLE_PATH)?.data.toString() ?? ""))
        .toMatchObject({
          kind: "loaded",
          stored: { receivedAt: clock.now(), table: { "new.bookinfo.svc.cluster.local": { ips: ["10.96.0.2"] } } },
        });
      expect(answerLines(await askA(port, "new.bookinfo"))).toEqual(["A 10.96.0.2"]);
      expect(component.status().summary).toMatch(/1 names \(from istiod, 0s old\)/);

      // istiod goes away: the table stays.
      drop?.("gRPC UNAVAILABLE: connection refused");
      clock.advance(60_000);
      expect(answerLines(await askA(port, "new"))).toEqual(["A 10.96.0.2"]);
      expect(component.status().summary).toMatch(/istiod unreachable, 60s old/);

      // resolv.conf changes: the search-list short-cut follows on the next poll.
      const expanded = "new.bookinfo.svc.cluster.local.second.svc.cluster.local";
      await fs.writeFileAtomic(RESOLV, "nameserver 192.0.2.53\nsearch second.svc.cluster.local\n", { mode: 0o644 });
      clock.advance(5000);
      await expect
        .poll(async () => answerLines(await askA(port, expanded)))
        .toEqual(["A 10.96.0.2", "CNAME new.bookinfo.svc.cluster.local"]);
      const counted = /istio_vm_dns_queries_total\{result="table",transport="udp"\} (\d+)/.exec(metrics.render());
      expect(Number(counted?.[1])).toBeGreaterThanOrEqual(4);
    } finally {
      controller.abort();
      await component.stop();
    }
  });

  it("listens on [::1] too once resolv.conf lists an IPv6 nameserver (where capture redirects IPv6 queries)", async () => {
    expect(listenAddresses(parseResolvConf("nameserver 10.0.0.2\n"))).toEqual(["127.0.0.1"]);
    expect(listenAddresses(parseResolvConf("nameserver 10.0.0.2\nnameserver fe80::1%eth0\n"))).toEqual([
      "127.0.0.1",
      "::1",
    ]);
    const port = await freePort();
    const fs = new MemoryFileSystem({
      [RESOLV]: "nameserver 192.0.2.53\n",
      [TABLE_PATH]: encodeStoredTable({
        table: { "a.bookinfo.svc.cluster.local": { ips: ["10.96.0.1"], shortname: "a", namespace: "bookinfo" } },
        receivedAt: 0,
      }),
    });
    const env = proxyEnv(port);
    const loaded = await loadConfig({ env, fs });
    const clock = new FakeClock(0);
    const component = createDnsProxyComponent({
      hostname: "vm1",
      source: (_d, _v, _h, signal) =>
        new Promise((resolve) => {
          signal.addEventListener("abort", () => {
            resolve();
          });
        }),
      resolvConfPollMs: 5000,
      forwardTimeoutMs: 1000,
    })(agentDeps(loaded, env, fs, clock));
    if (component === undefined) throw new Error("no component");
    const controller = new AbortController();
    try {
      await component.start(controller.signal);
      expect(component.status().summary).toMatch(new RegExp(`^dns 127\\.0\\.0\\.1:${String(port)}: `));
      await fs.writeFileAtomic(RESOLV, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n", { mode: 0o644 });
      clock.advance(5000);
      await expect.poll(() => component.status().summary).toContain(`[::1]:${String(port)}`);
      expect(answerLines(await askA(port, "a", "::1"))).toEqual(["A 10.96.0.1"]);
    } finally {
      controller.abort();
      await component.stop();
    }
  });

  it("is absent unless ISTIO_META_DNS_CAPTURE=true on the istiod profile", async () => {
    const fs = new MemoryFileSystem();
    for (const env of [{}, { ISTIO_META_DNS_CAPTURE: "true", ISTIO_CONTROL_PLANE: "legacy" }]) {
      const loaded = await loadConfig({ env: { ISTIO_SVC_IP: "10.0.0.5", ...env }, fs });
      const factory = createDnsProxyComponent({
        hostname: "vm1",
        source: () => Promise.resolve(),
        resolvConfPollMs: 5000,
        forwardTimeoutMs: 1000,
      });
      expect(factory(agentDeps(loaded, {}, fs, new FakeClock(0)))).toBeUndefined();
    }
  });
});

describe("dns component with the real NDS source", () => {
  it("gets the name table from the dev pilot over mTLS with DNS_CAPTURE in the node, and answers from it", async () => {
    const mesh = await meshPairs("bookinfo", "vm");
    const xds = await startTlsPilot(mesh, storeWithServices(REVIEWS));
    const port = await freePort();
    const fs = new MemoryFileSystem({
      [RESOLV]: "nameserver 192.0.2.53\n",
      ...vmCertFiles(mesh),
    });
    const env = {
      ...proxyEnv(port),
      SERVICE_ACCOUNT: "vm",
      PILOT_ADDRESS: xds.address,
    };
    const loaded = await loadConfig({ env, fs });
    const component = createDnsProxyComponent({
      hostname: "vm1",
      source: adsNameTableSource("vm1"),
      resolvConfPollMs: 5000,
      forwardTimeoutMs: 1000,
    })(agentDeps(loaded, env, fs, systemClock));
    if (component === undefined) throw new Error("no component");
    const controller = new AbortController();
    try {
      await component.start(controller.signal);
      await expect.poll(async () => answerLines(await askA(port, "reviews"))).toEqual(["A 10.96.0.10"]);
      const request = xds.events.find((e) => e.kind === "request" && e.typeUrl === NAME_TABLE_TYPE_URL);
      expect(request?.metadata?.["DNS_CAPTURE"]).toBe("true");
      expect(request?.peerIdentities).toEqual([mesh.ca.spiffeId("bookinfo", "vm")]);
      expect(fs.files.has(TABLE_PATH)).toBe(true);
      // istiod goes away: still answered from the table.
      await xds.close();
      expect(answerLines(await askA(port, "reviews.bookinfo"))).toEqual(["A 10.96.0.10"]);
    } finally {
      controller.abort();
      await component.stop();
      await xds.close();
    }
  });
});
