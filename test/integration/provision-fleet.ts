/**
 * A fleet of SSH "VMs" for `setup` tests and the benchmark: one client network namespace and N VM namespaces the
 * test creates, each VM joined to the client by its own veth pair (client 10.252.<i>.1, VM 10.252.<i>.2, addresses
 * only inside the namespaces), each running its own `sshd -D` with a per-fleet host key, authorized_keys and config
 * in a temp dir (root login with a per-fleet key only). sshd gets a private /run (a tmpfs in its own mount
 * namespace) for its privilege-separation directory, so nothing of the machine's /run or /etc/ssh is touched. The
 * CLI runs inside the client namespace. `dispose()` kills every sshd by PID, deletes the namespaces and the dir.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI } from "../support/cli.js";

export interface Fleet {
  readonly dir: string;
  readonly client: string;
  /** Host addresses, in order; hosts listed in `withoutSshd` have a namespace but nothing listening. */
  readonly hosts: readonly string[];
  /** ssh and scp command lines for --ssh/--scp (their own -F config with key and known_hosts). */
  readonly ssh: string;
  readonly scp: string;
  /** Each host's sshd: its PID (undefined for hosts without one) and what it logged so far (`-e`: to stderr). */
  readonly sshd: readonly { readonly pid: number | undefined; readonly log: () => string }[];
  /** Runs the built CLI inside the client namespace. */
  cli(args: readonly string[], options?: { env?: Record<string, string>; timeoutMs?: number }): Promise<CliOutput>;
  dispose(): Promise<void>;
}

export interface CliOutput {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export function run(cmd: string, args: readonly string[], timeoutMs = 60_000): Promise<CliOutput> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function must(cmd: string, args: readonly string[]): Promise<string> {
  const result = await run(cmd, args);
  if (result.code !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${String(result.code)}: ${result.stderr}`);
  return result.stdout;
}

export const FLEET_TOOLS = ["ip", "unshare", "ssh", "scp", "ssh-keygen", "/usr/sbin/sshd"] as const;

export async function startFleet(options: {
  size: number;
  withoutSshd?: readonly number[];
  /** Extra sshd_config lines (e.g. SetEnv PATH=…). */
  sshdExtra?: readonly string[];
}): Promise<Fleet> {
  const tag = randomBytes(3).toString("hex");
  const dir = await mkdtemp(join(tmpdir(), "istio-vm-fleet-"));
  const client = `prov-${tag}-c`;
  const namespaces: string[] = [];
  const daemons: ChildProcess[] = [];
  const hosts: string[] = [];
  const sshd: { pid: number | undefined; log: () => string }[] = [];
  const dispose = async (): Promise<void> => {
    for (const d of daemons) {
      if (d.exitCode === null && d.signalCode === null && d.pid !== undefined) {
        const exited = new Promise((resolve) => d.once("close", resolve));
        process.kill(d.pid, "SIGTERM");
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 3000))]);
      }
    }
    for (const ns of namespaces) await run("ip", ["netns", "del", ns]);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await must("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "fleet-client", "-f", join(dir, "client_key")]);
    await must("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "fleet-host", "-f", join(dir, "host_key")]);
    await writeFile(join(dir, "authorized_keys"), await readFile(join(dir, "client_key.pub")), { mode: 0o600 });
    const hostPub = (await readFile(join(dir, "host_key.pub"), "utf8")).trim().split(" ").slice(0, 2).join(" ");
    await must("ip", ["netns", "add", client]);
    namespaces.push(client);
    await must("ip", ["-n", client, "link", "set", "lo", "up"]);
    const known: string[] = [];
    const ready: Promise<void>[] = [];
    for (let i = 1; i <= options.size; i++) {
      const ns = `prov-${tag}-${i}`;
      const address = `10.252.${i}.2`;
      await must("ip", ["netns", "add", ns]);
      namespaces.push(ns);
      const a = `pv${tag}${i}a`.slice(0, 15);
      const b = `pv${tag}${i}b`.slice(0, 15);
      await must("ip", ["-n", client, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns]);
      await must("ip", ["-n", client, "addr", "add", `10.252.${i}.1/24`, "dev", a]);
      await must("ip", ["-n", client, "link", "set", a, "up"]);
      await must("ip", ["-n", ns, "addr", "add", `${address}/24`, "dev", b]);
      await must("ip", ["-n", ns, "link", "set", b, "up"]);
      await must("ip", ["-n", ns, "link", "set", "lo", "up"]);
      hosts.push(address);
      known.push(`${address} ${hostPub}`);
      if (options.withoutSshd?.includes(i - 1) === true) {
        sshd.push({ pid: undefined, log: () => "" });
        continue;
      }
      const config = join(dir, `sshd_${i}.conf`);
      const extra = options.sshdExtra ?? [];
      const setEnv = extra
        .filter((line) => line.startsWith("SetEnv "))
        .map((line) => line.slice("SetEnv ".length).trim());
      await writeFile(
        config,
        [
          `ListenAddress ${address}`,
          "Port 22",
          `HostKey ${join(dir, "host_key")}`,
          `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
          "PermitRootLogin prohibit-password",
          "PasswordAuthentication no",
          "KbdInteractiveAuthentication no",
          "UsePAM no",
          "StrictModes no",
          "PidFile none",
          "MaxStartups 100",
          "Subsystem sftp /usr/lib/openssh/sftp-server",
          // The "VMs" log in as this machine's root, and bash runs ~/.bashrc for an ssh session even when it is not
          // interactive (Debian builds it with SSH_SOURCE_BASHRC) unless SHLVL says it is nested: this machine's
          // rc files (version managers and the like) would otherwise run in every session and be measured as the
          // cost of a session, which a VM's own login does not have. sshd takes only its first SetEnv line, so the
          // caller's SetEnv values join this one.
          `SetEnv SHLVL=1 ${setEnv.join(" ")}`.trimEnd(),
          ...extra.filter((line) => !line.startsWith("SetEnv ")),
          "",
        ].join("\n"),
      );
      const daemon = spawn(
        "ip",
        [
          "netns",
          "exec",
          ns,
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "sh",
          "-c",
          'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e -f "$0"',
          config,
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      daemons.push(daemon);
      let log = "";
      // `ip netns exec`, `unshare` and the shell's `exec` each replace the process: the PID is sshd's own.
      sshd.push({ pid: daemon.pid, log: () => log });
      ready.push(
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => {
            reject(new Error(`sshd ${i} did not start:\n${log}`));
          }, 15_000);
          daemon.stderr.on("data", (d: Buffer) => {
            log += d.toString();
            if (log.includes("Server listening on")) {
              clearTimeout(timer);
              resolve();
            }
          });
          daemon.once("close", (code) => {
            clearTimeout(timer);
            reject(new Error(`sshd ${i} exited ${String(code)}:\n${log}`));
          });
        }),
      );
    }
    await Promise.all(ready);
    await writeFile(join(dir, "known_hosts"), `${known.join("\n")}\n`);
    const sshConfig = join(dir, "ssh_config");
    await writeFile(
      sshConfig,
      [
        "Host *",
        "  User root",
        `  IdentityFile ${join(dir, "client_key")}`,
        "  IdentitiesOnly yes",
        `  UserKnownHostsFile ${join(dir, "known_hosts")}`,
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  LogLevel ERROR",
        "",
      ].join("\n"),
    );
    return {
      dir,
      client,
      hosts,
      sshd,
      ssh: `ssh -F ${sshConfig}`,
      scp: `scp -F ${sshConfig}`,
      cli: (args, cliOptions = {}) =>
        run(
          "ip",
          [
            "netns",
            "exec",
            client,
            "env",
            "-i",
            `PATH=${process.env["PATH"] ?? "/usr/bin:/bin"}`,
            `HOME=${dir}`,
            ...Object.entries(cliOptions.env ?? {}).map(([k, v]) => `${k}=${v}`),
            process.execPath,
            CLI,
            ...args,
          ],
          cliOptions.timeoutMs ?? 120_000,
        ),
      dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}
