/**
 * The DNS check: the names this VM dials (the control plane's, in every form the `kubedns` file lists, and one
 * `*.svc.cluster.local` name) resolved twice, each under its own deadline: (a) through the system resolver, as
 * every program on the VM resolves them (getaddrinfo: /etc/hosts, then the resolv.conf servers), and (b) straight at
 * ISTIO_DNS_SERVER (dnsmasq). Both answers are compared with what `kubedns` says the name must be. The result says
 * which server answered what, and the hint names the first broken link of the chain
 * program → resolv.conf → dnsmasq → kubedns → kube-dns.
 */
import type { ConfigValues } from "../config/registry.js";
import type { DnsOutcome } from "../platform/dns.js";
import { dnsProxyEnabled } from "../dns/component.js";
import type { Check, CheckDeps, CheckResult } from "./check.js";
import { fail, pass } from "./check.js";
import { dnsProxyCheck } from "./dns-proxy.js";

export const DNS_CHECK = "dns";

export interface KubednsFile {
  /** dnsmasq `address=/name/ip`, in file order. */
  readonly addresses: readonly { readonly name: string; readonly ip: string }[];
  /** dnsmasq `server=/domain/ip[#port]`. */
  readonly servers: readonly { readonly domain: string; readonly server: string }[];
}

/** Parses the dnsmasq lines `kubedns` uses; other lines are ignored. */
export function parseKubedns(text: string): KubednsFile {
  const addresses: { name: string; ip: string }[] = [];
  const servers: { domain: string; server: string }[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const address = /^address=\/([^/]+)\/([^/\s]*)$/.exec(line);
    if (address !== null) addresses.push({ name: (address[1] ?? "").toLowerCase(), ip: address[2] ?? "" });
    const server = /^server=\/([^/]+)\/([^/\s]+)$/.exec(line);
    if (server !== null) servers.push({ domain: (server[1] ?? "").toLowerCase(), server: server[2] ?? "" });
  }
  return { addresses, servers };
}

/** What dnsmasq answers for `name` from `address=` lines: `address=/X/` matches X and every *.X; longest wins. */
export function kubednsAddressFor(file: KubednsFile, name: string): string | undefined {
  const n = name.toLowerCase().replace(/\.$/, "");
  const matches = file.addresses.filter((a) => n === a.name || n.endsWith(`.${a.name}`));
  matches.sort((a, b) => b.name.length - a.name.length);
  return matches[0]?.ip;
}

export function kubednsServerFor(file: KubednsFile, name: string): string | undefined {
  const n = name.toLowerCase().replace(/\.$/, "");
  const matches = file.servers.filter((s) => n === s.domain || n.endsWith(`.${s.domain}`));
  matches.sort((a, b) => b.domain.length - a.domain.length);
  return matches[0]?.server;
}

/** The control-plane names of the profile, in the forms `kubedns` lists (docs/protocols.md, "kubedns"). */
export function controlPlaneNames(values: ConfigValues): string[] {
  const ns = values.ISTIO_SYSTEM_NAMESPACE;
  if (values.ISTIO_CONTROL_PLANE === "legacy") {
    const short = ["istio-pilot", "istio-mixer", "istio-ca"];
    return [...short, ...short.map((n) => `${n}.${ns}`)];
  }
  return ["istiod", `istiod.${ns}`, `istiod.${ns}.svc`];
}

export function parseResolvConf(text: string): string[] {
  return text
    .split("\n")
    .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
    .filter((s): s is string => s !== undefined);
}

export interface NameResult {
  readonly name: string;
  readonly kind: "control-plane" | "cluster";
  /** What kubedns maps the name to (control-plane names), or the kube-dns server it forwards to (cluster names). */
  readonly kubedns?: string;
  readonly system: DnsOutcome;
  readonly direct: DnsOutcome;
  readonly ok: boolean;
}

function show(outcome: DnsOutcome): string {
  return outcome.ok ? outcome.addresses.join(",") : outcome.code === "ENOTFOUND" ? "NXDOMAIN" : outcome.code;
}

/** Answers that mean nobody is serving DNS there (REFUSED is an answer: dnsmasq runs but knows no upstream). */
const UNREACHABLE = new Set(["ECONNREFUSED", "TIMEOUT", "ETIMEOUT", "ECANCELLED"]);

function agrees(outcome: DnsOutcome, expected: string | undefined): boolean {
  if (!outcome.ok) return false;
  return expected === undefined || expected === "" || outcome.addresses.includes(expected);
}

export function diagnose(input: {
  readonly results: readonly NameResult[];
  readonly server: string;
  readonly kubednsPath: string;
  readonly kubedns: KubednsFile | undefined;
  readonly resolvConfPath: string;
  readonly nameservers: readonly string[] | undefined;
}): string | undefined {
  const { results, server, kubednsPath, kubedns } = input;
  const failed = results.filter((r) => !r.ok);
  if (failed.length === 0) return undefined;
  const serverIp = server.replace(/^\[?([^\]]*?)\]?(:\d+)?$/, "$1");
  const resolvNote =
    input.nameservers === undefined
      ? `${input.resolvConfPath} could not be read`
      : `${input.resolvConfPath} lists ${input.nameservers.length === 0 ? "no nameserver" : `nameserver ${input.nameservers.join(", ")}`}`;

  // 1. Nothing answers at the dnsmasq address.
  if (results.every((r) => !r.direct.ok && UNREACHABLE.has(r.direct.code))) {
    const code = results[0]?.direct.ok === false ? results[0].direct.code : "";
    return `nothing answers DNS at ${server} (${code}): is dnsmasq running? \`systemctl status dnsmasq\`; it must listen on ${server}`;
  }
  // 2. The kubedns file is missing.
  if (kubedns === undefined) {
    return `${kubednsPath} is missing: make it with \`istio-vm dnsmasq\` on the admin machine (or \`istio-vm install\`), then restart dnsmasq`;
  }
  // 3. dnsmasq does not answer the control-plane names from kubedns.
  for (const r of failed.filter((f) => f.kind === "control-plane")) {
    if (r.kubedns === undefined) {
      return `${kubednsPath} has no address=/${r.name}/ line: regenerate it with \`istio-vm dnsmasq\` for this profile (${r.name} is a name this VM dials)`;
    }
    if (!agrees(r.direct, r.kubedns)) {
      return `dnsmasq at ${server} answers ${show(r.direct)} for ${r.name}, but ${kubednsPath} says ${r.kubedns}: restart dnsmasq so it reads ${kubednsPath} (and check conf-dir includes it)`;
    }
  }
  // 4. dnsmasq is right, the system resolver is not: resolv.conf does not point at it.
  const systemWrong = failed.find((r) => agrees(r.direct, r.kubedns) && !agrees(r.system, r.kubedns));
  if (systemWrong !== undefined) {
    const pointsAtDnsmasq = input.nameservers?.[0] === serverIp;
    return pointsAtDnsmasq
      ? `dnsmasq answers ${systemWrong.name} but the system resolver says ${show(systemWrong.system)}: look for an /etc/hosts entry or nsswitch.conf order that overrides DNS`
      : `the system resolver does not ask dnsmasq: ${resolvNote}; put \`nameserver ${serverIp}\` first (and keep dhclient/NetworkManager/systemd-resolved from rewriting it)`;
  }
  // 5. Cluster names do not make it through to kube-dns.
  const cluster = failed.find((r) => r.kind === "cluster");
  if (cluster !== undefined) {
    if (cluster.kubedns === undefined) {
      return `${kubednsPath} has no server=/svc.cluster.local/ line, so dnsmasq cannot forward ${cluster.name} to kube-dns: regenerate it with \`istio-vm dnsmasq\``;
    }
    return `dnsmasq could not get ${cluster.name} from kube-dns at ${cluster.kubedns} (server=/svc.cluster.local/${cluster.kubedns} in ${kubednsPath}), it answered ${show(cluster.direct)}: check that address against the kube-dns load balancer and that the service exists`;
  }
  return `resolution is inconsistent: compare the answers above with ${kubednsPath}`;
}

export function dnsCheck(deps: CheckDeps): Check {
  const values = deps.values;
  if (dnsProxyEnabled(values)) return dnsProxyCheck(deps, DNS_CHECK);
  return {
    name: DNS_CHECK,
    description: "control-plane and cluster names resolve, through the system resolver and at dnsmasq, as kubedns says",
    async run() {
      const kubednsPath = `${values.ISTIO_DNSMASQ_DIR.replace(/\/+$/, "")}/kubedns`;
      const kubednsText = await deps.fs.readTextIfExists(kubednsPath).catch(() => undefined);
      const kubedns = kubednsText === undefined ? undefined : parseKubedns(kubednsText);
      const resolvText = await deps.fs.readTextIfExists(values.ISTIO_RESOLV_CONF).catch(() => undefined);
      const nameservers = resolvText === undefined ? undefined : parseResolvConf(resolvText);
      const server = values.ISTIO_DNS_SERVER;
      const names: { name: string; kind: NameResult["kind"] }[] = [
        ...controlPlaneNames(values).map((name) => ({ name, kind: "control-plane" as const })),
        { name: values.ISTIO_DNS_PROBE_NAME, kind: "cluster" as const },
      ];
      const results: NameResult[] = await Promise.all(
        names.map(async ({ name, kind }) => {
          const [system, direct] = await Promise.all([
            deps.dns.lookupSystem(name, deps.timeoutMs),
            deps.dns.queryServer(name, server, deps.timeoutMs),
          ]);
          const expected =
            kubedns === undefined
              ? undefined
              : kind === "control-plane"
                ? kubednsAddressFor(kubedns, name)
                : kubednsServerFor(kubedns, name);
          const want = kind === "control-plane" ? expected : undefined;
          const ok = agrees(system, want) && agrees(direct, want) && (kind === "cluster" || expected !== undefined);
          return { name, kind, ...(expected === undefined ? {} : { kubedns: expected }), system, direct, ok };
        }),
      );
      const details = results.map(
        (r) =>
          `${r.ok ? "ok  " : "FAIL"} ${r.name}: system resolver ${show(r.system)}; ${server} ${show(r.direct)}; ` +
          (r.kind === "control-plane"
            ? `kubedns ${r.kubedns ?? (kubedns === undefined ? "(no file)" : "(no line)")}`
            : `kubedns forwards to ${r.kubedns ?? "(none)"}`),
      );
      const data = { server, kubedns: kubednsPath, kubednsPresent: kubedns !== undefined, nameservers, names: results };
      const hint = diagnose({
        results,
        server,
        kubednsPath,
        kubedns,
        resolvConfPath: values.ISTIO_RESOLV_CONF,
        nameservers,
      });
      const good = results.filter((r) => r.ok).length;
      if (hint === undefined) {
        return pass(
          DNS_CHECK,
          `${good}/${results.length} names resolve alike through the system resolver and ${server}${kubedns === undefined ? "" : ", as kubedns says"}`,
          details,
          data,
        );
      }
      const failedNames = results.filter((r) => !r.ok).map((r) => r.name);
      const result: CheckResult = fail(
        DNS_CHECK,
        `${failedNames.length}/${results.length} names fail: ${failedNames.slice(0, 3).join(", ")}${failedNames.length > 3 ? ", …" : ""}`,
        hint,
        details,
        data,
      );
      return result;
    },
  };
}
