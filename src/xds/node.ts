/**
 * The Node an istio-vm probe stream presents to Pilot/istiod (docs/protocols.md, "xDS"): the id Envoy on this VM uses,
 * `sidecar~<ISTIO_SVC_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`, `cluster` = ISTIO_SERVICE and
 * the metadata istiod's identity check and registry need. `AUTO_REGISTER_GROUP` is never sent: on a probe stream it
 * would make istiod create (and later delete) a WorkloadEntry for this VM.
 */
import type { ConfigValues } from "../config/registry.js";
import type { StructValue, XdsNode } from "./protos.js";

const NEVER_ON_PROBES = new Set(["AUTO_REGISTER_GROUP"]);

export function nodeId(values: ConfigValues, hostname: string): string {
  const podName = values.POD_NAME === "" ? (hostname.split(".")[0] ?? hostname) : values.POD_NAME;
  return `sidecar~${values.ISTIO_SVC_IP}~${podName}.${values.POD_NAMESPACE}~${values.POD_NAMESPACE}.svc.cluster.local`;
}

/**
 * `extraMetadata`: the `ISTIO_META_*` / `ISTIO_METAJSON_*` variables outside the registry, by variable name; they pass
 * through as istiod's agent passes them (prefix removed; JSON ones parsed).
 */
export function probeNode(
  values: ConfigValues,
  hostname: string,
  extraMetadata: Readonly<Record<string, string>> = {},
  agentVersion?: string,
): XdsNode {
  const metadata: Record<string, StructValue> = {};
  for (const [name, raw] of Object.entries(extraMetadata)) {
    if (name.startsWith("ISTIO_METAJSON_")) {
      try {
        metadata[name.slice("ISTIO_METAJSON_".length)] = JSON.parse(raw) as StructValue;
      } catch {
        // Invalid JSON metadata is a configuration problem `istio-vm config` reports; the probe leaves it out.
      }
    } else if (name.startsWith("ISTIO_META_")) metadata[name.slice("ISTIO_META_".length)] = raw;
  }
  const set = (key: string, value: string): void => {
    if (value !== "") metadata[key] = value;
  };
  set("NAMESPACE", values.POD_NAMESPACE);
  set("SERVICE_ACCOUNT", values.SERVICE_ACCOUNT);
  set("INSTANCE_IPS", values.ISTIO_SVC_IP);
  set("CLUSTER_ID", values.ISTIO_META_CLUSTER_ID);
  set("MESH_ID", values.ISTIO_META_MESH_ID);
  set("NETWORK", values.ISTIO_META_NETWORK);
  set("WORKLOAD_NAME", values.ISTIO_META_WORKLOAD_NAME);
  if (Object.keys(values.ISTIO_METAJSON_LABELS).length > 0) {
    metadata["LABELS"] = values.ISTIO_METAJSON_LABELS as { [key: string]: StructValue };
  }
  for (const key of NEVER_ON_PROBES) Reflect.deleteProperty(metadata, key);
  return {
    id: nodeId(values, hostname),
    cluster: values.ISTIO_SERVICE,
    metadata,
    user_agent_name: "istio-vm",
    ...(agentVersion === undefined ? {} : { user_agent_version: agentVersion }),
  };
}
