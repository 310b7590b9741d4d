import type { Logger } from "./logger.js";
import type { ProcessRunner } from "./process.js";
import { UnixDatagramSocket, loadUnixSocketAddon } from "./unix-dgram.js";

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
  const addon = socketPath.startsWith("/") ? loadUnixSocketAddon(deps.env) : undefined;
  let socket: UnixDatagramSocket | undefined;
  if (addon !== undefined) {
    try {
      socket = new UnixDatagramSocket(addon);
    } catch {
      socket = undefined;
    }
  }
  const viaCommand = async (fields: Readonly<Record<string, string>>): Promise<void> => {
    const args = [`--pid=${process.pid}`, ...Object.entries(fields).map(([k, v]) => `${k}=${v.replaceAll("\n", " ")}`)];
    const result = await deps.runner.run("systemd-notify", args, { timeoutMs: 5000 });
    if (result.code !== 0) throw new Error(`systemd-notify exited ${result.code}: ${result.stderr.trim()}`);
  };
  return {
    watchdogUsec,
    async notify(fields) {
      try {
        if (socket !== undefined) await socket.send(socketPath, Buffer.from(renderNotifyMessage(fields)));
        else await viaCommand(fields);
      } catch (error) {
        deps.logger.warn("sd_notify failed", { socket: socketPath, error: (error as Error).message });
      }
    },
  };
}
