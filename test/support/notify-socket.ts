/** A datagram socket standing in for systemd's NOTIFY_SOCKET: collects sd_notify messages from a real process. */
import { UnixDatagramSocket, loadUnixSocketAddon } from "../../src/platform/unix-dgram.js";

export class NotifySocket {
  readonly path: string;
  readonly messages: Record<string, string>[] = [];
  readonly #socket: UnixDatagramSocket;
  #waiters: { match: (m: Record<string, string>) => boolean; resolve: (m: Record<string, string>) => void }[] = [];

  constructor(path: string) {
    const addon = loadUnixSocketAddon();
    if (addon === undefined) throw new Error("the node-unix-socket addon is not installed (npm ci)");
    this.path = path;
    this.#socket = new UnixDatagramSocket(addon, (buf) => {
      const message: Record<string, string> = {};
      for (const line of buf.toString("utf8").split("\n")) {
        const eq = line.indexOf("=");
        if (eq > 0) message[line.slice(0, eq)] = line.slice(eq + 1);
      }
      this.messages.push(message);
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.match(message)) return true;
        w.resolve(message);
        return false;
      });
    });
    this.#socket.bind(path);
  }

  /** The next message (or one already received after index `since`) with `key` = `value` (any value if omitted). */
  waitFor(key: string, value?: string, since = 0): Promise<Record<string, string>> {
    const match = (m: Record<string, string>): boolean =>
      m[key] !== undefined && (value === undefined || m[key] === value);
    const seen = this.messages.slice(since).find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  /** The next message (or one already received after index `since`) whose STATUS= matches `pattern`. */
  waitForStatus(pattern: RegExp, since = 0): Promise<Record<string, string>> {
    const match = (m: Record<string, string>): boolean => m["STATUS"] !== undefined && pattern.test(m["STATUS"]);
    const seen = this.messages.slice(since).find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  close(): void {
    this.#socket.close();
  }
}
