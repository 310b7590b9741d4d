/**
 * The DNS check when the agent's DNS proxy answers mesh names (istiod profile, ISTIO_META_DNS_CAPTURE=true): the
 * name table the agent persisted (its age says when istiod last sent one), a mesh name from it asked at the proxy
 * (the answer must be the table's addresses), and a name outside the mesh asked at the proxy and at the first
 * resolv.conf server directly (the proxy forwards it, so both must say the same; the proxy never makes up an
 * NXDOMAIN, so one through it proves an upstream answered). With DNS capture, the mesh name is also asked at that
 * resolv.conf server, as applications ask it: the capture rules must hand it to the proxy (the table's answer).
 */
import { nameTablePath } from "../dns/component.js";
import { parseResolvConf } from "../dns/resolv-conf.js";
import { loadStoredTable } from "../dns/table-store.js";
import type { NameInfo } from "../dns/name-table.js";
import { resolveProxyIds } from "../intercept/settings.js";
import type { DnsOutcome } from "../platform/dns.js";
import type { Check, CheckDeps } from "./check.js";
import { fail, pass } from "./check.js";

export const OUTSIDE_NAME = "istio-vm-dns-check.invalid";

function show(outcome: DnsOutcome): string {
  return outcome.ok ? outcome.addresses.join(",") || "(no address)" : outcome.code;
}

function sameOutcome(a: DnsOutcome, b: DnsOutcome): boolean {
  if (a.ok && b.ok) return [...a.addresses].sort().join() === [...b.addresses].sort().join();
  return !a.ok && !b.ok && a.code === b.code;
}

interface CaptureProbe {
  readonly ok: boolean;
  readonly detail: string;
}

/**
 * The mesh name asked where applications ask it (resolv.conf's first server): with DNS capture the answer is the
 * table's. Skipped, saying why, when the agent does not capture, resolv.conf has no server (nothing is captured), or
 * this check runs as the proxy's user (whose queries are never captured).
 */
async function captureProbe(
  deps: CheckDeps,
  probe: readonly [string, NameInfo],
  resolv: { readonly upstream: string; readonly hasServer: boolean },
): Promise<CaptureProbe> {
  const values = deps.values;
  if (values.ISTIO_CUSTOM_IP_TABLES || !values.ISTIO_AGENT_COMPONENTS.includes("interception")) {
    return {
      ok: true,
      detail: "skip capture: the agent does not capture DNS (ISTIO_CUSTOM_IP_TABLES, ISTIO_AGENT_COMPONENTS)",
    };
  }
  if (!resolv.hasServer) return { ok: true, detail: "skip capture: resolv.conf lists no nameserver to capture" };
  const ids = await resolveProxyIds(values, deps.users).catch(() => undefined);
  if (ids === undefined) return { ok: true, detail: `skip capture: the proxy user ${values.ENVOY_USER} is unknown` };
  if (deps.uid !== undefined && ids.uids.includes(deps.uid)) {
    return {
      ok: true,
      detail: `skip capture: this check runs as the proxy's user (uid ${String(deps.uid)}), whose queries are not captured`,
    };
  }
  const answer = await deps.dns.queryServer(probe[0], resolv.upstream, deps.timeoutMs);
  const ok = answer.ok && probe[1].ips.every((ip) => answer.addresses.includes(ip));
  return {
    ok,
    detail: `${ok ? "ok  " : "FAIL"} ${probe[0]} at ${resolv.upstream}, as applications ask (captured to the proxy): ${show(answer)}`,
  };
}

export function dnsProxyCheck(deps: CheckDeps, name: string): Check {
  const values = deps.values;
  const proxy = `127.0.0.1:${String(values.DNS_PROXY_PORT)}`;
  return {
    name,
    description: "the agent's DNS proxy answers a mesh name from istiod's name table and forwards other names",
    async run() {
      const path = nameTablePath(values);
      const stored = await loadStoredTable(deps.fs, path);
      if (stored.kind !== "loaded") {
        return fail(
          name,
          stored.kind === "absent" ? "no name table from istiod yet" : `the persisted name table is unusable`,
          `the agent writes ${path} when istiod sends its name table: check \`systemctl status istio-vm-agent\` (STATUS= says whether istiod is reachable) and the discovery check`,
          stored.kind === "invalid" ? [stored.reason] : [],
          { proxy, table: path },
        );
      }
      const ageSeconds = Math.round((deps.clock.now() - stored.stored.receivedAt) / 1000);
      const hosts = Object.entries(stored.stored.table).filter(([, info]) => info.ips.length > 0);
      const details = [`name table ${path}: ${String(hosts.length)} names, ${String(ageSeconds)} s old`];
      const probe =
        hosts.find(([host]) => host === values.ISTIO_DNS_PROBE_NAME) ?? hosts.find(([host]) => !host.startsWith("*"));
      const resolvText = (await deps.fs.readTextIfExists(values.ISTIO_RESOLV_CONF).catch(() => undefined)) ?? "";
      const resolvConf = parseResolvConf(resolvText);
      const upstream = resolvConf.servers[0] ?? "127.0.0.1:53";
      const [mesh, forwarded, direct] = await Promise.all([
        probe === undefined ? Promise.resolve(undefined) : deps.dns.queryServer(probe[0], proxy, deps.timeoutMs),
        deps.dns.queryServer(OUTSIDE_NAME, proxy, deps.timeoutMs),
        deps.dns.queryServer(OUTSIDE_NAME, upstream, deps.timeoutMs),
      ]);
      const data = { proxy, table: path, tableAgeSeconds: ageSeconds, tableNames: hosts.length, upstream };
      if (probe !== undefined && mesh !== undefined) {
        const meshOk = mesh.ok && probe[1].ips.every((ip) => mesh.addresses.includes(ip));
        details.push(
          `${meshOk ? "ok  " : "FAIL"} ${probe[0]} at ${proxy}: ${show(mesh)} (table: ${probe[1].ips.join(",")})`,
        );
        if (!meshOk) {
          return fail(
            name,
            `the DNS proxy at ${proxy} does not answer ${probe[0]} from the name table`,
            mesh.ok
              ? `it answered ${show(mesh)}, not the table's addresses: restart the agent (\`systemctl restart istio-vm-agent\`)`
              : `is the agent running with ISTIO_META_DNS_CAPTURE=true and DNS_PROXY_PORT=${String(values.DNS_PROXY_PORT)}? (\`systemctl status istio-vm-agent\`)`,
            details,
            data,
          );
        }
      } else details.push("the name table has no name with an address to ask for");
      const forwardOk = sameOutcome(forwarded, direct);
      details.push(
        `${forwardOk ? "ok  " : "FAIL"} ${OUTSIDE_NAME}: at ${proxy} ${show(forwarded)}; at ${upstream} directly ${show(direct)}`,
      );
      if (!forwardOk) {
        return fail(
          name,
          `the DNS proxy does not forward names outside the mesh like ${upstream} answers them`,
          direct.ok || direct.code !== "TIMEOUT"
            ? `compare the answers above; the proxy forwards to the nameservers of ${values.ISTIO_RESOLV_CONF}`
            : `${upstream} (from ${values.ISTIO_RESOLV_CONF}) does not answer: fix the VM's resolver configuration`,
          details,
          data,
        );
      }
      if (probe !== undefined) {
        const capture = await captureProbe(deps, probe, { upstream, hasServer: resolvConf.addresses.length > 0 });
        details.push(capture.detail);
        if (!capture.ok) {
          return fail(
            name,
            `queries to ${upstream} do not reach the DNS proxy: ${probe[0]} is not answered from the name table there`,
            "DNS capture is not in place: `sudo istio-vm iptables show` lists the DNS rules (ISTIO_OUTPUT_DNS); is the agent's interception running (`systemctl status istio-vm-agent`)?",
            details,
            data,
          );
        }
      }
      return pass(
        name,
        `DNS proxy ${proxy}: mesh names from istiod's table (${String(hosts.length)} names, ${String(ageSeconds)} s old), others forwarded to ${upstream}`,
        details,
        data,
      );
    },
  };
}
