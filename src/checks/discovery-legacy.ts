/**
 * The legacy profile's discovery checks, on Pilot's own APIs (see discovery.ts for which runs when):
 * - v3: Pilot's v1 REST registration API, `GET /v1/registration/istio-pilot.<ns>.svc.cluster.local|http-discovery`;
 * - v1: v1 Envoy's own REST fetches, CDS and LDS for this node;
 * - v2: Istio 0.8's ADS v2, CDS then LDS for this node, ACKed.
 */
import { isIP } from "node:net";
import { HttpError } from "../platform/http.js";
import { AdsProbeError, grpcStatusName } from "../xds/ads-client.js";
import { nodeId } from "../xds/node-block.js";
import { probeNode } from "../xds/node.js";
import type { AdsV2Fetched, AdsV2FetchOptions } from "../xds/ads-v2-fetch.js";
import { V2_TYPE } from "../xds/protos-v2.js";
import { discoverySan } from "../envoy/bootstrap.js";
import type { CheckDeps, CheckResult } from "./check.js";
import { certPaths, fail, pass, splitHostPort } from "./check.js";
import { DISCOVERY_CHECK, connectHint, resolvedNote } from "./discovery-common.js";

/** The ADS v2 fetch (ENVOY_XDS_API=v2) as a port, so the agent component's tests can run it against the dev Pilot. */
export type AdsV2Fetcher = (options: AdsV2FetchOptions) => Promise<AdsV2Fetched[]>;

export function registrationKey(namespace: string): string {
  return `istio-pilot.${namespace}.svc.cluster.local|http-discovery`;
}

export async function registrationCheck(deps: CheckDeps, signal: AbortSignal): Promise<CheckResult> {
  const { host, text } = splitHostPort(deps.values.PILOT_ADDRESS);
  const key = registrationKey(deps.values.ISTIO_SYSTEM_NAMESPACE);
  const url = `http://${text}/v1/registration/${encodeURIComponent(key)}`;
  const resolved = await resolvedNote(deps, host);
  const details = [`GET ${url}`, resolved];
  let response;
  try {
    response = await deps.http.request({ url, timeoutMs: deps.timeoutMs, signal });
  } catch (error) {
    const code = error instanceof HttpError ? error.code : "ERROR";
    return fail(
      DISCOVERY_CHECK,
      `Pilot at ${text} unreachable (${code})`,
      connectHint(code, `Pilot at ${text}`, host, resolved),
      [...details, (error as Error).message],
      { url, code },
    );
  }
  details.push(`HTTP ${response.status}`);
  const body = response.body.toString("utf8");
  if (response.status === 503) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot answered HTTP 503 (service registry unavailable)`,
      `Pilot cannot read its service registry (the Kubernetes API): \`kubectl -n ${deps.values.ISTIO_SYSTEM_NAMESPACE} logs deploy/istio-pilot\`; Envoy keeps serving its cached configuration meanwhile`,
      [...details, body.trim()].filter((l) => l !== ""),
      { url, status: 503 },
    );
  }
  if (response.status !== 200) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot answered HTTP ${response.status}`,
      `${text} is not Pilot's v1 REST port, or this Pilot has no v1 API (Istio ≥ 1.0 removed it: use ISTIO_CONTROL_PLANE=istiod)`,
      [...details, body.trim().slice(0, 200)].filter((l) => l !== ""),
      { url, status: response.status },
    );
  }
  let hosts: { ip_address?: string; port?: number }[];
  try {
    const parsed = JSON.parse(body) as { hosts?: unknown };
    if (!Array.isArray(parsed.hosts)) throw new Error("no hosts list");
    hosts = parsed.hosts as { ip_address?: string; port?: number }[];
  } catch (error) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot's answer is not a registration ({"hosts": […]})`,
      `${text} answers HTTP 200 but not Pilot's JSON (${(error as Error).message}): is PILOT_ADDRESS Pilot's port 8080?`,
      details,
      { url, status: 200 },
    );
  }
  const list = hosts.map((h) => `${h.ip_address ?? "?"}:${h.port ?? "?"}`);
  if (hosts.length === 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot knows no endpoints for ${key}`,
      `Pilot answered with an empty hosts list: check \`kubectl -n ${deps.values.ISTIO_SYSTEM_NAMESPACE} get endpoints istio-pilot\` (is the pod ready, is the port named http-discovery?)`,
      details,
      { url, status: 200, hosts: [] },
    );
  }
  return pass(
    DISCOVERY_CHECK,
    `pilot ok (${hosts.length} host${hosts.length === 1 ? "" : "s"} for ${key})`,
    [...details, `hosts ${list.join(", ")}`],
    { url, status: 200, hosts },
  );
}

type PilotGet = { ok: true; body: unknown } | { ok: false; result: CheckResult };

/** GET one v1 URL of Pilot's: the parsed JSON of a 200, or the failed check (unreachable, 503, other status, not JSON). */
async function getPilotJson(
  deps: CheckDeps,
  signal: AbortSignal,
  url: string,
  text: string,
  host: string,
  resolved: string,
  details: string[],
): Promise<PilotGet> {
  let response;
  try {
    response = await deps.http.request({ url, timeoutMs: deps.timeoutMs, signal });
  } catch (error) {
    const code = error instanceof HttpError ? error.code : "ERROR";
    return {
      ok: false,
      result: fail(
        DISCOVERY_CHECK,
        `Pilot at ${text} unreachable (${code})`,
        connectHint(code, `Pilot at ${text}`, host, resolved),
        [...details, (error as Error).message],
        { url, code },
      ),
    };
  }
  details.push(`GET ${url}: HTTP ${response.status}`);
  const body = response.body.toString("utf8");
  const ns = deps.values.ISTIO_SYSTEM_NAMESPACE;
  if (response.status === 503) {
    return {
      ok: false,
      result: fail(
        DISCOVERY_CHECK,
        `Pilot answered HTTP 503 (service registry unavailable)`,
        `Pilot cannot read its service registry (the Kubernetes API): \`kubectl -n ${ns} logs deploy/istio-pilot\`; Envoy keeps serving its cached configuration meanwhile`,
        [...details, body.trim()].filter((l) => l !== ""),
        { url, status: 503 },
      ),
    };
  }
  if (response.status === 404 && /missing parts in the service node/.test(body)) {
    return {
      ok: false,
      result: fail(
        DISCOVERY_CHECK,
        `Pilot rejected this VM's service node (HTTP 404)`,
        `the node id must be sidecar~<ISTIO_SVC_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local: check ISTIO_SVC_IP, POD_NAME and POD_NAMESPACE in sidecar.env`,
        [...details, body.trim()],
        { url, status: 404 },
      ),
    };
  }
  if (response.status !== 200) {
    return {
      ok: false,
      result: fail(
        DISCOVERY_CHECK,
        `Pilot answered HTTP ${response.status}`,
        `${text} is not Pilot's v1 REST port, or this Pilot has no v1 API (Istio ≥ 1.0 removed it: use ISTIO_CONTROL_PLANE=istiod)`,
        [...details, body.trim().slice(0, 200)].filter((l) => l !== ""),
        { url, status: response.status },
      ),
    };
  }
  try {
    return { ok: true, body: JSON.parse(body) as unknown };
  } catch (error) {
    return {
      ok: false,
      result: fail(
        DISCOVERY_CHECK,
        `Pilot's answer is not JSON`,
        `${text} answers HTTP 200 but not Pilot's JSON (${(error as Error).message}): is PILOT_ADDRESS Pilot's port 8080?`,
        details,
        { url, status: 200 },
      ),
    };
  }
}

/**
 * ENVOY_XDS_API=v1: what v1 Envoy itself fetches, for this VM's node: CDS `/v1/clusters/<ISTIO_SERVICE>/<node>` and
 * LDS `/v1/listeners/<ISTIO_SERVICE>/<node>` on PILOT_ADDRESS, both non-empty, and among the listeners the VM's own
 * inbound listener (`tcp_|http_<ISTIO_SVC_IP>_<port>`) for each port of ISTIO_INBOUND_PORTS (a list; `*` names none):
 * Pilot builds those only when `istio-vm register` put ISTIO_SVC_IP in the service's Endpoints.
 */
export async function v1Check(deps: CheckDeps, signal: AbortSignal): Promise<CheckResult> {
  const v = deps.values;
  const { host, text } = splitHostPort(v.PILOT_ADDRESS);
  const node = nodeId(v, deps.hostname);
  const cluster = v.ISTIO_SERVICE === "" ? "istio-proxy" : v.ISTIO_SERVICE;
  const resolved = await resolvedNote(deps, host);
  const details = [resolved, `service cluster ${cluster}, node ${node}`];
  const base = `http://${text}/v1`;
  const cdsUrl = `${base}/clusters/${encodeURIComponent(cluster)}/${encodeURIComponent(node)}`;
  const cds = await getPilotJson(deps, signal, cdsUrl, text, host, resolved, details);
  if (!cds.ok) return cds.result;
  const ldsUrl = `${base}/listeners/${encodeURIComponent(cluster)}/${encodeURIComponent(node)}`;
  const lds = await getPilotJson(deps, signal, ldsUrl, text, host, resolved, details);
  if (!lds.ok) return lds.result;
  const clusters = (cds.body as { clusters?: unknown }).clusters;
  const listeners = (lds.body as { listeners?: unknown }).listeners;
  if (!Array.isArray(clusters) || !Array.isArray(listeners)) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot's answers are not CDS/LDS ({"clusters": […]}, {"listeners": […]})`,
      `${text} answers HTTP 200 but not Pilot's v1 discovery: is PILOT_ADDRESS Pilot's port 8080?`,
      details,
      { cds: cdsUrl, lds: ldsUrl },
    );
  }
  const clusterNames = clusters.map((c) => String((c as { name?: unknown }).name));
  const listenerNames = listeners.map((l) => String((l as { name?: unknown }).name));
  return listenerVerdict(
    v,
    { api: "v1", clusters: clusterNames, listeners: listenerNames },
    (port) => [`tcp_${v.ISTIO_SVC_IP}_${port}`, `http_${v.ISTIO_SVC_IP}_${port}`],
    details,
    { cds: cdsUrl, lds: ldsUrl },
  );
}

/**
 * ENVOY_XDS_API=v2 (Istio 0.8): what v2 Envoy fetches at start, over ADS v2 to DISCOVERY_ADDRESS (15011 with this
 * VM's certificate, Pilot's SPIFFE id checked as the bootstrap's verify_subject_alt_name does; 15010 in plain text):
 * CDS then LDS for this VM's node, both non-empty and ACKed, and among the listeners the VM's own inbound listener
 * (`<ISTIO_SVC_IP>_<port>`) for each port of ISTIO_INBOUND_PORTS.
 */
export async function v2Check(deps: CheckDeps, signal: AbortSignal, fetcher: AdsV2Fetcher): Promise<CheckResult> {
  const v = deps.values;
  const { host, text } = splitHostPort(v.DISCOVERY_ADDRESS);
  const tls = v.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS";
  const san = discoverySan(v).value;
  const resolved = await resolvedNote(deps, host);
  const node = probeNode(v, deps.hostname, deps.metadata, deps.version);
  const details = [`ADS v2 ${tls ? `mTLS (server SAN ${san})` : "plain text"} to ${text}`, resolved, `node ${node.id}`];
  const paths = certPaths(v);
  let tlsOptions: AdsV2FetchOptions["tls"];
  if (tls) {
    const [rootPem, certChainPem, keyPem] = await Promise.all(
      [paths.root, paths.chain, paths.key].map((p) => deps.fs.readTextIfExists(p)),
    );
    if (rootPem === undefined || certChainPem === undefined || keyPem === undefined) {
      return fail(
        DISCOVERY_CHECK,
        `the workload certificate files in ${v.OUTPUT_CERTS} are missing`,
        "Pilot 0.8's 15011 takes only this VM's certificate: install it (`istio-vm certs`, then `istio-vm install`)",
        details,
      );
    }
    // Envoy sent no SNI to Pilot; a name is still needed for the TLS library, and an address is not one (RFC 6066).
    const servername = isIP(host) === 0 ? host : `istio-pilot.${v.ISTIO_SYSTEM_NAMESPACE}`;
    tlsOptions = { rootPem, certChainPem, keyPem, servername, uriSan: san };
  }
  let fetched: AdsV2Fetched[];
  try {
    fetched = await fetcher({
      target: text,
      ...(tlsOptions === undefined ? {} : { tls: tlsOptions }),
      node,
      types: [V2_TYPE.cluster, V2_TYPE.listener],
      timeoutMs: deps.timeoutMs,
      signal,
    });
  } catch (error) {
    if (!(error instanceof AdsProbeError)) throw error;
    const status = error.grpcCode === undefined ? error.details : `gRPC ${grpcStatusName(error.grpcCode)}`;
    const hint =
      error.grpcCode === 12
        ? `${text} does not serve xDS v2 (envoy.service.discovery.v2.AggregatedDiscoveryService): is it Istio 0.8's Pilot? 0.2–0.7 serve ENVOY_XDS_API=v1, istiod v3`
        : /certificate|SAN|SSL|TLS|handshake/i.test(error.details)
          ? `TLS to ${text} failed: Pilot's certificate must chain to ${paths.root} and name ${san}`
          : connectHint(
              /refused/i.test(error.details) ? "ECONNREFUSED" : "UNAVAILABLE",
              `Pilot at ${text}`,
              host,
              resolved,
            );
    return fail(DISCOVERY_CHECK, `ADS v2 to ${text} failed: ${status}`, hint, [...details, error.message], {
      target: text,
      grpcCode: error.grpcCode ?? null,
    });
  }
  const names = (t: string) => (fetched.find((f) => f.typeUrl === t)?.resources ?? []).map((r) => String(r["name"]));
  const clusterNames = names(V2_TYPE.cluster);
  const listenerNames = names(V2_TYPE.listener);
  return listenerVerdict(
    v,
    { api: "v2 ADS", clusters: clusterNames, listeners: listenerNames },
    (port) => [`${v.ISTIO_SVC_IP}_${port}`],
    details,
    { target: text },
  );
}

/**
 * The verdict on the clusters and listeners Pilot sent this VM (legacy v1 REST and ADS v2): both non-empty, and among
 * the listeners the VM's own inbound listener (`inboundNames(port)`: v1 `tcp_|http_<ip>_<port>`, v2 `<ip>_<port>`) for
 * each port of ISTIO_INBOUND_PORTS (a list; `*` names none). Pilot builds those only when `istio-vm register` put
 * ISTIO_SVC_IP in the service's Endpoints. `where` (the URLs or the target) leads the result's data.
 */
function listenerVerdict(
  v: CheckDeps["values"],
  answer: { api: "v1" | "v2 ADS"; clusters: readonly string[]; listeners: readonly string[] },
  inboundNames: (port: number) => string[],
  details: string[],
  where: Record<string, unknown>,
): CheckResult {
  const { clusters: clusterNames, listeners: listenerNames } = answer;
  details.push(
    `clusters ${clusterNames.slice(0, 5).join(", ")}${clusterNames.length > 5 ? ", …" : ""}`,
    `listeners ${listenerNames.slice(0, 5).join(", ")}${listenerNames.length > 5 ? ", …" : ""}`,
  );
  const data = { ...where, clusters: clusterNames, listeners: listenerNames };
  if (clusterNames.length === 0 || listenerNames.length === 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has ${clusterNames.length === 0 ? "no clusters" : "no listeners"} for this VM`,
      `Pilot knows no services: check \`kubectl get services,endpoints -A\` and Pilot's logs`,
      details,
      data,
    );
  }
  const inbound = v.ISTIO_INBOUND_PORTS === "*" ? [] : v.ISTIO_INBOUND_PORTS;
  const missing = inbound.filter((port) => !inboundNames(port).some((n) => listenerNames.includes(n)));
  if (missing.length > 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has no inbound listener for ${missing.map((p) => `${v.ISTIO_SVC_IP}:${p}`).join(", ")} (ISTIO_INBOUND_PORTS)`,
      `Pilot builds a VM's inbound listeners from the Endpoints that hold ISTIO_SVC_IP=${v.ISTIO_SVC_IP}: run \`istio-vm register <service> ${v.ISTIO_SVC_IP} <port>\` (the IP must be this one), and check the port`,
      details,
      { ...data, missingInbound: missing },
    );
  }
  const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;
  return pass(
    DISCOVERY_CHECK,
    `pilot ok (${answer.api}: ${plural(clusterNames.length, "cluster")}, ${plural(listenerNames.length, "listener")}${inbound.length > 0 ? `, inbound ${inbound.join(",")}` : ""}${answer.api === "v2 ADS" ? ", ACKed" : ""})`,
    details,
    data,
  );
}
