/**
 * A booted Debian 12 with systemd as PID 1, for end-to-end tests: a root filesystem made with mmdebstrap (cached
 * as a tar.zst under /var/cache/istio-vm-e2e, keyed by the package list, so a machine builds it once), extracted per
 * test into its own 0755 temp dir, booted with `systemd-nspawn --boot --private-network` (the container has only
 * its own loopback: iptables rules made inside never touch the host), and driven with `nsenter` into the container's
 * namespaces. `dispose()` powers it off, kills what is left of the nspawn process it started, and removes the dir.
 *
 * Each machine gets a cgroup of its own. Without a service manager on the host, `systemd-nspawn --keep-unit` puts
 * the container's tree in `<its own cgroup>/payload`, so machines started from one cgroup would share one tree: a
 * unit of the same name in two machines is one directory, and when one machine's systemd removes it (a unit that
 * stops prunes its cgroup) the other's next process of that unit cannot be attached ("Failed to attach to cgroup
 * …: No such file or directory", 219/CGROUP). nspawn is therefore started in `<cgroup>/<machine name>` of each
 * hierarchy systemd uses (the named `systemd` one and cgroup2, where mounted), removed again by `dispose()`.
 *
 *   const vm = await bootDebian({ name: "agent" });
 *   try { await vm.run(["systemctl", "is-system-running"]); } finally { await vm.dispose(); }
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmdirSync,
} from "node:fs";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

/** Packages of the base image. Add what a later test needs here: the cache key changes and the image is rebuilt. */
export const BASE_PACKAGES: readonly string[] = [
  "systemd",
  "systemd-sysv",
  "dbus",
  "iptables",
  "iproute2",
  "procps",
  "curl",
  "ca-certificates",
];
export const SUITE = "bookworm";
export const MIRROR = process.env["ISTIO_VM_E2E_MIRROR"] ?? "http://deb.debian.org/debian";
export const CACHE_DIR = process.env["ISTIO_VM_E2E_CACHE"] ?? "/var/cache/istio-vm-e2e";

/** Tools the harness needs on the host (for `requirements()`). */
export const HARNESS_TOOLS: readonly string[] = ["mmdebstrap", "systemd-nspawn", "nsenter", "tar", "zstd"];

export interface CommandResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  readonly input?: string;
  readonly timeoutMs?: number;
  /** Environment inside the container; PATH and LANG are always set. */
  readonly env?: Readonly<Record<string, string>>;
}

/** Runs a host command, collecting its output; never rejects for a non-zero exit. */
export function runHost(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, ...options.env } });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    // A command that exits without reading its input (most do) closes the pipe first: EPIPE is not an error here.
    child.stdin.on("error", () => undefined);
    child.stdin.end(options.input ?? "");
  });
}

function describe(cmd: readonly string[], result: CommandResult): string {
  return (
    `\`${cmd.join(" ")}\` exited ${result.code ?? result.signal ?? "?"}\n` +
    `--- stdout\n${result.stdout}--- stderr\n${result.stderr}`
  );
}

export function rootfsCachePath(packages: readonly string[] = BASE_PACKAGES): string {
  const key = createHash("sha256")
    .update(
      JSON.stringify({ suite: SUITE, mirror: MIRROR, packages: [...packages].sort(), variant: "minbase", docs: false }),
    )
    .digest("hex")
    .slice(0, 16);
  return join(CACHE_DIR, `debian-${SUITE}-${key}.tar.zst`);
}

/**
 * The cached root filesystem tarball, built with mmdebstrap on first use (~1 min, needs the Debian mirror). The
 * tarball is written under a temporary name and renamed, so an interrupted build never leaves a broken cache.
 */
export async function ensureRootfs(packages: readonly string[] = BASE_PACKAGES): Promise<string> {
  const path = rootfsCachePath(packages);
  if (existsSync(path)) return path;
  mkdirSync(CACHE_DIR, { recursive: true });
  const partial = `${path}.${process.pid}.partial.tar.zst`;
  const cmd = [
    "mmdebstrap",
    "--variant=minbase",
    "--mode=root",
    `--include=${packages.join(",")}`,
    // Smaller image; documentation is not needed to boot.
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    SUITE,
    partial,
    MIRROR,
  ];
  const result = await runHost(cmd[0] ?? "mmdebstrap", cmd.slice(1), { timeoutMs: 15 * 60_000 });
  if (result.code !== 0) {
    await rm(partial, { force: true });
    throw new Error(`building the Debian root filesystem failed: ${describe(cmd, result)}`);
  }
  await rename(partial, path);
  return path;
}

export interface BootOptions {
  /** Part of the machine name, for logs. */
  readonly name: string;
  readonly packages?: readonly string[];
  /** How long to wait for `systemctl is-system-running` to settle. */
  readonly bootTimeoutMs?: number;
}

export interface DebianMachine {
  readonly name: string;
  /** The container's root directory on the host: write files here to put them into the machine. */
  readonly root: string;
  /** PID (on the host) of the container's init, systemd. */
  readonly leader: number;
  /** Runs a command inside the container (all its namespaces), as root. */
  run(cmd: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /** Like run, but throws with the command's output unless it exits 0. */
  check(cmd: readonly string[], options?: RunOptions): Promise<string>;
  /** `systemctl show -p …` of a unit, as a record. */
  unitProperties(unit: string, names: readonly string[]): Promise<Record<string, string>>;
  /** The journal of a unit (or all of it), read inside the container. */
  journal(unit?: string): Promise<string>;
  /** Copies a host file into the machine; returns the path inside. */
  copyIn(hostPath: string, inside: string): Promise<string>;
  /** What the container printed on its console (boot messages), for failure reports. */
  console(): string;
  /** Powers off, kills what is left, removes the root directory. Safe to call twice. */
  dispose(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The directories, one per cgroup hierarchy systemd uses (the named `systemd` v1 hierarchy and cgroup2, where
 * mounted), that a machine called `name` gets below this process's own cgroup there.
 */
export function machineCgroups(
  name: string,
  mountinfo = readFileSync("/proc/self/mountinfo", "utf8"),
  cgroups = readFileSync("/proc/self/cgroup", "utf8"),
): string[] {
  const own = new Map<string, string>();
  for (const line of cgroups.split("\n")) {
    const [id, controllers, path] = line.split(/:(.*?):/);
    if (id === undefined || controllers === undefined || path === undefined) continue;
    own.set(controllers === "" ? "cgroup2" : controllers, path);
  }
  const dirs: string[] = [];
  for (const line of mountinfo.split("\n")) {
    // mountinfo: id parent dev root mountpoint options [optional…] - fstype source superoptions
    const [left, right] = line.split(" - ");
    if (left === undefined || right === undefined) continue;
    const fields = left.split(" ");
    const [fstype, , superOptions = ""] = right.split(" ");
    const root = fields[3];
    const mountpoint = fields[4];
    if (root === undefined || mountpoint === undefined) continue;
    const key =
      fstype === "cgroup2" ? "cgroup2" : superOptions.split(",").includes("name=systemd") ? "name=systemd" : "";
    const path = own.get(key);
    if (key === "" || path === undefined || !(path + "/").startsWith(root === "/" ? "/" : root + "/")) continue;
    dirs.push(join(mountpoint.replace(/\\040/g, " "), path.slice(root === "/" ? 0 : root.length), name));
  }
  return [...new Set(dirs)];
}

/** Removes a cgroup directory and the ones below it (cgroupfs removes a group with rmdir, its files with it). */
function removeCgroup(dir: string): void {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) removeCgroup(join(dir, e.name));
  try {
    rmdirSync(dir);
  } catch {
    // Still busy (a process left): nothing more a test can do about it.
  }
}

/** Moves itself into each cgroup given before `--`, then runs the command after it. */
const IN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; done; shift; exec "$@"';

/** The container's init: a descendant of the nspawn process whose PID inside its own namespace is 1. */
function findLeader(nspawnPid: number): number | undefined {
  const parents = new Map<number, number>();
  const innermost = new Map<number, string>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, "utf8");
      const ppid = /^PPid:\s+(\d+)$/m.exec(status)?.[1];
      const nspid = /^NSpid:\s+(.+)$/m.exec(status)?.[1]?.trim().split(/\s+/);
      if (ppid !== undefined) parents.set(Number(entry), Number(ppid));
      if (nspid !== undefined && nspid.length > 1) innermost.set(Number(entry), nspid[nspid.length - 1] ?? "");
    } catch {
      // The process exited while we looked.
    }
  }
  for (const [pid, inner] of innermost) {
    if (inner !== "1") continue;
    for (let p = parents.get(pid); p !== undefined && p > 1; p = parents.get(p)) {
      if (p === nspawnPid) return pid;
    }
  }
  return undefined;
}

/** Boots a fresh machine from the cached image. Throws (after cleaning up) if it does not come up. */
export async function bootDebian(options: BootOptions): Promise<DebianMachine> {
  const tarball = await ensureRootfs(options.packages ?? BASE_PACKAGES);
  const name = `ivm-${options.name.replace(/[^a-z0-9-]/gi, "").slice(0, 20)}-${randomBytes(3).toString("hex")}`;
  const dir = mkdtempSync(join(process.env["ISTIO_VM_E2E_TMP"] ?? tmpdir(), "istio-vm-e2e-"));
  // A 0700 root (mkdtemp's mode) breaks dbus inside and hangs the boot.
  chmodSync(dir, 0o755);
  const root = join(dir, "root");
  mkdirSync(root, { mode: 0o755 });
  const consoleLog = join(dir, "console.log");
  const cgroups = machineCgroups(name);
  let nspawn: ReturnType<typeof spawn> | undefined;
  let exited: Promise<void> = Promise.resolve();
  let disposed = false;

  const dispose = async (): Promise<void> => {
    if (disposed) return;
    disposed = true;
    if (nspawn?.exitCode === null && nspawn.signalCode === null) {
      const leader = nspawn.pid === undefined ? undefined : findLeader(nspawn.pid);
      // SIGRTMIN+4 asks systemd for a clean poweroff; nspawn exits when init does. Node knows no SIGRTMIN names:
      // on Linux SIGRTMIN is 34, so it is signal 38.
      if (leader !== undefined) {
        try {
          process.kill(leader, 38);
        } catch {
          // Already gone.
        }
      }
      const done = await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)]);
      if (!done && nspawn.pid !== undefined) {
        // Killing nspawn alone leaves the container's init running (reparented to PID 1) with everything under it;
        // SIGKILL of the init, PID 1 of its namespace, makes the kernel kill every process in the container.
        for (const pid of [leader, nspawn.pid]) {
          if (pid === undefined) continue;
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // Already gone.
          }
        }
        await Promise.race([exited, sleep(10_000)]);
      }
    }
    for (const cgroup of cgroups) removeCgroup(cgroup);
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  };

  try {
    const untar = await runHost("tar", ["--zstd", "-xpf", tarball, "-C", root], { timeoutMs: 5 * 60_000 });
    if (untar.code !== 0) throw new Error(`extracting ${tarball} failed: ${untar.stderr}`);
    // A machine id and hostname of its own; no getty on the console (nothing reads it).
    await writeFile(join(root, "etc/hostname"), `${name}\n`);
    await rm(join(root, "etc/machine-id"), { force: true });
    await writeFile(join(root, "etc/machine-id"), `${randomBytes(16).toString("hex")}\n`);

    const out = openSync(consoleLog, "a");
    for (const cgroup of cgroups) mkdirSync(cgroup);
    nspawn = spawn(
      "/bin/sh",
      [
        "-c",
        IN_CGROUPS,
        "sh",
        ...cgroups,
        "--",
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=pipe",
        `--machine=${name}`,
        `--directory=${root}`,
      ],
      { stdio: ["ignore", out, out] },
    );
    closeSync(out);
    const child = nspawn;
    exited = new Promise((resolve) =>
      child.once("exit", () => {
        resolve();
      }),
    );
    child.once("error", () => undefined);

    const deadline = Date.now() + (options.bootTimeoutMs ?? 120_000);
    let leader: number | undefined;
    while (leader === undefined) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`systemd-nspawn exited early:\n${await readFile(consoleLog, "utf8")}`);
      }
      if (Date.now() > deadline) throw new Error(`no container init appeared:\n${await readFile(consoleLog, "utf8")}`);
      await sleep(100);
      if (child.pid !== undefined) leader = findLeader(child.pid);
    }
    const pid = leader;

    const run = (cmd: readonly string[], runOptions: RunOptions = {}): Promise<CommandResult> =>
      runHost(
        "nsenter",
        [
          `--target=${pid}`,
          "--all",
          "--",
          "env",
          "-i",
          "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "LANG=C.UTF-8",
          "SYSTEMD_PAGER=",
          "SYSTEMD_COLORS=0",
          ...Object.entries(runOptions.env ?? {}).map(([k, v]) => `${k}=${v}`),
          ...cmd,
        ],
        { ...runOptions, env: {} },
      );
    const check = async (cmd: readonly string[], runOptions: RunOptions = {}): Promise<string> => {
      const result = await run(cmd, runOptions);
      if (result.code !== 0) throw new Error(describe(cmd, result));
      return result.stdout;
    };

    // Wait until the boot transaction is done: running, or degraded (some unrelated unit failed).
    let state = "";
    while (state !== "running" && state !== "degraded") {
      if (Date.now() > deadline) {
        throw new Error(`boot did not finish (state '${state}'):\n${await readFile(consoleLog, "utf8")}`);
      }
      await sleep(200);
      state = (await run(["systemctl", "is-system-running"], { timeoutMs: 10_000 })).stdout.trim();
    }

    return {
      name,
      root,
      leader: pid,
      run,
      check,
      async unitProperties(unit, names) {
        const text = await check(["systemctl", "show", unit, ...names.map((n) => `--property=${n}`)]);
        const props: Record<string, string> = {};
        for (const line of text.split("\n")) {
          const eq = line.indexOf("=");
          if (eq > 0) props[line.slice(0, eq)] = line.slice(eq + 1);
        }
        return props;
      },
      async journal(unit) {
        return check([
          "journalctl",
          "--no-pager",
          "--output=short-monotonic",
          ...(unit === undefined ? [] : ["-u", unit]),
        ]);
      },
      async copyIn(hostPath, inside) {
        const target = join(root, inside);
        mkdirSync(dirname(target), { recursive: true });
        await writeFile(target, await readFile(hostPath));
        return inside;
      },
      console: () => readFileSync(consoleLog, "utf8"),
      dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}
