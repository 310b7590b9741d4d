/**
 * Runs `istio-vm dev` (the built CLI) as a child process for tests: waits for its `--json` ready line, and stops it
 * with a signal. Tests call `stop()` in afterAll/afterEach, so the process never outlives a failed test.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { CLI } from "../support/cli.js";

export interface DevReady {
  readonly ready: true;
  readonly profile: string;
  readonly kubeApi: readonly string[];
  readonly kubeconfig: string | null;
  readonly serviceCidr: string;
  readonly services: readonly { name: string; addresses: readonly { name: string; address: string }[] }[];
  readonly pid: number;
}

export interface DevProcess {
  readonly ready: DevReady;
  readonly child: ChildProcess;
  stderr(): string;
  /** Sends the signal (if still running) and resolves with the exit code and signal. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface DevTextProcess {
  readonly stdout: string;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `istio-vm dev` without --json and resolves with what it printed for people once it serves. */
export async function startDevText(args: readonly string[], timeoutMs = 60_000): Promise<DevTextProcess> {
  const dev = await startDev(args, timeoutMs, { json: false });
  return { stdout: dev.text(), stop: (signal) => dev.stop(signal) };
}

export async function startDev(
  args: readonly string[],
  timeoutMs = 60_000,
  options: { readonly json?: boolean } = {},
): Promise<DevProcess & { text(): string }> {
  const json = options.json ?? true;
  const child = spawn(process.execPath, [CLI, "dev", "--port", "0", ...(json ? ["--json"] : []), ...args], {
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: process.env["HOME"] ?? "/tmp" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => {
      resolve({ code, signal });
    });
  });
  const stop = async (
    signal: NodeJS.Signals = "SIGTERM",
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };
  try {
    const ready = await new Promise<DevReady>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`istio-vm dev was not ready within ${timeoutMs} ms; stderr:\n${stderr}`));
      }, timeoutMs);
      child.stdout.on("data", (d: Buffer) => {
        stdout += d.toString();
        if (!json) {
          if (stdout.includes("Stop with Ctrl-C")) {
            clearTimeout(timer);
            resolve({
              ready: true,
              profile: "",
              kubeApi: [],
              kubeconfig: null,
              serviceCidr: "",
              services: [],
              pid: child.pid ?? 0,
            });
          }
          return;
        }
        const line = stdout.split("\n").find((l) => l.startsWith("{"));
        if (line !== undefined && stdout.includes("\n")) {
          clearTimeout(timer);
          try {
            resolve(JSON.parse(line) as DevReady);
          } catch (error) {
            reject(error instanceof Error ? error : new Error(String(error)));
          }
        }
      });
      void exited.then(({ code }) => {
        clearTimeout(timer);
        reject(new Error(`istio-vm dev exited with ${String(code)} before it was ready; stderr:\n${stderr}`));
      });
    });
    return { ready, child, stderr: () => stderr, text: () => stdout, stop };
  } catch (error) {
    await stop("SIGKILL");
    throw error;
  }
}
