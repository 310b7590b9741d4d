/**
 * The agent's DNS proxy: answers mesh names from the NDS lookup table and forwards everything else to the VM's
 * resolv.conf nameservers, on UDP and TCP (RFC 1035 §4.2.2 length framing, RFC 7766 several queries per
 * connection). Fail-open by construction: no table yet means every query is forwarded; an undecodable query is
 * forwarded as it is (an upstream may understand what dns-packet does not); SERVFAIL comes from us only when no
 * upstream answered at all.
 */
import { createSocket } from "node:dgram";
import type { Socket as UdpSocket } from "node:dgram";
import { createServer } from "node:net";
import type { AddressInfo, Server as TcpServer, Socket } from "node:net";
import * as dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";
import type { Forwarder, Transport } from "./forwarder.js";
import { buildLookupTable } from "./name-table.js";
import type { LookupContext, LookupTable, NameTable } from "./name-table.js";
import type { ResolvConf } from "./resolv-conf.js";
import { decide, encodeForUdp, serverFailure, udpLimit } from "./resolver.js";

/** How a query ended, for metrics: answered from the table, forwarded, or failed because no upstream answered. */
export type QueryResult = "table" | "forwarded" | "upstream_failed" | "malformed";

export interface DnsProxyOptions {
  readonly forwarder: Forwarder;
  readonly resolvConf: ResolvConf;
  /** The VM's namespace and cluster domain; the search list comes from resolv.conf. */
  readonly namespace: string;
  readonly clusterDomain: string;
  readonly onQuery?: (result: QueryResult, transport: Transport) => void;
}

export class DnsProxy {
  #resolvConf: ResolvConf;
  #nameTable: NameTable | undefined;
  #lookup: LookupTable | undefined;
  readonly #options: DnsProxyOptions;

  constructor(options: DnsProxyOptions) {
    this.#options = options;
    this.#resolvConf = options.resolvConf;
  }

  get resolvConf(): ResolvConf {
    return this.#resolvConf;
  }

  get nameTable(): NameTable | undefined {
    return this.#nameTable;
  }

  /** Number of hosts in the table, or undefined before the first one. */
  get tableSize(): number | undefined {
    return this.#lookup?.size;
  }

  setNameTable(table: NameTable): void {
    this.#nameTable = table;
    this.#lookup = buildLookupTable(table, this.#context());
  }

  /** A changed resolv.conf: new upstreams, and a new search list (the CNAME short-cuts depend on it). */
  setResolvConf(conf: ResolvConf): void {
    this.#resolvConf = conf;
    if (this.#nameTable !== undefined) this.#lookup = buildLookupTable(this.#nameTable, this.#context());
  }

  #context(): LookupContext {
    return {
      namespace: this.#options.namespace,
      clusterDomain: this.#options.clusterDomain,
      searchDomains: this.#resolvConf.search,
    };
  }

  /** Answers one query (the client's bytes); undefined: nothing to send (no header to answer to). */
  async handle(raw: Buffer, transport: Transport): Promise<Buffer | undefined> {
    let query: Packet | undefined;
    try {
      query = dnsPacket.decode(raw);
    } catch {
      query = undefined;
    }
    const decision = query === undefined ? { kind: "forward" as const } : decide(query, this.#lookup);
    if (decision.kind !== "forward") {
      this.#options.onQuery?.(decision.kind, transport);
      const limit = transport === "udp" && query !== undefined ? udpLimit(query) : 65535;
      return encodeForUdp(decision.response, limit);
    }
    if (raw.length < 12) return undefined;
    const result = await this.#options.forwarder.forward(raw, transport, this.#resolvConf.servers);
    if (result.ok) {
      this.#options.onQuery?.("forwarded", transport);
      return result.response;
    }
    this.#options.onQuery?.("upstream_failed", transport);
    if (query === undefined) return undefined;
    return dnsPacket.encode(serverFailure(query));
  }
}

export interface DnsServer {
  /** The bound port (the same for UDP and TCP). */
  readonly port: number;
  close(): Promise<void>;
}

/** Serves the proxy on `host:port` over UDP and TCP; port 0 picks one free for both (tests). */
export async function startDnsServer(proxy: DnsProxy, host: string, port: number): Promise<DnsServer> {
  const connections = new Set<Socket>();
  const tcp = createServer((socket) => {
    connections.add(socket);
    socket.on("close", () => connections.delete(socket));
    serveTcpConnection(proxy, socket);
  });
  await new Promise<void>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen({ host, port, exclusive: true }, () => {
      tcp.off("error", reject);
      resolve();
    });
  });
  const bound = (tcp.address() as AddressInfo).port;
  let udp: UdpSocket;
  try {
    udp = await bindUdp(proxy, host, bound);
  } catch (error) {
    await closeTcp(tcp, connections);
    throw error;
  }
  return {
    port: bound,
    async close() {
      await Promise.all([
        new Promise<void>((resolve) =>
          udp.close(() => {
            resolve();
          }),
        ),
        closeTcp(tcp, connections),
      ]);
    },
  };
}

function closeTcp(tcp: TcpServer, connections: Set<Socket>): Promise<void> {
  return new Promise((resolve) => {
    tcp.close(() => {
      resolve();
    });
    for (const socket of connections) socket.destroy();
  });
}

function bindUdp(proxy: DnsProxy, host: string, port: number): Promise<UdpSocket> {
  const udp = createSocket(host.includes(":") ? "udp6" : "udp4");
  let open = true;
  udp.once("close", () => {
    open = false;
  });
  udp.on("message", (message, rinfo) => {
    void proxy.handle(message, "udp").then((response) => {
      // An answer that arrives after close (a slow upstream during shutdown) is dropped: send would throw.
      if (response !== undefined && open) udp.send(response, rinfo.port, rinfo.address);
    });
  });
  return new Promise((resolve, reject) => {
    udp.once("error", reject);
    udp.bind({ address: host, port, exclusive: true }, () => {
      udp.off("error", reject);
      // A send to a client that went away is not the server's problem.
      udp.on("error", () => undefined);
      resolve(udp);
    });
  });
}

/** Two-byte length framed queries, answered in arrival order or not: each answer carries its query's id. */
function serveTcpConnection(proxy: DnsProxy, socket: Socket): void {
  let buffered = Buffer.alloc(0);
  socket.setTimeout(30_000, () => socket.destroy());
  socket.on("error", () => undefined);
  socket.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 2) {
      const size = buffered.readUInt16BE(0);
      if (buffered.length < 2 + size) break;
      const query = Buffer.from(buffered.subarray(2, 2 + size));
      buffered = buffered.subarray(2 + size);
      void proxy.handle(query, "tcp").then((response) => {
        if (response === undefined || socket.destroyed) return;
        const length = Buffer.alloc(2);
        length.writeUInt16BE(response.length);
        socket.write(Buffer.concat([length, response]));
      });
    }
  });
}
