/**
 * Issue 8's number: wall time of `istio-vm setup` (the built CLI, a real scp + ssh per host) for 1 and for 20 hosts,
 * each host an sshd in its own network namespace (test/integration/provision-fleet.ts), remote command `true`,
 * --parallel 20. The 20-host run should take well under 20 times the 1-host run; the bench prints both and the
 * ratio, and exits 1 when the ratio reaches 20 (no parallelism at all). Needs root, ip, sshd.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startFleet } from "../test/integration/provision-fleet.js";

const RUNS = 3;

function row(table: string, name: string, value: string, note?: string): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...(note === undefined ? {} : { note }) })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

const fleet = await startFleet({ size: 20 });
try {
  const from = join(fleet.dir, "from");
  await mkdir(from);
  await writeFile(join(from, "cluster.env"), "ISTIO_CONTROL_PLANE=legacy\nISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  await writeFile(join(from, "kubedns"), "server=/svc.cluster.local/10.128.0.6\n");
  for (const f of ["root-cert.pem", "cert-chain.pem", "key.pem"]) await writeFile(join(from, f), `${f}\n`);
  const bundle = join(fleet.dir, "b.tgz");
  const made = await fleet.cli(["bundle", "--from", from, "--no-deb", "-o", bundle]);
  if (made.code !== 0) throw new Error(made.stderr);

  const timeSetup = async (hosts: readonly string[]): Promise<number> => {
    const started = performance.now();
    const result = await fleet.cli(
      [
        "setup",
        ...hosts,
        "--bundle",
        bundle,
        "--ssh",
        fleet.ssh,
        "--scp",
        fleet.scp,
        "--parallel",
        "20",
        "--remote-command",
        "true",
      ],
      { timeoutMs: 600_000 },
    );
    const elapsed = performance.now() - started;
    if (result.code !== 0) throw new Error(`setup failed:\n${result.stdout}\n${result.stderr}`);
    return elapsed;
  };
  const one: number[] = [];
  const twenty: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    one.push(await timeSetup(fleet.hosts.slice(0, 1)));
    twenty.push(await timeSetup(fleet.hosts));
  }
  const a = median(one);
  const b = median(twenty);
  const ratio = b / a;
  row(
    "setup over SSH",
    "1 host (scp + ssh, remote `true`)",
    `${(a / 1000).toFixed(2)} s`,
    `median of ${RUNS}, CLI start included`,
  );
  row("setup over SSH", "20 hosts, --parallel 20", `${(b / 1000).toFixed(2)} s`, `median of ${RUNS}`);
  row("setup over SSH", "20 hosts ÷ 1 host", `${ratio.toFixed(1)}×`, "20× would be no parallelism");
  if (ratio >= 20) process.exitCode = 1;
} finally {
  await fleet.dispose();
}
