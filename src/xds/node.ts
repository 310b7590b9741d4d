/**
 * The Node an istio-vm probe stream presents to Pilot/istiod (docs/protocols.md, "xDS"): the node Envoy on this VM presents (src/xds/node-block.ts,
 * one builder for both), without `AUTO_REGISTER_GROUP` (on a probe stream it would make istiod create, and later
 * delete, a WorkloadEntry for this VM) and with istio-vm as the user agent.
 */
import type { ConfigValues } from "../config/registry.js";
import { buildNodeBlock } from "./node-block.js";
import type { StructValue, XdsNode } from "./protos.js";

const NEVER_ON_PROBES = new Set(["AUTO_REGISTER_GROUP"]);

/**
 * `extraMetadata`: the `ISTIO_META_*` / `ISTIO_METAJSON_*` variables outside the registry, by variable name, raw.
 */
export function probeNode(
  values: ConfigValues,
  hostname: string,
  extraMetadata: Readonly<Record<string, string>> = {},
  agentVersion?: string,
): XdsNode {
  const node = buildNodeBlock({ config: values, extraMetadata, hostname });
  const metadata: Record<string, StructValue> = {};
  for (const [key, value] of Object.entries(node.metadata)) if (!NEVER_ON_PROBES.has(key)) metadata[key] = value;
  return {
    id: node.id,
    cluster: node.cluster,
    metadata,
    user_agent_name: "istio-vm",
    ...(agentVersion === undefined ? {} : { user_agent_version: agentVersion }),
  };
}
