/**
 * The agent's DNS proxy: latency (p50/p99 of sequential UDP queries) of a mesh name answered from the table, of a
 * name forwarded to the upstream, and of the same name asked at the upstream directly; and queries per second
 * through the proxy with 64 queries in flight (the proxy runs on this one Node thread, so that is one core; the
 * client shares that thread, so the proxy numbers include the client's work and are pessimistic). The
 * upstream is a real dnsmasq on loopback answering from its own records.
 */
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import * as dnsPacket from "dns-packet";
import { createForwarder } from "../src/dns/forwarder.js";
import { DnsProxy, startDnsServer } from "../src/dns/proxy.js";
import { systemClock } from "../src/platform/clock.js";

function row(name: string, value: string, note?: string): void {
  process.stdout.write(
    `${JSON.stringify({ table: "dns", case: name, value, ...(note === undefined ? {} : { note }) })}\n`,
  );
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) =>
    server.close(() => {
      resolve();
    }),
  );
  return port;
}

const client = createSocket("udp4");
const pending = new Map<number, () => void>();
client.on("message", (message) => {
  const id = message.readUInt16BE(0);
  const done = pending.get(id);
  pending.delete(id);
  done?.();
});
await new Promise<void>((resolve) => client.bind(0, "127.0.0.1", resolve));
let nextId = 0;

function ask(port: number, name: string): Promise<void> {
  const id = (nextId = (nextId + 1) & 0xffff);
  const query = dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: "A", name }],
  });
  return new Promise((resolve) => {
    pending.set(id, resolve);
    client.send(query, port, "127.0.0.1");
  });
}

async function latency(port: number, name: string, count = 3000): Promise<{ p50: number; p99: number }> {
  for (let i = 0; i < 200; i++) await ask(port, name);
  const samples: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    await ask(port, name);
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number): number => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? NaN;
  return { p50: at(0.5), p99: at(0.99) };
}

async function throughput(port: number, name: string, seconds = 3, inFlight = 64): Promise<number> {
  let done = 0;
  const end = performance.now() + seconds * 1000;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      await ask(port, name);
      done++;
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return done / seconds;
}

const upstreamPort = await freePort();
const dnsmasq = spawn(
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
    "--host-record=www.upstream.test,192.0.2.55",
  ],
  { stdio: "ignore" },
);
try {
  await new Promise((resolve) => setTimeout(resolve, 500));
  const proxy = new DnsProxy({
    forwarder: createForwarder({ clock: systemClock, timeoutMs: 5000 }),
    resolvConf: { servers: [`127.0.0.1:${String(upstreamPort)}`], addresses: ["127.0.0.1"], search: [] },
    namespace: "bookinfo",
    clusterDomain: "cluster.local",
  });
  const table: Record<string, { ips: string[]; shortname: string; namespace: string }> = {};
  for (let i = 0; i < 5000; i++) {
    table[`svc${String(i)}.bookinfo.svc.cluster.local`] = {
      ips: [`10.96.${String(i >> 8)}.${String(i & 255)}`],
      shortname: `svc${String(i)}`,
      namespace: "bookinfo",
    };
  }
  proxy.setNameTable(table);
  const server = await startDnsServer(proxy, "127.0.0.1", 0);
  const ms = (v: number): string => `${v.toFixed(3)} ms`;
  const hit = await latency(server.port, "svc4242");
  const forwarded = await latency(server.port, "www.upstream.test");
  const direct = await latency(upstreamPort, "www.upstream.test");
  row("table hit (5 000 names), p50 / p99", `${ms(hit.p50)} / ${ms(hit.p99)}`, "answered by the proxy");
  row("forwarded to dnsmasq, p50 / p99", `${ms(forwarded.p50)} / ${ms(forwarded.p99)}`, "through the proxy");
  row("dnsmasq directly, p50 / p99", `${ms(direct.p50)} / ${ms(direct.p99)}`, "the same name, no proxy");
  row(
    "table hits per second, one core",
    `${Math.round(await throughput(server.port, "svc4242")).toLocaleString("en")} /s`,
    "64 in flight",
  );
  row(
    "forwarded per second, one core",
    `${Math.round(await throughput(server.port, "www.upstream.test")).toLocaleString("en")} /s`,
    "64 in flight",
  );
  await server.close();
} finally {
  dnsmasq.kill("SIGTERM");
  client.close();
}
