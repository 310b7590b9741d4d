/**
 * The agent's `dns` component (istiod profile, ISTIO_META_DNS_CAPTURE=true): the DNS proxy on 127.0.0.1:DNS_PROXY_PORT
 * (UDP and TCP), fed with the NDS name table istiod sends on the agent's xDS proxy's upstream stream
 * (src/dns/nds-upstream.ts), or, where no proxy runs, on a stream of the agent's own (src/xds/ads-watch.ts).
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
import { istiodConnection } from "../xds/istiod-connection.js";
import { decodeNameTable, NAME_TABLE_TYPE_URL } from "../xds/nds.js";
import { probeNode } from "../xds/node.js";
import { createForwarder } from "./forwarder.js";
import { upstreamNameTableSource } from "./nds-upstream.js";
import type { NameTable } from "./name-table.js";
import { DnsProxy, startDnsServer } from "./proxy.js";
import type { DnsServer } from "./proxy.js";
import { parseResolvConf } from "./resolv-conf.js";
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

export function dnsProxyEnabled(values: ConfigValues): boolean {
  return values.ISTIO_CONTROL_PLANE === "istiod" && values.ISTIO_META_DNS_CAPTURE;
}

/** The connection of the agent's NDS stream: as the discovery check's, with DNS_CAPTURE in the node metadata. */
async function connectionFor(deps: AgentDeps, values: ConfigValues, hostname: string): Promise<AdsConnection> {
  const metadata = Object.fromEntries(Object.values(deps.loaded.metadata).map((m) => [m.name, m.raw]));
  const base = probeNode(values, hostname, metadata, programVersion());
  // istiod builds a name table only for a proxy that says it captures DNS (pilot/pkg/xds/nds.go).
  const node = { ...base, metadata: { ...base.metadata, DNS_CAPTURE: "true" } };
  return istiodConnection(deps.fs, values, node);
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
    let server: DnsServer | undefined;
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
        server = await startDnsServer(proxy, "127.0.0.1", values.DNS_PROXY_PORT);
        logger.info("DNS proxy listening", { address: `127.0.0.1:${String(server.port)}`, protocols: "udp,tcp" });
        const pollResolvConf = (async () => {
          for (;;) {
            try {
              await deps.clock.sleep(ports.resolvConfPollMs, inner);
            } catch {
              return;
            }
            await readResolvConf();
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
        await server?.close();
        server = undefined;
      },
      reload(config) {
        values = config;
        return readResolvConf();
      },
      status() {
        const address = `127.0.0.1:${String(values.DNS_PROXY_PORT)}`;
        if (server === undefined) return { ready: false, summary: `dns proxy not listening on ${address}` };
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
