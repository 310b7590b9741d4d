/**
 * The dnsmasq file `kubedns` (installed as /etc/dnsmasq.d/kubedns): it makes the control plane's names resolve on
 * the VM to load-balancer addresses the VM can reach, and forwards `svc.cluster.local` to kube-dns behind its own
 * load balancer. dnsmasq's `address=/X/ip` answers X and every *.X, so each name is listed in each form a VM dials
 * (`istio-pilot` and `istio-pilot.istio-system` are not under one another).
 *
 * `planKubedns` is pure; `resolveLoadBalancers` reads the few Services by name, waiting (bounded) while a cloud load
 * balancer has not been given an address yet.
 */
import { isIP } from "node:net";
import type { Clock } from "../platform/clock.js";
import { AgentError } from "../platform/errors.js";
import { duration } from "../config/types.js";
import type { KubeClient } from "./client.js";
import type { ControlPlaneProfile } from "./profile.js";
import { corePath, getIfExists } from "./profile.js";

export type LbRole = "dns" | "pilot" | "mixer" | "ca" | "istiod";

export interface LbTarget {
  readonly role: LbRole;
  readonly namespace: string;
  /** Service names to try, first that exists wins (e.g. 0.8 renamed istio-ca-ilb to citadel-ilb). */
  readonly services: readonly string[];
  /** An optional target that does not exist is left out (the istiod profile's DNS load balancer). */
  readonly optional: boolean;
  /** A fixed address given on the command line: nothing is read. */
  readonly address?: string;
}

export interface LbOptions {
  readonly istioNamespace: string;
  /** Namespace of kube-dns and its load balancer (`dns-ilb` of mesh-expansion.yaml lives in kube-system). */
  readonly dnsNamespace: string;
  readonly dnsService: string;
  /** istiod profile: the Service that exposes istiod to VMs (istioctl's --ingressService). */
  readonly gatewayService: string;
  /** istiod profile: the address to use instead of reading the gateway Service (istioctl's --ingressIP). */
  readonly gatewayAddress?: string;
}

export const DEFAULT_LB_OPTIONS: LbOptions = {
  istioNamespace: "istio-system",
  dnsNamespace: "kube-system",
  dnsService: "dns-ilb",
  gatewayService: "istio-eastwestgateway",
};

/** The load balancers a profile's `kubedns` needs (install/kubernetes/mesh-expansion.yaml for legacy). */
export function kubednsTargets(profile: ControlPlaneProfile, options: LbOptions): LbTarget[] {
  const ns = options.istioNamespace;
  if (profile === "legacy") {
    return [
      { role: "dns", namespace: options.dnsNamespace, services: [options.dnsService], optional: false },
      { role: "mixer", namespace: ns, services: ["mixer-ilb"], optional: false },
      { role: "pilot", namespace: ns, services: ["istio-pilot-ilb"], optional: false },
      { role: "ca", namespace: ns, services: ["istio-ca-ilb", "citadel-ilb"], optional: false },
    ];
  }
  const istiod: LbTarget =
    options.gatewayAddress === undefined
      ? { role: "istiod", namespace: ns, services: [options.gatewayService], optional: false }
      : { role: "istiod", namespace: ns, services: [], optional: false, address: options.gatewayAddress };
  return [{ role: "dns", namespace: options.dnsNamespace, services: [options.dnsService], optional: true }, istiod];
}

export type LbAddresses = Partial<Record<LbRole, string>>;

function requireAddress(addresses: LbAddresses, role: LbRole): string {
  const address = addresses[role];
  if (address === undefined) throw new Error(`planKubedns: no ${role} address`);
  if (isIP(address) === 0) throw new Error(`planKubedns: ${role} address '${address}' is not an IP address`);
  return address;
}

/**
 * Legacy: exactly the 0.2.12–0.7.1 file (docs/protocols.md, "kubedns"). istiod: `istiod`, `istiod.<ns>` and
 * `istiod.<ns>.svc` (the discovery address and TLS name the agent dials; `istiod-<rev>` for a revisioned install) →
 * the gateway, and kube-dns when its load balancer exists.
 */
export function planKubedns(
  profile: ControlPlaneProfile,
  addresses: LbAddresses,
  istioNamespace: string,
  istiodService = "istiod",
): string {
  const lines: string[] = [];
  const dns = addresses.dns;
  if (dns !== undefined) lines.push(`server=/svc.cluster.local/${requireAddress(addresses, "dns")}`);
  else if (profile === "legacy") throw new Error("planKubedns: the legacy profile needs the kube-dns address");
  if (profile === "legacy") {
    const names: [string, LbRole][] = [
      ["istio-mixer", "mixer"],
      ["istio-pilot", "pilot"],
      ["istio-ca", "ca"],
    ];
    for (const [name, role] of names) lines.push(`address=/${name}/${requireAddress(addresses, role)}`);
    for (const [name, role] of names) {
      lines.push(`address=/${name}.${istioNamespace}/${requireAddress(addresses, role)}`);
    }
  } else {
    const ip = requireAddress(addresses, "istiod");
    for (const name of [
      istiodService,
      `${istiodService}.${istioNamespace}`,
      `${istiodService}.${istioNamespace}.svc`,
    ]) {
      lines.push(`address=/${name}/${ip}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

// ── reading the load balancers ───────────────────────────────────────────────────────────────

interface ServiceObject {
  readonly spec?: { readonly externalIPs?: readonly string[] };
  readonly status?: {
    readonly loadBalancer?: { readonly ingress?: readonly { readonly ip?: string; readonly hostname?: string }[] };
  };
}

export type LbState =
  | { readonly kind: "ready"; readonly address: string; readonly service: string }
  | { readonly kind: "pending"; readonly service: string }
  | { readonly kind: "missing" };

/** `status.loadBalancer.ingress[0].ip`, else `spec.externalIPs[0]` (as istioctl); a hostname-only LB is an error. */
export function loadBalancerAddress(service: ServiceObject, subject: string): string | undefined {
  const ingress = service.status?.loadBalancer?.ingress?.[0];
  const address = ingress?.ip ?? service.spec?.externalIPs?.[0];
  if (address === undefined || address === "") {
    if (ingress?.hostname !== undefined && ingress.hostname !== "") {
      throw new AgentError({
        code: "LB_HOSTNAME_ONLY",
        message: `load balancer of ${subject} has only a host name (${ingress.hostname}); dnsmasq address= lines need an IP`,
        subject,
        hint: "resolve the host name and pass the address (istiod profile: --gateway-ip), or use a load balancer with a static IP",
      });
    }
    return undefined;
  }
  if (isIP(address) === 0) {
    throw new AgentError({
      code: "LB_ADDRESS_INVALID",
      message: `load balancer of ${subject} reports '${address}', which is not an IPv4 or IPv6 address`,
      subject,
    });
  }
  return address;
}

async function readTarget(client: KubeClient, target: LbTarget): Promise<LbState> {
  for (const name of target.services) {
    const subject = `service ${target.namespace}/${name}`;
    const service = await getIfExists<ServiceObject>(client, corePath("services", target.namespace, name));
    if (service === undefined) continue;
    const address = loadBalancerAddress(service, subject);
    return address === undefined ? { kind: "pending", service: name } : { kind: "ready", address, service: name };
  }
  return { kind: "missing" };
}

export interface ResolveOptions {
  readonly clock: Clock;
  /** How long to wait for pending addresses in total (ms). */
  readonly waitMs: number;
  readonly intervalMs: number;
  /** One line of progress per poll while something is pending (for stderr). */
  readonly progress?: (line: string) => void;
  readonly signal?: AbortSignal;
}

export interface ResolvedLoadBalancers {
  readonly addresses: LbAddresses;
  /** `namespace/service` per role, for reports. */
  readonly sources: Partial<Record<LbRole, string>>;
  /** Optional targets that do not exist. */
  readonly absent: readonly string[];
}

/**
 * Reads each target Service by name; polls the pending ones every `intervalMs` until all have an address or `waitMs`
 * is over, then fails naming the ones still pending. A required Service that does not exist fails at once.
 */
export async function resolveLoadBalancers(
  client: KubeClient,
  targets: readonly LbTarget[],
  options: ResolveOptions,
): Promise<ResolvedLoadBalancers> {
  const addresses: LbAddresses = {};
  const sources: Partial<Record<LbRole, string>> = {};
  const absent: string[] = [];
  let pending: LbTarget[] = [];
  for (const target of targets) {
    if (target.address !== undefined) {
      if (isIP(target.address) === 0) {
        throw new AgentError({
          code: "LB_ADDRESS_INVALID",
          message: `'${target.address}' is not an IPv4 or IPv6 address`,
          subject: target.role,
          kind: "usage",
        });
      }
      addresses[target.role] = target.address;
      sources[target.role] = "command line";
    } else pending.push(target);
  }
  const started = options.clock.monotonic();
  for (;;) {
    const still: { target: LbTarget; service: string }[] = [];
    for (const target of pending) {
      const state = await readTarget(client, target);
      if (state.kind === "ready") {
        addresses[target.role] = state.address;
        sources[target.role] = `${target.namespace}/${state.service}`;
      } else if (state.kind === "pending") {
        still.push({ target, service: state.service });
      } else if (target.optional) {
        absent.push(`${target.namespace}/${target.services.join("|")}`);
      } else {
        const names = target.services.map((s) => `${target.namespace}/${s}`).join(" or ");
        throw new AgentError({
          code: "LB_SERVICE_MISSING",
          message: `load-balancer Service ${names} does not exist`,
          subject: names,
          hint:
            target.role === "istiod"
              ? "expose istiod to VMs (an east-west gateway, e.g. samples/multicluster/gen-eastwest-gateway.sh) and pass --gateway-service, or pass --gateway-ip"
              : "apply the mesh-expansion load balancers (install/kubernetes/mesh-expansion.yaml of the Istio release)",
        });
      }
    }
    if (still.length === 0) return { addresses, sources, absent };
    const waited = options.clock.monotonic() - started;
    const names = still.map((s) => `${s.target.namespace}/${s.service}`).join(", ");
    if (waited >= options.waitMs) {
      throw new AgentError({
        code: "LB_ADDRESS_PENDING",
        message: `no load-balancer address after ${duration.render(Math.round(waited))} for: ${names}`,
        subject: names,
        hint: "check `kubectl describe service` for events from the cloud's load-balancer controller, or wait longer with --wait",
      });
    }
    options.progress?.(
      `waiting for a load-balancer address: ${names} (${waited < 1000 ? "0s" : duration.render(Math.floor(waited / 1000) * 1000)} of ${duration.render(options.waitMs)})`,
    );
    await options.clock.sleep(Math.min(options.intervalMs, Math.max(0, options.waitMs - waited)), options.signal);
    pending = still.map((s) => s.target);
  }
}
