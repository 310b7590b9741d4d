import { createSocket } from "node:dgram";
import * as dnsPacket from "dns-packet";
import { afterEach, describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import { createForwarder } from "../dns/forwarder.js";
import { DnsProxy, startDnsServer } from "../dns/proxy.js";
import { encodeStoredTable } from "../dns/table-store.js";
import { systemClock } from "../platform/clock.js";
import type { DnsClient } from "../platform/dns.js";
import { nodeDnsClient } from "../platform/dns.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { runCheck } from "./registry.js";
import { dnsCheck } from "./dns.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { checkDepsFrom } from "./check.js";

const TABLE = {
  "reviews.bookinfo.svc.cluster.local": { ips: ["10.96.0.10"], shortname: "reviews", namespace: "bookinfo" },
};

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

/** An upstream on loopback answering NXDOMAIN for every name (a real resolver's answer for `.invalid`). */
async function nxdomainUpstream(): Promise<number> {
  const udp = createSocket("udp4");
  udp.on("message", (raw, rinfo) => {
    const q = dnsPacket.decode(raw);
    udp.send(
      dnsPacket.encode({
        type: "response",
        id: q.id ?? 0,
        flags: 3 | dnsPacket.RECURSION_AVAILABLE,
        questions: q.questions ?? [],
      }),
      rinfo.port,
      rinfo.address,
    );
  });
  await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", resolve));
  cleanups.push(
    () =>
      new Promise((resolve) =>
        udp.close(() => {
          resolve();
        }),
      ),
  );
  return udp.address().port;
}

interface RunOptions {
  readonly table: boolean;
  readonly proxyTable: boolean;
  /** Whether queries to resolv.conf's server reach the proxy (DNS capture in place). Default: yes. */
  readonly captured?: boolean;
  readonly uid?: number;
}

async function run(options: RunOptions) {
  const upstreamPort = await nxdomainUpstream();
  const proxy = new DnsProxy({
    forwarder: createForwarder({ clock: systemClock, timeoutMs: 2000 }),
    resolvConf: { servers: [`127.0.0.1:${String(upstreamPort)}`], addresses: [], search: [] },
    namespace: "bookinfo",
    clusterDomain: "cluster.local",
  });
  if (options.proxyTable) proxy.setNameTable(TABLE);
  const server = await startDnsServer(proxy, "127.0.0.1", 0);
  cleanups.push(() => server.close());
  const fs = new MemoryFileSystem({
    "/vm/etc/resolv.conf": "nameserver 192.0.2.53\n",
    "/vm/etc/passwd": "istio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n",
    ...(options.table
      ? {
          "/vm/var/lib/istio/nds/name-table.json": encodeStoredTable({
            table: TABLE,
            receivedAt: Date.parse("2026-12-05T11:59:00Z"),
          }),
        }
      : {}),
  });
  const loaded = await loadConfig({
    env: { ISTIO_VM_ROOT: "/vm", ISTIO_META_DNS_CAPTURE: "true", DNS_PROXY_PORT: String(server.port) },
    fs,
  });
  // Real queries; the resolv.conf server (192.0.2.53:53) is the proxy when DNS is captured (what the REDIRECT rule
  // does), else the test's upstream on its loopback port.
  const resolvServer = `127.0.0.1:${String((options.captured ?? true) ? server.port : upstreamPort)}`;
  const dns: DnsClient = {
    lookupSystem: (name, ms) => nodeDnsClient.lookupSystem(name, ms),
    queryServer: (name, target, ms) =>
      nodeDnsClient.queryServer(name, target === "192.0.2.53:53" ? resolvServer : target, ms),
  };
  return runCheck(
    dnsCheck(
      checkDepsFrom(
        fakePorts({
          env: { ISTIO_VM_ROOT: "/vm" },
          fs,
          runner: nodeProcessRunner,
          clock: new FakeClock(Date.parse("2026-12-05T12:00:00Z")),
          dns,
          hostname: () => "vm1",
          ...(options.uid === undefined ? {} : { uid: options.uid }),
        }),
        { loaded, logger: createLogger({ level: "error", format: "plain", write: () => undefined }), timeoutMs: 2000 },
      ),
    ),
    new AbortController().signal,
  );
}

describe("DNS check with the agent's DNS proxy", () => {
  it("passes when a mesh name comes from the table and an outside name is forwarded; reports the table's age", async () => {
    const result = await run({ table: true, proxyTable: true });
    expect(result.ok).toBe(true);
    expect(result.summary).toMatch(/1 names, 60 s old/);
    expect(result.details).toContainEqual(
      expect.stringMatching(/^ok {3}reviews\.bookinfo\.svc\.cluster\.local at .*: 10\.96\.0\.10/),
    );
    expect(result.details).toContainEqual(
      expect.stringMatching(/^ok {3}istio-vm-dns-check\.invalid: .* ENOTFOUND; .* ENOTFOUND/),
    );
  });

  it("with DNS capture, asks the mesh name where applications ask it: the table's answer proves the capture", async () => {
    const result = await run({ table: true, proxyTable: true });
    expect(result.details).toContainEqual(
      expect.stringMatching(/^ok {3}reviews\.bookinfo\.svc\.cluster\.local at 192\.0\.2\.53:53, as applications ask/),
    );
  });

  it("fails when queries to resolv.conf's server are not captured (the upstream answers them)", async () => {
    const result = await run({ table: true, proxyTable: true, captured: false });
    expect(result.ok).toBe(false);
    expect(result.summary).toMatch(/queries to 192\.0\.2\.53:53 do not reach the DNS proxy/);
    expect(result.hint).toMatch(/iptables show/);
  });

  it("skips the capture probe as the proxy's own user, whose queries are never captured", async () => {
    const result = await run({ table: true, proxyTable: true, captured: false, uid: 998 });
    expect(result.ok).toBe(true);
    expect(result.details).toContainEqual(expect.stringMatching(/^skip capture: .*proxy's user \(uid 998\)/));
  });

  it("fails when the proxy does not answer the mesh name from the table", async () => {
    const result = await run({ table: true, proxyTable: false });
    expect(result.ok).toBe(false);
    expect(result.summary).toMatch(/does not answer reviews\.bookinfo\.svc\.cluster\.local from the name table/);
  });

  it("fails with a hint when no table was persisted yet", async () => {
    const result = await run({ table: false, proxyTable: true });
    expect(result.ok).toBe(false);
    expect(result.summary).toBe("no name table from istiod yet");
    expect(result.hint).toMatch(/name-table\.json/);
  });
});
