import type { Logger } from "./logger.js";
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
  readonly logger: Logger;
}

/**
 * The real notifier: datagrams from this process with the `node-unix-socket` addon (Node has no AF_UNIX datagram
 * sockets), so systemd attributes them to the main PID, which is all the unit's `NotifyAccess=main` accepts.
 *
 * There is no fallback: `systemd-notify` would send from its own PID, which systemd drops under NotifyAccess=main
 * (`--pid=` is honoured only for a caller with CAP_SYS_ADMIN, which the agent does not have), and widening the unit
 * to NotifyAccess=all would let Envoy, a child, speak for it. Without the addon the agent says so once, loudly; the
 * Type=notify unit then fails its start timeout, which names the problem instead of hiding it.
 */
export function createNotifier(deps: NotifierDeps): Notifier {
  const socketPath = deps.env["NOTIFY_SOCKET"];
  const watchdogUsec = watchdogUsecFrom(deps.env, process.pid);
  if (socketPath === undefined || socketPath === "") {
    return { notify: () => Promise.resolve(), watchdogUsec };
  }
  if (!socketPath.startsWith("/")) {
    // An abstract socket (@…): systemd never hands one to a service; nothing of ours can send to it.
    deps.logger.error("sd_notify disabled: NOTIFY_SOCKET is not a path", { socket: socketPath });
    return { notify: () => Promise.resolve(), watchdogUsec };
  }
  const addon = loadUnixSocketAddon(deps.env);
  let socket: UnixDatagramSocket | undefined;
  let problem = "the node-unix-socket addon is missing (/usr/lib/istio-vm/node-unix-socket.node)";
  if (addon !== undefined) {
    try {
      socket = new UnixDatagramSocket(addon);
    } catch (error) {
      problem = `the node-unix-socket addon failed: ${(error as Error).message}`;
    }
  }
  if (socket === undefined) {
    deps.logger.error(`sd_notify disabled: ${problem}`, {
      socket: socketPath,
      hint: "reinstall the istio-vm-agent package; systemd will not see READY=1",
    });
    return { notify: () => Promise.resolve(), watchdogUsec };
  }
  const ready = socket;
  return {
    watchdogUsec,
    async notify(fields) {
      try {
        await ready.send(socketPath, Buffer.from(renderNotifyMessage(fields)));
      } catch (error) {
        deps.logger.warn("sd_notify failed", { socket: socketPath, error: (error as Error).message });
      }
    },
  };
}
