/**
 * A TCP connect as a port (the agent's tcpSocket health probe): resolves once the connection is established and
 * closes it at once, rejects with the errno-style code (ECONNREFUSED, …) or ETIMEDOUT past the deadline.
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
