/**
 * A TCP connect as a port (the agent's tcpSocket health probe): resolves once the connection is established and
 * closes it at once, rejects with the errno-style code (ECONNREFUSED, …) or ETIMEDOUT past the deadline. And the one
 * way a server of ours (status, dev control plane) starts listening.
 */
import type * as Net from "node:net";
import { timerDelay } from "./clock.js";
import { loadBuiltin } from "./fs.js";

export type TcpConnector = (host: string, port: number, timeoutMs: number, signal?: AbortSignal) => Promise<void>;

export const nodeTcpConnector: TcpConnector = (host, port, timeoutMs, signal) =>
  new Promise<void>((resolve, reject) => {
    const deadline = AbortSignal.timeout(timerDelay(timeoutMs));
    const abort = signal === undefined ? deadline : AbortSignal.any([deadline, signal]);
    // Loaded on first use, as the other adapters' built-ins (src/platform/ports.ts).
    const { connect } = loadBuiltin("node:net") as typeof Net;
    const socket = connect({ host, port, signal: abort });
    socket.once("connect", () => {
      socket.destroy();
      resolve();
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      socket.destroy();
      if (deadline.aborted) {
        reject(
          Object.assign(new Error(`dial tcp ${host}:${port}: i/o timeout after ${timeoutMs} ms`), {
            code: "ETIMEDOUT",
          }),
        );
        return;
      }
      reject(error);
    });
  });

/** What `listenOn` needs of a server: node:net's, node:http's, node:https' and node:http2's all have it. */
export interface ListeningServer {
  listen(port: number, host: string, callback: () => void): unknown;
  once(event: "error", listener: (error: Error) => void): unknown;
  off(event: "error", listener: (error: Error) => void): unknown;
  address(): Net.AddressInfo | string | null;
}

/**
 * Starts `server` listening on host:port (port 0: a free one) and resolves with the bound address; a listen error
 * (EADDRINUSE, EACCES, …) rejects, and the error listener is removed either way.
 */
export function listenOn(server: ListeningServer, port: number, host: string): Promise<Net.AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve(server.address() as Net.AddressInfo);
    });
  });
}
