/**
 * Network namespaces for the interception tests. Every namespace is named `iptv-<random>`, made by the test and
 * deleted by it (with every process still running inside, all of which the test started). Rules are only ever
 * applied inside these namespaces; test traffic only goes to addresses inside them.
 */
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { ProcessRunner, RunResult } from "../../src/platform/process.js";
import { nodeProcessRunner } from "../../src/platform/process.js";
import { CLI } from "../support/cli.js";

let pinnedCli = CLI;

/**
 * Copies the built CLI to a private file and checks that the copy runs, then uses it for `Namespace.cli`. Other
 * integration runs in the same tree rebuild dist/ (not atomically) while these tests run; a half-written bundle
 * would fail a test for no reason of its own.
 */
export async function pinCli(): Promise<void> {
  // The CLI is a launcher plus the bundle and its V8 code cache beside it (scripts/build.mjs): all three are copied.
  const dir = join(dirname(CLI), "..", ".cache", "test", `istio-vm-${process.pid}`);
  await mkdir(dir, { recursive: true });
  const pinned = join(dir, "istio-vm.cjs");
  for (let attempt = 0; attempt < 10; attempt++) {
    for (const name of ["istio-vm.cjs", "istio-vm-main.cjs", "istio-vm-main.cjs.v8"]) {
      await copyFile(join(dirname(CLI), name), join(dir, name));
    }
    const r = await nodeProcessRunner.run(process.execPath, [pinned, "--version"], { timeoutMs: 30_000 });
    if (r.code === 0) {
      pinnedCli = pinned;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new Error(`${CLI} does not run`);
}

/** The CLI bundle the tests run (the pinned copy once `pinCli` ran). */
export function cliPath(): string {
  return pinnedCli;
}

export async function unpinCli(): Promise<void> {
  if (pinnedCli !== CLI) await rm(dirname(pinnedCli), { recursive: true, force: true });
  pinnedCli = CLI;
}

export async function sh(command: string, args: readonly string[], input?: string): Promise<RunResult> {
  const result = await nodeProcessRunner.run(command, args, {
    timeoutMs: 30_000,
    ...(input === undefined ? {} : { input }),
  });
  return result;
}

export async function must(command: string, args: readonly string[], input?: string): Promise<string> {
  const r = await sh(command, args, input);
  if (r.code !== 0) throw new Error(`${command} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

export class Namespace {
  readonly name: string;
  private constructor(name: string) {
    this.name = name;
  }

  static async create(): Promise<Namespace> {
    const ns = new Namespace(`iptv-${randomBytes(4).toString("hex")}`);
    await must("ip", ["netns", "add", ns.name]);
    await must("ip", ["-n", ns.name, "link", "set", "lo", "up"]);
    return ns;
  }

  /** Runs a command inside the namespace. */
  exec(command: string, args: readonly string[], input?: string): Promise<RunResult> {
    return sh("ip", ["netns", "exec", this.name, command, ...args], input);
  }

  async must(command: string, args: readonly string[], input?: string): Promise<string> {
    const r = await this.exec(command, args, input);
    if (r.code !== 0) throw new Error(`[${this.name}] ${command} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /** The ProcessRunner port, with every command run inside this namespace. */
  runner(): ProcessRunner {
    return {
      run: (command, args, options) =>
        nodeProcessRunner.run("ip", ["netns", "exec", this.name, command, ...args], options),
    };
  }

  /** `iptables-save -t nat` without the comment lines (which carry timestamps). */
  async natSave(backend: "nft" | "legacy", family: 4 | 6 = 4): Promise<string> {
    const tool = `${family === 4 ? "iptables" : "ip6tables"}-${backend}-save`;
    const text = await this.must(tool, ["-t", "nat"]);
    return text
      .split("\n")
      .filter((l) => !l.startsWith("#"))
      .join("\n");
  }

  /**
   * The built CLI, run inside the namespace with exactly this environment (plus PATH), optionally under a wrapper
   * such as `setpriv --reuid=…` (to run it as another user, with or without capabilities).
   */
  cli(args: readonly string[], env: Record<string, string>, wrapper: readonly string[] = []): Promise<RunResult> {
    return nodeProcessRunner.run("ip", ["netns", "exec", this.name, ...wrapper, process.execPath, pinnedCli, ...args], {
      env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...env },
      timeoutMs: 60_000,
    });
  }

  /** Kills whatever still runs inside (only processes the test started can be there), then deletes it. */
  async destroy(): Promise<void> {
    const pids = await sh("ip", ["netns", "pids", this.name]);
    for (const pid of pids.stdout.split(/\s+/).filter((p) => /^\d+$/.test(p))) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    await sh("ip", ["netns", "del", this.name]);
  }
}

/** Joins two namespaces with a veth pair created inside them (nothing appears in the machine's namespace). */
export async function link(a: Namespace, aAddr: string, b: Namespace, bAddr: string): Promise<void> {
  await must("ip", ["-n", a.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b.name]);
  await must("ip", ["-n", a.name, "addr", "add", aAddr, "dev", "v0", ...(aAddr.includes(":") ? ["nodad"] : [])]);
  await must("ip", ["-n", b.name, "addr", "add", bAddr, "dev", "v1", ...(bAddr.includes(":") ? ["nodad"] : [])]);
  await must("ip", ["-n", a.name, "link", "set", "v0", "up"]);
  await must("ip", ["-n", b.name, "link", "set", "v1", "up"]);
}

/**
 * A TCP listener on several `addr:port`s, answering each connection with one line:
 * `<name> <listening port> <original destination ip>:<port>` (SO_ORIGINAL_DST, which REDIRECT preserves).
 */
const LISTENER = String.raw`
import selectors, socket, struct, sys
name = sys.argv[1]
sel = selectors.DefaultSelector()
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ, int(port))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        try:
            if conn.family == socket.AF_INET:
                raw = conn.getsockopt(socket.SOL_IP, 80, 16)
                ip, port = socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]
            else:
                raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
                ip, port = socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
        except OSError:
            ip, port = conn.getsockname()[:2]
        conn.sendall(("%s %d %s:%d\n" % (name, key.data, ip, port)).encode())
        conn.close()
`;

export interface Listener {
  stop(): void;
}

export function listen(ns: Namespace, name: string, specs: readonly string[]): Promise<Listener> {
  return new Promise((resolve, reject) => {
    const child: ChildProcessWithoutNullStreams = spawn("ip", [
      "netns",
      "exec",
      ns.name,
      "python3",
      "-c",
      LISTENER,
      name,
      ...specs,
    ]);
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.on("data", (d: Buffer) => {
      if (d.toString().includes("ready")) resolve({ stop: () => child.kill("SIGKILL") });
    });
    child.on("exit", (code) => {
      reject(new Error(`listener ${name} exited (${code}): ${stderr}`));
    });
  });
}

const CLIENT = `
const net = require("node:net");
const [host, port] = process.argv.slice(1);
const socket = net.connect({ host, port: Number(port), timeout: 3000 });
let data = "";
socket.on("data", (d) => (data += d));
socket.on("end", () => { process.stdout.write(data.trim() || "EMPTY"); });
socket.on("timeout", () => { process.stdout.write("TIMEOUT"); socket.destroy(); });
socket.on("error", (e) => { process.stdout.write("ERROR " + e.code); });
`;

/**
 * Connects from inside `ns` (as root, or as `uid:gid` through setpriv) and returns the answering listener's line,
 * or `ERROR <code>` / `TIMEOUT`.
 */
export async function connect(
  ns: Namespace,
  host: string,
  port: number,
  as?: { uid: number; gid: number },
): Promise<string> {
  const node = [process.execPath, "-e", CLIENT, host, String(port)];
  const command =
    as === undefined ? node : ["setpriv", `--reuid=${as.uid}`, `--regid=${as.gid}`, "--clear-groups", ...node];
  const [first, ...rest] = command;
  const r = await ns.exec(first ?? "", rest);
  return r.stdout.trim();
}
