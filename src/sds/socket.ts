/**
 * Where the agent's SDS socket lives (istiod profile): a directory of its own in the agent's runtime directory
 * (ISTIO_RUN_DIR, /run/istio-vm), named as Istio's agent names it (istio/istio pkg/security: WorkloadIdentitySocketPath
 * `./var/run/secrets/workload-spiffe-uds/socket`). The bootstrap's `sds-grpc` cluster points at it (pure).
 */
import { join } from "node:path";
import type { ConfigValues } from "../config/registry.js";

export const SDS_SOCKET_DIR = "workload-spiffe-uds";
export const SDS_SOCKET_NAME = "socket";

export function sdsSocketPath(config: Pick<ConfigValues, "ISTIO_RUN_DIR">): string {
  return join(config.ISTIO_RUN_DIR, SDS_SOCKET_DIR, SDS_SOCKET_NAME);
}

/** Whether Envoy gets its certificates over SDS (istiod) or reads the files in OUTPUT_CERTS (legacy). */
export function usesSds(config: Pick<ConfigValues, "ISTIO_CONTROL_PLANE">): boolean {
  return config.ISTIO_CONTROL_PLANE === "istiod";
}
