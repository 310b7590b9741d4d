/**
 * Where the agent's xDS proxy listens (istiod profile): a Unix socket in a directory of its own in the agent's
 * runtime directory (ISTIO_RUN_DIR, /run/istio-vm), named as Istio's agent names its own (istio/istio
 * pkg/istio-agent/agent.go: `XdsUdsPath`, `<config path>/XDS`). The bootstrap's `xds-grpc` cluster points at it
 * (pure).
 */
import { join } from "node:path";
import type { ConfigValues } from "../config/registry.js";

export const XDS_SOCKET_DIR = "xds";
export const XDS_SOCKET_NAME = "XDS";

export function xdsProxySocketPath(config: Pick<ConfigValues, "ISTIO_RUN_DIR">): string {
  return join(config.ISTIO_RUN_DIR, XDS_SOCKET_DIR, XDS_SOCKET_NAME);
}

/** Whether Envoy's ADS stream goes through the agent (istiod) or straight to Pilot (legacy, as its era did). */
export function usesXdsProxy(config: Pick<ConfigValues, "ISTIO_CONTROL_PLANE">): boolean {
  return config.ISTIO_CONTROL_PLANE === "istiod";
}
