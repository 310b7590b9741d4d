import { createSocket } from "node:dgram";
import type { Socket as UdpSocket } from "node:dgram";
import { connect, createServer } from "node:net";
import type { AddressInfo, Server } from "node:net";
import * as dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../platform/clock.js";
import { createForwarder } from "./forwarder.js";
import { DnsProxy, startDnsServer } from "./proxy.js";
import type { DnsServer, QueryResult } from "./proxy.js";
import { parseResolvConf } from "./resolv-conf.js";

/** An upstream on loopback (UDP and TCP on one port) whose answer a test decides; it records what it got. */
interface Upstream {
  readonly server: string;
  readonly received: Buffer[];
  close(): Promise<void>;
}

type Reply = (query: Packet, raw: Buffer) => Buffer | undefined;

async function startUpstream(reply: Reply): Promise<Upstream> {
  const received: Buffer[] = [];
  const tcp: Server = createServer((socket) => {
    socket.on("data", (chunk) => {
      const raw = chunk.subarray(2);
      received.push(Buffer.from(raw));
      const answer = reply(dnsPacket.decode(raw), raw);
      if (answer === undefined) return;
      const length = Buffer.alloc(2);
      length.writeUInt16BE(answer.length);
      socket.end(Buffer.concat([length, answer]));
    });
  });
  await new Promise<void>((resolve) => tcp.listen(0, "127.0.0.1", resolve));
  const port = (tcp.address() as AddressInfo).port;
  const udp: UdpSocket = createSocket("udp4");
  udp.on("message", (raw, rinfo) => {
    received.push(raw);
    const answer = reply(dnsPacket.decode(raw), raw);
    if (answer !== undefined) udp.send(answer, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => udp.bind(port, "127.0.0.1", resolve));
  return {
    server: `127.0.0.1:${String(port)}`,
    received,
    close: () =>
      Promise.all([
        new Promise<void>((resolve) =>
          udp.close(() => {
            resolve();
          }),
        ),
        new Promise<void>((resolve) =>
          tcp.close(() => {
            resolve();
          }),
        ),
      ]).then(() => undefined),
  };
}

/** An answer with an odd TTL, flags and an EDNS option, so "unchanged" is visible byte for byte. */
function upstreamAnswer(query: Packet, rcode = 0): Buffer {
  return dnsPacket.encode({
    type: "response",
    id: query.id ?? 0,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | dnsPacket.AUTHENTIC_DATA | rcode,
    questions: query.questions ?? [],
    answers:
      rcode === 0
        ? [{ type: "A", name: query.questions?.[0]?.name ?? "", ttl: 1234, class: "IN", data: "198.51.100.9" }]
        : [],
    additionals: [
      {
        type: "OPT",
        name: ".",
        udpPayloadSize: 4096,
        extendedRcode: 0,
        ednsVersion: 0,
        flags: 0,
        flag_do: true,
        options: [{ code: 12, length: 7 }],
      },
    ],
  });
}

function query(name: string, type: "A" | "AAAA" | "TXT" = "A", id = 777): Buffer {
  return dnsPacket.encode({ type: "query", id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });
}

function udpAsk(port: number, raw: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = createSocket("udp4");
    socket.on("error", reject);
    socket.on("message", (message) => {
      socket.close();
      resolve(message);
    });
    socket.send(raw, port, "127.0.0.1");
  });
}

function tcpAsk(port: number, queries: Buffer[]): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let buffered = Buffer.alloc(0);
    const answers: Buffer[] = [];
    socket.on("error", reject);
    socket.on("connect", () => {
      for (const q of queries) {
        const length = Buffer.alloc(2);
        length.writeUInt16BE(q.length);
        socket.write(Buffer.concat([length, q]));
      }
    });
    socket.on("data", (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
        answers.push(Buffer.from(buffered.subarray(2, 2 + buffered.readUInt16BE(0))));
        buffered = buffered.subarray(2 + buffered.readUInt16BE(0));
      }
      if (answers.length === queries.length) {
        socket.end();
        resolve(answers);
      }
    });
  });
}

const RCODE_NOERROR = 0;
const RCODE_SERVFAIL = 2;
const RCODE_NXDOMAIN = 3;

function rcodeOf(packet: Packet): number {
  return (packet.flags ?? 0) & 0x0f;
}

function addresses(packet: Packet): string[] {
  return (packet.answers ?? []).flatMap((a) => (a.type === "A" || a.type === "AAAA" ? [a.data] : []));
}

const TABLE = {
  "reviews.bookinfo.svc.cluster.local": {
    ips: ["10.96.0.10", "10.96.0.20", "fd00::10"],
    shortname: "reviews",
    namespace: "bookinfo",
  },
};

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(
  upstreams: Upstream[],
  timeoutMs = 2000,
): Promise<{ proxy: DnsProxy; server: DnsServer; results: QueryResult[] }> {
  const results: QueryResult[] = [];
  const proxy = new DnsProxy({
    forwarder: createForwarder({ clock: systemClock, timeoutMs }),
    resolvConf: { servers: upstreams.map((u) => u.server), addresses: [], search: ["bookinfo.svc.cluster.local"] },
    namespace: "bookinfo",
    clusterDomain: "cluster.local",
    onQuery: (result) => results.push(result),
  });
  const server = await startDnsServer(proxy, "127.0.0.1", 0);
  cleanups.push(() => server.close());
  return { proxy, server, results };
}

async function upstream(reply: Reply): Promise<Upstream> {
  const u = await startUpstream(reply);
  cleanups.push(() => u.close());
  return u;
}

describe("DnsProxy over real sockets", () => {
  it("forwards every query before a table exists, and returns the upstream's bytes unchanged", async () => {
    const up = await upstream((q) => upstreamAnswer(q));
    const { server, results } = await setup([up]);
    const raw = query("reviews.bookinfo.svc.cluster.local");
    const answer = await udpAsk(server.port, raw);
    expect(answer).toEqual(upstreamAnswer(dnsPacket.decode(raw)));
    expect(up.received).toEqual([raw]);
    expect(results).toEqual(["forwarded"]);
  });

  it("answers table names authoritatively on UDP and TCP, short forms included, without asking upstream", async () => {
    const up = await upstream((q) => upstreamAnswer(q));
    const { proxy, server, results } = await setup([up]);
    proxy.setNameTable(TABLE);
    const udp = dnsPacket.decode(await udpAsk(server.port, query("reviews")));
    expect(udp.id).toBe(777);
    expect(rcodeOf(udp)).toBe(RCODE_NOERROR);
    expect(udp.flag_aa).toBe(true);
    expect(udp.flag_rd).toBe(true);
    expect(addresses(udp).sort()).toEqual(["10.96.0.10", "10.96.0.20"]);
    expect(udp.answers?.every((a) => a.name === "reviews" && a.type === "A" && a.ttl === 30)).toBe(true);
    const tcp = await tcpAsk(server.port, [
      query("reviews.bookinfo", "AAAA", 1),
      query("reviews.bookinfo.svc.cluster.local", "A", 2),
    ]);
    const decoded = tcp.map((b) => dnsPacket.decode(b)).sort((a, b) => (a.id ?? 0) - (b.id ?? 0));
    expect(decoded[0] === undefined ? [] : addresses(decoded[0])).toEqual(["fd00::10"]);
    expect(decoded[1]?.answers).toHaveLength(2);
    expect(up.received).toEqual([]);
    expect(results).toEqual(["table", "table", "table"]);
  });

  it("forwards other names and other types of table names, over the client's transport", async () => {
    const up = await upstream((q) => upstreamAnswer(q));
    const { proxy, server } = await setup([up]);
    proxy.setNameTable(TABLE);
    const txt = query("reviews", "TXT");
    expect(await udpAsk(server.port, txt)).toEqual(upstreamAnswer(dnsPacket.decode(txt)));
    const other = query("www.example.org");
    const [viaTcp] = await tcpAsk(server.port, [other]);
    expect(viaTcp).toEqual(upstreamAnswer(dnsPacket.decode(other)));
    expect(up.received).toEqual([txt, other]);
  });

  it("queries all upstreams in parallel and returns the one that answers while another stays silent", async () => {
    const silent = await upstream(() => undefined);
    const answering = await upstream((q) => upstreamAnswer(q));
    const { server } = await setup([silent, answering]);
    const raw = query("www.example.org");
    expect(await udpAsk(server.port, raw)).toEqual(upstreamAnswer(dnsPacket.decode(raw)));
    expect(silent.received).toEqual([raw]);
  });

  it("prefers a real answer over another upstream's SERVFAIL, and passes a SERVFAIL through when that is all", async () => {
    const failing = await upstream((q) => upstreamAnswer(q, 2));
    const answering = await upstream((q) => upstreamAnswer(q));
    const { server } = await setup([failing, answering]);
    const raw = query("www.example.org");
    expect(await udpAsk(server.port, raw)).toEqual(upstreamAnswer(dnsPacket.decode(raw)));

    const alone = await setup([failing]);
    expect(await udpAsk(alone.server.port, raw)).toEqual(upstreamAnswer(dnsPacket.decode(raw), 2));
    expect(alone.results).toEqual(["forwarded"]);
  });

  it("answers SERVFAIL itself only when no upstream answers at all", async () => {
    const silent = await upstream(() => undefined);
    const { server, results } = await setup([silent], 200);
    const answer = dnsPacket.decode(await udpAsk(server.port, query("www.example.org")));
    expect(rcodeOf(answer)).toBe(RCODE_SERVFAIL);
    expect(answer.id).toBe(777);
    expect(results).toEqual(["upstream_failed"]);
  });

  it("uses the new upstreams and search list after setResolvConf", async () => {
    const first = await upstream((q) => upstreamAnswer(q));
    const second = await upstream((q) => upstreamAnswer(q, 3));
    const { proxy, server } = await setup([first]);
    proxy.setNameTable(TABLE);
    proxy.setResolvConf({ ...parseResolvConf("search other.svc.cluster.local\n"), servers: [second.server] });
    const answer = dnsPacket.decode(await udpAsk(server.port, query("www.example.org")));
    expect(rcodeOf(answer)).toBe(RCODE_NXDOMAIN);
    expect(first.received).toEqual([]);
    // The CNAME short-cut now follows the new first search domain.
    const cname = dnsPacket.decode(
      await udpAsk(server.port, query("reviews.bookinfo.svc.cluster.local.other.svc.cluster.local")),
    );
    expect(cname.answers?.[0]).toMatchObject({ type: "CNAME", data: "reviews.bookinfo.svc.cluster.local" });
  });

  it("answers a query with two questions FORMERR, and truncates a table answer too large for plain UDP", async () => {
    const up = await upstream((q) => upstreamAnswer(q));
    const { proxy, server } = await setup([up]);
    const many = Array.from({ length: 60 }, (_, i) => `10.97.${String(Math.floor(i / 250))}.${String(i % 250)}`);
    proxy.setNameTable({ "big.bookinfo.svc.cluster.local": { ips: many, shortname: "big", namespace: "bookinfo" } });
    const two = dnsPacket.encode({
      type: "query",
      id: 5,
      questions: [
        { type: "A", name: "a.example" },
        { type: "A", name: "b.example" },
      ],
    });
    expect(rcodeOf(dnsPacket.decode(await udpAsk(server.port, two)))).toBe(1);
    const big = dnsPacket.decode(await udpAsk(server.port, query("big")));
    expect(big.flag_tc).toBe(true);
    expect(big.answers).toEqual([]);
    const [overTcp] = await tcpAsk(server.port, [query("big")]);
    expect(dnsPacket.decode(overTcp ?? Buffer.alloc(0)).answers).toHaveLength(60);
  });
});
