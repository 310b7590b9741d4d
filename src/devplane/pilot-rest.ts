/**
 * The dev Pilot's v1 REST registration API (Istio 0.2–0.7 `pilot/proxy/envoy/discovery.go`, port 8080), the one the
 * legacy discovery check and the original recipe's `curl …/v1/registration/…` use:
 *
 * - `GET /v1/registration/<service-key>`: `{"hosts": [{"ip_address": …, "port": …}]}`, `{"hosts": []}` when the
 *   service has no endpoints or is unknown (as the original, which looked instances up and marshalled what it found).
 *   The key is `<hostname>|<port-name>[,<port-name>…][|<labels>]`, URL-decoded (`%7C` is `|`); a service with a
 *   single unnamed port is keyed by its host name alone. Labels are accepted and ignored: the dev store's
 *   endpoints carry no pod labels to select by.
 * - `GET /v1/registration`: every service port, `[{"service-key": …, "hosts": […]}]`.
 * - `GET /v1/clusters/…`, `/v1/listeners/…`, `/v1/routes/…`: CDS, LDS and RDS for a node (src/devplane/pilot-v1.ts),
 *   404 `missing parts in the service node` for a node id without four parts.
 * - 503 with a message when the registry fails (Envoy kept its cached hosts); here by fault injection.
 * - `GET /cache_stats`, `POST /cache_stats_delete`: answers are cached per URL, as Pilot cached them, and the cache is
 *   flushed on every change to the store (services, endpoints); the stats count hits and misses per URL.
 *
 * With `tls`, the same API over mTLS (client certificate required, from the mesh CA): Pilot's 15003 front of 0.4–0.6
 * (15005 in 0.7), which v1 Envoy dials under CONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS.
 *
 * Bodies are indented JSON as Go's MarshalIndent wrote them.
 */
import { createServer } from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { ProxyConnection } from "./pilot-xds.js";
import type { ObjectStore } from "./store.js";
import type { MeshService, ServiceInstance } from "./pilot-registry.js";
import { findService, instancesOf, listServices } from "./pilot-registry.js";
import { FAULT_SPEC_MAX_BYTES, NOT_LOOPBACK_MESSAGE, isLoopbackPeer, readFaultSpec } from "./fault-switch.js";
import { v1Discovery } from "./pilot-v1.js";
import { listenOn } from "../platform/tcp.js";

export type PilotRestFault = "none" | "registry-unavailable";

interface Host {
  readonly ip_address: string;
  readonly port: number;
}

function hosts(instances: readonly ServiceInstance[]): Host[] {
  return instances.map((i) => ({ ip_address: i.ip, port: i.port }));
}

/** The hosts for one service key; unknown services and ports give no hosts. */
export function registrationFor(store: ObjectStore, serviceKey: string): { hosts: Host[] } {
  const [hostname = "", portNames] = serviceKey.split("|");
  const service = findService(store, hostname);
  if (service === undefined) return { hosts: [] };
  const names = portNames === undefined ? [""] : portNames.split(",");
  const ports =
    portNames === undefined
      ? service.ports.length === 1
        ? service.ports
        : service.ports.filter((p) => p.name === "")
      : service.ports.filter((p) => names.includes(p.name));
  return { hosts: hosts(ports.flatMap((p) => instancesOf(store, service, p))) };
}

function serviceKey(service: MeshService, portName: string): string {
  return portName === "" && service.ports.length === 1 ? service.hostname : `${service.hostname}|${portName}`;
}

export function allRegistrations(store: ObjectStore): { "service-key": string; hosts: Host[] }[] {
  return listServices(store).flatMap((service) =>
    service.ports.map((port) => ({
      "service-key": serviceKey(service, port.name),
      hosts: hosts(instancesOf(store, service, port)),
    })),
  );
}

export interface PilotRestServer {
  readonly host: string;
  readonly port: number;
  /** `http://host:port` */
  readonly url: string;
  readonly tls: boolean;
  /** Requests served so far, by path (decoded), for tests and the dev plane's log. */
  readonly requests: readonly string[];
  setFault(fault: PilotRestFault): void;
  close(): Promise<void>;
}

export interface StartPilotRestOptions {
  readonly store: ObjectStore;
  /**
   * Enables the dev plane's fault switch, `POST /istio-vm-dev/fault` with a body of fault names (comma-separated;
   * `none` clears): tests that run `istio-vm dev` as a subprocess flip faults without a restart. Receives every name
   * (this server applies `registry-unavailable` itself; the callback applies the rest, e.g. `stream-reset`).
   */
  readonly onFaultSwitch?: (names: readonly string[]) => string | undefined;
  /** Enables `GET /istio-vm-dev/proxies`: the proxies connected to the ADS servers, with the node each sent. */
  readonly connectedProxies?: () => readonly ProxyConnection[];
  readonly host?: string;
  readonly port?: number;
  /** Serve over TLS and require a client certificate that chains to `caPem`. */
  readonly tls?: { readonly certPem: string; readonly keyPem: string; readonly caPem: string };
}

const REGISTRATION = "/v1/registration";
export const FAULT_PATH = "/istio-vm-dev/fault";
export const PROXIES_PATH = "/istio-vm-dev/proxies";
const CACHE_STATS = "/cache_stats";
const CACHE_STATS_DELETE = "/cache_stats_delete";

export async function startPilotRest(options: StartPilotRestOptions): Promise<PilotRestServer> {
  let fault: PilotRestFault = "none";
  const requests: string[] = [];
  const cache = new Map<string, { status: number; body: unknown }>();
  const cacheStats = new Map<string, { hit: number; miss: number }>();
  const unwatch = options.store.watch(() => {
    cache.clear();
  });
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const send = (status: number, body: unknown): void => {
      const text = typeof body === "string" ? body : `${JSON.stringify(body, null, "  ")}\n`;
      res
        .writeHead(status, {
          "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
        })
        .end(text);
    };
    const rawPath = (req.url ?? "/").split("?")[0] ?? "/";
    let path: string;
    try {
      path = decodeURIComponent(rawPath);
    } catch {
      send(400, `malformed URL path: ${rawPath}\n`);
      return;
    }
    requests.push(path);
    if (path === FAULT_PATH && req.method === "POST" && options.onFaultSwitch !== undefined) {
      const onFaultSwitch = options.onFaultSwitch;
      if (!isLoopbackPeer(req.socket.remoteAddress)) {
        send(403, `${NOT_LOOPBACK_MESSAGE}\n`);
        return;
      }
      void readFaultSpec(req).then(
        (body) => {
          if (body === undefined) {
            res.setHeader("connection", "close");
            send(413, `a fault list is at most ${FAULT_SPEC_MAX_BYTES} bytes\n`);
            return;
          }
          const names = body
            .split(",")
            .map((n) => n.trim())
            .filter((n) => n !== "");
          const own = names.includes("registry-unavailable") ? "registry-unavailable" : "none";
          const problem = onFaultSwitch(names);
          if (problem !== undefined) {
            send(400, `${problem}\n`);
            return;
          }
          fault = own;
          send(200, `faults: ${names.join(",") || "none"}\n`);
        },
        () => {
          req.destroy();
        },
      );
      return;
    }
    if (path === CACHE_STATS_DELETE && req.method === "POST") {
      cache.clear();
      cacheStats.clear();
      send(200, "Cache stats deleted\n");
      return;
    }
    if (path === PROXIES_PATH && req.method === "GET" && options.connectedProxies !== undefined) {
      send(200, { proxies: options.connectedProxies() });
      return;
    }
    if (req.method !== "GET") {
      res.setHeader("allow", "GET");
      send(405, "method not allowed\n");
      return;
    }
    if (path === CACHE_STATS) {
      send(200, { cache_stats: Object.fromEntries(cacheStats) });
      return;
    }
    const discovery = path.startsWith("/v1/") && !path.startsWith(`${REGISTRATION}/`) && path !== REGISTRATION;
    if (!discovery && path !== REGISTRATION && !path.startsWith(`${REGISTRATION}/`)) {
      send(
        404,
        `not found: the dev Pilot serves ${REGISTRATION}[/<service-key>], /v1/clusters, /v1/listeners and /v1/routes\n`,
      );
      return;
    }
    if (fault === "registry-unavailable") {
      send(503, "service registry unavailable (fault injected by istio-vm dev)\n");
      return;
    }
    const stats = cacheStats.get(path) ?? { hit: 0, miss: 0 };
    cacheStats.set(path, stats);
    const cached = cache.get(path);
    if (cached !== undefined) {
      stats.hit++;
      send(cached.status, cached.body);
      return;
    }
    stats.miss++;
    let answer: { status: number; body: unknown };
    if (path === REGISTRATION || path === `${REGISTRATION}/`)
      answer = { status: 200, body: allRegistrations(options.store) };
    else if (!discovery)
      answer = { status: 200, body: registrationFor(options.store, path.slice(REGISTRATION.length + 1)) };
    else {
      answer = v1Discovery(options.store, path) ?? {
        status: 404,
        body: `not found: ${path} (the v1 API has /v1/registration, /v1/clusters, /v1/listeners, /v1/routes)\n`,
      };
    }
    if (answer.status === 200) cache.set(path, answer);
    send(answer.status, answer.body);
  };
  const server =
    options.tls === undefined
      ? createServer(handler)
      : createHttpsServer(
          {
            cert: options.tls.certPem,
            key: options.tls.keyPem,
            ca: options.tls.caPem,
            requestCert: true,
            rejectUnauthorized: true,
          },
          handler,
        );
  const info = await listenOn(server, options.port ?? 0, options.host ?? "127.0.0.1");
  const host = info.address;
  return {
    host,
    port: info.port,
    url: `${options.tls === undefined ? "http" : "https"}://${host.includes(":") ? `[${host}]` : host}:${info.port}`,
    tls: options.tls !== undefined,
    requests,
    setFault: (f) => {
      fault = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        unwatch();
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  };
}
