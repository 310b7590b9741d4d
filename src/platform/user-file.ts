/**
 * Reading a file a user named (a kubeconfig, a hosts file, a bundle): whatever the path turns out to be — missing, a
 * directory, unreadable, /dev/zero, a binary — the result is a configuration error that names the file and says what
 * was expected, never an errno dump or a crash in a parser. The size limit keeps a wrong path from filling memory.
 */
import type { FileSystem } from "./fs.js";
import { AgentError } from "./errors.js";

export interface UserFileOptions {
  /** What the file should be, for messages: "kubeconfig", "hosts file". */
  readonly what: string;
  /** Larger files are refused (the limit is a sanity bound, well above any real file of the kind). */
  readonly maxBytes: number;
  /** What to do about it, e.g. "check the --kubeconfig path". */
  readonly hint: string;
  /** Error code prefix, e.g. KUBECONFIG → KUBECONFIG_NOT_FOUND, KUBECONFIG_UNREADABLE, KUBECONFIG_INVALID. */
  readonly code: string;
}

function fail(options: UserFileOptions, path: string, suffix: string, message: string): AgentError {
  return new AgentError({
    code: `${options.code}_${suffix}`,
    message: `${options.what} ${path} ${message}`,
    subject: path,
    hint: options.hint,
    kind: "config",
  });
}

function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${Math.round(n / (1024 * 1024))} MiB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KiB`;
  return `${n} bytes`;
}

/**
 * The file's text (UTF-8), or undefined when it does not exist. Throws a configuration error when it is a directory,
 * unreadable, larger than `maxBytes`, or not text (NUL bytes, invalid UTF-8).
 */
export async function readUserText(
  fs: FileSystem,
  path: string,
  options: UserFileOptions,
): Promise<string | undefined> {
  let data: Buffer;
  try {
    data = await fs.readPrefix(path, options.maxBytes + 1);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code === "ENOENT") return undefined;
    if (code === "EISDIR") return Promise.reject(fail(options, path, "INVALID", `is a directory, not a file`));
    if (code === "EACCES" || code === "EPERM") {
      return Promise.reject(fail(options, path, "UNREADABLE", "cannot be read: permission denied"));
    }
    if (code === "ENOTDIR") return undefined;
    const reason = error instanceof Error ? error.message : String(error);
    return Promise.reject(fail(options, path, "UNREADABLE", `cannot be read: ${reason}`));
  }
  if (data.length > options.maxBytes) {
    throw fail(options, path, "INVALID", `is larger than ${formatBytes(options.maxBytes)}: not a ${options.what}`);
  }
  if (data.includes(0)) throw fail(options, path, "INVALID", `is binary (it has NUL bytes), not a ${options.what}`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch {
    throw fail(options, path, "INVALID", `is not UTF-8 text, not a ${options.what}`);
  }
  return text;
}
