/**
 * DNS capture in the real kernel, inside network namespaces this test creates: "vm" (the rules, the agent's DNS proxy,
 * the applications) and "upstream" (dnsmasq, the VM's resolver from resolv.conf), joined by a veth pair with
 * 10.250.9.0/30 and fd00:9::/64. Never in the machine's namespace.
 *
 * The agent runs as the unit runs it: as the proxy user (here `nobody`) with CAP_NET_ADMIN and CAP_NET_RAW only, the
 * `dns` and `interception` components, its name table loaded from disk (istiod is unreachable). Applications are
 * uid 1000 running `host` against the nameserver resolv.conf lists, as the C library would.
 */
import type { ChildProcess, ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { encodeStoredTable } from "../../src/dns/table-store.js";
import { requirements } from "../support/requirements.js";
import { Namespace, cliPath, link, pinCli, unpinCli } from "./iptables-netns.js";

const missing = requirements({
  root: true,
  tools: [
    "ip",
    "setpriv",
    "dnsmasq",
    "host",
    "iptables-nft-restore",
    "iptables-legacy-restore",
    "ip6tables-nft-restore",
  ],
});

const VM4 = "10.250.9.1";
const NS4 = "10.250.9.2";
const VM6 = "fd00:9::1";
const NS6 = "fd00:9::2";
const APP = { uid: 1000, gid: 1000 };
const PROXY = { uid: 65534, gid: 65534 };
const MESH_NAME = "reviews.bookinfo.svc.cluster.local";

beforeAll(async () => {
  if (missing === undefined) await pinCli();
});
afterAll(async () => {
  await unpinCli();
});

interface World {
  readonly vm: Namespace;
  readonly upstream: Namespace;
  readonly root: string;
  readonly queryLog: string;
  dnsmasq?: ChildProcess;
}

async function makeWorld(): Promise<World> {
  const vm = await Namespace.create();
  const upstream = await Namespace.create().catch(async (error: unknown) => {
    await vm.destroy();
    throw error;
  });
  const root = await mkdtemp(join(tmpdir(), "dnscap-"));
  const world: World = { vm, upstream, root, queryLog: join(root, "dnsmasq.log") };
  try {
    await link(vm, `${VM4}/30`, upstream, `${NS4}/30`);
    await vm.must("ip", ["addr", "add", `${VM6}/64`, "dev", "v0", "nodad"]);
    await upstream.must("ip", ["addr", "add", `${NS6}/64`, "dev", "v1", "nodad"]);
    // The agent (nobody) reads its configuration under ISTIO_VM_ROOT and writes nothing there but its table.
    await chmod(root, 0o755);
    await mkdir(join(root, "etc"), { recursive: true });
    await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
    await mkdir(join(root, "var/lib/istio/nds"), { recursive: true });
    await writeFile(join(root, "etc/passwd"), "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    await writeFile(
      join(root, "etc/resolv.conf"),
      `nameserver ${NS4}\nnameserver ${NS6}\nsearch bookinfo.svc.cluster.local svc.cluster.local cluster.local\n`,
    );
    await writeFile(
      join(root, "var/lib/istio/envoy/cluster.env"),
      // Nothing but DNS is captured: no inbound ports, no service CIDRs.
      "ISTIO_META_DNS_CAPTURE=true\nPOD_NAMESPACE=bookinfo\nCONTROL_PLANE_AUTH_POLICY=NONE\n" +
        `DISCOVERY_ADDRESS=${NS4}:15010\n`,
    );
    await writeFile(join(root, "var/lib/istio/envoy/sidecar.env"), `ISTIO_SVC_IP=${VM4}\nSTATUS_PORT=15020\n`);
    // The name table a previous run persisted: istiod is unreachable in this test, so this is what mesh names use.
    await writeFile(
      join(root, "var/lib/istio/nds/name-table.json"),
      encodeStoredTable({
        table: { [MESH_NAME]: { ips: ["10.96.0.10", "fd00::10"], shortname: "reviews", namespace: "bookinfo" } },
        receivedAt: Date.now(),
      }),
    );
    await startDnsmasq(world);
  } catch (error) {
    await destroyWorld(world);
    throw error;
  }
  return world;
}

async function startDnsmasq(world: World): Promise<void> {
  world.dnsmasq = spawn(
    "ip",
    [
      "netns",
      "exec",
      world.upstream.name,
      "dnsmasq",
      "--keep-in-foreground",
      "--no-resolv",
      "--no-hosts",
      `--listen-address=${NS4},${NS6}`,
      "--bind-interfaces",
      "--user=root",
      "--pid-file=",
      "--log-queries",
      `--log-facility=${world.queryLog}`,
      "--local-ttl=77",
      "--host-record=www.upstream.test,192.0.2.55,2001:db8::55",
      // The upstream knows another address for the mesh name: 10.96.0.10 can only have come from the proxy's table.
      `--host-record=${MESH_NAME},10.255.0.1,fd00::ff`,
      "--local=/upstream.test/",
    ],
    { stdio: "ignore" },
  );
  for (let i = 0; i < 50; i++) {
    if ((await lookup(world.vm, ["www.upstream.test", NS4])).includes("192.0.2.55")) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error("dnsmasq did not start answering");
}

async function destroyWorld(world: World | undefined): Promise<void> {
  if (world === undefined) return;
  await world.vm.destroy();
  await world.upstream.destroy();
  await rm(world.root, { recursive: true, force: true });
}

/** `host` inside `ns`, as root or as `as` (through setpriv); its stdout, or the error it printed. */
async function lookup(ns: Namespace, args: readonly string[], as?: { uid: number; gid: number }): Promise<string> {
  const host = ["host", "-W", "3", ...args];
  const command =
    as === undefined ? host : ["setpriv", `--reuid=${as.uid}`, `--regid=${as.gid}`, "--clear-groups", ...host];
  const [first, ...rest] = command;
  const r = await ns.exec(first ?? "", rest);
  return `${r.stdout}${r.stderr}`;
}

/** Every query dnsmasq logged, as `<type> <name> from <address>`. */
async function upstreamQueries(world: World): Promise<string[]> {
  const text = await readFile(world.queryLog, "utf8").catch(() => "");
  return [...text.matchAll(/query\[(\w+)\] (\S+) from (\S+)/g)].map((m) => `${m[1]} ${m[2]} from ${m[3]}`);
}

function cliEnv(world: World, backend: "nft" | "legacy"): Record<string, string> {
  return { ISTIO_VM_ROOT: world.root, ENVOY_USER: "nobody", FORCE_IPTABLES_BINARY: backend };
}

async function saveAll(ns: Namespace): Promise<string> {
  let text = "";
  for (const tool of ["iptables", "ip6tables"]) {
    for (const backend of ["nft", "legacy"]) text += (await ns.exec(`${tool}-${backend}-save`, [])).stdout;
  }
  return text;
}

describe.skipIf(missing !== undefined)("DNS capture to the agent's DNS proxy", () => {
  let world: World | undefined;
  let agent: ChildProcessWithoutNullStreams | undefined;
  const w = (): World => {
    if (world === undefined) throw new Error("no namespaces");
    return world;
  };

  beforeAll(async () => {
    world = await makeWorld();
  });
  afterAll(async () => {
    if (agent?.exitCode === null) agent.kill("SIGKILL");
    await destroyWorld(world);
  });

  /** The built agent in the vm namespace as the proxy user with the unit's two capabilities, until it is ready. */
  async function startAgent(): Promise<ChildProcessWithoutNullStreams> {
    const { vm, root } = w();
    const caps = "+net_admin,+net_raw";
    const child = spawn(
      "ip",
      [
        "netns",
        "exec",
        vm.name,
        "setpriv",
        `--reuid=${PROXY.uid}`,
        `--regid=${PROXY.gid}`,
        "--clear-groups",
        `--inh-caps=${caps}`,
        `--ambient-caps=${caps}`,
        process.execPath,
        cliPath(),
        "agent",
      ],
      {
        env: {
          PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin",
          ISTIO_VM_ROOT: root,
          ENVOY_USER: "nobody",
          ISTIO_AGENT_COMPONENTS: "dns,interception",
        },
      },
    );
    await new Promise<void>((resolve, reject) => {
      let output = "";
      const seen = (d: Buffer): void => {
        output += d.toString();
        if (/agent ready|agent running, not ready/.test(output)) resolve();
      };
      child.stdout.on("data", seen);
      child.stderr.on("data", seen);
      child.on("exit", (code) => {
        reject(new Error(`agent exited (${code}): ${output}`));
      });
    });
    return child;
  }

  test("before the agent, an application's query reaches the nameserver in resolv.conf", async () => {
    const { vm } = w();
    expect(await lookup(vm, ["-t", "A", MESH_NAME, NS4], APP)).toContain("has address 10.255.0.1");
  });

  test("with the agent, the application's queries to the nameserver are answered by the proxy", async () => {
    const { vm } = w();
    agent = await startAgent();
    // UDP and TCP, the full name and a search-list form: the answers come from the proxy's table.
    expect(await lookup(vm, ["-t", "A", MESH_NAME, NS4], APP)).toContain("has address 10.96.0.10");
    expect(await lookup(vm, ["-T", "-t", "A", MESH_NAME, NS4], APP)).toContain("has address 10.96.0.10");
    expect(await lookup(vm, ["-t", "A", "reviews.bookinfo", NS4], APP)).toContain("has address 10.96.0.10");
    // The IPv6 nameserver: ip6tables redirects to [::1]:15053, where the proxy listens because resolv.conf lists it.
    expect(await lookup(vm, ["-t", "AAAA", MESH_NAME, NS6], APP)).toContain("has IPv6 address fd00::10");
    expect(await lookup(vm, ["-T", "-t", "AAAA", MESH_NAME, NS6], APP)).toContain("has IPv6 address fd00::10");
    // Root is an application too: only the proxy user is exempt.
    expect(await lookup(vm, ["-t", "A", MESH_NAME, NS4])).toContain("has address 10.96.0.10");
  });

  test("a non-mesh name is forwarded once by the proxy, whose own query is not captured (no loop)", async () => {
    const world = w();
    const before = (await upstreamQueries(world)).length;
    const answer = await lookup(world.vm, ["-t", "A", "www.upstream.test", NS4], APP);
    expect(answer).toContain("has address 192.0.2.55");
    // dnsmasq saw it once per nameserver (the proxy asks all of resolv.conf's in parallel), from the VM: the proxy's
    // forwards reached the upstream instead of being redirected back to the proxy.
    expect((await upstreamQueries(world)).slice(before).sort()).toEqual([
      `A www.upstream.test from ${VM4}`,
      `A www.upstream.test from ${VM6}`,
    ]);
    // Conntrack keeps the two flows apart: the application's query, redirected to the proxy (its reply tuple comes
    // from 127.0.0.1:15053), in zone 2; the proxy's own query to the nameserver, and the nameserver's reply, in zone 1.
    const conntrack = (await world.vm.must("cat", ["/proc/net/nf_conntrack"])).split("\n");
    const udp53 = conntrack.filter((l) => / udp /.test(l) && l.includes(`dst=${NS4} `) && l.includes("dport=53 "));
    expect(udp53.some((l) => l.includes("src=127.0.0.1 dst=") && l.includes("sport=15053") && / zone=2 /.test(l))).toBe(
      true,
    );
    expect(udp53.some((l) => l.includes(`src=${NS4} dst=${VM4} sport=53 `) && / zone=1 /.test(l))).toBe(true);
    // The proxy user's own queries go straight to the nameserver.
    expect(await lookup(world.vm, ["-t", "A", MESH_NAME, NS4], PROXY)).toContain("has address 10.255.0.1");
  });

  test("`iptables show` finds the nat and raw rules as planned", async () => {
    const world = w();
    const shown = await world.vm.cli(["iptables", "show"], cliEnv(world, "nft"));
    expect(shown.stdout).toContain(`-t raw -A ISTIO_INBOUND -s ${NS4}/32 -p udp -m udp --sport 53 -j CT --zone 1`);
    expect(shown.stdout).toContain(
      `-A ISTIO_OUTPUT_DNS -d ${NS4}/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053`,
    );
    expect(shown.stdout).not.toContain("differs");
    expect(shown.code).toBe(0);
  });

  test("`istio-vm check --only dns` proves the capture, and fails once the rules are gone", async () => {
    const world = w();
    const env = { ISTIO_VM_ROOT: world.root, ENVOY_USER: "nobody" };
    const dnsResult = async (): Promise<{ ok: boolean; summary: string; details: string[]; code: number | null }> => {
      const r = await world.vm.cli(["check", "--only", "dns", "--json"], env);
      const parsed = JSON.parse(r.stdout) as {
        checks: { name: string; ok: boolean; summary: string; details: string[] }[];
      };
      const dns = parsed.checks.find((c) => c.name === "dns");
      if (dns === undefined) throw new Error(`no dns check in ${r.stdout}`);
      return { ...dns, code: r.code };
    };
    const before = await dnsResult();
    expect(before.ok, before.details.join("\n")).toBe(true);
    expect(before.details).toContainEqual(
      expect.stringMatching(new RegExp(`^ok {3}\\S+ at ${NS4.replace(/\./g, "\\.")}:53, as applications ask`)),
    );
    // Someone removes the rules under the running agent: the proxy still answers at 127.0.0.1, but not for apps.
    expect((await world.vm.cli(["iptables", "clean"], env)).code).toBe(0);
    const after = await dnsResult();
    expect(after.ok).toBe(false);
    expect(after.code).toBe(1);
    expect(after.summary).toContain(`queries to ${NS4}:53 do not reach the DNS proxy`);
    expect((await world.vm.cli(["iptables", "apply"], cliEnv(world, "nft"))).code).toBe(0);
    expect((await dnsResult()).ok).toBe(true);
  });

  test("kill -9 leaves the capture; `iptables clean` removes nat and raw rules in both families", async () => {
    const world = w();
    const exited = new Promise((resolve) => agent?.once("exit", resolve));
    agent?.kill("SIGKILL");
    await exited;
    expect(await saveAll(world.vm)).toContain("ISTIO_OUTPUT_DNS");
    const cleaned = await world.vm.cli(["iptables", "clean"], {});
    expect(cleaned.code).toBe(0);
    expect(await saveAll(world.vm)).not.toMatch(/ISTIO|istio-vm/);
    expect(await lookup(world.vm, ["-t", "A", MESH_NAME, NS4], APP)).toContain("has address 10.255.0.1");
  });
});

describe.skipIf(missing !== undefined).each(["nft", "legacy"] as const)("DNS rules in iptables-%s", (backend) => {
  let world: World | undefined;
  beforeAll(async () => {
    world = await makeWorld();
  });
  afterAll(async () => {
    await destroyWorld(world);
  });

  test("apply writes nat and raw in one restore per family, show matches, apply again is a no-op, clean empties", async () => {
    if (world === undefined) throw new Error("no namespaces");
    const env = cliEnv(world, backend);
    const applied = await world.vm.cli(["iptables", "apply"], env);
    expect(applied.stderr).not.toContain("error");
    expect(applied.code).toBe(0);
    expect(applied.stdout).toMatch(/IPv4 \(iptables-\w+-restore\): \d+ rules applied/);
    expect(applied.stdout).toMatch(/IPv6 \(ip6tables-\w+-restore\): \d+ rules applied/);
    const save = await world.vm.must(`ip6tables-${backend}-save`, ["-t", "raw"]);
    expect(save).toContain(`-A ISTIO_INBOUND -s ${NS6}/128 -p udp -m udp --sport 53 -j CT --zone 1`);
    expect((await world.vm.cli(["iptables", "show"], env)).code).toBe(0);
    expect((await world.vm.cli(["iptables", "apply"], env)).stdout).toContain("already in place");
    expect((await world.vm.cli(["iptables", "clean"], env)).code).toBe(0);
    expect(await saveAll(world.vm)).not.toMatch(/ISTIO|istio-vm/);
  });
});
