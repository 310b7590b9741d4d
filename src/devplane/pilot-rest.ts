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
 * - 503 with a message when the registry fails (Envoy kept its cached hosts); here by fault injection.
 *
 * Bodies are indented JSON as Go's MarshalIndent wrote them.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { ObjectStore } from "./store.js";
import type { MeshService, ServiceInstance } from "./pilot-registry.js";
import { findService, instancesOf, listServices } from "./pilot-registry.js";
import { FAULT_SPEC_MAX_BYTES, NOT_LOOPBACK_MESSAGE, isLoopbackPeer, readFaultSpec } from "./fault-switch.js";

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
  /** Requests served so far, by path (decoded), for tests and the dev plane's log. */
  readonly requests: readonly string[];
  setFault(fault: PilotRestFault): void;
  close(): Promise<void>;
}

export interface StartPilotRestOptions {
  readonly store: ObjectStore;
  /**
   * Enables the dev plane's fault switch, `POST /istio-vm-dev/fault` with a body of fault names (comma-separated;
   * `none` clears): tests that run `istio-vm dev` as a subprocess flip faults without a restart. Receives the names
   * that are not this server's own (e.g. `stream-reset` for the ADS server).
   */
  readonly onFaultSwitch?: (names: readonly string[]) => string | undefined;
  readonly host?: string;
  readonly port?: number;
}

const REGISTRATION = "/v1/registration";
export const FAULT_PATH = "/istio-vm-dev/fault";

export async function startPilotRest(options: StartPilotRestOptions): Promise<PilotRestServer> {
  let fault: PilotRestFault = "none";
  const requests: string[] = [];
  const server = createServer((req, res) => {
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
          const problem = onFaultSwitch(names.filter((n) => n !== "registry-unavailable"));
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
    if (req.method !== "GET") {
      res.setHeader("allow", "GET");
      send(405, "method not allowed\n");
      return;
    }
    if (path !== REGISTRATION && !path.startsWith(`${REGISTRATION}/`)) {
      send(404, `not found: the dev Pilot serves ${REGISTRATION} and ${REGISTRATION}/<service-key>\n`);
      return;
    }
    if (fault === "registry-unavailable") {
      send(503, "service registry unavailable (fault injected by istio-vm dev)\n");
      return;
    }
    if (path === REGISTRATION || path === `${REGISTRATION}/`) {
      send(200, allRegistrations(options.store));
      return;
    }
    send(200, registrationFor(options.store, path.slice(REGISTRATION.length + 1)));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const info = server.address() as AddressInfo;
  const host = info.address;
  return {
    host,
    port: info.port,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${info.port}`,
    requests,
    setFault: (f) => {
      fault = f;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  };
}
