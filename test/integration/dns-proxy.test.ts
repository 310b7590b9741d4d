/**
 * The DNS proxy against a real upstream: dnsmasq on loopback as the VM's resolver, the proxy on another loopback
 * port, and `host` (bind9-host) as the client over UDP and TCP. Mesh names come from the table; everything else,
 * and other record types of mesh names, come from dnsmasq with its TTL and flags.
 */
import { spawn, execFile } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createForwarder } from "../../src/dns/forwarder.js";
import { DnsProxy, startDnsServer } from "../../src/dns/proxy.js";
import type { DnsServer } from "../../src/dns/proxy.js";
import { parseResolvConf } from "../../src/dns/resolv-conf.js";
import { systemClock } from "../../src/platform/clock.js";
import { freePort } from "../support/net.js";
import { requirements } from "../support/requirements.js";

const run = promisify(execFile);
const missing = requirements({ tools: ["dnsmasq", "host"] });

async function host(args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run("host", ["-W", "3", ...args]);
    return { code: 0, stdout };
  } catch (error) {
    const e = error as { code?: number; stdout?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "" };
  }
}

describe.skipIf(missing !== undefined)("DNS proxy with dnsmasq as upstream", () => {
  let dnsmasq: ChildProcess | undefined;
  let server: DnsServer | undefined;
  let upstreamPort = 0;
  const proxyAt = (): string[] => ["-p", String(server?.port ?? 0)];

  beforeAll(async () => {
    upstreamPort = await freePort();
    dnsmasq = spawn(
      "dnsmasq",
      [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        `--port=${String(upstreamPort)}`,
        ...(process.getuid?.() === 0 ? ["--user=root"] : []),
        "--pid-file=",
        "--local-ttl=77",
        "--host-record=www.upstream.test,192.0.2.55",
        // The upstream knows a different address for the mesh name: an answer of 10.96.0.10 came from the table.
        "--host-record=reviews.bookinfo.svc.cluster.local,10.255.0.1",
        "--txt-record=reviews.bookinfo.svc.cluster.local,from-dnsmasq",
        // Answers NXDOMAIN for unknown names under upstream.test (without it dnsmasq refuses them).
        "--local=/upstream.test/",
      ],
      { stdio: "ignore" },
    );
    for (let i = 0; i < 50; i++) {
      const r = await host(["-p", String(upstreamPort), "-t", "A", "www.upstream.test", "127.0.0.1"]);
      if (r.code === 0) break;
      if (i === 49) throw new Error("dnsmasq did not start answering");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const proxy = new DnsProxy({
      forwarder: createForwarder({ clock: systemClock, timeoutMs: 5000 }),
      resolvConf: parseResolvConf(`nameserver 127.0.0.1\nsearch bookinfo.svc.cluster.local svc.cluster.local\n`),
      namespace: "bookinfo",
      clusterDomain: "cluster.local",
    });
    // parseResolvConf gives port 53; the test's dnsmasq listens elsewhere.
    proxy.setResolvConf({ ...proxy.resolvConf, servers: [`127.0.0.1:${String(upstreamPort)}`] });
    proxy.setNameTable({
      "reviews.bookinfo.svc.cluster.local": {
        ips: ["10.96.0.10", "fd00::10"],
        shortname: "reviews",
        namespace: "bookinfo",
      },
    });
    server = await startDnsServer(proxy, "127.0.0.1", 0);
  });

  afterAll(async () => {
    await server?.close();
    if (dnsmasq?.pid !== undefined && dnsmasq.exitCode === null) {
      const exited = new Promise((resolve) => dnsmasq?.once("exit", resolve));
      dnsmasq.kill("SIGTERM");
      await exited;
    }
  });

  it.each([[[]], [["-T"]]])("answers a mesh name and its short forms from the table (%j)", async (transport) => {
    for (const name of ["reviews", "reviews.bookinfo", "reviews.bookinfo.svc", "reviews.bookinfo.svc.cluster.local"]) {
      const a = await host([...transport, ...proxyAt(), "-t", "A", name, "127.0.0.1"]);
      expect(a.stdout).toContain("has address 10.96.0.10");
      expect(a.stdout).not.toContain("10.255.0.1");
    }
    const aaaa = await host([...transport, ...proxyAt(), "-t", "AAAA", "reviews", "127.0.0.1"]);
    expect(aaaa.stdout).toContain("has IPv6 address fd00::10");
  });

  it.each([[[]], [["-T"]]])("forwards a non-mesh name and keeps dnsmasq's TTL and flags (%j)", async (transport) => {
    const viaProxy = await host(["-v", ...transport, ...proxyAt(), "-t", "A", "www.upstream.test", "127.0.0.1"]);
    expect(viaProxy.code).toBe(0);
    expect(viaProxy.stdout).toMatch(/www\.upstream\.test\.\s+77\s+IN\s+A\s+192\.0\.2\.55/);
    const direct = await host([
      "-v",
      ...transport,
      "-p",
      String(upstreamPort),
      "-t",
      "A",
      "www.upstream.test",
      "127.0.0.1",
    ]);
    const flags = (text: string): string | undefined => /flags: ([a-z ]+);/.exec(text)?.[1];
    expect(flags(viaProxy.stdout)).toBe(flags(direct.stdout));
  });

  it("forwards other record types of a mesh name, and passes dnsmasq's NXDOMAIN through", async () => {
    const txt = await host([...proxyAt(), "-t", "TXT", "reviews.bookinfo.svc.cluster.local", "127.0.0.1"]);
    expect(txt.stdout).toContain('"from-dnsmasq"');
    const nx = await host([...proxyAt(), "-t", "A", "nothing.upstream.test", "127.0.0.1"]);
    expect(nx.code).not.toBe(0);
    expect(nx.stdout).toContain("NXDOMAIN");
  });
});
