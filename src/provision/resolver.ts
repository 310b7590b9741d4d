/**
 * Making the VM's resolver send the mesh's names to dnsmasq (which answers them from /etc/dnsmasq.d/kubedns) in a way
 * that survives DHCP renewals and reboots. The original appended `prepend domain-name-servers 127.0.0.1;` to
 * dhclient.conf and started a second `dhclient -1`; the dhclient that ifupdown had already started kept its old
 * configuration and, at the next renewal, rewrote resolv.conf without 127.0.0.1 (istio/istio#1857). Here, per
 * resolver the distribution uses (pure planning; `install` applies the files):
 *
 * - **resolved** (systemd-resolved active): a drop-in `[Resolve] DNS=127.0.0.1` with routing-only domains
 *   (`Domains=~svc.cluster.local ~istio-system …`, taken from kubedns), so only the mesh's names go to dnsmasq and
 *   every other name keeps the network's servers; resolved's own configuration is not touched by DHCP.
 *   dnsmasq gets `no-resolv` (it only answers kubedns's names, so it can never forward a query back into resolved).
 * - **resolvconf** (the resolvconf package): Debian's dnsmasq registers 127.0.0.1 with resolvconf itself
 *   (lo.dnsmasq, first in interface-order), and dhclient's resolvconf hook keeps it on renewal. Nothing else to do.
 * - **dhclient** (Debian 12's default ifupdown + isc-dhcp-client, resolv.conf written by dhclient-script): an enter
 *   hook in /etc/dhcp/dhclient-enter-hooks.d. dhclient-script is a new process on every event (BOUND, RENEW, REBIND,
 *   REBOOT) and sources the hooks each time, so the hook applies to a dhclient that is already running — no restart,
 *   no second dhclient — and puts 127.0.0.1 first in `new_domain_name_servers` before make_resolv_conf writes the
 *   file. resolv.conf is also edited once now, so the change takes effect before the next lease event.
 * - **static** (no DHCP client writes resolv.conf): 127.0.0.1 is added to resolv.conf once; nothing rewrites it.
 *
 * In every mode dnsmasq listens on 127.0.0.1 only (`bind-interfaces`, `listen-address=127.0.0.1`): the original
 * left an open resolver on every interface of the VM, and on resolved systems the wildcard bind collides with
 * resolved's stub listener on 127.0.0.53:53.
 */

export const RESOLVER_KINDS = ["resolved", "resolvconf", "dhclient", "static", "none"] as const;
export type ResolverKind = (typeof RESOLVER_KINDS)[number];
export type ResolverChoice = ResolverKind | "auto";

export interface ResolverFacts {
  /** `systemctl is-active systemd-resolved` said active. */
  readonly resolvedActive: boolean;
  /** /sbin/resolvconf exists (the resolvconf package or openresolv). */
  readonly resolvconf: boolean;
  /** /sbin/dhclient-script exists (isc-dhcp-client). */
  readonly dhclient: boolean;
  /** NetworkManager is running (/run/NetworkManager exists); it manages resolv.conf in its own way. */
  readonly networkManager: boolean;
}

export interface ResolverPaths {
  readonly dnsmasqDir: string;
  readonly resolvedConfDir: string;
  readonly resolvConf: string;
  readonly dhclientHooksDir: string;
}

export interface ResolverFile {
  readonly path: string;
  readonly content: string;
  readonly mode: number;
  readonly purpose: string;
}

export interface ResolverPlan {
  readonly kind: ResolverKind;
  readonly files: readonly ResolverFile[];
  /** Services to restart when any file above (or kubedns) changed. */
  readonly restart: readonly ("dnsmasq" | "systemd-resolved")[];
  readonly notes: readonly string[];
}

export const DNSMASQ_LOCAL_NAME = "istio-vm-local";
export const RESOLVED_DROPIN_NAME = "istio-vm.conf";
export const DHCLIENT_HOOK_NAME = "istio-vm";
const LOOPBACK = "127.0.0.1";

export function chooseResolver(facts: ResolverFacts, requested: ResolverChoice): ResolverKind {
  if (requested !== "auto") return requested;
  if (facts.resolvedActive) return "resolved";
  if (facts.resolvconf) return "resolvconf";
  if (facts.dhclient) return "dhclient";
  return "static";
}

/** The names kubedns answers: the domains of its `server=/D/…` and `address=/D/…` lines, in order, once each. */
export function kubednsDomains(kubedns: string): string[] {
  const domains: string[] = [];
  for (const line of kubedns.split("\n")) {
    const match = /^\s*(?:server|address)=\/([^/]+)\//.exec(line);
    for (const domain of match?.[1]?.split("/") ?? []) {
      if (domain !== "" && !domains.includes(domain)) domains.push(domain);
    }
  }
  return domains;
}

/**
 * Routing domains for resolved: the fewest suffixes that cover every kubedns name (`istio-pilot.istio-system` is
 * covered by `~istio-system`, so a routing domain per name is not needed).
 */
export function routingDomains(domains: readonly string[]): string[] {
  const suffixes = new Set<string>();
  for (const domain of domains) {
    // A multi-label name is routed by its parent (istio-pilot.istio-system → istio-system); svc.cluster.local stays
    // whole (routing ~cluster.local or ~local would take names that are not the mesh's).
    const dot = domain.indexOf(".");
    suffixes.add(domain.endsWith("cluster.local") || dot === -1 ? domain : domain.slice(dot + 1));
  }
  const sorted = [...suffixes].sort((a, b) => a.split(".").length - b.split(".").length || a.localeCompare(b));
  return sorted.filter((d) => !sorted.some((other) => other !== d && d.endsWith(`.${other}`)));
}

export function renderResolvedDropin(kubedns: string): string {
  const domains = routingDomains(kubednsDomains(kubedns));
  const singleLabel = domains.some((d) => !d.includes("."));
  return [
    "# Written by `istio-vm install`: the mesh's names go to dnsmasq on 127.0.0.1 (answers from",
    "# /etc/dnsmasq.d/kubedns); the ~ routing-only domains keep every other name on the network's DNS servers.",
    "[Resolve]",
    `DNS=${LOOPBACK}`,
    `Domains=${domains.map((d) => `~${d}`).join(" ")}`,
    // Single-label names (istio-pilot, istiod) are never sent to unicast DNS unless this is on.
    ...(singleLabel ? ["ResolveUnicastSingleLabel=yes"] : []),
    "",
  ].join("\n");
}

export function renderDnsmasqLocal(kind: ResolverKind): string {
  return [
    "# Written by `istio-vm install`: answer only on loopback (no open resolver on the VM's interfaces).",
    "bind-interfaces",
    `listen-address=${LOOPBACK}`,
    ...(kind === "resolved"
      ? [
          "# systemd-resolved sends only the mesh's names here; never forward back into it (resolv.conf → 127.0.0.53).",
          "no-resolv",
        ]
      : []),
    "",
  ].join("\n");
}

/** Sourced by dhclient-script (POSIX sh) on every lease event; must not exit. */
export const DHCLIENT_HOOK = `# Written by \`istio-vm install\`. dhclient-script sources this on every lease event (BOUND, RENEW, REBIND,
# REBOOT), so dnsmasq on 127.0.0.1 - which answers the mesh's names from /etc/dnsmasq.d/kubedns - stays the
# first nameserver in resolv.conf across renewals, also for a dhclient that was started before this file existed.
case " \${new_domain_name_servers-} " in
*" ${LOOPBACK} "*) ;;
"  ") ;;
*) new_domain_name_servers="${LOOPBACK} \${new_domain_name_servers}" ;;
esac
`;

/** resolv.conf with `nameserver 127.0.0.1` as the first nameserver (other lines kept in order). */
export function withLoopbackFirst(resolvConf: string): string {
  const lines = resolvConf.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  const nameserver = /^\s*nameserver\s+(\S+)/;
  const first = lines.findIndex((l) => nameserver.test(l));
  if (first !== -1 && nameserver.exec(lines[first] ?? "")?.[1] === LOOPBACK) return resolvConf;
  const kept = lines.filter((l) => nameserver.exec(l)?.[1] !== LOOPBACK);
  const at = kept.findIndex((l) => nameserver.test(l));
  kept.splice(at === -1 ? kept.length : at, 0, `nameserver ${LOOPBACK}`);
  return `${kept.join("\n")}\n`;
}

export function planResolver(
  kind: ResolverKind,
  input: { readonly kubedns: string; readonly paths: ResolverPaths; readonly resolvConf: string | undefined },
): ResolverPlan {
  const { paths } = input;
  if (kind === "none") {
    return {
      kind,
      files: [],
      restart: ["dnsmasq"],
      notes: ["resolver left alone (--resolver none): point it at 127.0.0.1 for the mesh's names yourself"],
    };
  }
  const files: ResolverFile[] = [
    {
      path: `${paths.dnsmasqDir}/${DNSMASQ_LOCAL_NAME}`,
      content: renderDnsmasqLocal(kind),
      mode: 0o644,
      purpose: "dnsmasq on 127.0.0.1 only",
    },
  ];
  const notes: string[] = [];
  const restart: ("dnsmasq" | "systemd-resolved")[] = ["dnsmasq"];
  switch (kind) {
    case "resolved":
      files.push({
        path: `${paths.resolvedConfDir}/${RESOLVED_DROPIN_NAME}`,
        content: renderResolvedDropin(input.kubedns),
        mode: 0o644,
        purpose: "systemd-resolved routes the mesh's names to dnsmasq",
      });
      restart.push("systemd-resolved");
      break;
    case "resolvconf":
      notes.push("resolvconf: dnsmasq registers 127.0.0.1 with resolvconf itself (Debian's dnsmasq package)");
      break;
    case "dhclient":
      files.push({
        path: `${paths.dhclientHooksDir}/${DHCLIENT_HOOK_NAME}`,
        content: DHCLIENT_HOOK,
        mode: 0o644,
        purpose: "dhclient keeps 127.0.0.1 first on every lease renewal",
      });
      if (input.resolvConf !== undefined) {
        files.push({
          path: paths.resolvConf,
          content: withLoopbackFirst(input.resolvConf),
          mode: 0o644,
          purpose: "127.0.0.1 first until the next lease event",
        });
      }
      break;
    case "static":
      files.push({
        path: paths.resolvConf,
        content: withLoopbackFirst(input.resolvConf ?? ""),
        mode: 0o644,
        purpose: "127.0.0.1 first (no DHCP client rewrites this file)",
      });
      break;
  }
  return { kind, files, restart, notes };
}
