import { spawn } from "node:child_process";
import { AgentError } from "./errors.js";
import { timerDelay } from "./clock.js";

export interface RunOptions {
  readonly input?: string | Uint8Array;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Kill the command (SIGKILL) after this long; the result then has `timedOut: true`. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

export interface RunResult {
  /** Exit code, or null when the process was ended by a signal. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

/** Short-lived commands (iptables-restore, openssl, systemctl, ssh…) as a port. */
export interface ProcessRunner {
  /** Runs a command to completion. Rejects only when it cannot be started (code `COMMAND_NOT_FOUND`, `SPAWN_FAILED`). */
  run(command: string, args: readonly string[], options?: RunOptions): Promise<RunResult>;
}

export function formatCommand(command: string, args: readonly string[]): string {
  return [command, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(" ");
}

export const nodeProcessRunner: ProcessRunner = {
  run(command, args, options = {}) {
    return new Promise<RunResult>((resolve, reject) => {
      const child = spawn(command, args, {
        env: options.env ?? process.env,
        cwd: options.cwd,
        stdio: ["pipe", "pipe", "pipe"],
        signal: options.signal,
      });
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let timedOut = false;
      const timer =
        options.timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              timedOut = true;
              child.kill("SIGKILL");
            }, timerDelay(options.timeoutMs));
      child.stdout.on("data", (chunk: Buffer) => stdout.push(chunk));
      child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk));
      child.on("error", (error: NodeJS.ErrnoException) => {
        if (timer !== undefined) clearTimeout(timer);
        if (error.name === "AbortError") {
          reject(error);
          return;
        }
        const notFound = error.code === "ENOENT";
        reject(
          new AgentError({
            code: notFound ? "COMMAND_NOT_FOUND" : "SPAWN_FAILED",
            message: `cannot run ${command}: ${error.message}`,
            subject: command,
            ...(notFound ? { hint: `install the package that provides ${command}` } : {}),
            cause: error,
          }),
        );
      });
      child.on("close", (code, signal) => {
        if (timer !== undefined) clearTimeout(timer);
        resolve({
          code,
          signal,
          stdout: Buffer.concat(stdout).toString("utf8"),
          stderr: Buffer.concat(stderr).toString("utf8"),
          timedOut,
        });
      });
      child.stdin.on("error", () => {
        // The command may exit before reading all of its input; its exit status reports the problem.
      });
      child.stdin.end(options.input ?? "");
    });
  },
};
