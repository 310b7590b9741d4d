/**
 * The discovery check: can this VM get its configuration from Pilot?
 *
 * - legacy, ENVOY_XDS_API=v1: what v1 Envoy fetches for this node, CDS and LDS (v1Check in discovery-legacy.ts).
 * - legacy, ENVOY_XDS_API=v2: what v2 Envoy fetches over ADS v2 at start, CDS then LDS (v2Check, likewise).
 * - legacy, v3: Pilot's v1 REST registration API (registrationCheck in discovery-legacy.ts),
 *   `GET /v1/registration/istio-pilot.<ns>.svc.cluster.local|http-discovery` (the `|` sent as %7C) on PILOT_ADDRESS, which must answer 200 with a non-empty `hosts` list: the request the
 *   original recipe told people to `curl`.
 * - istiod: an ADS stream to DISCOVERY_ADDRESS (TLS with root-cert.pem, server name ISTIOD_SAN, the workload
 *   certificate as client certificate when present; plain text when CONTROL_PLANE_AUTH_POLICY=NONE) with this VM's
 *   node id and metadata, a CDS request answered with ≥ 1 cluster, then the ACK (docs/protocols.md, "xDS").
 *
 * Failures carry the HTTP or gRPC status, the address the host name resolved to, and a hint.
 */
import { controlPlaneUsesTls } from "../config/load.js";
import { AdsProbeError, grpcStatusName, probeAds } from "../xds/ads-client.js";
import type { AdsProbeOptions, AdsProbeResult } from "../xds/ads-client.js";
import { probeNode } from "../xds/node.js";
import { XDS_API_HEADER } from "../xds/protos.js";
import { fetchAdsV2 } from "../xds/ads-v2-fetch.js";
import type { Check, CheckDeps, CheckResult } from "./check.js";
import { certPaths, fail, pass, splitHostPort } from "./check.js";
import { DISCOVERY_CHECK, connectHint, resolvedNote } from "./discovery-common.js";
import type { AdsV2Fetcher } from "./discovery-legacy.js";
import { registrationCheck, v1Check, v2Check } from "./discovery-legacy.js";

export { DISCOVERY_CHECK } from "./discovery-common.js";
export { registrationKey } from "./discovery-legacy.js";
export type { AdsV2Fetcher } from "./discovery-legacy.js";

/** The ADS probe as a port, so the agent component's tests can run it against the dev Pilot or a failing one. */
export type AdsProber = (options: AdsProbeOptions) => Promise<AdsProbeResult>;

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
            : registrationCheck(deps, signal),
  };
}
