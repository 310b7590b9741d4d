/**
 * The interception planner: configuration → the nat rules that send traffic to Envoy (and the raw DNS zones).
 * Pure: no I/O, so the same plan is what `istio-vm iptables plan` prints, what the applier feeds to the kernel and
 * what `show` compares the kernel with; restore-input.ts writes it as `iptables-restore` text, canonical.ts writes
 * addresses the way `iptables-save` does. Rules are written exactly as `iptables-save` prints them (both back ends), so
 * a plan and a saved table compare line by line.
 *
 * Semantics chosen where the original changed between versions (see README.md in this folder):
 * - empty ISTIO_SERVICE_CIDR captures no outbound traffic (0.8's meaning; `*` captures all);
 * - SSH (port 22) is RETURNed before any inbound capture, in both profiles and in list and `*` mode;
 * - both ISTIO_LOCAL_EXCLUDE_PORTS and ISTIO_INBOUND_EXCLUDE_PORTS are honoured;
 * - the proxy's uid AND gid are excluded, root is not (the agent runs as the proxy user, so root's traffic is captured);
 * - IPv6 rules are planned only with ENABLE_INBOUND_IPV6=true or IPv6 entries in ISTIO_SERVICE_CIDR;
 * - DNS capture (istiod profile with the agent's DNS proxy) covers resolv.conf's nameservers in the family of each,
 *   whatever ENABLE_INBOUND_IPV6 says: an IPv6 nameserver left uncaptured would bypass the proxy.
 */
import type { ConfigValues } from "../config/registry.js";
import type { Cidr, CidrsOrAll, PortsOrAll } from "../config/types.js";
import { inboundExcludePorts } from "../config/load.js";
import { canonicalCidr } from "./canonical.js";

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];
export type Profile = "istiod" | "legacy";
/** The tables istio-vm writes: nat for the redirects, raw for the DNS conntrack zones. Restore order: nat first. */
export type TableName = "nat" | "raw";
export const TABLES: readonly TableName[] = ["nat", "raw"];

/**
 * Every chain istio-vm may create, per table, in `iptables-save` order (by name). Clean removes these (and jumps to
 * them from built-in chains), nothing else.
 */
export const OUR_CHAINS = [
  "ISTIO_INBOUND",
  "ISTIO_IN_REDIRECT",
  "ISTIO_OUTPUT",
  "ISTIO_OUTPUT_DNS",
  "ISTIO_REDIRECT",
] as const;
export type OurChain = (typeof OUR_CHAINS)[number];
export const TABLE_CHAINS: Readonly<Record<TableName, readonly OurChain[]>> = {
  nat: OUR_CHAINS,
  raw: ["ISTIO_INBOUND", "ISTIO_OUTPUT_DNS"],
};
export const BUILTIN_CHAINS: Readonly<Record<TableName, readonly string[]>> = {
  nat: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
  raw: ["PREROUTING", "OUTPUT"],
};
/** Comment carried by our jumps in built-in chains, so they can be told from anyone else's. */
export const RULE_TAG = "istio-vm";
export const SSH_PORT = 22;
export const DNS_PORT = 53;
/**
 * Conntrack zones of the DNS capture (istio tools/istio-iptables/pkg/capture/run.go, addDNSConntrackZones): the
 * proxy's own queries to a nameserver and their replies in one, the applications' redirected queries and the
 * proxy's answers to them in the other (docs/protocols.md, "DNS capture").
 */
export const UPSTREAM_ZONE = 1;
export const CLIENT_ZONE = 2;

export function isOurChain(name: string, table: TableName = "nat"): name is OurChain {
  return (TABLE_CHAINS[table] as readonly string[]).includes(name);
}

export interface ProxyIds {
  readonly uids: readonly number[];
  readonly gids: readonly number[];
  /** Where the ids came from, for messages: `ENVOY_UID`, or `user istio-proxy from /etc/passwd`. */
  readonly source: string;
}

export interface InterceptionSettings {
  readonly profile: Profile;
  readonly inboundPorts: PortsOrAll;
  readonly inboundExcludePorts: readonly number[];
  readonly serviceCidrs: CidrsOrAll;
  readonly excludeCidrs: readonly Cidr[];
  /** Outbound capture port (legacy: inbound too). */
  readonly envoyPort: number;
  /** Inbound capture port (istiod profile). */
  readonly inboundCapturePort: number;
  /** Never captured (istiod profile). */
  readonly inboundTunnelPort: number;
  readonly proxy: ProxyIds;
  readonly excludeInterfaces: readonly string[];
  readonly ipv6: boolean;
  /** DNS capture to the agent's DNS proxy (istiod profile, ISTIO_META_DNS_CAPTURE=true); undefined: none. */
  readonly dns: DnsCapture | undefined;
}

export interface DnsCapture {
  /** The proxy's port (DNS_PROXY_PORT) on 127.0.0.1 and ::1, where REDIRECT sends local traffic. */
  readonly port: number;
  /** resolv.conf's nameserver addresses, both families, in file order (an IPv6 zone such as `%eth0` allowed). */
  readonly nameservers: readonly string[];
}

/** One rule as `iptables-save` prints it, without the leading `-A CHAIN`. */
export interface Rule {
  readonly chain: string;
  readonly spec: string;
}

export interface TablePlan {
  readonly table: TableName;
  /** Our chains this plan declares, in `iptables-save` order. */
  readonly chains: readonly OurChain[];
  /** Jumps from built-in chains first, then each of our chains' rules, in order. */
  readonly rules: readonly Rule[];
}

export interface FamilyPlan {
  readonly family: Family;
  /** nat, then raw when DNS is captured; empty when this family captures nothing (applying it removes ours). */
  readonly tables: readonly TablePlan[];
}

export interface InterceptionPlan {
  readonly settings: InterceptionSettings;
  readonly families: readonly FamilyPlan[];
  /** Things the user may not expect (a listed port that is never captured, a CIDR family not planned). */
  readonly warnings: readonly string[];
}

/**
 * The planner's settings from validated configuration. `nameservers` (resolv.conf's, read by the caller) are used only
 * when the DNS proxy runs: istiod profile with ISTIO_META_DNS_CAPTURE=true.
 */
export function settingsFromConfig(
  values: ConfigValues,
  proxy: ProxyIds,
  nameservers: readonly string[] = [],
): InterceptionSettings {
  const dnsOn = values.ISTIO_CONTROL_PLANE === "istiod" && values.ISTIO_META_DNS_CAPTURE;
  return {
    profile: values.ISTIO_CONTROL_PLANE,
    inboundPorts: values.ISTIO_INBOUND_PORTS,
    inboundExcludePorts: inboundExcludePorts(values),
    serviceCidrs: values.ISTIO_SERVICE_CIDR,
    excludeCidrs: values.ISTIO_SERVICE_EXCLUDE_CIDR,
    envoyPort: values.ENVOY_PORT,
    inboundCapturePort: values.INBOUND_CAPTURE_PORT,
    inboundTunnelPort: values.INBOUND_TUNNEL_PORT,
    proxy,
    excludeInterfaces: parseInterfaceList(values.ISTIO_EXCLUDE_INTERFACES),
    ipv6: values.ENABLE_INBOUND_IPV6,
    dns: dnsOn ? { port: values.DNS_PROXY_PORT, nameservers } : undefined,
  };
}

/** Interface names as the kernel allows them (at most 15 characters, no spaces or slashes); `veth+` is a prefix. */
const INTERFACE_NAME = /^(?=.{1,15}$)[A-Za-z0-9_.:@-]+\+?$/;

/** The comma list of ISTIO_EXCLUDE_INTERFACES, trimmed and without duplicates. */
export function parseInterfaceList(raw: string): string[] {
  return [
    ...new Set(
      raw
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== ""),
    ),
  ];
}

export function invalidInterfaces(names: readonly string[]): string[] {
  return names.filter((n) => !INTERFACE_NAME.test(n));
}

/** `-d CIDR ` or nothing: iptables-save omits a match on the whole address space. */
function destination(cidr: Cidr): string {
  return cidr.prefix === 0 ? "" : `-d ${canonicalCidr(cidr)} `;
}

interface FamilyAddresses {
  readonly loopback: string;
  /** Envoy's inbound passthrough source address (istiod profile). */
  readonly passthroughSource: string;
}

const ADDRESSES: Record<Family, FamilyAddresses> = {
  4: { loopback: "127.0.0.1/32", passthroughSource: "127.0.0.6/32" },
  6: { loopback: "::1/128", passthroughSource: "::6/128" },
};

function tcpPort(port: number): string {
  return `-p tcp -m tcp --dport ${port}`;
}

interface FamilyScope {
  readonly inbound: PortsOrAll | undefined;
  readonly outbound: "*" | readonly Cidr[] | undefined;
  readonly excludeCidrs: readonly Cidr[];
}

/** What one family captures: undefined inbound/outbound means none. */
function scopeFor(settings: InterceptionSettings, family: Family): FamilyScope {
  const hasInbound = settings.inboundPorts === "*" || settings.inboundPorts.length > 0;
  const inbound = hasInbound && (family === 4 || settings.ipv6) ? settings.inboundPorts : undefined;
  let outbound: FamilyScope["outbound"];
  if (settings.serviceCidrs === "*") {
    outbound = family === 4 || settings.ipv6 ? "*" : undefined;
  } else {
    const mine = settings.serviceCidrs.filter((c) => c.family === family);
    outbound = mine.length > 0 ? mine : undefined;
  }
  return { inbound, outbound, excludeCidrs: settings.excludeCidrs.filter((c) => c.family === family) };
}

/** Inbound ports captured in list mode, after SSH and the exclusions are taken out. */
function listedPorts(settings: InterceptionSettings, ports: readonly number[]): number[] {
  const skip = new Set([SSH_PORT, ...settings.inboundExcludePorts]);
  if (settings.profile === "istiod") skip.add(settings.inboundTunnelPort);
  return ports.filter((p) => !skip.has(p));
}

function inboundRules(settings: InterceptionSettings, inbound: PortsOrAll, target: OurChain): Rule[] {
  const rules: string[] = [];
  for (const name of settings.excludeInterfaces) rules.push(`-i ${name} -j RETURN`);
  rules.push(`${tcpPort(SSH_PORT)} -j RETURN`);
  if (settings.profile === "istiod") rules.push(`${tcpPort(settings.inboundTunnelPort)} -j RETURN`);
  if (inbound === "*") {
    const builtIn = new Set([SSH_PORT, ...(settings.profile === "istiod" ? [settings.inboundTunnelPort] : [])]);
    for (const port of settings.inboundExcludePorts) if (!builtIn.has(port)) rules.push(`${tcpPort(port)} -j RETURN`);
    rules.push(`-p tcp -j ${target}`);
  } else {
    for (const port of listedPorts(settings, inbound)) rules.push(`${tcpPort(port)} -j ${target}`);
  }
  return rules.map((spec) => ({ chain: "ISTIO_INBOUND", spec }));
}

function outboundTail(scope: FamilyScope, outbound: "*" | readonly Cidr[]): string[] {
  const rules = scope.excludeCidrs.map((c) => `${destination(c)}-j RETURN`.trim());
  if (outbound === "*") {
    rules.push("-j ISTIO_REDIRECT");
  } else {
    for (const cidr of outbound) rules.push(`${destination(cidr)}-j ISTIO_REDIRECT`);
  }
  return rules;
}

/** The original istio-iptables.sh layout (0.2–0.8): one capture port for both directions. */
function legacyRules(settings: InterceptionSettings, family: Family, scope: FamilyScope): Rule[] {
  const { loopback } = ADDRESSES[family];
  const rules: Rule[] = [];
  if (scope.inbound !== undefined) rules.push(...inboundRules(settings, scope.inbound, "ISTIO_REDIRECT"));
  if (scope.outbound !== undefined) {
    const out: string[] = [];
    for (const name of settings.excludeInterfaces) out.push(`-o ${name} -j RETURN`);
    // An app calling its own address over lo goes through Envoy (the original's first rule).
    out.push(`! -d ${loopback} -o lo -j ISTIO_REDIRECT`);
    for (const uid of settings.proxy.uids) out.push(`-m owner --uid-owner ${uid} -j RETURN`);
    for (const gid of settings.proxy.gids) out.push(`-m owner --gid-owner ${gid} -j RETURN`);
    out.push(`-d ${loopback} -j RETURN`);
    out.push(...outboundTail(scope, scope.outbound));
    // A CIDR list ends with an explicit RETURN, as the original did.
    if (scope.outbound !== "*") out.push("-j RETURN");
    rules.push(...out.map((spec) => ({ chain: "ISTIO_OUTPUT", spec })));
  }
  rules.push({ chain: "ISTIO_REDIRECT", spec: `-p tcp -j REDIRECT --to-ports ${settings.envoyPort}` });
  return rules;
}

/** resolv.conf's nameservers of one family, as iptables-save prints them (`-d 10.0.0.2/32`); a zone is dropped. */
function dnsServers(settings: InterceptionSettings, family: Family): string[] {
  if (settings.dns === undefined) return [];
  const servers = settings.dns.nameservers
    .map((s) => s.replace(/%.*$/, ""))
    .filter((s) => (family === 4 ? /^\d+\.\d+\.\d+\.\d+$/.test(s) : s.includes(":")))
    .map((address) => canonicalCidr({ family, address, prefix: family === 4 ? 32 : 128 }));
  return [...new Set(servers)];
}

/**
 * The current `pilot-agent istio-iptables` layout, REDIRECT mode (istio tools/istio-iptables/pkg/capture/run.go).
 * With DNS capture (`servers` non-empty) ISTIO_OUTPUT jumps to ISTIO_OUTPUT_DNS after the proxy's own traffic has
 * returned, so the proxy's upstream queries are never redirected to itself; TCP :53 over lo is kept out of the
 * loopback return and the hairpin, so a query to a resolver on 127.0.0.53 reaches the proxy and not Envoy.
 */
function istiodRules(settings: InterceptionSettings, family: Family, scope: FamilyScope, servers: string[]): Rule[] {
  const { loopback, passthroughSource } = ADDRESSES[family];
  const rules: Rule[] = [];
  const inboundOn = scope.inbound !== undefined;
  const dnsOn = servers.length > 0;
  if (scope.inbound !== undefined) rules.push(...inboundRules(settings, scope.inbound, "ISTIO_IN_REDIRECT"));
  if (inboundOn) {
    rules.push({
      chain: "ISTIO_IN_REDIRECT",
      spec: `-p tcp -j REDIRECT --to-ports ${settings.inboundCapturePort}`,
    });
  }
  if (scope.outbound !== undefined || dnsOn) {
    const out: string[] = [];
    for (const name of settings.excludeInterfaces) out.push(`-o ${name} -j RETURN`);
    out.push(`-s ${passthroughSource} -o lo -j RETURN`);
    const owners = [
      ...settings.proxy.uids.map((id) => ({ match: "--uid-owner", id })),
      ...settings.proxy.gids.map((id) => ({ match: "--gid-owner", id })),
    ];
    const tunnel = settings.inboundTunnelPort;
    for (const { match, id } of owners) {
      // Hairpin: the proxy calling this VM's own service over lo is inbound traffic for it.
      if (inboundOn) {
        const ports = dnsOn ? `-m multiport ! --dports ${DNS_PORT},${tunnel}` : `-m tcp ! --dport ${tunnel}`;
        out.push(`! -d ${loopback} -o lo -p tcp ${ports} -m owner ${match} ${id} -j ISTIO_IN_REDIRECT`);
      }
      out.push(
        dnsOn
          ? `-o lo -p tcp -m tcp ! --dport ${DNS_PORT} -m owner ! ${match} ${id} -j RETURN`
          : `-o lo -m owner ! ${match} ${id} -j RETURN`,
      );
      out.push(`-m owner ${match} ${id} -j RETURN`);
    }
    if (dnsOn) out.push("-j ISTIO_OUTPUT_DNS");
    if (scope.outbound !== undefined) {
      out.push(`-d ${loopback} -j RETURN`);
      out.push(...outboundTail(scope, scope.outbound));
    }
    rules.push(...out.map((spec) => ({ chain: "ISTIO_OUTPUT", spec })));
    if (dnsOn && settings.dns !== undefined) {
      const to = `-j REDIRECT --to-ports ${settings.dns.port}`;
      for (const proto of ["tcp", "udp"]) {
        for (const server of servers) {
          rules.push({
            chain: "ISTIO_OUTPUT_DNS",
            spec: `-d ${server} -p ${proto} -m ${proto} --dport ${DNS_PORT} ${to}`,
          });
        }
      }
    }
    if (scope.outbound !== undefined) {
      rules.push({ chain: "ISTIO_REDIRECT", spec: `-p tcp -j REDIRECT --to-ports ${settings.envoyPort}` });
    }
  }
  return rules;
}

/**
 * The raw table's conntrack zones for DNS (istio run.go, addDNSConntrackZones): the proxy's queries to :53 and its
 * answers from its port are put in their own zones before the nameserver's tuple could match the redirected
 * application flow; replies from a nameserver (PREROUTING) join the proxy's zone. A packet keeps the first zone set.
 */
function dnsZoneRules(settings: InterceptionSettings, dns: DnsCapture, servers: string[]): Rule[] {
  const rules: Rule[] = [];
  for (const server of servers) {
    rules.push({
      chain: "ISTIO_INBOUND",
      spec: `-s ${server} -p udp -m udp --sport ${DNS_PORT} -j CT --zone ${UPSTREAM_ZONE}`,
    });
  }
  const owners = [
    ...settings.proxy.uids.map((id) => `--uid-owner ${id}`),
    ...settings.proxy.gids.map((id) => `--gid-owner ${id}`),
  ];
  for (const owner of owners) {
    rules.push({
      chain: "ISTIO_OUTPUT_DNS",
      spec: `-p udp -m udp --dport ${DNS_PORT} -m owner ${owner} -j CT --zone ${UPSTREAM_ZONE}`,
    });
    rules.push({
      chain: "ISTIO_OUTPUT_DNS",
      spec: `-p udp -m udp --sport ${dns.port} -m owner ${owner} -j CT --zone ${CLIENT_ZONE}`,
    });
  }
  for (const server of servers) {
    rules.push({
      chain: "ISTIO_OUTPUT_DNS",
      spec: `-d ${server} -p udp -m udp --dport ${DNS_PORT} -j CT --zone ${CLIENT_ZONE}`,
    });
  }
  return rules;
}

function tablePlan(table: TableName, jumps: readonly Rule[], chainRules: readonly Rule[]): TablePlan {
  const chains = TABLE_CHAINS[table].filter((c) => chainRules.some((r) => r.chain === c));
  // iptables-save order: built-in chains first, then user chains by name.
  const ordered = chains.flatMap((c) => chainRules.filter((r) => r.chain === c));
  return { table, chains, rules: [...jumps, ...ordered] };
}

function planFamily(settings: InterceptionSettings, family: Family): FamilyPlan {
  const scope = scopeFor(settings, family);
  const servers = settings.profile === "istiod" ? dnsServers(settings, family) : [];
  const dnsOn = servers.length > 0;
  if (scope.inbound === undefined && scope.outbound === undefined && !dnsOn) return { family, tables: [] };
  const chainRules =
    settings.profile === "legacy"
      ? legacyRules(settings, family, scope)
      : istiodRules(settings, family, scope, servers);
  const tag = `-m comment --comment ${RULE_TAG}`;
  const jumps: Rule[] = [];
  if (scope.inbound !== undefined) {
    jumps.push({ chain: "PREROUTING", spec: `-p tcp ${tag} -j ISTIO_INBOUND` });
  }
  if (scope.outbound !== undefined || dnsOn) {
    jumps.push({ chain: "OUTPUT", spec: `-p tcp ${tag} -j ISTIO_OUTPUT` });
  }
  // UDP reaches ISTIO_OUTPUT only for DNS: nothing else of UDP is ever redirected.
  if (dnsOn) jumps.push({ chain: "OUTPUT", spec: `-p udp -m udp --dport ${DNS_PORT} ${tag} -j ISTIO_OUTPUT` });
  const tables = [tablePlan("nat", jumps, chainRules)];
  if (dnsOn && settings.dns !== undefined) {
    const rawJumps: Rule[] = [
      { chain: "PREROUTING", spec: `-p udp ${tag} -j ISTIO_INBOUND` },
      { chain: "OUTPUT", spec: `-p udp ${tag} -j ISTIO_OUTPUT_DNS` },
    ];
    tables.push(tablePlan("raw", rawJumps, dnsZoneRules(settings, settings.dns, servers)));
  }
  return { family, tables };
}

function planWarnings(settings: InterceptionSettings, families: readonly FamilyPlan[]): string[] {
  const warnings: string[] = [];
  if (Array.isArray(settings.inboundPorts)) {
    const ports = settings.inboundPorts;
    if (ports.includes(SSH_PORT)) {
      warnings.push("ISTIO_INBOUND_PORTS lists 22: SSH is never captured, so the VM stays reachable");
    }
    const excluded = ports.filter((p) => settings.inboundExcludePorts.includes(p));
    if (excluded.length > 0) {
      warnings.push(`ISTIO_INBOUND_PORTS lists excluded port(s) ${excluded.join(",")}: the exclusion wins`);
    }
    if (settings.profile === "istiod" && ports.includes(settings.inboundTunnelPort)) {
      warnings.push(
        `ISTIO_INBOUND_PORTS lists ${settings.inboundTunnelPort}, the tunnel port, which is never captured`,
      );
    }
  }
  if (families.every((f) => f.tables.length === 0)) {
    warnings.push("ISTIO_INBOUND_PORTS and ISTIO_SERVICE_CIDR are empty: nothing is captured");
  }
  if (settings.dns !== undefined && settings.dns.nameservers.length === 0) {
    // As istio-iptables: without a nameserver to match, DNS capture is off (never "all of :53").
    warnings.push(
      `resolv.conf lists no nameserver: DNS is not captured (the proxy still answers on port ${settings.dns.port})`,
    );
  }
  if (settings.serviceCidrs === "*" && !settings.ipv6) {
    warnings.push("ISTIO_SERVICE_CIDR=* captures IPv4 only; set ENABLE_INBOUND_IPV6=true to capture IPv6 too");
  }
  if (
    settings.serviceCidrs !== "*" &&
    settings.serviceCidrs.length === 0 &&
    families.some((f) => f.tables.length > 0)
  ) {
    warnings.push("ISTIO_SERVICE_CIDR is empty: no outbound traffic is captured (set CIDRs, or * for all)");
  }
  return warnings;
}

export function planInterception(settings: InterceptionSettings): InterceptionPlan {
  const families = FAMILIES.map((f) => planFamily(settings, f));
  return { settings, families, warnings: planWarnings(settings, families) };
}

export function ruleLine(rule: Rule): string {
  return `-A ${rule.chain} ${rule.spec}`;
}

export function ruleCount(plan: InterceptionPlan): number {
  return plan.families.reduce((n, f) => n + f.tables.reduce((m, t) => m + t.rules.length, 0), 0);
}
