/**
 * What the discovery checks of every profile share: the check's name, the note on what the control plane's host name
 * resolved to, and the hint for a connection that failed.
 */
import type { CheckDeps } from "./check.js";

export const DISCOVERY_CHECK = "discovery";

export async function resolvedNote(deps: CheckDeps, host: string): Promise<string> {
  const outcome = await deps.dns.lookupSystem(host, deps.timeoutMs);
  return outcome.ok ? `${host} → ${outcome.addresses.join(",")}` : `${host} does not resolve (${outcome.code})`;
}

export function connectHint(code: string, what: string, host: string, resolved: string): string {
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
    return `${host} does not resolve: see the dns check (the address=/${host.split(".")[0] ?? host}/ line of kubedns, dnsmasq, resolv.conf)`;
  }
  if (code === "ECONNREFUSED") {
    return `nothing listens for ${what} (${resolved}): check the address for ${host} in kubedns against the load balancer (\`istio-vm dnsmasq\` regenerates it) and the port`;
  }
  return `no answer from ${what} (${resolved}, ${code}): a wrong address in kubedns, a firewall, or a load balancer without healthy backends`;
}
