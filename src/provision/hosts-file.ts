/**
 * The control plane's names in /etc/hosts (istiod profile with the agent's DNS proxy): the bundle's `hosts` member
 * (what `istioctl x workload entry configure` writes as `hosts` for the operator to append to /etc/hosts, istio/istio
 * istioctl/pkg/workload/workload.go createHosts) and the one marked block `istio-vm install` keeps in /etc/hosts.
 * Why /etc/hosts: docs/decisions.md, "/etc/hosts for the control plane's names".
 *
 * The block belongs to istio-vm: install replaces it whole when an address changes, uninstall removes it whole, and
 * every line outside it is kept byte for byte (CRLF line ends and a missing final newline included). A line a user
 * adds inside the block goes with it; the block says so.
 */
import { isIP } from "node:net";
import { dialedControlPlaneHosts } from "../config/control-plane-hosts.js";
import { renderEnvFile } from "../config/env-file.js";
import { loadConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";

export const HOSTS_NAME = "hosts";
export const HOSTS_BEGIN = "# BEGIN istio-vm";
export const HOSTS_END = "# END istio-vm";
const HOSTS_COMMENT =
  "# the control plane's names for the istio-vm agent: replaced by `istio-vm install`, removed by `istio-vm uninstall`; add your own lines outside this block";

/** dnsmasq `address=/X/ip` lines of a kubedns file: X answers X and every *.X (docs/protocols.md, "kubedns"). */
function kubednsAddresses(kubedns: string): { name: string; ip: string }[] {
  const out: { name: string; ip: string }[] = [];
  for (const raw of kubedns.split("\n")) {
    const match = /^address=\/([^/]+)\/([^/\s]+)$/.exec(raw.trim());
    if (match?.[1] !== undefined && match[2] !== undefined && isIP(match[2]) !== 0)
      out.push({ name: match[1].toLowerCase(), ip: match[2] });
  }
  return out;
}

/**
 * hosts lines for `names`, each mapped to the address kubedns gives it (dnsmasq's rule: the longest matching
 * `address=` domain wins), one line per address in first-seen order; names kubedns does not map are `unmapped`.
 */
export function hostsLinesFromKubedns(
  kubedns: string,
  names: readonly string[],
): { lines: string[]; unmapped: string[] } {
  const addresses = kubednsAddresses(kubedns);
  const byIp = new Map<string, string[]>();
  const unmapped: string[] = [];
  for (const name of names) {
    const n = name.toLowerCase().replace(/\.$/, "");
    const match = addresses
      .filter((a) => n === a.name || n.endsWith(`.${a.name}`))
      .sort((a, b) => b.name.length - a.name.length)[0];
    if (match === undefined) {
      unmapped.push(n);
      continue;
    }
    const list = byIp.get(match.ip) ?? [];
    if (!list.includes(n)) list.push(n);
    byIp.set(match.ip, list);
  }
  return { lines: [...byIp].map(([ip, hosts]) => `${ip} ${hosts.join(" ")}`), unmapped };
}

export function renderHostsMember(lines: readonly string[]): string {
  return lines.map((l) => `${l}\n`).join("");
}

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/i;

/** The lines of a bundle's `hosts` member: `IP name…` each; comments and blank lines dropped. */
export function parseHostsMember(text: string, subject: string): string[] {
  const lines: string[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const [ip = "", ...names] = line.split(/\s+/);
    if (isIP(ip) === 0 || names.length === 0 || !names.every((n) => HOST_NAME.test(n))) {
      throw new AgentError({
        code: "BUNDLE_INVALID",
        message: `${subject}: ${HOSTS_NAME} line ${String(i + 1)} is not "IP name…": ${line}`,
        subject,
        hint: "make the bundle again with `istio-vm bundle`",
      });
    }
    lines.push([ip, ...names].join(" "));
  }
  return lines;
}

/** A text split into lines that keep their own line ends, so untouched lines are written back byte for byte. */
function splitKeepingEnds(text: string): string[] {
  return text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
}

const bare = (line: string): string => line.replace(/\r?\n$/, "").trim();

export type HostsBlocks =
  | { readonly kind: "none" }
  | { readonly kind: "found"; readonly ranges: readonly (readonly [number, number])[]; readonly body: string }
  /** A BEGIN line without its END: where the block ends is unknown, so nothing is edited. */
  | { readonly kind: "unterminated"; readonly line: number };

/** Every istio-vm block of a hosts file (line index ranges, END included) and the first block's inner lines. */
export function findHostsBlocks(text: string): HostsBlocks {
  const lines = splitKeepingEnds(text);
  const ranges: [number, number][] = [];
  let body: string | undefined;
  for (let i = 0; i < lines.length; i++) {
    if (bare(lines[i] ?? "") !== HOSTS_BEGIN) continue;
    let end = i + 1;
    while (end < lines.length && bare(lines[end] ?? "") !== HOSTS_END) end++;
    if (end === lines.length) return { kind: "unterminated", line: i + 1 };
    body ??= lines
      .slice(i + 1, end)
      .map((l) => `${l.replace(/\r?\n$/, "")}\n`)
      .join("");
    ranges.push([i, end]);
    i = end;
  }
  return ranges.length === 0 ? { kind: "none" } : { kind: "found", ranges, body: body ?? "" };
}

/** The inner lines install writes for `lines` (what the install record's digest covers). */
export function hostsBlockBody(lines: readonly string[]): string {
  return `${HOSTS_COMMENT}\n${renderHostsMember(lines)}`;
}

function unterminated(path: string, line: number): AgentError {
  return new AgentError({
    code: "HOSTS_BLOCK_BROKEN",
    message: `${path} line ${String(line)} has "${HOSTS_BEGIN}" but no "${HOSTS_END}" after it`,
    subject: path,
    kind: "config",
    hint: `add the "${HOSTS_END}" line where the istio-vm block ends (or remove the block), then run install again; nothing was changed`,
  });
}

/**
 * `existing` with the istio-vm block holding `lines`: in place of the first block (further blocks dropped), else
 * appended; with no lines, without the block. Line ends follow the file (CRLF if it uses CRLF). Throws
 * HOSTS_BLOCK_BROKEN for a BEGIN without END.
 */
export function withHostsBlock(existing: string | undefined, lines: readonly string[], path: string): string {
  const text = existing ?? "";
  const found = findHostsBlocks(text);
  if (found.kind === "unterminated") throw unterminated(path, found.line);
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  const block =
    lines.length === 0
      ? []
      : [HOSTS_BEGIN, ...hostsBlockBody(lines).split("\n").slice(0, -1), HOSTS_END].map((l) => `${l}${eol}`);
  const all = splitKeepingEnds(text);
  if (found.kind === "none") {
    if (block.length === 0) return text;
    const last = all[all.length - 1];
    const joiner = last === undefined || last.endsWith("\n") ? "" : eol;
    return `${text}${joiner}${block.join("")}`;
  }
  const out: string[] = [];
  let at = 0;
  for (const [index, [begin, end]] of found.ranges.entries()) {
    out.push(...all.slice(at, begin));
    if (index === 0) out.push(...block);
    at = end + 1;
  }
  out.push(...all.slice(at));
  return out.join("");
}

/** `existing` without any istio-vm block (every other line kept as it is). */
export function withoutHostsBlock(existing: string, path: string): string {
  return withHostsBlock(existing, [], path);
}

/** Whether install maps the control plane's names in /etc/hosts: istiod with the agent's DNS proxy. */
export function usesHostsBlock(values: Pick<ConfigValues, "ISTIO_CONTROL_PLANE" | "ISTIO_META_DNS_CAPTURE">): boolean {
  return values.ISTIO_CONTROL_PLANE === "istiod" && values.ISTIO_META_DNS_CAPTURE;
}

/** hosts lines for the names `values` dials, from kubedns; a warning per name kubedns does not map. */
export function planHostsLines(values: ConfigValues, kubedns: string): { lines: string[]; warnings: string[] } {
  const { lines, unmapped } = hostsLinesFromKubedns(kubedns, dialedControlPlaneHosts(values));
  const warnings = unmapped.map(
    (name) =>
      `the VM dials ${name} (CA_ADDR, DISCOVERY_ADDRESS or PILOT_ADDRESS) but kubedns has no address for it: with the DNS proxy nothing maps it in /etc/hosts, so the VM's own DNS must resolve it`,
  );
  return { lines, warnings };
}

const BUNDLE_CONFIG = { cluster: "/istio-vm-bundle/cluster.env", sidecar: "/istio-vm-bundle/sidecar.env" };

/**
 * The bundle's `hosts` member: on istiod with the DNS proxy (cluster.env with the bundle's per-VM settings over it, as
 * the agent will read them), the names the VM dials → their kubedns addresses; undefined otherwise or when every
 * address is an IP. The configuration is only read here; install validates it.
 */
export async function planBundleHosts(
  fs: FileSystem,
  input: {
    readonly clusterEnv: string;
    readonly kubedns: string;
    readonly settings: readonly { readonly key: string; readonly value: string }[];
  },
): Promise<{ hosts: string | undefined; warnings: string[] }> {
  const files = new Map([
    [BUNDLE_CONFIG.cluster, input.clusterEnv],
    [BUNDLE_CONFIG.sidecar, renderEnvFile(input.settings)],
  ]);
  const loaded = await loadConfig({
    env: { ISTIO_CLUSTER_CONFIG: BUNDLE_CONFIG.cluster, ISTIO_SIDECAR_CONFIG: BUNDLE_CONFIG.sidecar },
    fs: {
      ...fs,
      readTextIfExists: (path) => Promise.resolve(files.get(path)),
      readText: (path) => Promise.resolve(files.get(path) ?? ""),
    },
  });
  if (!usesHostsBlock(loaded.values)) return { hosts: undefined, warnings: [] };
  const { lines, warnings } = planHostsLines(loaded.values, input.kubedns);
  return { hosts: lines.length === 0 ? undefined : renderHostsMember(lines), warnings };
}
