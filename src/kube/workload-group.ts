/**
 * `bundle`/`setup --workload-group NAME` (istiod profile): the WorkloadGroup (networking.istio.io/v1) the VM
 * auto-registers into. An existing group is used as it is (its labels, ports, service account and probe); a missing
 * one is created from `--labels`, `--ports`, `--service-account` and `--probe`, as `istioctl x workload group create`
 * would write it (labels under `spec.metadata`, the rest under `spec.template`). What the VM then needs from the
 * group goes into cluster.env (docs/protocols.md, "Auto-registration and health"): `ISTIO_META_AUTO_REGISTER_GROUP`,
 * the workload name and labels, and the group's probe as the ProxyConfig's `readinessProbe`.
 */
import type { ReadinessProbe } from "../config/readiness-probe.js";
import { parseReadinessProbe } from "../config/readiness-probe.js";
import { AgentError } from "../platform/errors.js";
import type { KubeClient } from "./client.js";
import { isNotFound } from "./client.js";
import { groupPath } from "./profile.js";
import type { PortSpec } from "./register-inputs.js";

export const WORKLOAD_GROUP_API = "networking.istio.io/v1";

export interface WorkloadGroupObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; uid?: string; [key: string]: unknown };
  spec: {
    metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
    template?: { serviceAccount?: string; ports?: Record<string, number>; [key: string]: unknown };
    probe?: Record<string, unknown>;
  };
}

export interface WorkloadGroupInput {
  readonly name: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly ports: readonly PortSpec[];
  /** The `--probe` object as given (protobuf JSON of ReadinessProbe), already checked by parseReadinessProbe. */
  readonly probe?: Readonly<Record<string, unknown>>;
}

/** What the VM's cluster.env takes from the group. */
export interface WorkloadGroupSettings {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly serviceAccount: string;
  /** The probe as protobuf JSON, for PROXY_CONFIG's readinessProbe. */
  readonly probe?: Readonly<Record<string, unknown>>;
  readonly created: boolean;
}

export function planWorkloadGroup(input: WorkloadGroupInput): WorkloadGroupObject {
  return {
    apiVersion: WORKLOAD_GROUP_API,
    kind: "WorkloadGroup",
    metadata: { name: input.name, namespace: input.namespace },
    spec: {
      metadata: { labels: { ...input.labels } },
      template: {
        serviceAccount: input.serviceAccount,
        ...(input.ports.length === 0 ? {} : { ports: Object.fromEntries(input.ports.map((p) => [p.name, p.port])) }),
      },
      ...(input.probe === undefined ? {} : { probe: { ...input.probe } }),
    },
  };
}

/** The settings of a group read from the cluster; a probe the agent could not run is refused here. */
export function settingsOf(group: WorkloadGroupObject, created: boolean): WorkloadGroupSettings {
  const probe = group.spec.probe;
  if (probe !== undefined) {
    const parsed = parseReadinessProbe(probe);
    if ("problems" in parsed) {
      throw new AgentError({
        code: "WORKLOAD_GROUP_PROBE",
        message: `WorkloadGroup ${group.metadata.namespace ?? ""}/${group.metadata.name}: probe: ${parsed.problems.join("; ")}`,
        subject: group.metadata.name,
        kind: "config",
        hint: "fix spec.probe of the WorkloadGroup (httpGet, tcpSocket or exec)",
      });
    }
  }
  return {
    name: group.metadata.name,
    labels: group.spec.metadata?.labels ?? {},
    serviceAccount: group.spec.template?.serviceAccount ?? "default",
    ...(probe === undefined ? {} : { probe }),
    created,
  };
}

/** Reads the group, or creates it from the input; the VM's service account must be the group's. */
export async function ensureWorkloadGroup(
  client: KubeClient,
  input: WorkloadGroupInput,
): Promise<WorkloadGroupSettings> {
  const path = groupPath(WORKLOAD_GROUP_API, "workloadgroups", input.namespace, input.name);
  let current: WorkloadGroupObject | undefined;
  try {
    current = await client.get<WorkloadGroupObject>(path);
  } catch (error) {
    if (!isNotFound(error)) throw error;
  }
  if (current === undefined) {
    const group = planWorkloadGroup(input);
    const created = await client
      .create<WorkloadGroupObject>(groupPath(WORKLOAD_GROUP_API, "workloadgroups", input.namespace), group)
      .catch((error: unknown) => {
        if (!isNotFound(error)) throw error;
        throw new AgentError({
          code: "WORKLOAD_GROUP_UNSUPPORTED",
          message: "the API server does not serve networking.istio.io/v1 WorkloadGroup",
          subject: client.server,
          hint: "install the Istio CRDs (Istio 1.22+ serves networking.istio.io/v1), or leave out --workload-group",
          cause: error,
        });
      });
    return settingsOf({ ...group, ...created, spec: { ...group.spec, ...created.spec } }, true);
  }
  const settings = settingsOf(current, false);
  if (settings.serviceAccount !== input.serviceAccount) {
    throw new AgentError({
      code: "WORKLOAD_GROUP_SERVICE_ACCOUNT",
      message:
        `WorkloadGroup ${input.namespace}/${input.name} runs as service account ${settings.serviceAccount}, ` +
        `the bundle's credentials are for ${input.serviceAccount}`,
      subject: `workloadgroup ${input.namespace}/${input.name}`,
      kind: "usage",
      hint: `pass --service-account ${settings.serviceAccount} (istiod refuses to register a VM under another service account)`,
    });
  }
  return settings;
}

/** The `--probe` flag: a ReadinessProbe as JSON, checked now so the VM never gets a probe it cannot run. */
export function parseProbeFlag(raw: string): { json: Record<string, unknown>; probe: ReadinessProbe } {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw new AgentError({
      code: "USAGE",
      message: `--probe: not JSON: ${(error as Error).message}`,
      kind: "usage",
      hint: `e.g. --probe '{"httpGet":{"path":"/ready","port":8080},"periodSeconds":5}'`,
    });
  }
  const parsed = parseReadinessProbe(json);
  if ("problems" in parsed) {
    throw new AgentError({
      code: "USAGE",
      message: `--probe: ${parsed.problems.join("; ")}`,
      kind: "usage",
      hint: `e.g. --probe '{"tcpSocket":{"port":3306}}' or '{"exec":{"command":["/usr/local/bin/ready"]}}'`,
    });
  }
  return { json: json as Record<string, unknown>, probe: parsed.probe };
}
