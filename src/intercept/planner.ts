/**
 * The interception planner: configuration → the nat rules that send traffic to Envoy, as `iptables-restore` input.
 * Pure: no I/O, so the same plan is what `istio-vm iptables plan` prints, what the applier feeds to the kernel and
 * what `show` compares the kernel with. Rules are written exactly as `iptables-save` prints them (both back ends), so
 * a plan and a saved table compare line by line.
 *
 * Semantics chosen where the original changed between versions (see README.md in this folder):
 * - empty ISTIO_SERVICE_CIDR captures no outbound traffic (0.8's meaning; `*` captures all);
 * - SSH (port 22) is RETURNed before any inbound capture, in both profiles and in list and `*` mode;
 * - both ISTIO_LOCAL_EXCLUDE_PORTS and ISTIO_INBOUND_EXCLUDE_PORTS are honoured;
 * - the proxy's uid AND gid are excluded, root is not (the agent runs as the proxy user, so root's traffic is captured);
 * - IPv6 rules are planned only with ENABLE_INBOUND_IPV6=true or IPv6 entries in ISTIO_SERVICE_CIDR.
 */
import type { ConfigValues } from "../config/registry.js";
import type { Cidr, CidrsOrAll, PortsOrAll } from "../config/types.js";
import { inboundExcludePorts } from "../config/load.js";

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];
export type Profile = "istiod" | "legacy";

/** Every chain istio-vm may create. Clean removes these (and jumps to them from built-in chains), nothing else. */
export const OUR_CHAINS = ["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"] as const;
export type OurChain = (typeof OUR_CHAINS)[number];
export const BUILTIN_NAT_CHAINS = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] as const;
/** Comment carried by our jumps in built-in chains, so they can be told from anyone else's. */
export const RULE_TAG = "istio-vm";
export const SSH_PORT = 22;

export function isOurChain(name: string): name is OurChain {
  return (OUR_CHAINS as readonly string[]).includes(name);
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
}

/** One rule as `iptables-save` prints it, without the leading `-A CHAIN`. */
export interface Rule {
  readonly chain: string;
  readonly spec: string;
}

export interface TablePlan {
  readonly table: "nat";
  /** Our chains this plan declares, in `iptables-save` order. */
  readonly chains: readonly OurChain[];
  /** Jumps from built-in chains first, then each of our chains' rules, in order. */
  readonly rules: readonly Rule[];
}

export interface FamilyPlan {
  readonly family: Family;
  /** Empty when this family captures nothing: applying it removes any rules of ours that are there. */
  readonly tables: readonly TablePlan[];
}

export interface InterceptionPlan {
  readonly settings: InterceptionSettings;
  readonly families: readonly FamilyPlan[];
  /** Things the user may not expect (a listed port that is never captured, a CIDR family not planned). */
  readonly warnings: readonly string[];
}

export function settingsFromConfig(values: ConfigValues, proxy: ProxyIds): InterceptionSettings {
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

function ipv4Canonical(address: string): string {
  return address
    .split(".")
    .map((o) => String(Number(o)))
    .join(".");
}

function ipv6Canonical(address: string): string {
  let text = address.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1] !== undefined) {
    const octets = v4[1].split(".").map(Number);
    const hi = (((octets[0] ?? 0) << 8) | (octets[1] ?? 0)).toString(16);
    const lo = (((octets[2] ?? 0) << 8) | (octets[3] ?? 0)).toString(16);
    text = `${text.slice(0, -v4[1].length)}${hi}:${lo}`;
  }
  const [head = "", tail] = text.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(fill).fill("0"), ...tailGroups].map((g) => parseInt(g, 16));
  // RFC 5952: compress the longest run (≥ 2) of zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < groups.length;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  // Like glibc's inet_ntop (so like iptables-save): an IPv4-compatible or -mapped address ends in dotted IPv4.
  if (bestStart === 0 && (bestLength === 6 || (bestLength === 5 && groups[5] === 0xffff))) {
    const [hi = 0, lo = 0] = groups.slice(6);
    const v4 = [hi >> 8, hi & 0xff, lo >> 8, lo & 0xff].join(".");
    return bestLength === 6 ? `::${v4}` : `::ffff:${v4}`;
  }
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** A CIDR as iptables-save prints it (`10.23.0.0/16`, `fd00::/64`). */
export function canonicalCidr(cidr: Cidr): string {
  const address = cidr.family === 4 ? ipv4Canonical(cidr.address) : ipv6Canonical(cidr.address);
  return `${address}/${cidr.prefix}`;
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

/** The current `pilot-agent istio-iptables` layout (REDIRECT mode, no DNS capture: the VM resolves via dnsmasq). */
function istiodRules(settings: InterceptionSettings, family: Family, scope: FamilyScope): Rule[] {
  const { loopback, passthroughSource } = ADDRESSES[family];
  const rules: Rule[] = [];
  const inboundOn = scope.inbound !== undefined;
  if (scope.inbound !== undefined) rules.push(...inboundRules(settings, scope.inbound, "ISTIO_IN_REDIRECT"));
  if (inboundOn) {
    rules.push({
      chain: "ISTIO_IN_REDIRECT",
      spec: `-p tcp -j REDIRECT --to-ports ${settings.inboundCapturePort}`,
    });
  }
  if (scope.outbound !== undefined) {
    const out: string[] = [];
    for (const name of settings.excludeInterfaces) out.push(`-o ${name} -j RETURN`);
    out.push(`-s ${passthroughSource} -o lo -j RETURN`);
    const owners = [
      ...settings.proxy.uids.map((id) => ({ match: "--uid-owner", id })),
      ...settings.proxy.gids.map((id) => ({ match: "--gid-owner", id })),
    ];
    for (const { match, id } of owners) {
      // Hairpin: the proxy calling this VM's own service over lo is inbound traffic for it.
      if (inboundOn) {
        out.push(
          `! -d ${loopback} -o lo -p tcp -m tcp ! --dport ${settings.inboundTunnelPort} -m owner ${match} ${id} -j ISTIO_IN_REDIRECT`,
        );
      }
      out.push(`-o lo -m owner ! ${match} ${id} -j RETURN`);
      out.push(`-m owner ${match} ${id} -j RETURN`);
    }
    out.push(`-d ${loopback} -j RETURN`);
    out.push(...outboundTail(scope, scope.outbound));
    rules.push(...out.map((spec) => ({ chain: "ISTIO_OUTPUT", spec })));
    rules.push({ chain: "ISTIO_REDIRECT", spec: `-p tcp -j REDIRECT --to-ports ${settings.envoyPort}` });
  }
  return rules;
}

function planFamily(settings: InterceptionSettings, family: Family): FamilyPlan {
  const scope = scopeFor(settings, family);
  if (scope.inbound === undefined && scope.outbound === undefined) return { family, tables: [] };
  const chainRules =
    settings.profile === "legacy" ? legacyRules(settings, family, scope) : istiodRules(settings, family, scope);
  const jumps: Rule[] = [];
  if (scope.inbound !== undefined) {
    jumps.push({ chain: "PREROUTING", spec: `-p tcp -m comment --comment ${RULE_TAG} -j ISTIO_INBOUND` });
  }
  if (scope.outbound !== undefined) {
    jumps.push({ chain: "OUTPUT", spec: `-p tcp -m comment --comment ${RULE_TAG} -j ISTIO_OUTPUT` });
  }
  const chains = OUR_CHAINS.filter((c) => chainRules.some((r) => r.chain === c));
  // iptables-save order: built-in chains first, then user chains by name.
  const ordered = chains.flatMap((c) => chainRules.filter((r) => r.chain === c));
  return { family, tables: [{ table: "nat", chains, rules: [...jumps, ...ordered] }] };
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

/** What the kernel holds of ours in one family's nat table (show.ts reads it from `iptables-save`). */
export interface OurState {
  /** Our chains that exist, in OUR_CHAINS order. */
  readonly chains: readonly OurChain[];
  /** Rules inside our chains, in kernel order per chain. */
  readonly rules: readonly Rule[];
  /** Rules in built-in chains that jump to one of our chains (tagged or left by an older tool with our names). */
  readonly jumps: readonly Rule[];
  /** Our chains that a chain of someone else's jumps to: they can be flushed but not deleted. */
  readonly referencedByOthers: ReadonlyMap<OurChain, readonly string[]>;
}

export const EMPTY_STATE: OurState = { chains: [], rules: [], jumps: [], referencedByOthers: new Map() };

/**
 * The `iptables-restore --noflush` input that turns `state` into `plan` (undefined plan: remove everything of ours);
 * the only place restore text is written. Our jumps in built-in chains are deleted by their exact saved text (a
 * changed rule makes the restore fail rather than delete the wrong one); every chain of ours is declared, which
 * creates or flushes it; chains no longer planned are then deleted unless someone else's chain jumps to them (those
 * stay, empty). The built-in chains are never flushed. From an empty kernel this is the plan itself.
 */
export function restoreInput(plan: TablePlan | undefined, state: OurState = EMPTY_STATE): string {
  const planned = new Set<OurChain>(plan?.chains ?? []);
  const stale = state.chains.filter((c) => !planned.has(c));
  const lines = [
    `*${plan?.table ?? "nat"}`,
    ...state.jumps.map((j) => `-D ${j.chain} ${j.spec}`),
    ...[...planned, ...stale].map((c) => `:${c} - [0:0]`),
    ...stale.filter((c) => !state.referencedByOthers.has(c)).map((c) => `-X ${c}`),
    ...(plan?.rules ?? []).map(ruleLine),
    "COMMIT",
    "",
  ];
  return lines.join("\n");
}

export function ruleCount(plan: InterceptionPlan): number {
  return plan.families.reduce((n, f) => n + f.tables.reduce((m, t) => m + t.rules.length, 0), 0);
}

/** The whole plan as text, one block per family: what `istio-vm iptables plan` prints (the restore input for an
 * empty kernel). */
export function renderPlan(plan: InterceptionPlan): string {
  return plan.families
    .map((f) => {
      const tool = f.family === 4 ? "iptables-restore" : "ip6tables-restore";
      const header = `# IPv${f.family}: ${tool} --noflush input`;
      if (f.tables.length === 0) return `${header}\n# (nothing to capture)\n`;
      return `${header}\n${f.tables.map((t) => restoreInput(t)).join("")}`;
    })
    .join("\n");
}
