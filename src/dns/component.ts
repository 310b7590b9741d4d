/**
 * The agent's `dns` component (istiod profile, ISTIO_META_DNS_CAPTURE=true): the DNS proxy on 127.0.0.1:DNS_PROXY_PORT
 * (UDP and TCP), fed with the NDS name table istiod sends on the agent's xDS proxy's upstream stream
 * (src/dns/nds-upstream.ts), or, where no proxy runs, on a stream of the agent's own (src/xds/ads-watch.ts).
 *
 * Also on [::1]:DNS_PROXY_PORT once resolv.conf lists an IPv6 nameserver: the capture rules redirect an IPv6 query
 * there (REDIRECT of a local packet goes to the loopback address of its family), as istio-agent listens per
 * resolv.conf family (istio pkg/dns/client/dns.go).
 *
 * Fail-open, in this order: at start the proxy answers before anything else is known (every name forwarded), then
 * with the table persisted by the last run, then with each table istiod sends (persisted atomically). istiod going
 * away changes nothing: the last table stays in use. resolv.conf is re-read when its content changes (DHCP, VPN,
 * systemd-resolved), for new upstreams and a new search list. Starting never waits on istiod.
 */
import { join } from "node:path";
import type { AgentComponent, AgentDeps, ComponentFactory } from "../agent/component.js";
import type { ConfigValues } from "../config/registry.js";
import { describeError } from "../platform/errors.js";
import { programVersion } from "../version.js";
import type { AdsConnection } from "../xds/ads-watch.js";
import { watchAds } from "../xds/ads-watch.js";
import { agentAdsConnection } from "../xds/agent-connection.js";
import { decodeNameTable, NAME_TABLE_TYPE_URL } from "../xds/nds.js";
import { probeNode } from "../xds/node.js";
import { createForwarder } from "./forwarder.js";
import { upstreamNameTableSource } from "./nds-upstream.js";
import type { NameTable } from "./name-table.js";
import { DnsProxy, startDnsServer } from "./proxy.js";
import type { DnsServer } from "./proxy.js";
import { parseResolvConf } from "./resolv-conf.js";
import type { ResolvConf } from "./resolv-conf.js";
import { loadStoredTable, saveStoredTable } from "./table-store.js";

/** Where name tables come from: called once, runs until `signal` aborts, calls `onTable` for each table. */
export type NameTableSource = (
  deps: AgentDeps,
  values: () => ConfigValues,
  handlers: { onTable(table: NameTable): void; onDisconnect(reason: string): void },
  signal: AbortSignal,
) => Promise<void>;

export interface DnsProxyPorts {
  readonly hostname: string;
  readonly source: NameTableSource;
  /** How often resolv.conf is compared with what the proxy uses. */
  readonly resolvConfPollMs: number;
  /** Per forwarded query (istio's DNS_FORWARD_TIMEOUT). */
  readonly forwardTimeoutMs: number;
}

export const NAME_TABLE_FILE = "nds/name-table.json";

export function nameTablePath(values: ConfigValues): string {
  return join(values.ISTIO_CFG, NAME_TABLE_FILE);
}

/** Where the proxy listens: 127.0.0.1 always, ::1 when a nameserver is IPv6 (its queries are redirected there). */
export function listenAddresses(conf: ResolvConf): string[] {
  return conf.addresses.some((a) => a.includes(":")) ? ["127.0.0.1", "::1"] : ["127.0.0.1"];
}

function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${String(port)}` : `${host}:${String(port)}`;
}

export function dnsProxyEnabled(values: ConfigValues): boolean {
  return values.ISTIO_CONTROL_PLANE === "istiod" && values.ISTIO_META_DNS_CAPTURE;
}

/** The connection of the agent's NDS stream: as the discovery check's, with DNS_CAPTURE in the node metadata. */
async function connectionFor(deps: AgentDeps, values: ConfigValues, hostname: string): Promise<AdsConnection> {
  const metadata = Object.fromEntries(Object.values(deps.loaded.metadata).map((m) => [m.name, m.raw]));
  const base = probeNode(values, hostname, metadata, programVersion());
  // istiod builds a name table only for a proxy that says it captures DNS (pilot/pkg/xds/nds.go).
  const node = { ...base, metadata: { ...base.metadata, DNS_CAPTURE: "true" } };
  return agentAdsConnection(deps.fs, values, node);
}

/** The agent's own ADS stream to istiod (DISCOVERY_ADDRESS), subscribed to NDS only. */
export function adsNameTableSource(hostname: string): NameTableSource {
  return (deps, values, handlers, signal) =>
    watchAds(
      {
        typeUrl: NAME_TABLE_TYPE_URL,
        clock: deps.clock,
        connection: () => connectionFor(deps, values(), hostname),
        onResources: (resources) => {
          const first = resources[0];
          if (first === undefined) return "the NDS response holds no NameTable";
          handlers.onTable(decodeNameTable(first.value));
          return undefined;
        },
        onDisconnect: (reason) => {
          handlers.onDisconnect(reason);
        },
      },
      signal,
    );
}

export function createDnsProxyComponent(ports: DnsProxyPorts): ComponentFactory {
  return (deps: AgentDeps): AgentComponent | undefined => {
    if (!dnsProxyEnabled(deps.config)) return undefined;
    let values = deps.config;
    const logger = deps.logger.child("dns");
    const queries = deps.metrics.counter(
      "istio_vm_dns_queries_total",
      "queries the DNS proxy handled, by result and transport",
      ["result", "transport"],
    );
    let tableReceivedAt: number | undefined;
    let tableOrigin: "istiod" | "disk" | undefined;
    let istiodConnected = false;
    deps.metrics.gaugeFn(
      "istio_vm_dns_table_age_seconds",
      "seconds since istiod sent the name table in use (NaN while there is none)",
      () => (tableReceivedAt === undefined ? NaN : (deps.clock.now() - tableReceivedAt) / 1000),
    );
    deps.metrics.gaugeFn(
      "istio_vm_dns_table_hosts",
      "host names in the name table in use (0 while there is none)",
      () => proxy.tableSize ?? 0,
    );
    const proxy = new DnsProxy({
      forwarder: createForwarder({ clock: deps.clock, timeoutMs: ports.forwardTimeoutMs }),
      resolvConf: parseResolvConf(""),
      namespace: values.POD_NAMESPACE,
      clusterDomain: "cluster.local",
      onQuery: (result, transport) => {
        queries.inc({ result, transport });
      },
    });
    const servers = new Map<string, DnsServer>();
    let controller: AbortController | undefined;
    let background: Promise<unknown> | undefined;
    let resolvText: string | undefined;

    const readResolvConf = async (): Promise<void> => {
      let text: string;
      try {
        text = (await deps.fs.readTextIfExists(values.ISTIO_RESOLV_CONF)) ?? "";
      } catch (error) {
        logger.warn("cannot read resolv.conf; keeping the upstreams in use", {
          path: values.ISTIO_RESOLV_CONF,
          error: describeError(error),
        });
        return;
      }
      if (text === resolvText) return;
      const first = resolvText === undefined;
      resolvText = text;
      const conf = parseResolvConf(text);
      proxy.setResolvConf(conf);
      if (conf.addresses.length === 0) {
        logger.warn("resolv.conf lists no nameserver; forwarding to 127.0.0.1:53 as the C library would", {
          path: values.ISTIO_RESOLV_CONF,
        });
      }
      logger.info(first ? "upstream nameservers" : "resolv.conf changed: new upstream nameservers", {
        servers: conf.servers.join(","),
        search: conf.search.join(","),
      });
    };

    /** Listens on every address resolv.conf calls for; 127.0.0.1 failing fails the start, ::1 only warns. */
    const listen = async (): Promise<void> => {
      for (const host of listenAddresses(proxy.resolvConf)) {
        if (servers.has(host)) continue;
        try {
          const server = await startDnsServer(proxy, host, values.DNS_PROXY_PORT);
          servers.set(host, server);
          logger.info("DNS proxy listening", { address: hostPort(host, server.port), protocols: "udp,tcp" });
        } catch (error) {
          if (host === "127.0.0.1") throw error;
          logger.warn("cannot listen on [::1]; queries to resolv.conf's IPv6 nameservers go unanswered", {
            port: values.DNS_PROXY_PORT,
            error: describeError(error),
          });
        }
      }
    };

    const acceptTable = async (table: NameTable): Promise<void> => {
      const receivedAt = deps.clock.now();
      proxy.setNameTable(table);
      tableReceivedAt = receivedAt;
      tableOrigin = "istiod";
      const wasConnected = istiodConnected;
      istiodConnected = true;
      if (!wasConnected) deps.events.emit("status-changed");
      logger.debug("name table from istiod", { hosts: Object.keys(table).length });
      const path = nameTablePath(values);
      try {
        await deps.fs.mkdirp(join(path, ".."), 0o755);
        await saveStoredTable(deps.fs, path, { table, receivedAt });
      } catch (error) {
        logger.warn("cannot persist the name table; it is used, but a restart starts without it", {
          path,
          error: describeError(error),
        });
      }
    };

    return {
      name: "dns",
      async start(signal) {
        controller = new AbortController();
        const inner = AbortSignal.any([signal, controller.signal]);
        await readResolvConf();
        const stored = await loadStoredTable(deps.fs, nameTablePath(values));
        if (stored.kind === "loaded") {
          proxy.setNameTable(stored.stored.table);
          tableReceivedAt = stored.stored.receivedAt;
          tableOrigin = "disk";
          logger.info("name table loaded from disk until istiod sends one", {
            hosts: Object.keys(stored.stored.table).length,
            receivedAt: new Date(stored.stored.receivedAt).toISOString(),
          });
        } else if (stored.kind === "invalid") {
          logger.warn("ignoring the persisted name table; forwarding every name until istiod sends one", {
            path: nameTablePath(values),
            reason: stored.reason,
          });
        }
        await listen();
        const pollResolvConf = (async () => {
          for (;;) {
            try {
              await deps.clock.sleep(ports.resolvConfPollMs, inner);
            } catch {
              return;
            }
            await readResolvConf();
            try {
              await listen();
            } catch (error) {
              logger.warn("cannot start a DNS listener", { error: describeError(error) });
            }
          }
        })();
        const source = ports.source(
          deps,
          () => values,
          {
            onTable: (table) => {
              void acceptTable(table);
            },
            onDisconnect: (reason) => {
              if (istiodConnected) {
                logger.warn("NDS stream to istiod ended; answering from the last name table", { reason });
                istiodConnected = false;
                deps.events.emit("status-changed");
              } else logger.debug("NDS stream attempt failed", { reason });
            },
          },
          inner,
        );
        background = Promise.all([pollResolvConf, source]);
      },
      async stop() {
        controller?.abort();
        await background;
        background = undefined;
        await Promise.all([...servers.values()].map((s) => s.close()));
        servers.clear();
      },
      reload(config) {
        values = config;
        return readResolvConf();
      },
      status() {
        const address = (servers.size === 0 ? ["127.0.0.1"] : [...servers.keys()])
          .map((h) => hostPort(h, values.DNS_PROXY_PORT))
          .join(",");
        if (servers.size === 0) return { ready: false, summary: `dns proxy not listening on ${address}` };
        const size = proxy.tableSize;
        if (size === undefined || tableReceivedAt === undefined) {
          return { ready: true, summary: `dns ${address}: no name table yet, forwarding every name` };
        }
        const age = Math.max(0, Math.round((deps.clock.now() - tableReceivedAt) / 1000));
        const from = tableOrigin === "disk" ? "from disk" : istiodConnected ? "from istiod" : "istiod unreachable";
        return { ready: true, summary: `dns ${address}: ${String(size)} names (${from}, ${String(age)}s old)` };
      },
    };
  };
}

const DEFAULT_PORTS = {
  resolvConfPollMs: 5000,
  forwardTimeoutMs: 5000,
};

export function dnsProxyComponentFor(hostname: string): ComponentFactory {
  return createDnsProxyComponent({
    ...DEFAULT_PORTS,
    hostname,
    source: upstreamNameTableSource(adsNameTableSource(hostname)),
  });
}
