/**
 * The NDS name table (istio.networking.nds.v1.NameTable, istio/istio `pkg/dns/proto/nds.proto`) and the lookup table
 * the DNS proxy answers from, built as istio-agent builds it (istio/istio `pkg/dns/client/dns.go`, 1.24):
 *
 * - every hostname answers as itself (`reviews.bookinfo.svc.cluster.local.`);
 * - a host in the proxy's domain (`svc.cluster.local`) also answers as `name.ns.` and `name.ns.svc.`, and as plain
 *   `name.` when its namespace is the VM's own; a NameInfo's `alt_hosts` are added as they are;
 * - each of those names followed by the first resolv.conf search domain answers with a CNAME to the name itself, so
 *   a resolver walking its search list (`reviews.bookinfo.svc.cluster.local.bookinfo.svc.cluster.local.`) gets the
 *   answer in one round trip instead of a chain of upstream NXDOMAINs;
 * - `*.example.com` answers every name below example.com.
 *
 * A name the table holds answers NOERROR even with no address of the asked family (NODATA, not NXDOMAIN: a client
 * that asks A and AAAA in parallel would otherwise drop the A answer, istio/istio#31250). Any other question type for
 * such a name, and every unknown name, is forwarded upstream. Pure: no I/O.
 */
import { isIP } from "node:net";

/** One NameTable entry, in the shape of nds.proto's NameInfo (JSON names). */
export interface NameInfo {
  readonly ips: readonly string[];
  readonly registry?: string;
  readonly shortname?: string;
  readonly namespace?: string;
  readonly altHosts?: readonly string[];
}

/** hostname → NameInfo, as istiod sends it. */
export type NameTable = Readonly<Record<string, NameInfo>>;

/** istio-agent's `defaultTTLInSeconds`. */
export const TABLE_TTL_SECONDS = 30;

export interface LookupContext {
  /** The VM's namespace (POD_NAMESPACE): its services also answer by their short name. */
  readonly namespace: string;
  /** The cluster domain, e.g. cluster.local: hosts under `svc.<domain>` get the short forms. */
  readonly clusterDomain: string;
  /** resolv.conf's search list; the first one gets the CNAME short-cut. */
  readonly searchDomains: readonly string[];
}

export interface LookupEntry {
  readonly v4: readonly string[];
  readonly v6: readonly string[];
  /** Set on a search-expanded name: answer with this CNAME and the target's addresses. */
  readonly cname?: string;
}

export interface LookupTable {
  /** Keys are lower case and end in a dot. */
  readonly hosts: ReadonlyMap<string, LookupEntry>;
  /** Number of NameTable hosts it was built from. */
  readonly size: number;
}

export type HostAnswer =
  | { readonly found: false }
  | {
      readonly found: true;
      /** The CNAME chain (at most one link), then the target's addresses of the asked family (maybe none). */
      readonly cname?: { readonly name: string; readonly target: string };
      /** Owner name of the address records (the question, or the CNAME target). */
      readonly owner: string;
      readonly addresses: readonly string[];
    };

function fqdn(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith(".") ? lower : `${lower}.`;
}

function altHosts(hostname: string, info: NameInfo, context: LookupContext): string[] {
  const out = new Set([fqdn(hostname)]);
  const proxyDomain = `svc.${context.clusterDomain}`;
  const host = hostname.toLowerCase().replace(/\.$/, "");
  const shortname = info.shortname ?? "";
  const namespace = info.namespace ?? "";
  // As istio-agent: no short forms for hosts of another domain (another cluster's names could collide).
  if (host.endsWith(`.${proxyDomain}`) && shortname !== "" && namespace !== "") {
    out.add(fqdn(`${shortname}.${namespace}`));
    if (namespace === context.namespace) out.add(fqdn(shortname));
    out.add(fqdn(`${shortname}.${namespace}.svc`));
  }
  for (const alt of info.altHosts ?? []) out.add(fqdn(alt));
  return [...out];
}

/** Builds the lookup table from a NameTable; entries without a usable address are kept (they answer NODATA). */
export function buildLookupTable(table: NameTable, context: LookupContext): LookupTable {
  const hosts = new Map<string, LookupEntry>();
  const search = context.searchDomains[0];
  for (const [hostname, info] of Object.entries(table)) {
    const v4 = info.ips.filter((ip) => isIP(ip) === 4);
    const v6 = info.ips.filter((ip) => isIP(ip) === 6);
    const names = altHosts(hostname, info, context);
    for (const name of names) hosts.set(name, { v4, v6 });
    if (search === undefined) continue;
    for (const name of names) {
      const expanded = fqdn(`${name}${search.replace(/\.$/, "")}`);
      if (!hosts.has(expanded) && !names.includes(expanded)) hosts.set(expanded, { v4, v6, cname: name });
    }
  }
  return { hosts, size: Object.keys(table).length };
}

/** What the table says about `name` for an A or AAAA question; `found: false` means forward it. */
export function lookupHost(table: LookupTable, type: "A" | "AAAA", name: string): HostAnswer {
  const question = fqdn(name);
  let key = question;
  let entry = table.hosts.get(key);
  let wildcard = false;
  if (entry === undefined) {
    const labels = question.slice(0, -1).split(".");
    for (let i = 1; i < labels.length && entry === undefined; i++) {
      key = `*.${labels.slice(i).join(".")}.`;
      entry = table.hosts.get(key);
      wildcard = entry !== undefined;
    }
  }
  if (entry === undefined) return { found: false };
  const addresses = type === "A" ? entry.v4 : entry.v6;
  if (entry.cname !== undefined) {
    return { found: true, cname: { name: question, target: entry.cname }, owner: entry.cname, addresses };
  }
  return { found: true, owner: wildcard ? question : key, addresses };
}

/** Rejects anything that is not a NameTable in nds.proto's JSON shape; returns the problem or undefined. */
export function nameTableProblem(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "not an object";
  for (const [host, info] of Object.entries(value as Record<string, unknown>)) {
    if (typeof info !== "object" || info === null) return `${host}: not an object`;
    const i = info as Record<string, unknown>;
    if (!Array.isArray(i["ips"]) || !i["ips"].every((ip) => typeof ip === "string" && isIP(ip) !== 0)) {
      return `${host}: ips must be a list of IP addresses`;
    }
    for (const key of ["registry", "shortname", "namespace"]) {
      if (i[key] !== undefined && typeof i[key] !== "string") return `${host}: ${key} must be a string`;
    }
    const alt = i["altHosts"];
    if (alt !== undefined && (!Array.isArray(alt) || !alt.every((h) => typeof h === "string"))) {
      return `${host}: altHosts must be a list of strings`;
    }
  }
  return undefined;
}
