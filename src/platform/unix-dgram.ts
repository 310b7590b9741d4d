/**
 * AF_UNIX datagram sockets, which Node lacks, from the prebuilt addon of `node-unix-socket`
 * (npm package node-unix-socket-linux-x64-gnu; the .deb ships it as /usr/lib/istio-vm/node-unix-socket.node). The
 * addon is loaded with process.dlopen: a single executable's require() loads only built-ins. Only the addon's native
 * class is used (its JavaScript wrapper package depends on platform packages the registry here does not serve).
 */
import { EventEmitter } from "node:events";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

interface DgramWrap {
  init(self: object): void;
  startRecv(): void;
  bind(path: string): void;
  sendTo(buf: Buffer, offset: number, length: number, path: string, cb?: (error?: Error | null) => void): void;
  close(): void;
}

export interface UnixSocketAddon {
  DgramSocketWrap: new (emitter: object) => DgramWrap;
}

/** Where the addon can be: ISTIO_VM_NOTIFY_ADDON, beside the packaged binary, or in node_modules. */
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

/** The addon, or undefined when none loads here (callers fall back, e.g. to systemd-notify). */
export function loadUnixSocketAddon(env: NodeJS.ProcessEnv = process.env): UnixSocketAddon | undefined {
  for (const path of addonCandidates(env)) {
    if (!existsSync(path)) continue;
    try {
      const module = { exports: {} as UnixSocketAddon };
      process.dlopen(module, path);
      return module.exports;
    } catch {
      // A broken or foreign-architecture addon: try the next one.
    }
  }
  return undefined;
}

/** One datagram socket. `onMessage` makes it receive (it must then be bound). */
export class UnixDatagramSocket {
  readonly #wrap: DgramWrap;
  readonly #events = new EventEmitter();
  #closed = false;

  constructor(addon: UnixSocketAddon, onMessage?: (data: Buffer) => void) {
    // The native side reports through emit('_data', buffer, path) and emit('_error', error) on this object.
    this.#wrap = new addon.DgramSocketWrap({ emit: this.#events.emit.bind(this.#events) });
    this.#wrap.init(this.#wrap);
    if (onMessage !== undefined) {
      this.#events.on("_data", (data: Buffer) => {
        onMessage(data);
      });
      this.#wrap.startRecv();
    }
  }

  bind(path: string): void {
    this.#wrap.bind(path);
  }

  send(path: string, data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#wrap.sendTo(data, 0, data.length, path, (error) => {
        if (error === undefined || error === null) resolve();
        else reject(error);
      });
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wrap.close();
  }
}
