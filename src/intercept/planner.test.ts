import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, test } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig, requireValid } from "../config/load.js";
import type { InterceptionPlan, Rule } from "./planner.js";
import { planInterception, ruleLine } from "./planner.js";
import { renderPlan } from "./restore-input.js";
import { canonicalCidr } from "./canonical.js";
import { interceptionSettings } from "./settings.js";
import { passwdFileUsers } from "../platform/users.js";

const PASSWD = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n";

async function plan(env: Record<string, string>, resolvConf?: string): Promise<InterceptionPlan> {
  const fs = new MemoryFileSystem({
    "/etc/passwd": PASSWD,
    ...(resolvConf === undefined ? {} : { "/etc/resolv.conf": resolvConf }),
  });
  const values = requireValid(await loadConfig({ env, fs }));
  return planInterception(await interceptionSettings(values, passwdFileUsers(fs, "/etc/passwd"), fs));
}

const legacy = (env: Record<string, string>): Promise<InterceptionPlan> =>
  plan({ ISTIO_CONTROL_PLANE: "legacy", ENVOY_UID: "1337", ...env });

function v4Lines(p: InterceptionPlan): string[] {
  return (p.families.find((f) => f.family === 4)?.tables[0]?.rules ?? []).map(ruleLine);
}

function rulesOf(p: InterceptionPlan, family: 4 | 6): readonly Rule[] {
  return p.families.find((f) => f.family === family)?.tables[0]?.rules ?? [];
}

/** Our lines with the jump tag removed: the form the original's golden files use. */
function untagged(lines: string[]): string[] {
  return lines.map((l) => l.replace(" -m comment --comment istio-vm", ""));
}

// istio/proxy tools/deb/test/golden.* at 0.2.12 (docs/protocols.md, "iptables"), rule lines only.
const GOLDEN_CIDR = [
  "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
  "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ISTIO_REDIRECT",
  "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
  "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
  "-A ISTIO_OUTPUT -d 10.23.0.0/16 -j ISTIO_REDIRECT",
  "-A ISTIO_OUTPUT -j RETURN",
  "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
];
const GOLDEN_IN_INBOUND = [
  "-A PREROUTING -p tcp -j ISTIO_INBOUND",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 8000 -j ISTIO_REDIRECT",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 9000 -j ISTIO_REDIRECT",
  "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
];
const REPRODUCED_0_8 = [
  "-A PREROUTING -p tcp -j ISTIO_INBOUND",
  "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 23 -j RETURN",
  "-A ISTIO_INBOUND -p tcp -m tcp --dport 8081 -j RETURN",
  "-A ISTIO_INBOUND -p tcp -j ISTIO_REDIRECT",
  "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ISTIO_REDIRECT",
  "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
  "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
  "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
  "-A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN",
  "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
  "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
];

describe("legacy profile against the original's golden outputs", () => {
  test("golden.cidr: same rules and order, plus the gid exclusion", async () => {
    const ours = untagged(v4Lines(await legacy({ ISTIO_SERVICE_CIDR: "10.23.0.0/16" })));
    const expected = [...GOLDEN_CIDR];
    expected.splice(3, 0, "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN");
    expect(ours).toEqual(expected);
  });

  test("golden.in: same inbound rules; no outbound capture, because ISTIO_SERVICE_CIDR is empty", async () => {
    const p = await legacy({ ISTIO_INBOUND_PORTS: "8000,9000" });
    expect(untagged(v4Lines(p))).toEqual(GOLDEN_IN_INBOUND);
    expect(p.warnings.join("\n")).toMatch(/ISTIO_SERVICE_CIDR is empty/);
  });

  test("golden.exclude: the documented ISTIO_INBOUND_EXCLUDE_PORTS is honoured (port 23 is RETURNed)", async () => {
    const ours = untagged(v4Lines(await legacy({ ISTIO_INBOUND_PORTS: "*", ISTIO_INBOUND_EXCLUDE_PORTS: "22,23" })));
    expect(ours).toEqual([
      "-A PREROUTING -p tcp -j ISTIO_INBOUND",
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 23 -j RETURN",
      "-A ISTIO_INBOUND -p tcp -j ISTIO_REDIRECT",
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ]);
  });

  test("both exclude-port names are merged", async () => {
    const ours = v4Lines(
      await legacy({ ISTIO_INBOUND_PORTS: "*", ISTIO_INBOUND_EXCLUDE_PORTS: "23", ISTIO_LOCAL_EXCLUDE_PORTS: "8081" }),
    );
    expect(ours).toContain("-A ISTIO_INBOUND -p tcp -m tcp --dport 23 -j RETURN");
    expect(ours).toContain("-A ISTIO_INBOUND -p tcp -m tcp --dport 8081 -j RETURN");
  });

  test("the reproduced 0.8.0 output, rule for rule", async () => {
    const ours = untagged(
      v4Lines(
        await legacy({
          ISTIO_INBOUND_PORTS: "*",
          ISTIO_LOCAL_EXCLUDE_PORTS: "23,8081",
          ISTIO_SERVICE_CIDR: "*",
          ISTIO_SERVICE_EXCLUDE_CIDR: "169.254.169.254/32",
        }),
      ),
    );
    expect(ours).toEqual(REPRODUCED_0_8);
  });

  test("golden.defaults: nothing set captures nothing (no chains at all)", async () => {
    const p = await legacy({});
    expect(p.families.every((f) => f.tables.length === 0)).toBe(true);
    expect(p.warnings).toEqual(["ISTIO_INBOUND_PORTS and ISTIO_SERVICE_CIDR are empty: nothing is captured"]);
  });

  test("root is not excluded; the looked-up proxy uid and its primary gid are", async () => {
    const p = await plan({ ISTIO_CONTROL_PLANE: "legacy", ISTIO_SERVICE_CIDR: "*" });
    const lines = v4Lines(p);
    expect(lines).toContain("-A ISTIO_OUTPUT -m owner --uid-owner 998 -j RETURN");
    expect(lines).toContain("-A ISTIO_OUTPUT -m owner --gid-owner 997 -j RETURN");
    expect(lines.some((l) => / --(uid|gid)-owner 0 /.test(l))).toBe(false);
  });
});

describe("golden files", () => {
  const cases: Record<string, Record<string, string>> = {
    "legacy-in": { ISTIO_CONTROL_PLANE: "legacy", ENVOY_UID: "1337", ISTIO_INBOUND_PORTS: "8000,9000" },
    "legacy-cidr": { ISTIO_CONTROL_PLANE: "legacy", ENVOY_UID: "1337", ISTIO_SERVICE_CIDR: "10.23.0.0/16" },
    "legacy-exclude": {
      ISTIO_CONTROL_PLANE: "legacy",
      ENVOY_UID: "1337",
      ISTIO_INBOUND_PORTS: "*",
      ISTIO_INBOUND_EXCLUDE_PORTS: "22,23",
    },
    "legacy-defaults": { ISTIO_CONTROL_PLANE: "legacy", ENVOY_UID: "1337" },
    "istiod-vm-default": {
      ENVOY_UID: "1337",
      ISTIO_INBOUND_PORTS: "*",
      ISTIO_LOCAL_EXCLUDE_PORTS: "15090,15021,15020",
      ISTIO_SERVICE_CIDR: "*",
    },
    "istiod-list": {
      ENVOY_UID: "1337",
      ISTIO_INBOUND_PORTS: "8080,9090",
      ISTIO_SERVICE_CIDR: "10.96.0.0/12,172.20.0.0/16",
      ISTIO_SERVICE_EXCLUDE_CIDR: "10.96.0.10/32",
      ISTIO_EXCLUDE_INTERFACES: "docker0,veth+",
    },
    "istiod-ipv6": {
      ENVOY_UID: "1337",
      ENVOY_GID: "1338",
      ENABLE_INBOUND_IPV6: "true",
      ISTIO_INBOUND_PORTS: "8080",
      ISTIO_SERVICE_CIDR: "10.96.0.0/12,FD00:0:0:0::/64",
    },
  };
  for (const [name, env] of Object.entries(cases)) {
    test(name, async () => {
      await expect(renderPlan(await plan(env))).toMatchFileSnapshot(`__golden__/${name}.rules`);
    });
  }
  // The VM default with the DNS proxy: one IPv4 and one IPv6 nameserver (the IPv6 one captured in ip6tables even
  // though ENABLE_INBOUND_IPV6 is off), and the DNS proxy alone (nothing else captured).
  const dnsCases: Record<string, { env: Record<string, string>; resolv: string }> = {
    "istiod-dns": {
      env: { ...cases["istiod-vm-default"], ENVOY_GID: "1338", ISTIO_META_DNS_CAPTURE: "true" },
      resolv: RESOLV_BOTH,
    },
    "istiod-dns-only": { env: { ENVOY_UID: "1337", ISTIO_META_DNS_CAPTURE: "true" }, resolv: RESOLV_BOTH },
  };
  for (const [name, { env, resolv }] of Object.entries(dnsCases)) {
    test(name, async () => {
      await expect(renderPlan(await plan(env, resolv))).toMatchFileSnapshot(`__golden__/${name}.rules`);
    });
  }
});

const RESOLV_BOTH = "# from DHCP\nsearch example.internal\nnameserver 10.0.0.2\nnameserver FD00::0:53\n";

function tableRules(p: InterceptionPlan, family: 4 | 6, table: "nat" | "raw"): string[] {
  return (p.families.find((f) => f.family === family)?.tables.find((t) => t.table === table)?.rules ?? []).map(
    ruleLine,
  );
}

describe("DNS capture (istiod profile, ISTIO_META_DNS_CAPTURE=true)", () => {
  const DNS = { ENVOY_UID: "1337", ISTIO_INBOUND_PORTS: "*", ISTIO_SERVICE_CIDR: "*", ISTIO_META_DNS_CAPTURE: "true" };

  test("off by default: no raw table, no ISTIO_OUTPUT_DNS, UDP never enters ISTIO_OUTPUT", async () => {
    const p = await plan({ ENVOY_UID: "1337", ISTIO_SERVICE_CIDR: "*" }, RESOLV_BOTH);
    expect(p.families.flatMap((f) => f.tables.map((t) => t.table))).toEqual(["nat"]);
    expect(renderPlan(p)).not.toMatch(/ISTIO_OUTPUT_DNS|-p udp|15053/);
  });

  test("each nameserver's TCP and UDP :53 go to the proxy port, after the proxy's own traffic returned", async () => {
    const lines = tableRules(await plan(DNS, "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"), 4, "nat");
    const dnsJump = lines.indexOf("-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS");
    expect(dnsJump).toBeGreaterThan(lines.indexOf("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
    expect(dnsJump).toBeGreaterThan(lines.indexOf("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"));
    expect(dnsJump).toBeLessThan(lines.indexOf("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
    expect(lines.filter((l) => l.startsWith("-A ISTIO_OUTPUT_DNS"))).toEqual([
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.3/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.3/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    ]);
    expect(lines).toContain("-A OUTPUT -p udp -m udp --dport 53 -m comment --comment istio-vm -j ISTIO_OUTPUT");
    // TCP :53 over lo (a resolver on 127.0.0.53) is neither returned as loopback nor hairpinned into Envoy.
    expect(lines).toContain("-A ISTIO_OUTPUT -o lo -p tcp -m tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN");
    expect(lines).toContain(
      "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
    );
  });

  test("raw zones: the proxy's queries and answers first, then the applications' queries, replies in PREROUTING", async () => {
    const p = await plan({ ...DNS, DNS_PROXY_PORT: "15054" }, "nameserver 10.0.0.2\n");
    expect(tableRules(p, 4, "raw")).toEqual([
      "-A PREROUTING -p udp -m comment --comment istio-vm -j ISTIO_INBOUND",
      "-A OUTPUT -p udp -m comment --comment istio-vm -j ISTIO_OUTPUT_DNS",
      "-A ISTIO_INBOUND -s 10.0.0.2/32 -p udp -m udp --sport 53 -j CT --zone 1",
      "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
      "-A ISTIO_OUTPUT_DNS -p udp -m udp --sport 15054 -m owner --uid-owner 1337 -j CT --zone 2",
      "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
      "-A ISTIO_OUTPUT_DNS -p udp -m udp --sport 15054 -m owner --gid-owner 1337 -j CT --zone 2",
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32 -p udp -m udp --dport 53 -j CT --zone 2",
    ]);
    expect(tableRules(p, 4, "nat")).toContain(
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15054",
    );
  });

  test("an IPv6 nameserver is captured in ip6tables without ENABLE_INBOUND_IPV6; a zone is dropped", async () => {
    const p = await plan(DNS, "nameserver fe80::1%eth0\n");
    expect(tableRules(p, 4, "raw")).toEqual([]);
    expect(tableRules(p, 4, "nat").some((l) => l.includes("ISTIO_OUTPUT_DNS"))).toBe(false);
    const v6 = tableRules(p, 6, "nat");
    expect(v6).toContain("-A ISTIO_OUTPUT_DNS -d fe80::1/128 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053");
    // Only DNS in IPv6: no outbound redirect, no inbound capture.
    expect(v6.some((l) => l.includes("ISTIO_REDIRECT") || l.includes("PREROUTING"))).toBe(false);
    expect(tableRules(p, 6, "raw")).toContain(
      "-A ISTIO_INBOUND -s fe80::1/128 -p udp -m udp --sport 53 -j CT --zone 1",
    );
  });

  test("resolv.conf without a nameserver: no DNS rules, and a warning", async () => {
    const p = await plan(DNS, "search example.internal\n");
    expect(renderPlan(p)).not.toContain("ISTIO_OUTPUT_DNS");
    expect(p.warnings.join("\n")).toMatch(/resolv\.conf lists no nameserver: DNS is not captured/);
  });

  test("the legacy profile never captures DNS (the VM resolves through dnsmasq there)", async () => {
    const p = await legacy({ ISTIO_SERVICE_CIDR: "*", ISTIO_META_DNS_CAPTURE: "true" });
    expect(renderPlan(p)).not.toMatch(/ISTIO_OUTPUT_DNS|\*raw/);
  });
});

describe("istiod profile", () => {
  test("inbound goes to ISTIO_IN_REDIRECT → 15006, the tunnel port and SSH return first", async () => {
    const lines = v4Lines(await plan({ ENVOY_UID: "1337", ISTIO_INBOUND_PORTS: "*" }));
    expect(lines).toEqual([
      "-A PREROUTING -p tcp -m comment --comment istio-vm -j ISTIO_INBOUND",
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
      "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
      "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ]);
  });

  test("outbound only: no hairpin to ISTIO_IN_REDIRECT, which does not exist", async () => {
    const p = await plan({ ENVOY_UID: "1337", ISTIO_SERVICE_CIDR: "10.0.0.0/8" });
    expect(p.families[0]?.tables[0]?.chains).toEqual(["ISTIO_OUTPUT", "ISTIO_REDIRECT"]);
    expect(v4Lines(p).some((l) => l.includes("ISTIO_IN_REDIRECT"))).toBe(false);
  });

  test("IPv6 is not planned unless enabled or an IPv6 CIDR is listed; then only outbound to those CIDRs", async () => {
    const v4only = await plan({ ENVOY_UID: "1", ISTIO_INBOUND_PORTS: "80", ISTIO_SERVICE_CIDR: "*" });
    expect(rulesOf(v4only, 6)).toEqual([]);
    expect(v4only.warnings.join("\n")).toMatch(/IPv4 only/);
    const v6cidr = await plan({ ENVOY_UID: "1", ISTIO_INBOUND_PORTS: "80", ISTIO_SERVICE_CIDR: "fd00::/64" });
    const v6 = rulesOf(v6cidr, 6).map(ruleLine);
    expect(v6).toContain("-A ISTIO_OUTPUT -d fd00::/64 -j ISTIO_REDIRECT");
    expect(v6.some((l) => l.includes("PREROUTING"))).toBe(false);
    expect(v4Lines(v6cidr).some((l) => l.includes("ISTIO_OUTPUT"))).toBe(false);
  });

  test("a listed port 22 is never captured, and the plan says so", async () => {
    const p = await plan({ ENVOY_UID: "1", ISTIO_INBOUND_PORTS: "22,80" });
    expect(v4Lines(p).filter((l) => l.includes("--dport 22"))).toEqual([
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
    ]);
    expect(p.warnings.join("\n")).toMatch(/SSH is never captured/);
  });
});

describe("canonical addresses (as iptables-save prints them, glibc inet_ntop)", () => {
  test.each([
    ["FD00:0:0:0:0:0:0:0", 64, "fd00::/64"],
    ["2001:DB8:0:0:1::", 80, "2001:db8:0:0:1::/80"],
    ["2001:db8:0:0:1:0:0:1", 128, "2001:db8::1:0:0:1/128"],
    ["::ffff:10.0.0.0", 104, "::ffff:10.0.0.0/104"],
    ["::ffff:a00:0", 104, "::ffff:10.0.0.0/104"],
    ["::1.2.3.4", 128, "::1.2.3.4/128"],
    ["::1", 128, "::1/128"],
    ["::", 0, "::/0"],
  ])("%s/%d → %s", (address, prefix, expected) => {
    expect(canonicalCidr({ family: 6, address, prefix })).toBe(expected);
  });
});

describe("validation", () => {
  test.each([["0"], ["65536"], ["http"]])("ISTIO_INBOUND_PORTS=%s is a configuration error", async (ports) => {
    await expect(plan({ ISTIO_INBOUND_PORTS: ports })).rejects.toMatchObject({
      kind: "config",
      message: expect.stringContaining("ISTIO_INBOUND_PORTS") as unknown,
    });
  });

  test("a bad CIDR is a configuration error naming it", async () => {
    await expect(plan({ ISTIO_SERVICE_CIDR: "10.0.0.1/8" })).rejects.toMatchObject({
      kind: "config",
      message: expect.stringContaining("host bits") as unknown,
    });
  });

  test("a missing proxy user is an error naming the user and the fix", async () => {
    await expect(plan({ ENVOY_USER: "envoy-nobody" })).rejects.toMatchObject({
      code: "PROXY_USER_MISSING",
      kind: "config",
      subject: "envoy-nobody",
      hint: expect.stringContaining("ENVOY_UID") as unknown,
    });
  });

  test("a bad interface name is a configuration error", async () => {
    await expect(
      plan({ ENVOY_UID: "1", ISTIO_EXCLUDE_INTERFACES: "docker0,this-name-is-far-too-long" }),
    ).rejects.toMatchObject({
      kind: "config",
      message: expect.stringContaining("this-name-is-far-too-long") as unknown,
    });
  });
});

describe("properties", () => {
  fcTest.prop([fc.uniqueArray(fc.integer({ min: 5, max: 65535 }), { minLength: 1, maxLength: 40 }), fc.boolean()])(
    "SSH is RETURNed before any capture rule, and every other listed port gets exactly one capture rule",
    async (ports, legacyProfile) => {
      const p = await plan({
        ENVOY_UID: "1",
        ISTIO_CONTROL_PLANE: legacyProfile ? "legacy" : "istiod",
        ISTIO_INBOUND_PORTS: ports.join(","),
        // Envoy's own ports are rejected by validation when listed; move them below the generated range.
        ENVOY_PORT: "1",
        INBOUND_CAPTURE_PORT: "2",
        ENVOY_ADMIN_PORT: "3",
        STATUS_PORT: "4",
      });
      const inbound = rulesOf(p, 4).filter((r) => r.chain === "ISTIO_INBOUND");
      expect(inbound[0]?.spec).toBe("-p tcp -m tcp --dport 22 -j RETURN");
      const captured = inbound
        .filter((r) => !r.spec.endsWith("RETURN"))
        .map((r) => Number(/--dport (\d+)/.exec(r.spec)?.[1]));
      const expected = ports.filter((x) => x !== 22 && (legacyProfile || x !== 15008));
      expect(captured).toEqual(expected);
    },
  );
});
