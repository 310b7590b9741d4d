/**
 * Interception in the real kernel, inside network namespaces this test creates ("vm" and "peer", joined by a veth
 * pair with 10.250.7.0/30; the peer also owns 10.251.7.2, reached through it). Never in the machine's namespace.
 */
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { loadConfig, requireValid } from "../../src/config/load.js";
import { applyInterception } from "../../src/intercept/applier.js";
import type { InterceptionPlan } from "../../src/intercept/planner.js";
import { planInterception } from "../../src/intercept/planner.js";
import { interceptionSettings } from "../../src/intercept/settings.js";
import { nodeFileSystem } from "../../src/platform/fs.js";
import { requirements } from "../support/requirements.js";
import type { Listener } from "./iptables-netns.js";
import { Namespace, cliPath, connect, link, listen, pinCli, unpinCli } from "./iptables-netns.js";
import { systemUsers } from "../../src/platform/users.js";
import { nodeProcessRunner } from "../../src/platform/process.js";

const missing = requirements({
  root: true,
  tools: ["ip", "setpriv", "python3", "iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore"],
});

beforeAll(async () => {
  if (missing === undefined) await pinCli();
});
afterAll(async () => {
  await unpinCli();
});

const VM = "10.250.7.1";
const PEER = "10.250.7.2";
const SERVICE = "10.251.7.2";
const NOBODY = { uid: 65534, gid: 65534 };

/** Configuration for the CLI and the applier: no files, everything from this environment. */
function environment(backend: "nft" | "legacy", extra: Record<string, string> = {}): Record<string, string> {
  return {
    ISTIO_CLUSTER_CONFIG: "/nonexistent/istio-vm-test/cluster.env",
    ISTIO_SIDECAR_CONFIG: "/nonexistent/istio-vm-test/sidecar.env",
    ENVOY_USER: "nobody",
    FORCE_IPTABLES_BINARY: backend,
    ISTIO_INBOUND_PORTS: "8080,22",
    ISTIO_SERVICE_CIDR: "10.251.7.0/24",
    ...extra,
  };
}

async function planFor(env: Record<string, string>): Promise<InterceptionPlan> {
  const values = requireValid(await loadConfig({ env, fs: nodeFileSystem }));
  return planInterception(
    await interceptionSettings(values, systemUsers(env, nodeFileSystem, nodeProcessRunner), nodeFileSystem),
  );
}

interface World {
  vm: Namespace;
  peer: Namespace;
  listeners: Listener[];
}

async function makeWorld(): Promise<World> {
  const vm = await Namespace.create();
  const world: World = { vm, peer: vm, listeners: [] };
  world.peer = await Namespace.create();
  await link(vm, `${VM}/30`, world.peer, `${PEER}/30`);
  await world.peer.must("ip", ["addr", "add", `${SERVICE}/32`, "dev", "v1"]);
  await vm.must("ip", ["route", "add", "10.251.7.0/24", "via", PEER]);
  world.listeners.push(
    await listen(vm, "vm", ["0.0.0.0:15001", "0.0.0.0:15006", "0.0.0.0:8080", "0.0.0.0:9090", "0.0.0.0:22"]),
  );
  world.listeners.push(await listen(world.peer, "peer", ["0.0.0.0:80"]));
  return world;
}

async function destroyWorld(world: World | undefined): Promise<void> {
  if (world === undefined) return;
  for (const l of world.listeners) l.stop();
  await world.vm.destroy();
  if (world.peer !== world.vm) await world.peer.destroy();
}

describe.skipIf(missing !== undefined).each(["nft", "legacy"] as const)("iptables-%s back end", (backend) => {
  let world: World | undefined;
  const env = environment(backend);
  const w = (): World => {
    if (world === undefined) throw new Error("no namespaces");
    return world;
  };

  beforeAll(async () => {
    world = await makeWorld();
  });
  afterAll(async () => {
    await destroyWorld(world);
  });

  test("before apply every connection reaches its real destination", async () => {
    const { vm, peer } = w();
    expect(await connect(peer, VM, 8080)).toBe(`vm 8080 ${VM}:8080`);
    expect(await connect(vm, SERVICE, 80)).toBe(`peer 80 ${SERVICE}:80`);
  });

  test("apply (CLI in the namespace) captures inbound ports and service CIDRs, nothing else", async () => {
    const { vm, peer } = w();
    const applied = await vm.cli(["iptables", "apply"], env);
    expect(applied.stderr).toContain("SSH is never captured");
    expect(applied).toMatchObject({ code: 0 });
    expect(applied.stdout).toContain(`IPv4 (iptables-${backend}-restore): 16 rules applied`);
    // Inbound: a captured port arrives at the capture port with its original destination intact.
    expect(await connect(peer, VM, 8080)).toBe(`vm 15006 ${VM}:8080`);
    expect(await connect(peer, VM, 9090)).toBe(`vm 9090 ${VM}:9090`);
    // SSH is listed in ISTIO_INBOUND_PORTS but never captured.
    expect(await connect(peer, VM, 22)).toBe(`vm 22 ${VM}:22`);
    // Outbound: inside ISTIO_SERVICE_CIDR → Envoy's outbound port; outside → the real peer.
    expect(await connect(vm, SERVICE, 80)).toBe(`vm 15001 ${SERVICE}:80`);
    expect(await connect(vm, PEER, 80)).toBe(`peer 80 ${PEER}:80`);
    // The proxy's own traffic (uid and gid of ENVOY_USER) is not captured; root's is (above).
    expect(await connect(vm, SERVICE, 80, NOBODY)).toBe(`peer 80 ${SERVICE}:80`);
  });

  test("show --json says the kernel matches the plan; a tampered rule makes it exit 1", async () => {
    const { vm } = w();
    const shown = await vm.cli(["iptables", "show", "--json"], env);
    expect(shown).toMatchObject({ code: 0, stderr: "" });
    const report = JSON.parse(shown.stdout) as { matches: boolean; families: { family: number; rules: string[] }[] };
    expect(report.matches).toBe(true);
    expect(report.families.find((f) => f.family === 4)?.rules).toContain(
      "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
    );
    await vm.must(`iptables-${backend}`, [
      "-t",
      "nat",
      "-D",
      "ISTIO_INBOUND",
      "-p",
      "tcp",
      "--dport",
      "8080",
      "-j",
      "ISTIO_IN_REDIRECT",
    ]);
    const tampered = await vm.cli(["iptables", "show"], env);
    expect(tampered.code).toBe(1);
    expect(tampered.stdout).toContain("missing     -A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT");
    // apply repairs it.
    expect((await vm.cli(["iptables", "apply"], env)).stdout).toContain("16 rules applied");
    expect(await vm.cli(["iptables", "show"], env)).toMatchObject({ code: 0, stderr: "" });
  });

  test("applying twice gives the same iptables-save, with or without --force", async () => {
    const { vm } = w();
    const once = await vm.natSave(backend);
    const again = await vm.cli(["iptables", "apply"], env);
    expect(again.stdout).toContain("already in place, 16 rules");
    expect(await vm.natSave(backend)).toBe(once);
    await vm.cli(["iptables", "apply", "--force"], env);
    await vm.cli(["iptables", "apply", "--force"], env);
    expect(await vm.natSave(backend)).toBe(once);
  });

  test("a failing restore leaves the previous rules exactly as they were", async () => {
    const { vm, peer } = w();
    const before = await vm.natSave(backend);
    const good = await planFor(environment(backend, { ISTIO_INBOUND_PORTS: "9090" }));
    const table = good.families[0]?.tables[0];
    if (table === undefined) throw new Error("no IPv4 plan");
    const bad: InterceptionPlan = {
      ...good,
      families: [
        {
          family: 4,
          tables: [{ ...table, rules: [...table.rules, { chain: "ISTIO_INBOUND", spec: "-p tcp -j NO_SUCH_CHAIN" }] }],
        },
      ],
    };
    await expect(applyInterception({ runner: vm.runner(), choice: backend }, bad)).rejects.toMatchObject({
      code: "IPTABLES_RESTORE_FAILED",
    });
    expect(await vm.natSave(backend)).toBe(before);
    expect(await connect(peer, VM, 8080)).toBe(`vm 15006 ${VM}:8080`);
    expect(await connect(peer, VM, 9090)).toBe(`vm 9090 ${VM}:9090`);
  });

  test("clean (CLI, no configuration at all) restores every path, and a second clean has nothing to do", async () => {
    const { vm, peer } = w();
    const cleaned = await vm.cli(["iptables", "clean"], {});
    expect(cleaned.code).toBe(0);
    expect(cleaned.stdout).toMatch(
      /removed 2 jump\(s\) and chain\(s\) ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT/,
    );
    expect(await vm.natSave(backend)).not.toContain("ISTIO");
    expect(await connect(peer, VM, 8080)).toBe(`vm 8080 ${VM}:8080`);
    expect(await connect(vm, SERVICE, 80)).toBe(`peer 80 ${SERVICE}:80`);
    const again = await vm.cli(["iptables", "clean"], {});
    expect(again).toMatchObject({ code: 0, stdout: "nothing to clean: no istio-vm rules in the kernel\n" });
  });

  test("clean removes exactly ours: a foreign chain and its rules survive apply and clean", async () => {
    const { vm } = w();
    const ipt = `iptables-${backend}`;
    await vm.must(ipt, ["-t", "nat", "-N", "DOCKER"]);
    await vm.must(ipt, ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"]);
    await vm.must(ipt, ["-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "DOCKER"]);
    await vm.must(ipt, ["-t", "nat", "-A", "DOCKER", "-p", "tcp", "--dport", "5555", "-j", "RETURN"]);
    await vm.must(ipt, ["-t", "nat", "-A", "POSTROUTING", "-o", "v0", "-j", "MASQUERADE"]);
    const foreign = await vm.natSave(backend);
    expect((await vm.cli(["iptables", "apply"], env)).code).toBe(0);
    const withOurs = await vm.natSave(backend);
    for (const line of foreign.split("\n").filter((l) => l.startsWith("-A"))) expect(withOurs).toContain(line);
    expect((await vm.cli(["iptables", "clean"], {})).code).toBe(0);
    expect(await vm.natSave(backend)).toBe(foreign);
    await vm.must(ipt, ["-t", "nat", "-F"]);
    await vm.must(ipt, ["-t", "nat", "-X", "DOCKER"]);
  });

  test("legacy profile: `*` inbound with exclusions, both to the one capture port", async () => {
    const { vm, peer } = w();
    const legacy = environment(backend, {
      ISTIO_CONTROL_PLANE: "legacy",
      ISTIO_INBOUND_PORTS: "*",
      ISTIO_INBOUND_EXCLUDE_PORTS: "9090",
    });
    expect((await vm.cli(["iptables", "apply"], legacy)).code).toBe(0);
    expect(await connect(peer, VM, 8080)).toBe(`vm 15001 ${VM}:8080`);
    expect(await connect(peer, VM, 9090)).toBe(`vm 9090 ${VM}:9090`);
    expect(await connect(peer, VM, 22)).toBe(`vm 22 ${VM}:22`);
    expect(await connect(vm, SERVICE, 80)).toBe(`vm 15001 ${SERVICE}:80`);
    expect(await connect(vm, SERVICE, 80, NOBODY)).toBe(`peer 80 ${SERVICE}:80`);
    // Switching profile back re-plans in one restore: legacy-only rules gone, istiod's in place.
    expect((await vm.cli(["iptables", "apply"], env)).stdout).toContain("16 rules applied");
    expect((await vm.cli(["iptables", "show"], env)).code).toBe(0);
    expect(await connect(peer, VM, 9090)).toBe(`vm 9090 ${VM}:9090`);
    expect((await vm.cli(["iptables", "clean"], {})).code).toBe(0);
  });
});

describe.skipIf(missing !== undefined)("`istio-vm agent` (interception only) and the unit's stop paths", () => {
  let world: World | undefined;
  let root = "";

  beforeAll(async () => {
    world = await makeWorld();
    // The agent needs a cluster.env; ISTIO_VM_ROOT relocates it and /etc/passwd.
    root = await mkdtemp(join(tmpdir(), "iptv-agent-"));
    await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
    await mkdir(join(root, "etc"), { recursive: true });
    await writeFile(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.251.7.0/24\n");
    await writeFile(join(root, "var/lib/istio/envoy/sidecar.env"), `ISTIO_INBOUND_PORTS=8080\nISTIO_SVC_IP=${VM}\n`);
    await writeFile(join(root, "etc/passwd"), "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
  });
  afterAll(async () => {
    await destroyWorld(world);
    if (root !== "") await rm(root, { recursive: true, force: true });
  });

  /** Starts the built agent inside the vm namespace and resolves once it logged "agent ready". */
  async function startAgent(vm: Namespace): Promise<ChildProcessWithoutNullStreams> {
    const child = spawn("ip", ["netns", "exec", vm.name, process.execPath, cliPath(), "agent"], {
      env: {
        PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin",
        ISTIO_VM_ROOT: root,
        ENVOY_USER: "nobody",
        ISTIO_AGENT_COMPONENTS: "interception",
      },
    });
    await new Promise<void>((resolve, reject) => {
      let output = "";
      const seen = (d: Buffer): void => {
        output += d.toString();
        if (output.includes("agent ready")) resolve();
      };
      child.stdout.on("data", seen);
      child.stderr.on("data", seen);
      child.on("exit", (code) => {
        reject(new Error(`agent exited (${code}): ${output}`));
      });
    });
    return child;
  }

  async function exitOf(child: ChildProcessWithoutNullStreams, signal: NodeJS.Signals): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => {
        resolve(code);
      }),
    );
    child.kill(signal);
    return exited;
  }

  test("the agent captures once ready and removes every rule on SIGTERM", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm, peer } = world;
    const agent = await startAgent(vm);
    expect(await connect(peer, VM, 8080)).toBe(`vm 15006 ${VM}:8080`);
    expect(await connect(vm, SERVICE, 80)).toBe(`vm 15001 ${SERVICE}:80`);
    expect(await exitOf(agent, "SIGTERM")).toBe(0);
    expect(await vm.natSave("nft")).not.toContain("ISTIO");
    expect(await connect(peer, VM, 8080)).toBe(`vm 8080 ${VM}:8080`);
    expect(await connect(vm, SERVICE, 80)).toBe(`peer 80 ${SERVICE}:80`);
  });

  test("kill -9 leaves the rules capturing; `istio-vm iptables clean` (ExecStopPost) then leaves none", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm, peer } = world;
    const agent = await startAgent(vm);
    expect(await exitOf(agent, "SIGKILL")).toBe(null);
    // SIGKILL skipped the component's stop: the rules are still there, and still capturing.
    expect(await vm.natSave("nft")).toContain("ISTIO_INBOUND");
    expect(await connect(peer, VM, 8080)).toBe(`vm 15006 ${VM}:8080`);
    // ExecStopPost=+/usr/bin/istio-vm iptables clean: no configuration needed.
    const cleaned = await vm.cli(["iptables", "clean"], {});
    expect(cleaned.code).toBe(0);
    for (const family of [4, 6] as const) {
      for (const b of ["nft", "legacy"] as const) {
        const save = await vm.exec(`${family === 4 ? "iptables" : "ip6tables"}-${b}-save`, []);
        expect(save.stdout).not.toMatch(/ISTIO|istio-vm/);
      }
    }
    expect(await connect(peer, VM, 8080)).toBe(`vm 8080 ${VM}:8080`);
  });
});

describe.skipIf(missing !== undefined)("back-end detection and IPv6", () => {
  let world: World | undefined;
  beforeAll(async () => {
    world = await makeWorld();
  });
  afterAll(async () => {
    await destroyWorld(world);
  });

  test("auto picks legacy when iptables-legacy holds rules, and moves our rules out of nft", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm } = world;
    const auto = environment("nft", { FORCE_IPTABLES_BINARY: "auto" });
    expect((await vm.cli(["iptables", "apply"], auto)).stdout).toContain("iptables-nft-restore");
    await vm.must("iptables-legacy", ["-t", "nat", "-A", "POSTROUTING", "-o", "v0", "-j", "MASQUERADE"]);
    const moved = await vm.cli(["iptables", "apply"], auto);
    expect(moved.stdout).toContain(
      "IPv4 (iptables-legacy-restore): 16 rules applied; removed old rules of ours from nft",
    );
    expect(await vm.natSave("nft")).not.toContain("ISTIO");
    expect(await vm.natSave("legacy")).toContain("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT");
    expect((await vm.cli(["iptables", "clean"], {})).code).toBe(0);
    expect(await vm.natSave("legacy")).toContain("-A POSTROUTING -o v0 -j MASQUERADE");
    expect(await vm.natSave("legacy")).not.toContain("ISTIO");
    await vm.must("iptables-legacy", ["-t", "nat", "-F", "POSTROUTING"]);
  });

  test("as the proxy user with only CAP_NET_ADMIN and CAP_NET_RAW (how the agent runs): nft; without them: an error", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm, peer } = world;
    const caps = ["--inh-caps=+net_admin,+net_raw", "--ambient-caps=+net_admin,+net_raw"];
    const asNobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    const auto = environment("nft", { FORCE_IPTABLES_BINARY: "auto" });
    const applied = await vm.cli(["iptables", "apply"], auto, [...asNobody, ...caps]);
    expect(applied.stdout).toContain("IPv4 (iptables-nft-restore): 16 rules applied");
    expect(await connect(peer, VM, 8080)).toBe(`vm 15006 ${VM}:8080`);
    const refused = await vm.cli(["iptables", "clean"], {}, asNobody);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/cannot read the IPv4 rules: .*Permission denied/);
    expect(refused.stderr).toContain("hint: run as root");
    expect(await vm.natSave("nft")).toContain("ISTIO_INBOUND");
    expect((await vm.cli(["iptables", "clean"], {}, [...asNobody, ...caps])).code).toBe(0);
    expect(await vm.natSave("nft")).not.toContain("ISTIO");
  });

  test("CIDRs written in any form are planned exactly as iptables-save prints them (show matches)", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm } = world;
    const env = environment("nft", {
      ISTIO_SERVICE_CIDR: "10.96.0.0/12,0.0.0.0/0,FD00:0:0:0:0:0:0:0/64,2001:DB8:0:0:1::/80,::ffff:10.0.0.0/104",
      ISTIO_SERVICE_EXCLUDE_CIDR: "10.96.0.10,fd00::a",
    });
    expect((await vm.cli(["iptables", "apply"], env)).code).toBe(0);
    const shown = await vm.cli(["iptables", "show"], env);
    expect(shown).toMatchObject({ code: 0 });
    expect(shown.stdout).toContain("-A ISTIO_OUTPUT -d 2001:db8:0:0:1::/80 -j ISTIO_REDIRECT");
    expect(shown.stdout).toContain("-A ISTIO_OUTPUT -d fd00::a/128 -j RETURN");
    expect((await vm.cli(["iptables", "clean"], {})).code).toBe(0);
  });

  test("ENABLE_INBOUND_IPV6 captures IPv6 inbound; the IPv6 filter table (INPUT) is never touched", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const { vm, peer } = world;
    const v6 = await Namespace.create();
    const v6peer = await Namespace.create();
    const listeners: Listener[] = [];
    try {
      await link(v6, "fd00:250::1/64", v6peer, "fd00:250::2/64");
      listeners.push(await listen(v6, "vm", [":::15006", ":::8080"]));
      await v6.must("ip6tables-nft", ["-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"]);
      const filterBefore = await v6.must("ip6tables-nft-save", ["-t", "filter"]);
      const env = environment("nft", { ENABLE_INBOUND_IPV6: "true", ISTIO_SERVICE_CIDR: "" });
      const applied = await v6.cli(["iptables", "apply"], env);
      expect(applied).toMatchObject({
        code: 0,
        stdout: expect.stringContaining("IPv6 (ip6tables-nft-restore): 5 rules applied") as unknown,
      });
      expect(await connect(v6peer, "fd00:250::1", 8080)).toBe("vm 15006 fd00:250::1:8080");
      const strip = (s: string): string => s.replace(/^#.*$/gm, "");
      expect(strip(await v6.must("ip6tables-nft-save", ["-t", "filter"]))).toBe(strip(filterBefore));
      expect((await v6.cli(["iptables", "clean"], {})).code).toBe(0);
      expect(await v6.natSave("nft", 6)).not.toContain("ISTIO");
      expect(await connect(v6peer, "fd00:250::1", 8080)).toBe("vm 8080 fd00:250::1:8080");
    } finally {
      for (const l of listeners) l.stop();
      await v6.destroy();
      await v6peer.destroy();
    }
    // The IPv4 world was not involved.
    expect(await connect(peer, VM, 8080)).toBe(`vm 8080 ${VM}:8080`);
    expect(await vm.natSave("nft")).not.toContain("ISTIO");
  });
});
