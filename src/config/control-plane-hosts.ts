/**
 * The control plane's host names this VM's configuration dials: the hosts of CA_ADDR, DISCOVERY_ADDRESS and
 * PILOT_ADDRESS that are names, not IP addresses. With the agent's DNS proxy (istiod profile) nothing on the VM answers
 * them from the cluster — the proxy's table comes from istiod itself, and the agent's own queries are not captured —
 * so `istio-vm install` maps them in /etc/hosts (docs/decisions.md, "/etc/hosts for the control plane's names").
 * ISTIOD_SAN is a TLS name that is checked, never resolved, so it is not one of them.
 */
import { isIP } from "node:net";
import type { ConfigValues } from "./registry.js";

export function dialedControlPlaneHosts(
  values: Pick<ConfigValues, "CA_ADDR" | "DISCOVERY_ADDRESS" | "PILOT_ADDRESS">,
): string[] {
  const names: string[] = [];
  for (const address of [values.CA_ADDR, values.DISCOVERY_ADDRESS, values.PILOT_ADDRESS]) {
    const host = address.host.toLowerCase().replace(/\.$/, "");
    if (isIP(host) === 0 && !names.includes(host)) names.push(host);
  }
  return names;
}
