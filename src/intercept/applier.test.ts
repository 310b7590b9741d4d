import { describe, expect, test } from "vitest";
import { RecordingIptablesRunner, natDump } from "../../test/fakes/iptables-runner.js";
import type { InterceptionSettings } from "./planner.js";
import { planInterception, ruleLine } from "./planner.js";
import { restoreInput } from "./restore-input.js";
import { applyInterception, cleanInterception } from "./applier.js";
import { diffWithPlan, natTable, ourState } from "./show.js";

const SETTINGS: InterceptionSettings = {
  profile: "istiod",
  inboundPorts: [8080],
  inboundExcludePorts: [],
  serviceCidrs: "*",
  excludeCidrs: [],
  envoyPort: 15001,
  inboundCapturePort: 15006,
  inboundTunnelPort: 15008,
  proxy: { uids: [1337], gids: [1337], source: "test" },
  excludeInterfaces: [],
  ipv6: false,
  dns: undefined,
};
const PLAN = planInterception(SETTINGS);
const TABLE = PLAN.families[0]?.tables[0];

/** The nat dump a kernel holding exactly the plan would print. */
function appliedDump(): string {
  if (TABLE === undefined) throw new Error("plan has no IPv4 table");
  return natDump([...TABLE.chains.map((c) => `:${c} - [0:0]`), ...TABLE.rules.map(ruleLine)]);
}

describe("apply", () => {
  test("empty kernel: one restore for IPv4 with the whole plan; IPv6 has nothing to do", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-legacy-save", "");
    runner.saves.set("iptables-nft-save", natDump());
    runner.saves.set("ip6tables-nft-save", "");
    const results = await applyInterception({ runner, choice: "auto" }, PLAN);
    expect(results.map((r) => [r.family, r.backend, r.action])).toEqual([
      [4, "nft", "applied"],
      [6, "nft", "nothing"],
    ]);
    const restores = runner.restores();
    expect(restores.map((c) => [c.command, ...c.args])).toEqual([["iptables-nft-restore", "--noflush", "-w"]]);
    expect(restores[0]?.input).toBe(TABLE === undefined ? "" : restoreInput(TABLE));
  });

  test("a kernel that already matches: no restore at all", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", appliedDump());
    runner.saves.set("ip6tables-nft-save", natDump());
    const results = await applyInterception({ runner, choice: "nft" }, PLAN);
    expect(results[0]?.action).toBe("unchanged");
    expect(runner.restores()).toEqual([]);
  });

  test("legacy holding rules wins, and our residue in nft is cleaned", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-legacy-save", natDump(["-A PREROUTING -j DOCKER", ":DOCKER - [0:0]"]));
    runner.saves.set("iptables-nft-save", appliedDump());
    const results = await applyInterception({ runner, choice: "auto" }, PLAN);
    expect(results[0]).toMatchObject({ backend: "legacy", action: "applied", residueCleaned: ["nft"] });
    const commands = runner.restores().map((c) => c.command);
    expect(commands).toEqual(["iptables-nft-restore", "iptables-legacy-restore"]);
    expect(runner.restores()[0]?.input).toContain("-X ISTIO_OUTPUT");
  });

  test("a changed plan: old jumps deleted by their saved text, chains redeclared, stale chains deleted", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", appliedDump());
    const inboundOnly = planInterception({ ...SETTINGS, serviceCidrs: [] });
    await applyInterception({ runner, choice: "nft" }, inboundOnly);
    expect(runner.restores()[0]?.input).toBe(
      [
        "*nat",
        "-D PREROUTING -p tcp -m comment --comment istio-vm -j ISTIO_INBOUND",
        "-D OUTPUT -p tcp -m comment --comment istio-vm -j ISTIO_OUTPUT",
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-X ISTIO_OUTPUT",
        "-X ISTIO_REDIRECT",
        "-A PREROUTING -p tcp -m comment --comment istio-vm -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "COMMIT",
        "",
      ].join("\n"),
    );
  });

  test("a rejected restore is an error that names the tool and says nothing changed", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", natDump());
    runner.restoreFailures.set("iptables-nft-restore", "iptables-restore: line 9 failed");
    await expect(applyInterception({ runner, choice: "nft" }, PLAN)).rejects.toMatchObject({
      code: "IPTABLES_RESTORE_FAILED",
      subject: "iptables-nft-restore",
      message: expect.stringContaining("nothing was changed") as unknown,
    });
  });

  test("dry run computes the restore without running it", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", natDump());
    const results = await applyInterception({ runner, choice: "nft" }, PLAN, { dryRun: true });
    expect(results[0]?.restore).toContain("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT");
    expect(runner.restores()).toEqual([]);
  });
});

describe("clean", () => {
  test("nothing to clean, no tools for IPv6: no restore, no error", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-legacy-save", "");
    runner.saves.set("iptables-nft-save", natDump(["-A POSTROUTING -j MASQUERADE"]));
    const results = await cleanInterception({ runner, choice: "auto" });
    expect(runner.restores()).toEqual([]);
    expect(results.filter((r) => r.skipped !== undefined).map((r) => r.family)).toEqual([6, 6]);
  });

  test("unreadable because of missing privileges is an error, never 'nothing to clean'", async () => {
    const runner = new RecordingIptablesRunner();
    runner.saveFailures.set("iptables-legacy-save", "Failed to list table names: Permission denied");
    runner.saveFailures.set("iptables-nft-save", "Could not fetch rule set generation id: Permission denied");
    await expect(cleanInterception({ runner, choice: "auto" })).rejects.toMatchObject({
      code: "IPTABLES_PERMISSION_DENIED",
    });
    await expect(applyInterception({ runner, choice: "auto" }, PLAN)).rejects.toMatchObject({
      code: "IPTABLES_PERMISSION_DENIED",
    });
    // With CAP_NET_ADMIN only, legacy is refused but nft works: use nft.
    runner.saves.set("iptables-nft-save", natDump());
    runner.saveFailures.delete("iptables-nft-save");
    const [v4] = await applyInterception({ runner, choice: "auto" }, PLAN);
    expect(v4).toMatchObject({ backend: "nft", action: "applied" });
  });

  test("removes our chains and jumps only; a foreign chain that jumps to ours keeps it (flushed)", async () => {
    const foreign = [
      ":DOCKER - [0:0]",
      ":ISTIO_OUTPUT - [0:0]",
      ":ISTIO_REDIRECT - [0:0]",
      "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
      "-A OUTPUT -p tcp -m comment --comment istio-vm -j ISTIO_OUTPUT",
      "-A DOCKER -j ISTIO_REDIRECT",
      "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ];
    const state = ourState(natTable(natDump(foreign)));
    expect(restoreInput(undefined, state)).toBe(
      [
        "*nat",
        "-D OUTPUT -p tcp -m comment --comment istio-vm -j ISTIO_OUTPUT",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-X ISTIO_OUTPUT",
        "COMMIT",
        "",
      ].join("\n"),
    );
    const runner = new RecordingIptablesRunner();
    runner.saves.set("iptables-nft-save", natDump(foreign));
    const [v4] = await cleanInterception({ runner, choice: "nft" });
    expect(v4).toMatchObject({ removedChains: ["ISTIO_OUTPUT"], keptChains: ["ISTIO_REDIRECT"], removedJumps: 1 });
  });
});

describe("show", () => {
  test("reports missing, unexpected and reordered rules against the plan", () => {
    if (TABLE === undefined) throw new Error("plan has no IPv4 table");
    const lines = TABLE.rules.map(ruleLine);
    const inbound = lines.filter((l) => l.startsWith("-A ISTIO_INBOUND "));
    const tampered = [
      ...TABLE.chains.map((c) => `:${c} - [0:0]`),
      ...lines.filter(
        (l) => !l.startsWith("-A ISTIO_INBOUND ") && l !== "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
      ),
      ...[...inbound].reverse(),
      "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
    ];
    const diff = diffWithPlan(TABLE, ourState(natTable(natDump(tampered))));
    expect(diff.matches).toBe(false);
    expect(diff.missing).toEqual(["-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"]);
    expect(diff.unexpected).toEqual(["-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"]);
    expect(diff.outOfOrder).toEqual(["ISTIO_INBOUND"]);
    expect(diffWithPlan(TABLE, ourState(natTable(appliedDump()))).matches).toBe(true);
  });
});
