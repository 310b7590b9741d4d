/**
 * `cluster.env`: the per-cluster settings every VM of the cluster shares. The original (setupMeshEx.sh
 * generateClusterEnv) read the service CIDR from `gcloud container clusters describe`, so it worked on GKE only; here
 * it comes from the Kubernetes API of any cluster (service-cidr.ts). `planClusterEnv` is pure (values in, file text
 * out); `discoverServiceCidr` and `readMeshSettings` are the few API reads. The mesh config is YAML, read with the `yaml`
 * library; what cluster.env carries of it (PROXY_CONFIG) is JSON, which the agent parses without it.
 */
import { AgentError } from "../platform/errors.js";
import { renderEnvFile } from "../config/env-file.js";
import { portsOrAll } from "../config/types.js";
import type { KubeClient } from "./client.js";
import { KubeApiError } from "./client.js";
import type { ControlPlaneProfile } from "./profile.js";
import { corePath, getIfExists, groupPath } from "./profile.js";

export type { CidrSource, ServiceCidr } from "./service-cidr.js";
export { PROBE_CLUSTER_IPS, PROBE_SERVICE_NAME, discoverServiceCidr, parseValidRange } from "./service-cidr.js";

// ── mesh settings istioctl copies into cluster.env ─────────────────────────────────────────────

export interface MeshSettings {
  readonly clusterId?: string;
  readonly meshId?: string;
  readonly network?: string;
  readonly trustDomain?: string;
  /** The mesh's Istio version (ISTIO_VERSION), and what it was read from. */
  readonly istioVersion?: { readonly value: string; readonly source: string };
  /** The mesh config's `defaultConfig` (PROXY_CONFIG), as a JSON value. */
  readonly proxyConfig?: Readonly<Record<string, unknown>>;
}

interface ConfigMapObject {
  readonly metadata?: { readonly labels?: Readonly<Record<string, string>> };
  readonly data?: Readonly<Record<string, string>>;
}

interface DeploymentObject {
  readonly metadata?: { readonly labels?: Readonly<Record<string, string>> };
  readonly spec?: {
    readonly template?: {
      readonly spec?: { readonly containers?: readonly { readonly name?: string; readonly image?: string }[] };
    };
  };
}

interface InjectorValues {
  readonly global?: {
    readonly meshID?: unknown;
    readonly network?: unknown;
    readonly multiCluster?: { readonly clusterName?: unknown };
  };
}

function nonEmpty(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * The parts of the mesh config (ConfigMap `istio`, key `mesh`, YAML) cluster.env carries: the top-level
 * `trustDomain` and `defaultConfig`. Text that is not a YAML mapping is an error naming the ConfigMap.
 */
export async function parseMeshConfig(mesh: string): Promise<{
  readonly trustDomain?: string;
  readonly defaultConfig?: Readonly<Record<string, unknown>>;
}> {
  const { parseYaml } = await loadYaml();
  let doc: unknown;
  try {
    doc = parseYaml(mesh);
  } catch (error) {
    throw new AgentError({
      code: "MESH_CONFIG_INVALID",
      message: `the mesh config (ConfigMap istio, key mesh) is not valid YAML: ${(error as Error).message.split("\n")[0] ?? ""}`,
      subject: "configmap/istio",
      hint: "check it with kubectl -n istio-system get configmap istio -o jsonpath='{.data.mesh}'",
    });
  }
  if (doc === null || doc === undefined) return {};
  if (!isRecord(doc)) {
    throw new AgentError({
      code: "MESH_CONFIG_INVALID",
      message: "the mesh config (ConfigMap istio, key mesh) is not a YAML mapping",
      subject: "configmap/istio",
      hint: "it should be MeshConfig YAML (trustDomain:, defaultConfig:, …)",
    });
  }
  const trustDomain = nonEmpty(doc["trustDomain"]);
  const defaultConfig = doc["defaultConfig"];
  return {
    ...(trustDomain === undefined ? {} : { trustDomain }),
    ...(isRecord(defaultConfig) ? { defaultConfig } : {}),
  };
}

/** The YAML module, loaded only by the commands that read mesh config (STYLE: pay at start for what is used). */
function loadYaml(): Promise<typeof import("./yaml.js")> {
  return import("./yaml.js");
}

/** `--proxy-config`: a ProxyConfig as JSON or YAML (JSON is YAML), which must be a mapping. */
export async function parseProxyConfigFlag(text: string): Promise<Readonly<Record<string, unknown>>> {
  const { parseYaml } = await loadYaml();
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (error) {
    doc = error;
  }
  if (!isRecord(doc) || doc instanceof Error) {
    throw new AgentError({
      code: "USAGE",
      message: `--proxy-config: not a ProxyConfig mapping${doc instanceof Error ? ` (${doc.message.split("\n")[0] ?? ""})` : ""}`,
      subject: text,
      kind: "usage",
      hint: `give JSON or YAML, e.g. --proxy-config '{"holdApplicationUntilProxyStarts":true}'`,
    });
  }
  return doc;
}

/** `trustDomain:` at the top level of the mesh config YAML (ConfigMap `istio`, key `mesh`). */
export async function trustDomainFromMeshConfig(mesh: string): Promise<string | undefined> {
  return (await parseMeshConfig(mesh)).trustDomain;
}

/**
 * An Istio version from an image reference (`docker.io/istio/pilot:1.24.2-distroless`, digests dropped) or a
 * revision name (`1-24-2`, as `istioctl install --revision 1-24-2` names it); undefined for `latest`, `default`, ….
 */
export function istioVersionFrom(text: string, kind: "image" | "revision"): string | undefined {
  if (kind === "revision") {
    const m = /^(\d+)-(\d+)(?:-(\d+))?$/.exec(text);
    return m === null ? undefined : [m[1], m[2], m[3]].filter((p) => p !== undefined).join(".");
  }
  const withoutDigest = text.split("@")[0] ?? "";
  const slash = withoutDigest.lastIndexOf("/");
  const colon = withoutDigest.lastIndexOf(":");
  if (colon <= slash) return undefined;
  const m = /^(\d+\.\d+(?:\.\d+)?(?:-(?:alpha|beta|rc)\.\d+)?)(?:-[a-z]+)?$/.exec(withoutDigest.slice(colon + 1));
  return m?.[1];
}

/**
 * The mesh's version, from (first found): the istiod Deployment's `discovery` container image tag, its
 * `app.kubernetes.io/version` / `operator.istio.io/version` label, the mesh ConfigMap's `istio.io/rev` label when the
 * revision is a version (`1-24-2`).
 */
function meshVersion(
  deployment: DeploymentObject | undefined,
  deploymentName: string,
  meshMap: ConfigMapObject | undefined,
  meshMapName: string,
): { value: string; source: string } | undefined {
  const containers = deployment?.spec?.template?.spec?.containers ?? [];
  const container = containers.find((c) => c.name === "discovery") ?? containers[0];
  const fromImage = container?.image === undefined ? undefined : istioVersionFrom(container.image, "image");
  if (fromImage !== undefined)
    return { value: fromImage, source: `deployment/${deploymentName} image ${container?.image ?? ""}` };
  for (const label of ["app.kubernetes.io/version", "operator.istio.io/version"]) {
    const value = nonEmpty(deployment?.metadata?.labels?.[label]);
    if (value !== undefined) return { value, source: `deployment/${deploymentName} label ${label}` };
  }
  const rev = meshMap?.metadata?.labels?.["istio.io/rev"];
  const fromRev = rev === undefined ? undefined : istioVersionFrom(rev, "revision");
  if (fromRev !== undefined)
    return { value: fromRev, source: `configmap/${meshMapName} label istio.io/rev=${rev ?? ""}` };
  return undefined;
}

/**
 * What istioctl reads for `cluster.env`: cluster ID, mesh ID and network from ConfigMap `istio-sidecar-injector`
 * (`values` JSON, as installed by istioctl/helm), the trust domain and `defaultConfig` from ConfigMap `istio`
 * (`mesh`), and the mesh's version from the istiod Deployment (apps/v1) or that ConfigMap's revision label.
 * Missing or unreadable objects leave the values unset (the caller's defaults apply). Three GETs.
 */
export async function readMeshSettings(
  client: KubeClient,
  istioNamespace: string,
  istiodService = "istiod",
): Promise<MeshSettings> {
  const settings: { -readonly [K in keyof MeshSettings]: MeshSettings[K] } = {};
  const optional = async <T>(path: string): Promise<T | undefined> => {
    try {
      return await getIfExists<T>(client, path);
    } catch (error) {
      if (error instanceof KubeApiError && error.status === 403) return undefined;
      throw error;
    }
  };
  const injector = await optional<ConfigMapObject>(corePath("configmaps", istioNamespace, "istio-sidecar-injector"));
  const valuesText = injector?.data?.["values"];
  if (valuesText !== undefined) {
    try {
      const values = JSON.parse(valuesText) as InjectorValues;
      const clusterId = nonEmpty(values.global?.multiCluster?.clusterName);
      const meshId = nonEmpty(values.global?.meshID);
      const network = nonEmpty(values.global?.network);
      if (clusterId !== undefined) settings.clusterId = clusterId;
      if (meshId !== undefined) settings.meshId = meshId;
      if (network !== undefined) settings.network = network;
    } catch {
      // Not JSON (an older or hand-made injector config): fall back to the flags' defaults.
    }
  }
  // A revisioned control plane (Service istiod-<rev>) keeps its mesh config in ConfigMap istio-<rev>.
  const meshMapName = istiodService === "istiod" ? "istio" : `istio-${istiodService.slice("istiod-".length)}`;
  const meshMap = await optional<ConfigMapObject>(corePath("configmaps", istioNamespace, meshMapName));
  const mesh = meshMap?.data?.["mesh"];
  if (mesh !== undefined) {
    const parsed = await parseMeshConfig(mesh);
    if (parsed.trustDomain !== undefined) settings.trustDomain = parsed.trustDomain;
    if (parsed.defaultConfig !== undefined) settings.proxyConfig = parsed.defaultConfig;
  }
  const deployment = await optional<DeploymentObject>(
    groupPath("apps/v1", "deployments", istioNamespace, istiodService),
  );
  const version = meshVersion(deployment, istiodService, meshMap, meshMapName);
  if (version !== undefined) settings.istioVersion = version;
  return settings;
}

// ── the file ────────────────────────────────────────────────────────────────────────────────

export interface IstiodWorkload {
  /** Namespace of the VM's workload (ISTIO_NAMESPACE, POD_NAMESPACE). */
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly trustDomain: string;
  readonly clusterId: string;
  readonly meshId?: string;
  readonly network?: string;
  /** WorkloadGroup-style name: sets ISTIO_META_WORKLOAD_NAME, ISTIO_SERVICE, CANONICAL_* and the app label. */
  readonly workloadName?: string;
  readonly canonicalRevision?: string;
  /** ISTIO_VERSION: the mesh's Istio version. */
  readonly istioVersion?: string;
  /** PROXY_CONFIG: the mesh config's `defaultConfig`, written as JSON. */
  readonly proxyConfig?: Readonly<Record<string, unknown>>;
  /** ISTIO_META_AUTO_REGISTER_GROUP: the WorkloadGroup istiod registers the VM into (src/kube/workload-group.ts). */
  readonly autoRegisterGroup?: string;
  /** The workload's labels (the group's `metadata.labels`), merged into ISTIO_METAJSON_LABELS. */
  readonly labels?: Readonly<Record<string, string>>;
  /** The group's probe: PROXY_CONFIG's `readinessProbe`, as istioctl puts it into the mesh config's defaultConfig. */
  readonly readinessProbe?: Readonly<Record<string, unknown>>;
}

/** `pkg/kube/labels` CanonicalService's name and revision lookups (istio/istio 1.24), with their fallbacks. */
function canonicalFrom(labels: Readonly<Record<string, string>>, workloadName: string): [string, string | undefined] {
  const name =
    labels["service.istio.io/canonical-name"] ?? labels["app.kubernetes.io/name"] ?? labels["app"] ?? workloadName;
  const revision =
    labels["service.istio.io/canonical-revision"] ?? labels["app.kubernetes.io/version"] ?? labels["version"];
  return [name, revision];
}

export interface ClusterEnvInput {
  readonly profile: ControlPlaneProfile;
  readonly serviceCidr: string;
  readonly systemNamespace: string;
  readonly authPolicy: "MUTUAL_TLS" | "NONE";
  /** Only when asked: sidecar.env is the per-VM home of ISTIO_INBOUND_PORTS and wins over cluster.env. */
  readonly inboundPorts?: string;
  /** Required for the istiod profile. */
  readonly workload?: IstiodWorkload;
  /**
   * istiod's Service when it is not `istiod` (a revisioned install, `istiod-<rev>`): the agent's default addresses
   * and TLS name then have to be written out, as istioctl writes CA_ADDR.
   */
  readonly istiodService?: string;
  /** istiod profile: ISTIO_META_DNS_CAPTURE=true is written (the agent's DNS proxy and its capture). */
  readonly dnsCapture?: boolean;
}

export type DnsCaptureChoice = "auto" | "true" | "false";

export interface DnsCaptureDecision {
  readonly capture: boolean;
  readonly reason: string;
}

/**
 * Whether VMs resolve mesh names through the agent's DNS proxy (as current Istio does) or through dnsmasq and a
 * kube-dns load balancer (`istio-vm dnsmasq`). `auto`: the proxy, unless the cluster has that load balancer — a
 * Service the admin created for VMs, so the dnsmasq path is what they chose. The flag overrides either way.
 */
export function decideDnsCapture(
  choice: DnsCaptureChoice,
  dnsService: string,
  serviceExists: boolean,
): DnsCaptureDecision {
  if (choice !== "auto") return { capture: choice === "true", reason: "--dns-capture" };
  return serviceExists
    ? { capture: false, reason: `kube-dns load balancer ${dnsService} found: VMs resolve through dnsmasq` }
    : { capture: true, reason: `no kube-dns load balancer (${dnsService}): the agent's DNS proxy answers mesh names` };
}

export interface EnvEntry {
  readonly key: string;
  readonly value: string;
}

export function clusterEnvEntries(input: ClusterEnvInput): EnvEntry[] {
  const entries: EnvEntry[] = [
    { key: "ISTIO_SERVICE_CIDR", value: input.serviceCidr },
    { key: "ISTIO_SYSTEM_NAMESPACE", value: input.systemNamespace },
    { key: "CONTROL_PLANE_AUTH_POLICY", value: input.authPolicy },
    { key: "ISTIO_CONTROL_PLANE", value: input.profile },
  ];
  if (input.inboundPorts !== undefined) {
    entries.push({ key: "ISTIO_INBOUND_PORTS", value: portsOrAll.render(portsOrAll.parse(input.inboundPorts)) });
  }
  if (input.profile === "legacy") return entries;
  const w = input.workload;
  if (w === undefined) throw new Error("planClusterEnv: the istiod profile needs the workload settings");
  entries.push(
    { key: "ISTIO_NAMESPACE", value: w.namespace },
    { key: "POD_NAMESPACE", value: w.namespace },
    { key: "SERVICE_ACCOUNT", value: w.serviceAccount },
    { key: "TRUST_DOMAIN", value: w.trustDomain },
    { key: "ISTIO_META_CLUSTER_ID", value: w.clusterId },
  );
  if (input.dnsCapture === true) entries.push({ key: "ISTIO_META_DNS_CAPTURE", value: "true" });
  const istiod = input.istiodService;
  if (istiod !== undefined && istiod !== "istiod") {
    const host = `${istiod}.${input.systemNamespace}.svc`;
    entries.push(
      { key: "CA_ADDR", value: `${host}:15012` },
      { key: "PILOT_ADDRESS", value: `${host}:15012` },
      { key: "DISCOVERY_ADDRESS", value: `${host}:${input.authPolicy === "NONE" ? 15010 : 15012}` },
      { key: "ISTIOD_SAN", value: host },
    );
  }
  if (w.istioVersion !== undefined && w.istioVersion !== "") {
    entries.push({ key: "ISTIO_VERSION", value: w.istioVersion });
  }
  const proxyConfig = {
    ...(w.proxyConfig ?? {}),
    ...(w.readinessProbe === undefined ? {} : { readinessProbe: w.readinessProbe }),
  };
  if (Object.keys(proxyConfig).length > 0) {
    entries.push({ key: "PROXY_CONFIG", value: JSON.stringify(proxyConfig) });
  }
  if (w.autoRegisterGroup !== undefined) {
    entries.push({ key: "ISTIO_META_AUTO_REGISTER_GROUP", value: w.autoRegisterGroup });
  }
  if (w.meshId !== undefined) entries.push({ key: "ISTIO_META_MESH_ID", value: w.meshId });
  if (w.network !== undefined) entries.push({ key: "ISTIO_META_NETWORK", value: w.network });
  if (w.workloadName !== undefined) {
    const given = w.labels ?? {};
    const [canonicalName, labelRevision] = canonicalFrom(given, w.workloadName);
    const revision = w.canonicalRevision ?? labelRevision ?? "latest";
    const labels: Record<string, string> = {
      app: w.workloadName,
      ...given,
      "service.istio.io/canonical-name": canonicalName,
      "service.istio.io/canonical-revision": revision,
    };
    entries.push(
      { key: "ISTIO_META_WORKLOAD_NAME", value: w.workloadName },
      { key: "ISTIO_SERVICE", value: `${w.workloadName}.${w.namespace}` },
      { key: "CANONICAL_SERVICE", value: canonicalName },
      { key: "CANONICAL_REVISION", value: revision },
      {
        key: "ISTIO_METAJSON_LABELS",
        value: JSON.stringify(
          Object.fromEntries(
            Object.keys(labels)
              .sort()
              .map((k) => [k, labels[k]]),
          ),
        ),
      },
    );
  }
  return entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * The file text. Legacy: exactly the original's lines (`KEY=value`, unquoted), in its order, plus
 * `ISTIO_CONTROL_PLANE=legacy`. istiod: sorted, every value single-quoted, as istioctl writes it.
 */
export function planClusterEnv(input: ClusterEnvInput): string {
  return renderEnvFile(clusterEnvEntries(input), { quote: input.profile === "legacy" ? "when-needed" : "always" });
}
