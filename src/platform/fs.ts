import type * as Crypto from "node:crypto";
import type { Stats } from "node:fs";
import { constants, lstat, readFile, readFileSync, readdir, stat, statSync } from "node:fs";
import type * as FsPromises from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Built-in modules loaded on first use. Not import(): inside the bundle esbuild leaves `import("node:…")` as it is,
 * and the launcher's vm.Script has no module loader for it under Node 20. Not a require() made with
 * `createRequire(import.meta.url)` either: `import.meta` is empty in any other CommonJS bundle of this code (test
 * fixtures build their own). `process.getBuiltinModule` (Node 20.16+, 22.3+) needs neither.
 */
export function loadBuiltin(id: string): object | undefined {
  return process.getBuiltinModule(id);
}

/**
 * node:fs/promises on first use. It loads a dozen more built-in modules (streams, readline, file watching) than
 * node:fs, which every process has loaded already; the reads below use node:fs's callbacks, so a command that only
 * reads (`istio-vm config`, the agent's start) never loads it.
 */
export function fsp(): typeof FsPromises {
  return loadBuiltin("node:fs/promises") as typeof FsPromises;
}

/** A node:fs callback call as a promise (node:util's promisify, without loading node:util). */
function promised<T>(call: (done: (error: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    call((error, value) => {
      if (error === null) resolve(value);
      else reject(error);
    });
  });
}

const readBytes = (path: string): Promise<Buffer> =>
  promised<Buffer>((done) => {
    readFile(path, done);
  });
const readUtf8 = (path: string): Promise<string> =>
  promised<string>((done) => {
    readFile(path, "utf8", done);
  });

/**
 * Below this size a regular file is read synchronously by `readTextIfExists`. The first asynchronous file operation
 * of a process starts libuv's thread pool (4 threads) and waits for one of them to run: 3-7 ms of a short command's
 * start on a busy 2-core machine, more than reading a configuration file takes. Commands that read only a few small
 * files (`istio-vm config`, `iptables apply`: cluster.env and sidecar.env) then never start the pool. Anything else
 * (a FIFO, a device, a large file, an error) goes through the asynchronous read as before, so a read can still not
 * block the event loop on something that never ends.
 */
const SYNC_READ_LIMIT = 256 * 1024;

/** `{ text }` for a small regular file, `{ text: undefined }` when there is no file, undefined to read it async. */
function readSmallRegularFile(path: string): { readonly text: string | undefined } | undefined {
  let stats: Stats | undefined;
  try {
    stats = statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
  if (stats === undefined) return { text: undefined };
  if (!stats.isFile() || stats.size > SYNC_READ_LIMIT) return undefined;
  try {
    return { text: readFileSync(path, "utf8") };
  } catch {
    return undefined;
  }
}

export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

export interface WriteOptions {
  /** File mode, e.g. 0o600 for keys and tokens, 0o644 for public files. Always set explicitly. */
  readonly mode: number;
  /** Owner of the new file; left as the writing process when absent. */
  readonly owner?: FileOwner;
}

export interface FileStat {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  readonly mtimeMs: number;
  readonly isDirectory: boolean;
}

/** The file system as a port. Every write that replaces content goes through `writeFileAtomic`. */
export interface FileSystem {
  readFile(path: string): Promise<Buffer>;
  readText(path: string): Promise<string>;
  /** Reads a file, or returns undefined when it does not exist (other errors still throw). */
  readTextIfExists(path: string): Promise<string | undefined>;
  /**
   * The first `limit` bytes of a file (all of it when shorter). Never reads more, so it is safe on a file a user
   * names: /dev/zero, a FIFO, a huge log.
   */
  readPrefix(path: string, limit: number): Promise<Buffer>;
  /**
   * Replaces `path` so that a reader sees either the old or the new content, never a mix or a truncated file,
   * also after a crash: write a temporary file in the same directory, set mode and owner, fsync, rename, fsync the
   * directory.
   */
  writeFileAtomic(path: string, data: string | Uint8Array, options: WriteOptions): Promise<void>;
  exists(path: string): Promise<boolean>;
  stat(path: string): Promise<FileStat | undefined>;
  mkdirp(path: string, mode?: number): Promise<void>;
  readdir(path: string): Promise<string[]>;
  /** Removes a file or an empty directory; a missing one is not an error. */
  remove(path: string): Promise<void>;
  chown(path: string, owner: FileOwner): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
}

/** ENOENT: the path (or a directory on it) does not exist. */
export function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

/** Makes the directory's entries (a rename, a new link) durable. */
export async function fsyncDirectory(path: string): Promise<void> {
  const handle = await fsp().open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A name beside `path` for the new version before it is renamed over `path`: unique per process and call. */
export function temporaryName(path: string): string {
  // node:crypto loads on first use: `istio-vm --version` and `config` never write a file.
  const { randomBytes } = loadBuiltin("node:crypto") as typeof Crypto;
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, options: WriteOptions): Promise<void> {
  const dir = dirname(path);
  const tmp = temporaryName(path);
  // O_EXCL: never follow or reuse a file someone planted under the temporary name.
  const handle = await fsp().open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, options.mode);
  try {
    try {
      await handle.writeFile(data);
      await handle.chmod(options.mode);
      if (options.owner !== undefined) await handle.chown(options.owner.uid, options.owner.gid);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fsp().rename(tmp, path);
  } catch (error) {
    await fsp().rm(tmp, { force: true });
    throw error;
  }
  await fsyncDirectory(dir);
}

export const nodeFileSystem: FileSystem = {
  readFile: readBytes,
  readText: readUtf8,
  async readTextIfExists(path) {
    const small = readSmallRegularFile(path);
    if (small !== undefined) return small.text;
    try {
      return await readUtf8(path);
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  },
  async readPrefix(path, limit) {
    const handle = await fsp().open(path, "r");
    try {
      // Chunk by chunk: the limit is a bound, not a size to allocate.
      const chunks: Buffer[] = [];
      let total = 0;
      while (total < limit) {
        const chunk = Buffer.alloc(Math.min(1 << 20, limit - total));
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, null);
        if (bytesRead === 0) break;
        chunks.push(chunk.subarray(0, bytesRead));
        total += bytesRead;
      }
      return Buffer.concat(chunks, total);
    } finally {
      await handle.close();
    }
  },
  writeFileAtomic,
  async exists(path) {
    try {
      await promised<Stats>((done) => {
        lstat(path, done);
      });
      return true;
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  },
  async stat(path) {
    try {
      const s = await promised<Stats>((done) => {
        stat(path, done);
      });
      return {
        mode: s.mode & 0o7777,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        mtimeMs: s.mtimeMs,
        isDirectory: s.isDirectory(),
      };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  },
  async mkdirp(path, mode) {
    await fsp().mkdir(path, { recursive: true, ...(mode === undefined ? {} : { mode }) });
  },
  readdir: (path) =>
    promised<string[]>((done) => {
      readdir(path, done);
    }),
  async remove(path) {
    try {
      await fsp().rm(path, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ERR_FS_EISDIR") throw error;
      await fsp().rmdir(path);
    }
  },
  chown: (path, owner) => fsp().chown(path, owner.uid, owner.gid),
  chmod: (path, mode) => fsp().chmod(path, mode),
};
