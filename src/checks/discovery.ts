/**
 * The discovery check: can this VM get its configuration from Pilot?
 *
 * - legacy, ENVOY_XDS_API=v1: what v1 Envoy fetches for this node, CDS and LDS (see v1Check below).
 * - legacy, ENVOY_XDS_API=v2: what v2 Envoy fetches over ADS v2 at start, CDS then LDS (see v2Check below).
 * - legacy, v3: Pilot's v1 REST registration API, `GET /v1/registration/istio-pilot.<ns>.svc.cluster.local|http-discovery`
 *   (the `|` sent as %7C) on PILOT_ADDRESS, which must answer 200 with a non-empty `hosts` list: the request the
 *   original recipe told people to `curl`.
 * - istiod: an ADS stream to DISCOVERY_ADDRESS (TLS with root-cert.pem, server name ISTIOD_SAN, the workload
 *   certificate as client certificate when present; plain text when CONTROL_PLANE_AUTH_POLICY=NONE) with this VM's
 *   node id and metadata, a CDS request answered with ≥ 1 cluster, then the ACK (docs/protocols.md, "xDS").
 *
 * Failures carry the HTTP or gRPC status, the address the host name resolved to, and a hint.
 */
import { isIP } from "node:net";
import { controlPlaneUsesTls } from "../config/load.js";
import { HttpError } from "../platform/http.js";
import { AdsProbeError, grpcStatusName, probeAds } from "../xds/ads-client.js";
import type { AdsProbeOptions, AdsProbeResult } from "../xds/ads-client.js";
import { nodeId } from "../xds/node-block.js";
import { probeNode } from "../xds/node.js";
import { XDS_API_HEADER } from "../xds/protos.js";
import { fetchAdsV2 } from "../xds/ads-v2-fetch.js";
import type { AdsV2Fetched, AdsV2FetchOptions } from "../xds/ads-v2-fetch.js";
import { V2_TYPE } from "../xds/protos-v2.js";
import { discoverySan } from "../envoy/bootstrap.js";
import type { Check, CheckDeps, CheckResult } from "./check.js";
import { certPaths, fail, pass, splitHostPort } from "./check.js";

export const DISCOVERY_CHECK = "discovery";

/** The ADS probe as a port, so the agent component's tests can run it against the dev Pilot or a failing one. */
export type AdsProber = (options: AdsProbeOptions) => Promise<AdsProbeResult>;
/** The ADS v2 fetch (ENVOY_XDS_API=v2) as a port, likewise. */
export type AdsV2Fetcher = (options: AdsV2FetchOptions) => Promise<AdsV2Fetched[]>;

export function registrationKey(namespace: string): string {
  return `istio-pilot.${namespace}.svc.cluster.local|http-discovery`;
}

async function resolvedNote(deps: CheckDeps, host: string): Promise<string> {
  const outcome = await deps.dns.lookupSystem(host, deps.timeoutMs);
  return outcome.ok ? `${host} → ${outcome.addresses.join(",")}` : `${host} does not resolve (${outcome.code})`;
}

function connectHint(code: string, what: string, host: string, resolved: string): string {
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return `${host} does not resolve: see the dns check (the address=/${host.split(".")[0] ?? host}/ line of kubedns, dnsmasq, resolv.conf)`;
  }
  if (code === "ECONNREFUSED") {
    return `nothing listens for ${what} (${resolved}): check the address for ${host} in kubedns against the load balancer (\`istio-vm dnsmasq\` regenerates it) and the port`;
  }
  return `no answer from ${what} (${resolved}, ${code}): a wrong address in kubedns, a firewall, or a load balancer without healthy backends`;
}

async function legacyCheck(deps: CheckDeps, signal: AbortSignal): Promise<CheckResult> {
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
async function v1Check(deps: CheckDeps, signal: AbortSignal): Promise<CheckResult> {
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
  details.push(
    `clusters ${clusterNames.slice(0, 5).join(", ")}${clusterNames.length > 5 ? ", …" : ""}`,
    `listeners ${listenerNames.slice(0, 5).join(", ")}${listenerNames.length > 5 ? ", …" : ""}`,
  );
  const data = { cds: cdsUrl, lds: ldsUrl, clusters: clusterNames, listeners: listenerNames };
  if (clusterNames.length === 0 || listenerNames.length === 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has ${clusterNames.length === 0 ? "no clusters" : "no listeners"} for this VM`,
      `Pilot knows no services: check \`kubectl get services,endpoints -A\` and Pilot's logs`,
      details,
      data,
    );
  }
  const { inbound, missing } = missingInbound(v, listenerNames, (port) => [
    `tcp_${v.ISTIO_SVC_IP}_${port}`,
    `http_${v.ISTIO_SVC_IP}_${port}`,
  ]);
  if (missing.length > 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has no inbound listener for ${missing.map((p) => `${v.ISTIO_SVC_IP}:${p}`).join(", ")} (ISTIO_INBOUND_PORTS)`,
      `Pilot builds a VM's inbound listeners from the Endpoints that hold ISTIO_SVC_IP=${v.ISTIO_SVC_IP}: run \`istio-vm register <service> ${v.ISTIO_SVC_IP} <port>\` (the IP must be this one), and check the port`,
      details,
      { ...data, missingInbound: missing },
    );
  }
  return pass(
    DISCOVERY_CHECK,
    `pilot ok (v1: ${clusterNames.length} cluster${clusterNames.length === 1 ? "" : "s"}, ${listenerNames.length} listener${listenerNames.length === 1 ? "" : "s"}${inbound.length > 0 ? `, inbound ${inbound.join(",")}` : ""})`,
    details,
    data,
  );
}

/** The listeners Pilot builds for this VM's own ports: v1 `tcp_|http_<ip>_<port>`, v2 `<ip>_<port>`. */
function missingInbound(v: CheckDeps["values"], listenerNames: readonly string[], names: (port: number) => string[]) {
  const inbound = v.ISTIO_INBOUND_PORTS === "*" ? [] : v.ISTIO_INBOUND_PORTS;
  return { inbound, missing: inbound.filter((port) => !names(port).some((n) => listenerNames.includes(n))) };
}

/**
 * ENVOY_XDS_API=v2 (Istio 0.8): what v2 Envoy fetches at start, over ADS v2 to DISCOVERY_ADDRESS (15011 with this
 * VM's certificate, Pilot's SPIFFE id checked as the bootstrap's verify_subject_alt_name does; 15010 in plain text):
 * CDS then LDS for this VM's node, both non-empty and ACKed, and among the listeners the VM's own inbound listener
 * (`<ISTIO_SVC_IP>_<port>`) for each port of ISTIO_INBOUND_PORTS.
 */
async function v2Check(deps: CheckDeps, signal: AbortSignal, fetcher: AdsV2Fetcher): Promise<CheckResult> {
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
  details.push(
    `clusters ${clusterNames.slice(0, 5).join(", ")}${clusterNames.length > 5 ? ", …" : ""}`,
    `listeners ${listenerNames.slice(0, 5).join(", ")}${listenerNames.length > 5 ? ", …" : ""}`,
  );
  const data = { target: text, clusters: clusterNames, listeners: listenerNames };
  if (clusterNames.length === 0 || listenerNames.length === 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has ${clusterNames.length === 0 ? "no clusters" : "no listeners"} for this VM`,
      `Pilot knows no services: check \`kubectl get services,endpoints -A\` and Pilot's logs`,
      details,
      data,
    );
  }
  const { inbound, missing } = missingInbound(v, listenerNames, (port) => [`${v.ISTIO_SVC_IP}_${port}`]);
  if (missing.length > 0) {
    return fail(
      DISCOVERY_CHECK,
      `Pilot has no inbound listener for ${missing.map((p) => `${v.ISTIO_SVC_IP}:${p}`).join(", ")} (ISTIO_INBOUND_PORTS)`,
      `Pilot builds a VM's inbound listeners from the Endpoints that hold ISTIO_SVC_IP=${v.ISTIO_SVC_IP}: run \`istio-vm register <service> ${v.ISTIO_SVC_IP} <port>\` (the IP must be this one), and check the port`,
      details,
      { ...data, missingInbound: missing },
    );
  }
  return pass(
    DISCOVERY_CHECK,
    `pilot ok (v2 ADS: ${clusterNames.length} cluster${clusterNames.length === 1 ? "" : "s"}, ${listenerNames.length} listener${listenerNames.length === 1 ? "" : "s"}${inbound.length > 0 ? `, inbound ${inbound.join(",")}` : ""}, ACKed)`,
    details,
    data,
  );
}

function adsHint(error: AdsProbeError, deps: CheckDeps, target: string, resolved: string, tls: boolean): string {
  const v = deps.values;
  const d = error.details;
  if (error.grpcCode === undefined) {
    return `the control plane at ${target} has no clusters for this VM: check \`istioctl proxy-status\` and istiod's logs for node ${v.POD_NAMESPACE}`;
  }
  switch (grpcStatusName(error.grpcCode)) {
    case "PERMISSION_DENIED":
      return `istiod refused the stream: the workload certificate's identity must match POD_NAMESPACE=${v.POD_NAMESPACE} and SERVICE_ACCOUNT=${v.SERVICE_ACCOUNT} (see the certificate check)`;
    case "UNAUTHENTICATED":
      return `istiod did not accept this VM's credentials: a valid cert-chain.pem/key.pem in ${v.OUTPUT_CERTS}, or a fresh token at ${v.ISTIO_TOKEN_FILE}`;
    case "DEADLINE_EXCEEDED":
      return `no CDS answer within ${deps.timeoutMs} ms from ${target} (${resolved}): a wrong address in kubedns, a firewall, or an overloaded istiod`;
    case "INTERNAL":
    case "CANCELLED":
      if (/RST_STREAM|reset/i.test(d)) {
        return `the ADS stream was reset (by istiod or a load balancer/gateway in between): check istiod's logs and the east-west gateway; a proxy that does not speak HTTP/2 end to end also does this`;
      }
      return `istiod failed the stream: check istiod's logs`;
    case "UNAVAILABLE":
      if (/name resolution|ENOTFOUND|resolve/i.test(d)) {
        return `${target} does not resolve: see the dns check`;
      }
      if (/certificate|altname|Hostname|self.signed|verify|SSL|TLS|handshake/i.test(d)) {
        return tls
          ? `TLS to ${target} failed: the server certificate must chain to ${certPaths(v).root} and carry ${v.ISTIOD_SAN} (ISTIOD_SAN); see the ca check`
          : `the server at ${target} expects TLS: set CONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS or use the plain-text port 15010`;
      }
      if (/RST_STREAM|reset|GOAWAY/i.test(d)) {
        return `the connection to ${target} was reset: check istiod's logs and the east-west gateway`;
      }
      if (/ECONNREFUSED|refused/i.test(d)) return connectHint("ECONNREFUSED", `istiod at ${target}`, target, resolved);
      return connectHint("UNAVAILABLE", `istiod at ${target}`, target, resolved);
    default:
      return `the ADS stream failed: check istiod's logs`;
  }
}

async function istiodCheck(deps: CheckDeps, signal: AbortSignal, prober: AdsProber): Promise<CheckResult> {
  const v = deps.values;
  const { host, text } = splitHostPort(v.DISCOVERY_ADDRESS);
  const tls = controlPlaneUsesTls(v);
  const paths = certPaths(v);
  const resolved = await resolvedNote(deps, host);
  const details = [
    `ADS ${tls ? "TLS" : "plain text"} to ${text}${tls ? ` (server name ${v.ISTIOD_SAN})` : ""}`,
    resolved,
  ];
  let rootPem: string | undefined;
  let certChainPem: string | undefined;
  let keyPem: string | undefined;
  if (tls) {
    rootPem = await deps.fs.readTextIfExists(paths.root);
    if (rootPem === undefined) {
      return fail(
        DISCOVERY_CHECK,
        `${paths.root} is missing`,
        `install the mesh root certificate (\`istio-vm certs\` then \`istio-vm install\`)`,
        details,
      );
    }
    certChainPem = await deps.fs.readTextIfExists(paths.chain);
    keyPem = await deps.fs.readTextIfExists(paths.key);
    details.push(
      certChainPem !== undefined && keyPem !== undefined
        ? `client certificate ${paths.chain}`
        : "no client certificate",
    );
  }
  const token = certChainPem === undefined ? await deps.fs.readTextIfExists(v.ISTIO_TOKEN_FILE) : undefined;
  const node = probeNode(v, deps.hostname, deps.metadata, deps.version);
  details.push(`node ${node.id}`);
  try {
    const result = await prober({
      target: text,
      ...(tls && rootPem !== undefined
        ? {
            tls: {
              rootPem,
              servername: v.ISTIOD_SAN,
              ...(certChainPem !== undefined && keyPem !== undefined ? { certChainPem, keyPem } : {}),
            },
          }
        : {}),
      ...(token === undefined ? {} : { token: token.trim() }),
      clusterId: v.ISTIO_META_CLUSTER_ID,
      // This probe speaks v3 and says so: the dev Pilot of the legacy profile serves v3 only when asked
      // (src/devplane/pilot-xds.ts); istiod ignores the header.
      headers: { [XDS_API_HEADER]: "v3" },
      node,
      timeoutMs: deps.timeoutMs,
      signal,
    });
    const shown = result.clusters.slice(0, 5).join(", ") + (result.clusters.length > 5 ? ", …" : "");
    return pass(
      DISCOVERY_CHECK,
      `pilot ok (${result.clusters.length} cluster${result.clusters.length === 1 ? "" : "s"}, ACKed version ${result.versionInfo || "(empty)"})`,
      [
        ...details,
        `clusters ${shown}`,
        ...(result.controlPlane === undefined ? [] : [`control plane ${result.controlPlane}`]),
      ],
      { target: text, clusters: result.clusters, version: result.versionInfo, nonce: result.nonce },
    );
  } catch (error) {
    if (!(error instanceof AdsProbeError)) throw error;
    const status = error.grpcCode === undefined ? "no clusters" : `gRPC ${grpcStatusName(error.grpcCode)}`;
    return fail(
      DISCOVERY_CHECK,
      `ADS to ${text} failed: ${status}`,
      adsHint(error, deps, text, resolved, tls),
      [...details, error.message],
      {
        target: text,
        grpcCode: error.grpcCode ?? null,
        grpcStatus: error.grpcCode === undefined ? null : grpcStatusName(error.grpcCode),
      },
    );
  }
}

export function discoveryCheck(
  deps: CheckDeps,
  prober: AdsProber = probeAds,
  fetcherV2: AdsV2Fetcher = fetchAdsV2,
): Check {
  return {
    name: DISCOVERY_CHECK,
    description:
      "Pilot answers: legacy v1 CDS and LDS for this node (ENVOY_XDS_API=v1), ADS v2 CDS and LDS (v2) or /v1/registration with hosts (v3), or istiod ADS with ≥ 1 cluster (ACKed)",
    run: (signal) =>
      deps.values.ISTIO_CONTROL_PLANE !== "legacy"
        ? istiodCheck(deps, signal, prober)
        : deps.values.ENVOY_XDS_API === "v1"
          ? v1Check(deps, signal)
          : deps.values.ENVOY_XDS_API === "v2"
            ? v2Check(deps, signal, fetcherV2)
            : legacyCheck(deps, signal),
  };
}
