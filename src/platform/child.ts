/**
 * Long-lived children (Envoy) as a port, each in a process group of its own that the agent owns, so that no child
 * ever outlives the agent. Node has no PR_SET_PDEATHSIG, so three mechanisms cover the ways the agent can end:
 *
 * 1. A normal stop: the owner (the Envoy supervisor) drains and signals each group, then waits for it.
 * 2. An exit the owner did not plan (an uncaught exception, process.exit): a synchronous `exit` handler SIGKILLs
 *    every group still alive. `exit` handlers run on those paths, but not on a signal that kills the process.
 * 3. The agent is SIGKILLed (or crashes in native code): a watchdog, `/bin/sh` reading a pipe whose write end only
 *    the agent holds, learns each group as it starts (`+pgid`) and ends (`-pgid`). When the agent dies, the kernel
 *    closes the pipe; the watchdog reads EOF, SIGTERMs the groups it still knows, waits up to 5 s, then SIGKILLs
 *    them. It ignores INT/TERM/HUP/QUIT, so a signal aimed at the agent's terminal or group does not remove it.
 *
 * Under systemd the unit's cgroup is the final guarantee (KillMode=mixed: after the agent exits, everything left in
 * the cgroup is SIGKILLed), which also covers the one window the watchdog cannot: a SIGKILL between the fork of a
 * child and the write of its group id.
 */
import type * as ChildProcesses from "node:child_process";
import type { ChildProcess } from "node:child_process";
import type * as Readline from "node:readline";
import type { Writable } from "node:stream";
import { loadBuiltin } from "./fs.js";
import { spawnError } from "./process.js";

export interface ChildExit {
  /** Exit code, or null when a signal ended the process. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface GroupSpawnOptions {
  readonly env: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Run as this uid/gid (the agent must be root to change them); supplementary groups are dropped. */
  readonly uid?: number;
  readonly gid?: number;
  /** Each line the child writes, without its newline. */
  readonly onLine: (stream: "stdout" | "stderr", line: string) => void;
}

export interface GroupChild {
  /** The child's pid, which is also its process group id. */
  readonly pid: number;
  /** Resolves when the process has exited and its output has been read to the end. */
  readonly exited: Promise<ChildExit>;
  /** Sends `signal` to the whole process group; false when the group is already gone. */
  signal(signal: NodeJS.Signals): boolean;
}

export interface ChildSpawner {
  /** Starts `command` in a new process group. Rejects with `COMMAND_NOT_FOUND` / `SPAWN_FAILED` when it cannot. */
  spawn(command: string, args: readonly string[], options: GroupSpawnOptions): Promise<GroupChild>;
  /** Process group ids of children still running. */
  liveGroups(): readonly number[];
}

const WATCHDOG_SCRIPT = `
trap '' INT TERM HUP QUIT
groups=" "
while IFS= read -r line; do
  case "$line" in
    +*) groups="$groups\${line#+} " ;;
    -*) rest=" "; for g in $groups; do [ "$g" = "\${line#-}" ] || rest="$rest$g "; done; groups="$rest" ;;
  esac
done
[ -z "\${groups# }" ] && exit 0
for g in $groups; do kill -TERM -$g 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  alive=""
  for g in $groups; do kill -0 -$g 2>/dev/null && alive="$alive $g"; done
  [ -z "$alive" ] && exit 0
  sleep 0.1
  i=$((i + 1))
done
for g in $groups; do kill -KILL -$g 2>/dev/null; done
`;

function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

export interface ChildSpawnerOptions {
  /** The watchdog's shell; tests never need another. */
  readonly shell?: string;
  /** Told when the watchdog itself goes away (it is restarted with the next child). */
  readonly onWatchdogExit?: (exit: ChildExit) => void;
}

/** The real spawner. One per agent process: it owns the exit handler and the watchdog. */
export function createChildSpawner(options: ChildSpawnerOptions = {}): ChildSpawner {
  // Loaded here, not at import: the composition root names this module for every command (src/main.ts).
  const { spawn } = loadBuiltin("node:child_process") as typeof ChildProcesses;
  const { createInterface } = loadBuiltin("node:readline") as typeof Readline;
  const live = new Set<number>();
  let watchdog: { process: ChildProcess; stdin: Writable } | undefined;
  const killAllNow = (): void => {
    for (const pgid of live) signalGroup(pgid, "SIGKILL");
  };
  // Installed while any group lives, so spawners that are done (tests make many) leave no listener behind.
  const track = (pgid: number, running: boolean): void => {
    if (running) {
      if (live.size === 0) process.on("exit", killAllNow);
      live.add(pgid);
    } else if (live.delete(pgid) && live.size === 0) {
      process.off("exit", killAllNow);
    }
  };

  const tellWatchdog = (line: string): void => {
    if (watchdog === undefined) {
      const child = spawn(options.shell ?? "/bin/sh", ["-c", WATCHDOG_SCRIPT], {
        stdio: ["pipe", "ignore", "ignore"],
        // Its own group: a Ctrl-C or a signal to the agent's group must not reach it, only EOF ends it.
        detached: true,
      });
      const stdin = child.stdin as Writable & { unref?: () => void };
      stdin.on("error", () => {
        // The watchdog went away; its exit handler below forgets it, and the next child starts a new one.
      });
      // Neither the watchdog nor its pipe may keep the agent's event loop alive.
      child.unref();
      stdin.unref?.();
      const current = { process: child, stdin };
      child.on("exit", (code, signal) => {
        if (watchdog === current) watchdog = undefined;
        options.onWatchdogExit?.({ code, signal });
      });
      child.on("error", () => {
        if (watchdog === current) watchdog = undefined;
      });
      watchdog = current;
      // Groups started before this watchdog (a previous one died) must be known to the new one.
      for (const pgid of live) stdin.write(`+${pgid}\n`);
      if (line.startsWith("+") && live.has(Number(line.slice(1)))) return;
    }
    watchdog.stdin.write(`${line}\n`);
  };

  return {
    liveGroups: () => [...live],
    spawn(command, args, spawnOptions) {
      return new Promise<GroupChild>((resolve, reject) => {
        const child = spawn(command, args, {
          env: spawnOptions.env,
          cwd: spawnOptions.cwd,
          detached: true,
          stdio: ["ignore", "pipe", "pipe"],
          ...(spawnOptions.uid === undefined ? {} : { uid: spawnOptions.uid }),
          ...(spawnOptions.gid === undefined ? {} : { gid: spawnOptions.gid }),
        });
        const readers = (["stdout", "stderr"] as const).map((stream) => {
          const lines = createInterface({ input: child[stream], crlfDelay: Infinity });
          lines.on("line", (line) => {
            spawnOptions.onLine(stream, line);
          });
          return new Promise<void>((done) => lines.on("close", done));
        });
        child.once("error", (error: NodeJS.ErrnoException) => {
          reject(
            spawnError(command, error, {
              notFound: `install it there or point the setting at the executable (${command} does not exist)`,
              failed: "check that the file is executable by the user it runs as",
            }),
          );
        });
        child.once("spawn", () => {
          const pid = child.pid;
          if (pid === undefined) return;
          track(pid, true);
          tellWatchdog(`+${pid}`);
          const exited = new Promise<ChildExit>((done) => {
            child.once("exit", (code, signal) => {
              track(pid, false);
              if (watchdog !== undefined) tellWatchdog(`-${pid}`);
              void Promise.all(readers).then(() => {
                done({ code, signal });
              });
            });
          });
          resolve({
            pid,
            exited,
            signal: (signal) => live.has(pid) && signalGroup(pid, signal),
          });
        });
      });
    },
  };
}
