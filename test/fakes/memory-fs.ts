/** An in-memory FileSystem for unit tests: paths are plain keys, modes and owners are recorded. */
import type { FileOwner, FileStat, FileSystem, WriteOptions } from "../../src/platform/fs.js";

interface Entry {
  data: Buffer;
  mode: number;
  owner: FileOwner | undefined;
}

export class MemoryFileSystem implements FileSystem {
  readonly files = new Map<string, Entry>();
  readonly dirs = new Set<string>();

  constructor(initial: Record<string, string> = {}) {
    for (const [path, text] of Object.entries(initial)) {
      this.files.set(path, { data: Buffer.from(text), mode: 0o644, owner: undefined });
    }
  }

  #enoent(path: string): Error {
    return Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: "ENOENT" });
  }

  readFile(path: string): Promise<Buffer> {
    const entry = this.files.get(path);
    return entry === undefined ? Promise.reject(this.#enoent(path)) : Promise.resolve(Buffer.from(entry.data));
  }
  async readText(path: string): Promise<string> {
    return (await this.readFile(path)).toString("utf8");
  }
  readPrefix(path: string, limit: number): Promise<Buffer> {
    if (this.dirs.has(path)) {
      const error = new Error(`EISDIR: illegal operation on a directory, read`);
      return Promise.reject(Object.assign(error, { code: "EISDIR" }));
    }
    return this.readFile(path).then((data) => data.subarray(0, limit));
  }
  readTextIfExists(path: string): Promise<string | undefined> {
    return Promise.resolve(this.files.get(path)?.data.toString("utf8"));
  }
  writeFileAtomic(path: string, data: string | Uint8Array, options: WriteOptions): Promise<void> {
    this.files.set(path, { data: Buffer.from(data), mode: options.mode, owner: options.owner });
    return Promise.resolve();
  }
  exists(path: string): Promise<boolean> {
    return Promise.resolve(this.files.has(path) || this.dirs.has(path));
  }
  stat(path: string): Promise<FileStat | undefined> {
    const entry = this.files.get(path);
    if (entry !== undefined) {
      return Promise.resolve({
        mode: entry.mode,
        uid: entry.owner?.uid ?? 0,
        gid: entry.owner?.gid ?? 0,
        size: entry.data.length,
        mtimeMs: 0,
        isDirectory: false,
      });
    }
    if (this.dirs.has(path)) {
      return Promise.resolve({ mode: 0o755, uid: 0, gid: 0, size: 0, mtimeMs: 0, isDirectory: true });
    }
    return Promise.resolve(undefined);
  }
  mkdirp(path: string): Promise<void> {
    this.dirs.add(path);
    return Promise.resolve();
  }
  readdir(path: string): Promise<string[]> {
    const prefix = path.endsWith("/") ? path : `${path}/`;
    const names = new Set<string>();
    for (const p of [...this.files.keys(), ...this.dirs]) {
      if (p.startsWith(prefix)) names.add(p.slice(prefix.length).split("/")[0] ?? "");
    }
    return Promise.resolve([...names].filter((n) => n !== "").sort());
  }
  remove(path: string): Promise<void> {
    const prefix = `${path}/`;
    if (this.dirs.has(path) && [...this.files.keys(), ...this.dirs].some((p) => p.startsWith(prefix))) {
      return Promise.reject(Object.assign(new Error(`ENOTEMPTY: ${path}`), { code: "ENOTEMPTY" }));
    }
    this.files.delete(path);
    this.dirs.delete(path);
    return Promise.resolve();
  }
  chown(path: string, owner: FileOwner): Promise<void> {
    const entry = this.files.get(path);
    if (entry === undefined) return Promise.reject(this.#enoent(path));
    entry.owner = owner;
    return Promise.resolve();
  }
  chmod(path: string, mode: number): Promise<void> {
    const entry = this.files.get(path);
    if (entry === undefined) return Promise.reject(this.#enoent(path));
    entry.mode = mode;
    return Promise.resolve();
  }
}
