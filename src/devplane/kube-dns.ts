/**
 * The dev control plane's kube-dns: answers `<service>.<namespace>.svc.cluster.local` A and AAAA queries from the
 * object store, over UDP and TCP (RFC 1035 §4.2.2 two-byte length framing), on one address and port. A Service's
 * `spec.clusterIPs` (or `clusterIP`) are its addresses; a headless Service (`clusterIP: None`) answers with the
 * ready addresses of its Endpoints, as kube-dns does. A name in the zone that is not a Service is NXDOMAIN, an
 * existing name without records of the asked type is NODATA; both carry the zone's SOA in the authority section so
 * resolvers cache the negative answer. Names outside the zone are REFUSED: this server is no recursive resolver.
 *
 * Pure part: `answerQuery(store, query)` (packet in, packet out). Thin part: `startKubeDns` binds the sockets.
 */
import { createSocket } from "node:dgram";
import { networkInterfaces } from "node:os";
import type { Socket as UdpSocket } from "node:dgram";
import { isIP, createServer } from "node:net";
import type { Socket } from "node:net";
import * as dnsPacket from "dns-packet";
import type { Answer, Packet, Question } from "dns-packet";
import type { KubeObject, ObjectStore } from "./store.js";
import { listenOn } from "../platform/tcp.js";

export const CLUSTER_DOMAIN = "cluster.local";
/** Short, as kube-dns' 5 s for services: the store changes under tests and demos. */
const TTL_SECONDS = 5;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

interface ServiceSpec {
  readonly clusterIP?: string;
  readonly clusterIPs?: readonly string[];
}

interface EndpointsObject {
  readonly subsets?: readonly { readonly addresses?: readonly { readonly ip: string }[] }[];
}

export interface KubeDnsOptions {
  /** Cluster domain (default cluster.local). */
  readonly domain?: string;
}

/** The addresses a Service name resolves to, or undefined when no such Service exists. */
export function serviceAddresses(store: ObjectStore, namespace: string, name: string): string[] | undefined {
  const service = store.tryGet("services", namespace, name) as (KubeObject & { spec?: ServiceSpec }) | undefined;
  if (service === undefined) return undefined;
  const spec = service.spec ?? {};
  const ips = spec.clusterIPs ?? (spec.clusterIP === undefined ? [] : [spec.clusterIP]);
  const assigned = ips.filter((ip) => ip !== "" && ip !== "None");
  if (assigned.length > 0 || (ips.length > 0 && !ips.includes("None"))) return assigned;
  // Headless: the ready endpoint addresses.
  const endpoints = store.tryGet("endpoints", namespace, name) as (KubeObject & EndpointsObject) | undefined;
  return [...new Set((endpoints?.subsets ?? []).flatMap((s) => (s.addresses ?? []).map((a) => a.ip)))];
}

function soa(domain: string): Answer {
  return {
    type: "SOA",
    name: domain,
    ttl: TTL_SECONDS,
    class: "IN",
    data: {
      mname: `ns.dns.${domain}`,
      rname: `hostmaster.${domain}`,
      serial: Math.floor(Date.now() / 1000) >>> 0,
      refresh: 7200,
      retry: 1800,
      expire: 86400,
      minimum: TTL_SECONDS,
    },
  };
}

function lower(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

interface QuestionAnswer {
  readonly rcode: number;
  readonly answers: Answer[];
  readonly authoritative: boolean;
}

function answerQuestion(store: ObjectStore, question: Question, domain: string): QuestionAnswer {
  const name = lower(question.name);
  const zone = `svc.${domain}`;
  if (name !== zone && !name.endsWith(`.${zone}`)) return { rcode: RCODE.REFUSED, answers: [], authoritative: false };
  const labels = name === zone ? [] : name.slice(0, -(zone.length + 1)).split(".");
  const nodata: QuestionAnswer = { rcode: RCODE.NOERROR, answers: [], authoritative: true };
  const nxdomain: QuestionAnswer = { rcode: RCODE.NXDOMAIN, answers: [], authoritative: true };
  // `svc.cluster.local` and `<ns>.svc.cluster.local` exist (they have children) but hold no records.
  if (labels.length === 0) return nodata;
  if (labels.length === 1) {
    return store.tryGet("namespaces", undefined, labels[0] ?? "") !== undefined ||
      store.list("services", labels[0]).length > 0
      ? nodata
      : nxdomain;
  }
  if (labels.length !== 2) return nxdomain;
  const [service = "", namespace = ""] = labels;
  const addresses = serviceAddresses(store, namespace, service);
  if (addresses === undefined) return nxdomain;
  const family = question.type === "A" ? 4 : question.type === "AAAA" ? 6 : 0;
  if (family === 0) return nodata;
  const answers: Answer[] = addresses
    .filter((ip) => isIP(ip) === family)
    .map((ip) => ({ type: family === 4 ? "A" : "AAAA", name: question.name, ttl: TTL_SECONDS, class: "IN", data: ip }));
  return { rcode: RCODE.NOERROR, answers, authoritative: true };
}

/** Answers one query packet; pure apart from reading the store. */
export function answerQuery(store: ObjectStore, query: Packet, options: KubeDnsOptions = {}): Packet {
  const domain = options.domain ?? CLUSTER_DOMAIN;
  const questions = query.questions ?? [];
  const recursionDesired = ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) !== 0;
  const base = { type: "response" as const, id: query.id ?? 0, questions };
  const flags = (rcode: number, authoritative: boolean): number =>
    (authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) | (recursionDesired ? dnsPacket.RECURSION_DESIRED : 0) | rcode;
  // Real servers answer one question per query; anything else is a format error.
  const question = questions[0];
  if (question === undefined || questions.length !== 1) return { ...base, flags: flags(RCODE.FORMERR, false) };
  const result = answerQuestion(store, question, domain);
  const negative = result.authoritative && result.answers.length === 0;
  return {
    ...base,
    flags: flags(result.rcode, result.authoritative),
    answers: result.answers,
    authorities: negative ? [soa(domain)] : [],
  };
}

function respond(store: ObjectStore, message: Buffer, options: KubeDnsOptions): Buffer | undefined {
  let query: Packet;
  try {
    query = dnsPacket.decode(message);
  } catch {
    // Undecodable: answer FORMERR when at least the id can be read, as servers do.
    if (message.length < 2) return undefined;
    return dnsPacket.encode({ type: "response", id: message.readUInt16BE(0), flags: RCODE.FORMERR, questions: [] });
  }
  if (query.type === "response") return undefined;
  return dnsPacket.encode(answerQuery(store, query, options));
}

export interface KubeDnsServer {
  /** The address both sockets listen on, e.g. 127.0.0.1. */
  readonly host: string;
  readonly port: number;
  /** `host:port` (or `[v6]:port`), as dnsmasq's server= and resolver setServers take it. */
  readonly address: string;
  /** Queries answered so far (UDP and TCP). */
  readonly queries: number;
  close(): Promise<void>;
}

export interface StartKubeDnsOptions extends KubeDnsOptions {
  readonly store: ObjectStore;
  /** Default 127.0.0.1. */
  readonly host?: string;
  /** 0 (default) picks a free port, the same for UDP and TCP. */
  readonly port?: number;
}

function bindUdp(host: string, port: number): Promise<UdpSocket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIP(host) === 6 ? "udp6" : "udp4");
    socket.once("error", reject);
    socket.bind(port, host, () => {
      socket.off("error", reject);
      resolve(socket);
    });
  });
}

function serveTcpConnection(socket: Socket, handle: (message: Buffer) => Buffer | undefined): void {
  let pending = Buffer.alloc(0);
  socket.setTimeout(10_000, () => socket.destroy());
  socket.on("error", () => socket.destroy());
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2) {
      const length = pending.readUInt16BE(0);
      if (pending.length < 2 + length) break;
      const message = pending.subarray(2, 2 + length);
      pending = pending.subarray(2 + length);
      const reply = handle(message);
      if (reply !== undefined) {
        const framed = Buffer.alloc(2 + reply.length);
        framed.writeUInt16BE(reply.length, 0);
        reply.copy(framed, 2);
        socket.write(framed);
      }
    }
  });
}

export async function startKubeDns(options: StartKubeDnsOptions): Promise<KubeDnsServer> {
  const host = options.host ?? "127.0.0.1";
  let count = 0;
  const handle = (message: Buffer): Buffer | undefined => {
    count++;
    try {
      return respond(options.store, message, options);
    } catch {
      return message.length >= 2
        ? dnsPacket.encode({ type: "response", id: message.readUInt16BE(0), flags: RCODE.SERVFAIL, questions: [] })
        : undefined;
    }
  };
  // Port 0: let UDP pick, then take the same port for TCP; retry when another process holds that TCP port.
  for (let attempt = 0; ; attempt++) {
    const udp = await bindUdp(host, options.port ?? 0);
    const port = udp.address().port;
    const connections = new Set<Socket>();
    const tcp = createServer((socket) => {
      connections.add(socket);
      socket.on("close", () => connections.delete(socket));
      serveTcpConnection(socket, handle);
    });
    try {
      await listenOn(tcp, port, host);
    } catch (error) {
      udp.close();
      if ((options.port ?? 0) === 0 && attempt < 10) continue;
      throw error;
    }
    udp.on("message", (message, remote) => {
      const reply = handle(message);
      if (reply !== undefined) udp.send(reply, remote.port, remote.address);
    });
    udp.on("error", () => undefined);
    return {
      host,
      port,
      address: isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`,
      get queries() {
        return count;
      },
      close: async () => {
        for (const socket of connections) socket.destroy();
        await Promise.all([
          new Promise<void>((resolve) => {
            udp.close(() => {
              resolve();
            });
          }),
          new Promise<void>((resolve) => {
            tcp.close(() => {
              resolve();
            });
          }),
        ]);
      },
    };
  }
}

/**
 * A wildcard listen address as the machine's own addresses: a UDP server bound to 0.0.0.0 answers from the
 * interface's primary address, not the one the query was sent to, and resolvers (dnsmasq among them) drop such
 * answers. Binding each address, as dnsmasq's --bind-interfaces does, keeps source and destination equal.
 */
function concreteAddresses(host: string): string[] {
  if (host !== "0.0.0.0" && host !== "::") return [host];
  const family = host === "0.0.0.0" ? "IPv4" : "IPv6";
  return Object.values(networkInterfaces())
    .flatMap((list) => list ?? [])
    .filter((i) => i.family === family && !(family === "IPv6" && i.address.startsWith("fe80:")))
    .map((i) => i.address);
}

/**
 * kube-dns as a dev service of `istio-vm dev`, on every listen host (port name `kube-dns`; e.g.
 * `--service-port kube-dns=53` inside a network namespace). Point dnsmasq's `server=/svc.cluster.local/` at it.
 */
export function kubeDnsDevService(): import("./dev-plane.js").DevService {
  return {
    name: "kube-dns",
    async start(ctx) {
      const servers: KubeDnsServer[] = [];
      try {
        let port = ctx.ports.get("kube-dns");
        for (const host of ctx.listenHosts.flatMap(concreteAddresses)) {
          const server = await startKubeDns({ store: ctx.store, host, ...(port === undefined ? {} : { port }) });
          // Every address answers on the same port, so one server= line fits whichever address a resolver uses.
          port ??= server.port;
          servers.push(server);
        }
      } catch (error) {
        await Promise.all(servers.map((s) => s.close()));
        throw error;
      }
      return {
        name: "kube-dns",
        addresses: servers.map((s) => ({ name: "dns (udp+tcp)", address: s.address })),
        close: async () => {
          await Promise.all(servers.map((s) => s.close()));
        },
      };
    },
  };
}
