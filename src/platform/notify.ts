import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { Logger } from "./logger.js";
import type { ProcessRunner } from "./process.js";

/** sd_notify(3) as a port: READY=1, STATUS=…, WATCHDOG=1, RELOADING=1, STOPPING=1. */
export interface Notifier {
  /** Sends the fields in one datagram; a no-op when systemd gave no notify socket. Never throws. */
  notify(fields: Readonly<Record<string, string>>): Promise<void>;
  /** The watchdog interval systemd asked for this process, in microseconds, or undefined when there is none. */
  readonly watchdogUsec: number | undefined;
}

export function renderNotifyMessage(fields: Readonly<Record<string, string>>): string {
  // STATUS is a single line; systemd would cut it at a newline anyway.
  return Object.entries(fields)
    .map(([key, value]) => `${key}=${value.replaceAll("\n", " ")}`)
    .join("\n");
}

/** WATCHDOG_USEC applies only when WATCHDOG_PID is unset or names this process (sd_watchdog_enabled(3)). */
export function watchdogUsecFrom(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  const usec = Number(env["WATCHDOG_USEC"]);
  if (!Number.isSafeInteger(usec) || usec <= 0) return undefined;
  const watchdogPid = env["WATCHDOG_PID"];
  if (watchdogPid !== undefined && watchdogPid !== "" && Number(watchdogPid) !== pid) return undefined;
  return usec;
}

interface DgramWrap {
  init(self: object): void;
  sendTo(buf: Buffer, offset: number, length: number, path: string, cb?: (error?: Error | null) => void): void;
  close(): void;
}
interface UnixSocketAddon {
  DgramSocketWrap: new (emitter: object) => DgramWrap;
}

/** Where the prebuilt `node-unix-socket` addon can be: beside the packaged binary, or in node_modules. */
function addonCandidates(env: NodeJS.ProcessEnv): string[] {
  const candidates: string[] = [];
  const fromEnv = env["ISTIO_VM_NOTIFY_ADDON"];
  if (fromEnv !== undefined && fromEnv !== "") candidates.push(fromEnv);
  candidates.push(join(dirname(process.execPath), "..", "lib", "istio-vm", "node-unix-socket.node"));
  try {
    const require = createRequire(import.meta.url);
    const pkg = require.resolve(`node-unix-socket-${process.platform}-${process.arch}-gnu/package.json`);
    candidates.push(join(dirname(pkg), `node-unix-socket.${process.platform}-${process.arch}-gnu.node`));
  } catch {
    // Not installed from npm (the packaged binary): only the path beside the binary applies.
  }
  return candidates;
}

function loadAddon(env: NodeJS.ProcessEnv): UnixSocketAddon | undefined {
  for (const path of addonCandidates(env)) {
    if (!existsSync(path)) continue;
    try {
      const module = { exports: {} as UnixSocketAddon };
      process.dlopen(module, path);
      return module.exports;
    } catch {
      // A broken or foreign-architecture addon: try the next one, then fall back to systemd-notify.
    }
  }
  return undefined;
}

export interface NotifierDeps {
  readonly env: NodeJS.ProcessEnv;
  readonly runner: ProcessRunner;
  readonly logger: Logger;
}

/**
 * The real notifier. Sends datagrams from this process with the `node-unix-socket` addon (Node has no AF_UNIX
 * datagram sockets), so systemd attributes them to the main PID; without the addon it runs
 * `systemd-notify --pid=<our pid>`, which systemd accepts with `NotifyAccess=all`.
 */
export function createNotifier(deps: NotifierDeps): Notifier {
  const socketPath = deps.env["NOTIFY_SOCKET"];
  const watchdogUsec = watchdogUsecFrom(deps.env, process.pid);
  if (socketPath === undefined || socketPath === "") {
    return { notify: () => Promise.resolve(), watchdogUsec };
  }
  const addon = socketPath.startsWith("/") ? loadAddon(deps.env) : undefined;
  let wrap: DgramWrap | undefined;
  if (addon !== undefined) {
    try {
      wrap = new addon.DgramSocketWrap({ emit: () => false });
      wrap.init(wrap);
    } catch {
      wrap = undefined;
    }
  }
  const viaAddon = (message: string): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const buf = Buffer.from(message);
      wrap?.sendTo(buf, 0, buf.length, socketPath, (error) => {
        if (error === undefined || error === null) resolve();
        else reject(error);
      });
    });
  const viaCommand = async (fields: Readonly<Record<string, string>>): Promise<void> => {
    const args = [`--pid=${process.pid}`, ...Object.entries(fields).map(([k, v]) => `${k}=${v.replaceAll("\n", " ")}`)];
    const result = await deps.runner.run("systemd-notify", args, { timeoutMs: 5000 });
    if (result.code !== 0) throw new Error(`systemd-notify exited ${result.code}: ${result.stderr.trim()}`);
  };
  return {
    watchdogUsec,
    async notify(fields) {
      try {
        if (wrap !== undefined) await viaAddon(renderNotifyMessage(fields));
        else await viaCommand(fields);
      } catch (error) {
        deps.logger.warn("sd_notify failed", { socket: socketPath, error: (error as Error).message });
      }
    },
  };
}
