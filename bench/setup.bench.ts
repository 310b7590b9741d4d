/**
 * Issue 8's and 14's numbers: wall time of `istio-vm setup` (the built CLI, real scp + ssh) for 1, 5 and 20 hosts,
 * each host an sshd in its own network namespace (test/integration/provision-fleet.ts), --parallel 20. Each case runs
 * with the shared connection per host (the default) and, as the baseline in the same run, with --no-multiplex (a
 * new SSH connection per step, as before); runs are interleaved and medians reported. The ratio to one host is the
 * figure to judge (goal: 20 hosts ≤ 3× one host). The note splits the CPU time: the admin side (the CLI with its ssh
 * and scp clients, from this process's reaped children) and the hosts' side (every sshd with its per-connection
 * children). On this machine both sides share the same 2 cores, which a real fleet does not.
 *
 * Two more rows copy a bundle with a 28 MB .deb (random bytes: as incompressible as a real package) to 20 hosts whose
 * dpkg (a stand-in in the sessions' PATH) has that version, and to 20 hosts that lack it.
 * Needs root, ip, sshd, dpkg-deb.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Fleet } from "../test/integration/provision-fleet.js";
import { run, startFleet } from "../test/integration/provision-fleet.js";

const RUNS = 3;
const TABLE = "setup over SSH";

function row(fields: { case: string; value: string; baseline?: string; ratio?: string; note?: string }): void {
  process.stdout.write(`${JSON.stringify({ table: TABLE, ...fields })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/** utime + stime + cutime + cstime of a process, in seconds (clock ticks of 10 ms). */
function cpuSeconds(pid: number | "self", children: boolean): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14–17 of proc(5) are 11–14 here (the list starts at field 3).
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]));
  return (children ? (cutime ?? 0) + (cstime ?? 0) : (utime ?? 0) + (stime ?? 0) + (cutime ?? 0) + (cstime ?? 0)) / 100;
}

function hostsCpu(fleet: Fleet): number {
  return fleet.sshd.reduce((sum, s) => sum + (s.pid === undefined ? 0 : cpuSeconds(s.pid, false)), 0);
}

const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

async function main(): Promise<void> {
  const bin = `/tmp/istio-vm-bench-setup-${randomBytes(4).toString("hex")}`;
  await mkdir(bin, { recursive: true });
  const state = join(bin, "installed");
  // The hosts' dpkg-query: "has 0.1.0-bench" while the state file says so.
  await writeFile(
    join(bin, "dpkg-query"),
    `#!/bin/sh\nif [ -e ${state} ]; then printf 'install ok installed\\t0.1.0-bench\\n'; else exit 1; fi\n`,
  );
  await chmod(join(bin, "dpkg-query"), 0o755);
  const fleet = await startFleet({ size: 20, sshdExtra: [`SetEnv PATH=${bin}:/usr/sbin:/usr/bin:/sbin:/bin`] });
  try {
    const from = join(fleet.dir, "from");
    await mkdir(from);
    await writeFile(join(from, "cluster.env"), "ISTIO_CONTROL_PLANE=legacy\nISTIO_SERVICE_CIDR=10.96.0.0/12\n");
    await writeFile(join(from, "kubedns"), "server=/svc.cluster.local/10.128.0.6\n");
    for (const f of ["root-cert.pem", "cert-chain.pem", "key.pem"]) await writeFile(join(from, f), `${f}\n`);
    const bundle = join(fleet.dir, "b.tgz");
    const made = await fleet.cli(["bundle", "--from", from, "--no-deb", "-o", bundle]);
    if (made.code !== 0) throw new Error(made.stderr);

    const timeSetup = async (
      hosts: readonly string[],
      options: { bundle: string; multiplex: boolean; kex?: string },
    ): Promise<{ ms: number; admin: number; vms: number }> => {
      const kex = options.kex === undefined ? "" : ` -o KexAlgorithms=${options.kex}`;
      const admin0 = cpuSeconds("self", true);
      const vms0 = hostsCpu(fleet);
      const started = performance.now();
      const result = await fleet.cli(
        [
          "setup",
          ...hosts,
          "--bundle",
          options.bundle,
          "--ssh",
          fleet.ssh + kex,
          "--scp",
          fleet.scp + kex,
          "--parallel",
          "20",
          "--remote-command",
          "true",
          ...(options.multiplex ? [] : ["--no-multiplex"]),
        ],
        { timeoutMs: 600_000 },
      );
      const ms = performance.now() - started;
      if (result.code !== 0) throw new Error(`setup failed:\n${result.stdout}\n${result.stderr}`);
      return { ms, admin: cpuSeconds("self", true) - admin0, vms: hostsCpu(fleet) - vms0 };
    };

    const sizes = [1, 5, 20] as const;
    const measured = new Map<string, { ms: number[]; admin: number[]; vms: number[] }>();
    const record = (key: string, m: { ms: number; admin: number; vms: number }): void => {
      const entry = measured.get(key) ?? { ms: [], admin: [], vms: [] };
      entry.ms.push(m.ms);
      entry.admin.push(m.admin);
      entry.vms.push(m.vms);
      measured.set(key, entry);
    };
    for (let i = 0; i < RUNS; i++) {
      for (const n of sizes) {
        for (const multiplex of [true, false]) {
          record(`${n}/${String(multiplex)}`, await timeSetup(fleet.hosts.slice(0, n), { bundle, multiplex }));
        }
      }
    }
    const get = (n: number, multiplex: boolean): { ms: number; admin: number; vms: number } => {
      const entry = measured.get(`${n}/${String(multiplex)}`);
      return { ms: median(entry?.ms ?? []), admin: median(entry?.admin ?? []), vms: median(entry?.vms ?? []) };
    };
    for (const n of sizes) {
      const a = get(n, true);
      const b = get(n, false);
      row({
        case: `${n} host${n === 1 ? "" : "s"}, shared connection per host vs --no-multiplex (remote \`true\`)`,
        value: s(a.ms),
        baseline: s(b.ms),
        ratio: `${(a.ms / b.ms).toFixed(2)}×`,
        note:
          `median of ${RUNS}, CLI start included; CPU admin side ${a.admin.toFixed(2)} s vs ${b.admin.toFixed(2)} s, ` +
          `hosts' sshd ${a.vms.toFixed(2)} s vs ${b.vms.toFixed(2)} s`,
      });
    }
    for (const n of [5, 20]) {
      const one = get(1, true);
      const many = get(n, true);
      const before = get(n, false).ms / get(1, false).ms;
      row({
        case: `${n} hosts ÷ 1 host, shared connection (baseline: --no-multiplex)`,
        value: `${(many.ms / one.ms).toFixed(1)}×`,
        baseline: `${before.toFixed(1)}×`,
        note: n === 20 ? "goal ≤ 3×; 20× would be no parallelism" : "",
      });
    }

    // What one SSH key exchange costs the admin side: OpenSSH 9's default, sntrup761x25519-sha512 (post-quantum),
    // against curve25519-sha256 alone, which the user can choose with --ssh/--scp "… -o KexAlgorithms=…".
    const classic = { one: [] as number[], twenty: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      const kex = "curve25519-sha256";
      classic.one.push((await timeSetup(fleet.hosts.slice(0, 1), { bundle, multiplex: true, kex })).ms);
      classic.twenty.push((await timeSetup(fleet.hosts, { bundle, multiplex: true, kex })).ms);
    }
    row({
      case: "20 hosts ÷ 1 host, shared connection, KexAlgorithms=curve25519-sha256 (baseline: the default kex)",
      value: `${(median(classic.twenty) / median(classic.one)).toFixed(1)}×`,
      baseline: `${(get(20, true).ms / get(1, true).ms).toFixed(1)}×`,
      note:
        `${s(median(classic.one))} and ${s(median(classic.twenty))}; the default post-quantum key exchange costs the ` +
        "client ~60 ms of CPU per connection, curve25519 ~9 ms",
    });

    // A bundle with a package of the real one's size, to hosts that have its version and to hosts that lack it.
    const pkg = join(fleet.dir, "pkg");
    await mkdir(join(pkg, "DEBIAN"), { recursive: true });
    await mkdir(join(pkg, "usr", "lib", "istio-vm-bench"), { recursive: true });
    await writeFile(
      join(pkg, "DEBIAN", "control"),
      "Package: istio-vm-agent\nVersion: 0.1.0-bench\nArchitecture: amd64\nMaintainer: bench <b@example.org>\nDescription: bench\n",
    );
    await writeFile(join(pkg, "usr", "lib", "istio-vm-bench", "payload"), randomBytes(28 * 1024 * 1024));
    const deb = join(fleet.dir, "istio-vm-agent_0.1.0-bench_amd64.deb");
    const built = await run("dpkg-deb", ["-Znone", "--root-owner-group", "--build", pkg, deb], 120_000);
    if (built.code !== 0) throw new Error(built.stderr);
    const withDeb = join(fleet.dir, "deb.tgz");
    const bundleStarted = performance.now();
    const madeDeb = await fleet.cli(["bundle", "--from", from, "--deb", deb, "-o", withDeb]);
    const bundleMs = performance.now() - bundleStarted;
    if (madeDeb.code !== 0) throw new Error(madeDeb.stderr);
    const have: number[] = [];
    const lack: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      await writeFile(state, "");
      have.push((await timeSetup(fleet.hosts, { bundle: withDeb, multiplex: true })).ms);
      await run("rm", ["-f", state]);
      lack.push((await timeSetup(fleet.hosts, { bundle: withDeb, multiplex: true })).ms);
    }
    row({
      case: "20 hosts, bundle with a 28 MB .deb: hosts have its version (no .deb copied) vs hosts lack it",
      value: s(median(have)),
      baseline: s(median(lack)),
      ratio: `${(median(have) / median(lack)).toFixed(2)}×`,
      note: `median of ${RUNS}; making that bundle (the .deb stored, not deflated again) took ${s(bundleMs)}`,
    });
  } finally {
    await fleet.dispose();
    await run("rm", ["-rf", bin]);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
