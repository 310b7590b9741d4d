/**
 * Where a bundle's content comes from: the cluster (the same functions `cluster-env`, `dnsmasq` and `certs` call),
 * or files made earlier by those commands (`--from DIR`).
 */
import { join } from "node:path";
import { EnvFileError, parseEnvFile } from "../config/env-file.js";
import { discoverServiceCidr, planClusterEnv, readMeshSettings } from "../kube/cluster-env.js";
import type { ClusterEnvInput } from "../kube/cluster-env.js";
import type { KubeClient } from "../kube/client.js";
import type { WorkloadGroupSettings } from "../kube/workload-group.js";
import { fetchIstiodBootstrap, fetchLegacyCerts } from "../kube/bootstrap-certs.js";
import { DEFAULT_LB_OPTIONS, kubednsTargets, planKubedns, resolveLoadBalancers } from "../kube/kubedns.js";
import type { ControlPlaneProfile, DetectedProfile } from "../kube/profile.js";
import type { Clock } from "../platform/clock.js";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import { readUserText } from "../platform/user-file.js";
import type { CredentialName } from "./bundle.js";
import { CREDENTIAL_NAMES } from "./bundle.js";

export interface BundleSources {
  readonly profile: ControlPlaneProfile;
  readonly clusterEnv: string;
  readonly kubedns: string;
  readonly credentials: readonly { readonly name: CredentialName; readonly content: string }[];
  readonly warnings: readonly string[];
}

export interface ClusterSourceOptions {
  readonly istioNamespace: string;
  /** From profileFor (src/cli/admin-options.ts): --revision, --profile or detection. */
  readonly detected: DetectedProfile;
  /** The VM workload's namespace (the client's namespace when absent). */
  readonly namespace?: string;
  readonly serviceAccount: string;
  readonly serviceCidr?: string;
  readonly authPolicy: "MUTUAL_TLS" | "NONE";
  readonly workloadName?: string;
  /** istiod: the WorkloadGroup the VM auto-registers into (its name is the workload's name). */
  readonly workloadGroup?: WorkloadGroupSettings;
  readonly gatewayAddress?: string;
  readonly waitMs: number;
  readonly tokenSeconds: number;
  readonly trustDomain: string;
  readonly clock: Clock;
  readonly progress?: (line: string) => void;
}

/** Everything a VM needs, read from the cluster; each piece verified as the admin commands verify it. */
export async function sourcesFromCluster(client: KubeClient, options: ClusterSourceOptions): Promise<BundleSources> {
  const namespace = options.namespace ?? client.namespace;
  const detected = options.detected;
  const profile = detected.profile;
  const serviceCidr = await discoverServiceCidr(client, {
    ...(options.serviceCidr === undefined ? {} : { flag: options.serviceCidr }),
    probeNamespace: namespace,
  });
  let input: ClusterEnvInput = {
    profile,
    serviceCidr: serviceCidr.value,
    systemNamespace: options.istioNamespace,
    authPolicy: options.authPolicy,
    ...(detected.istiodService === "istiod" ? {} : { istiodService: detected.istiodService }),
  };
  if (profile === "istiod") {
    const mesh = await readMeshSettings(client, options.istioNamespace, detected.istiodService);
    input = {
      ...input,
      workload: {
        namespace,
        serviceAccount: options.serviceAccount,
        trustDomain: mesh.trustDomain ?? options.trustDomain,
        clusterId: mesh.clusterId ?? "Kubernetes",
        ...(mesh.meshId === undefined ? {} : { meshId: mesh.meshId }),
        ...(mesh.network === undefined ? {} : { network: mesh.network }),
        ...(options.workloadName === undefined ? {} : { workloadName: options.workloadName }),
        ...(options.workloadGroup === undefined
          ? {}
          : {
              workloadName: options.workloadGroup.name,
              autoRegisterGroup: options.workloadGroup.name,
              labels: options.workloadGroup.labels,
              ...(options.workloadGroup.probe === undefined ? {} : { readinessProbe: options.workloadGroup.probe }),
            }),
        ...(mesh.istioVersion === undefined ? {} : { istioVersion: mesh.istioVersion.value }),
        ...(mesh.proxyConfig === undefined ? {} : { proxyConfig: mesh.proxyConfig }),
      },
    };
  }
  const clusterEnv = planClusterEnv(input);
  const targets = kubednsTargets(profile, {
    ...DEFAULT_LB_OPTIONS,
    istioNamespace: options.istioNamespace,
    ...(options.gatewayAddress === undefined ? {} : { gatewayAddress: options.gatewayAddress }),
  });
  const resolved = await resolveLoadBalancers(client, targets, {
    clock: options.clock,
    waitMs: options.waitMs,
    intervalMs: 2000,
    ...(options.progress === undefined ? {} : { progress: options.progress }),
  });
  const kubedns = planKubedns(profile, resolved.addresses, options.istioNamespace, detected.istiodService);
  const now = options.clock.now();
  const certs =
    profile === "legacy"
      ? await fetchLegacyCerts(client, {
          serviceAccount: options.serviceAccount,
          namespace,
          all: true,
          trustDomain: options.trustDomain,
          now,
        })
      : await fetchIstiodBootstrap(client, {
          serviceAccount: options.serviceAccount,
          namespace,
          audience: "istio-ca",
          tokenSeconds: options.tokenSeconds,
          now,
        });
  const credentials = certs.files.map((f) => {
    const name = CREDENTIAL_NAMES.find((n) => n === f.name);
    if (name === undefined) throw new Error(`unexpected credential file ${f.name}`);
    return { name, content: f.content };
  });
  return { profile, clusterEnv, kubedns, credentials, warnings: certs.warnings };
}

/** The files `cluster-env -o`, `dnsmasq -o` and `certs -o` wrote into one directory. */
/** cluster.env, kubedns, PEM files and a token are kilobytes; 16 MiB is not one of them. */
const FROM_FILE_MAX_BYTES = 16 * 1024 * 1024;

export async function sourcesFromDirectory(fs: FileSystem, dir: string): Promise<BundleSources> {
  const stat = await fs.stat(dir);
  if (stat?.isDirectory !== true) {
    throw new AgentError({
      code: "FROM_NOT_DIRECTORY",
      message: `--from ${dir}: not a directory`,
      subject: dir,
      kind: "usage",
      hint: "give the directory where cluster-env, dnsmasq and certs wrote their files",
    });
  }
  // Files a user put there (or linked): bounded, and a directory or a binary in their place is a clear error.
  const read = (name: string): Promise<string | undefined> =>
    readUserText(fs, join(dir, name), {
      what: name,
      maxBytes: FROM_FILE_MAX_BYTES,
      code: "BUNDLE_INPUT",
      hint: `make it again with the command that writes ${name} (see \`istio-vm bundle --help\`)`,
    });
  const clusterEnv = await read("cluster.env");
  const kubedns = await read("kubedns");
  const missing = [clusterEnv === undefined ? "cluster.env" : "", kubedns === undefined ? "kubedns" : ""].filter(
    (n) => n !== "",
  );
  if (clusterEnv === undefined || kubedns === undefined) {
    throw new AgentError({
      code: "BUNDLE_INPUT_MISSING",
      message: `${dir} has no ${missing.join(" and ")}`,
      subject: join(dir, missing[0] ?? ""),
      kind: "usage",
      hint: `make them with \`istio-vm cluster-env -o ${join(dir, "cluster.env")}\` and \`istio-vm dnsmasq -o ${join(dir, "kubedns")}\``,
    });
  }
  let profile: ControlPlaneProfile = "istiod";
  try {
    const entry = parseEnvFile(clusterEnv, join(dir, "cluster.env")).find((e) => e.key === "ISTIO_CONTROL_PLANE");
    if (entry?.value === "legacy") profile = "legacy";
  } catch (error) {
    if (!(error instanceof EnvFileError)) throw error;
    throw new AgentError({
      code: "CLUSTER_ENV_INVALID",
      message: error.message,
      subject: join(dir, "cluster.env"),
      kind: "config",
      hint: "regenerate it with `istio-vm cluster-env`",
    });
  }
  const credentials: { name: CredentialName; content: string }[] = [];
  for (const name of CREDENTIAL_NAMES) {
    const content = await read(name);
    if (content !== undefined) credentials.push({ name, content });
  }
  return { profile, clusterEnv, kubedns, credentials, warnings: [] };
}
