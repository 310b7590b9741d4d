/**
 * The exact `iptables-restore --noflush` input per profile and family, pinned in __golden__/restore/ (as istio's
 * tools/istio-iptables pins `testdata/*-restore.golden`): from an empty kernel (what `istio-vm iptables plan` prints
 * and a first apply runs), over a kernel holding the other profile's rules (a profile switch: old jumps deleted by
 * their saved text, chains redeclared, a chain no longer used deleted), and the clean-up (`iptables clean`, every
 * agent stop) of a kernel where someone else's chain still jumps to one of ours. The kernel tests in
 * test/integration/iptables-*.test.ts run this same text through real iptables-restore in a network namespace.
 */
import { describe, expect, test } from "vitest";
import { natDump } from "../../test/fakes/iptables-runner.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig, requireValid } from "../config/load.js";
import type { Family, InterceptionPlan, Profile, TablePlan } from "./planner.js";
import type { FamilyState, OurState } from "./restore-input.js";
import { planInterception, ruleLine } from "./planner.js";
import { familyRestoreInput, renderPlan, restoreInput } from "./restore-input.js";
import { interceptionSettings } from "./settings.js";
import { familyState, natTable, ourState } from "./show.js";
import { passwdFileUsers } from "../platform/users.js";

const PASSWD = "root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n";

/** One configuration per profile that captures in both families, with every kind of rule the profile writes. */
const ENV: Record<Profile, Record<string, string>> = {
  legacy: {
    ISTIO_CONTROL_PLANE: "legacy",
    ENABLE_INBOUND_IPV6: "true",
    ISTIO_INBOUND_PORTS: "8000,9000",
    ISTIO_INBOUND_EXCLUDE_PORTS: "9000",
    ISTIO_SERVICE_CIDR: "10.23.0.0/16,fd00:23::/64",
    ISTIO_SERVICE_EXCLUDE_CIDR: "10.23.0.10/32,fd00:23::a/128",
    ISTIO_EXCLUDE_INTERFACES: "docker0",
  },
  istiod: {
    ENVOY_UID: "1337",
    ENVOY_GID: "1338",
    ENABLE_INBOUND_IPV6: "true",
    ISTIO_INBOUND_PORTS: "*",
    ISTIO_LOCAL_EXCLUDE_PORTS: "15090,15021,15020",
    ISTIO_SERVICE_CIDR: "*",
    ISTIO_SERVICE_EXCLUDE_CIDR: "169.254.169.254/32",
  },
};
const PROFILES: readonly Profile[] = ["legacy", "istiod"];
const FAMILIES: readonly Family[] = [4, 6];

async function plan(profile: Profile, extra: Record<string, string> = {}): Promise<InterceptionPlan> {
  const fs = new MemoryFileSystem({
    "/etc/passwd": PASSWD,
    "/etc/resolv.conf": "nameserver 10.0.0.2\nnameserver fd00::53\n",
  });
  const values = requireValid(await loadConfig({ env: { ...ENV[profile], ...extra }, fs }));
  return planInterception(await interceptionSettings(values, passwdFileUsers(fs, "/etc/passwd"), fs));
}

const DNS_ON = { ISTIO_META_DNS_CAPTURE: "true" };

function tablesOf(p: InterceptionPlan, family: Family): readonly TablePlan[] {
  return p.families.find((f) => f.family === family)?.tables ?? [];
}

/** A kernel holding every table of `tables` (an iptables-save dump of several tables), read back as show.ts does. */
function kernelHoldingAll(
  tables: readonly TablePlan[],
  extra: Partial<Record<string, readonly string[]>> = {},
): FamilyState {
  const dump = tables
    .map((t) => {
      const lines = [...t.chains.map((c) => `:${c} - [0:0]`), ...(extra[t.table] ?? []), ...t.rules.map(ruleLine)];
      return t.table === "nat"
        ? natDump(lines)
        : ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ...lines, "COMMIT", ""].join("\n");
    })
    .join("");
  return familyState(dump);
}

function table(p: InterceptionPlan, family: Family): TablePlan {
  const t = p.families.find((f) => f.family === family)?.tables[0];
  if (t === undefined) throw new Error(`the ${p.settings.profile} plan captures nothing in IPv${family}`);
  return t;
}

/** What the kernel holds after applying `t`, plus `extra` lines, as show.ts reads it from iptables-save. */
function kernelHolding(t: TablePlan, extra: readonly string[] = []): OurState {
  const lines = [...t.chains.map((c) => `:${c} - [0:0]`), ...extra, ...t.rules.map(ruleLine)];
  return ourState(natTable(natDump(lines)));
}

describe("iptables-restore input", () => {
  for (const profile of PROFILES) {
    for (const family of FAMILIES) {
      const name = `${profile}-ipv${family}`;
      const other: Profile = profile === "legacy" ? "istiod" : "legacy";

      test(`${name}: from an empty kernel, which is what \`iptables plan\` prints`, async () => {
        const p = await plan(profile);
        const input = restoreInput(table(p, family));
        await expect(input).toMatchFileSnapshot(`__golden__/restore/${name}.golden`);
        const tool = family === 4 ? "iptables-restore" : "ip6tables-restore";
        expect(renderPlan(p)).toContain(`# IPv${family}: ${tool} --noflush input\n${input}`);
      });

      test(`${name}: over the ${other} profile's rules`, async () => {
        const state = kernelHolding(table(await plan(other), family));
        await expect(restoreInput(table(await plan(profile), family), state)).toMatchFileSnapshot(
          `__golden__/restore/${name}-over-${other}.golden`,
        );
      });
    }
  }

  for (const family of FAMILIES) {
    test(`clean-ipv${family}: our rules removed, a chain someone else jumps to kept (flushed)`, async () => {
      const state = kernelHolding(table(await plan("istiod"), family), [
        ":CNI-HOSTPORT - [0:0]",
        "-A CNI-HOSTPORT -p tcp -j ISTIO_REDIRECT",
      ]);
      await expect(restoreInput(undefined, state)).toMatchFileSnapshot(`__golden__/restore/clean-ipv${family}.golden`);
    });
  }
});

describe("iptables-restore input with DNS capture (nat and raw in one restore)", () => {
  for (const family of FAMILIES) {
    test(`istiod-dns-ipv${family}: from an empty kernel`, async () => {
      const tables = tablesOf(await plan("istiod", DNS_ON), family);
      expect(tables.map((t) => t.table)).toEqual(["nat", "raw"]);
      await expect(familyRestoreInput(tables)).toMatchFileSnapshot(`__golden__/restore/istiod-dns-ipv${family}.golden`);
    });

    test(`istiod-dns-ipv${family}: DNS turned off over a kernel holding it (raw chains and jumps removed)`, async () => {
      const state = kernelHoldingAll(tablesOf(await plan("istiod", DNS_ON), family));
      const input = familyRestoreInput(tablesOf(await plan("istiod"), family), state);
      await expect(input).toMatchFileSnapshot(`__golden__/restore/istiod-dns-off-ipv${family}.golden`);
      expect(input).toContain("-X ISTIO_OUTPUT_DNS");
    });

    test(`clean-dns-ipv${family}: both tables emptied, a raw chain someone else jumps to kept`, async () => {
      const state = kernelHoldingAll(tablesOf(await plan("istiod", DNS_ON), family), {
        raw: [":OTHER - [0:0]", "-A OTHER -j ISTIO_INBOUND"],
      });
      const input = familyRestoreInput([], state);
      await expect(input).toMatchFileSnapshot(`__golden__/restore/clean-dns-ipv${family}.golden`);
      const raw = input.slice(input.indexOf("*raw"));
      expect(raw).toContain("-X ISTIO_OUTPUT_DNS");
      expect(raw).not.toContain("-X ISTIO_INBOUND");
    });
  }
});
