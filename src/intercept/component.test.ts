import { describe, expect, test } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { RecordingIptablesRunner, natDump } from "../../test/fakes/iptables-runner.js";
import type { AgentDeps } from "../agent/component.js";
import { createAgentEvents } from "../agent/events.js";
import { MetricsRegistry } from "../agent/metrics.js";
import { loadConfig, requireValid } from "../config/load.js";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import type { Clock } from "../platform/clock.js";
import { systemClock } from "../platform/clock.js";
import { createLogger } from "../platform/logger.js";
import { interceptionComponent } from "./component.js";
import { fakePorts } from "../../test/fakes/ports.js";

async function deps(
  env: Record<string, string>,
  runner: RecordingIptablesRunner,
  clock: Clock = systemClock,
): Promise<AgentDeps> {
  const fs = new MemoryFileSystem({
    "/etc/passwd": "istio-proxy:x:998:998::/var/lib/istio:/usr/sbin/nologin\n",
    "/etc/resolv.conf": "nameserver 10.0.0.2\n",
  });
  const loaded = await loadConfig({ env, fs });
  return {
    config: requireValid(loaded),
    loaded,
    ...fakePorts({ env, fs, runner, clock }),
    logger: createLogger({ level: "error", format: "plain", write: () => undefined }),
    metrics: new MetricsRegistry(),
    events: createAgentEvents(),
  };
}

function kernel(): RecordingIptablesRunner {
  const runner = new RecordingIptablesRunner();
  runner.saves.set("iptables-nft-save", natDump());
  runner.saves.set("ip6tables-nft-save", natDump());
  return runner;
}

describe("interception component", () => {
  test("start applies, metrics say so, stop removes what the kernel then holds", async () => {
    const runner = kernel();
    const d = await deps({ ISTIO_INBOUND_PORTS: "8080", FORCE_IPTABLES_BINARY: "nft" }, runner);
    const component = interceptionComponent(d);
    if (component === undefined) throw new Error("component expected");
    await component.start(new AbortController().signal);
    expect(component.status()).toMatchObject({ ready: true, summary: "capture on (5 rules)" });
    expect(d.metrics.render()).toMatch(/^istio_vm_interception_active 1$/m);
    const applied = runner.restores()[0]?.input ?? "";
    // The kernel now holds what was applied; stop must remove exactly that.
    runner.saves.set("iptables-nft-save", natDump(applied.split("\n").filter((l) => /^[:-]/.test(l))));
    await component.stop();
    const clean = runner.restores()[1]?.input ?? "";
    expect(clean).toContain("-D PREROUTING -p tcp -m comment --comment istio-vm -j ISTIO_INBOUND");
    expect(clean).toContain("-X ISTIO_INBOUND");
    expect(component.status().ready).toBe(false);
    expect(d.metrics.render()).toMatch(/^istio_vm_interception_active 0$/m);
  });

  test("a rejected restore fails the start and counts a failure; reload failure keeps the previous state", async () => {
    const runner = kernel();
    runner.restoreFailures.set("iptables-nft-restore", "iptables-restore: line 3 failed");
    const d = await deps({ ISTIO_INBOUND_PORTS: "8080", FORCE_IPTABLES_BINARY: "nft" }, runner);
    const component = interceptionComponent(d);
    if (component === undefined) throw new Error("component expected");
    await expect(component.start(new AbortController().signal)).rejects.toMatchObject({
      code: "IPTABLES_RESTORE_FAILED",
    });
    expect(component.status()).toMatchObject({ ready: false });
    expect(d.metrics.render()).toMatch(/^istio_vm_interception_apply_failures_total 1$/m);

    runner.restoreFailures.clear();
    await component.start(new AbortController().signal);
    runner.restoreFailures.set("iptables-nft-restore", "bad");
    const nextLoaded = await loadConfig({ env: { ISTIO_INBOUND_PORTS: "9090" }, fs: d.fs });
    await expect(component.reload?.(requireValid(nextLoaded), nextLoaded)).rejects.toMatchObject({
      code: "IPTABLES_RESTORE_FAILED",
    });
    expect(component.status()).toMatchObject({ ready: true, summary: "capture on (5 rules)" });
  });

  test("with DNS capture, a change of resolv.conf's nameservers re-applies the rules for the new ones", async () => {
    const runner = kernel();
    const clock = new FakeClock();
    const d = await deps({ ISTIO_META_DNS_CAPTURE: "true", FORCE_IPTABLES_BINARY: "nft" }, runner, clock);
    const component = interceptionComponent(d);
    if (component === undefined) throw new Error("component expected");
    const agent = new AbortController();
    await component.start(agent.signal);
    expect(runner.restores()[0]?.input).toContain("-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32 -p udp");
    // Unchanged: no new restore (the kernel is not even read).
    await clock.runToNextTimer();
    await clock.nextTimer();
    expect(runner.restores()).toHaveLength(1);
    const applied = runner.restores()[0]?.input ?? "";
    runner.saves.set(
      "iptables-nft-save",
      natDump(applied.split("\n").filter((l) => /^[:-]/.test(l) && !l.startsWith("-D"))),
    );
    await d.fs.writeFileAtomic("/etc/resolv.conf", "nameserver 10.0.0.3\n", { mode: 0o644 });
    await clock.runToNextTimer();
    await clock.nextTimer();
    const second = runner.restores()[1]?.input ?? "";
    expect(second).toContain(
      "-A ISTIO_OUTPUT_DNS -d 10.0.0.3/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    );
    expect(second).not.toContain("-A ISTIO_OUTPUT_DNS -d 10.0.0.2/32");
    agent.abort();
    await component.stop();
    expect(clock.pending).toBe(0);
  });

  test("ISTIO_CUSTOM_IP_TABLES=true leaves iptables to the admin", async () => {
    const runner = kernel();
    expect(interceptionComponent(await deps({ ISTIO_CUSTOM_IP_TABLES: "true" }, runner))).toBeUndefined();
    expect(runner.calls).toEqual([]);
  });
});
