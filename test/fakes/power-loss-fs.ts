/**
 * A file system that can lose power: the FileSystem and LinkFileSystem ports over an in-memory tree that keeps, next
 * to what a process sees, what a crash would leave — only what an fsync covered (POSIX promises no more): a file's
 * data once the file was fsynced, a directory's entries (names, links, renames, removals) once the directory was.
 * `crashAfter(n)` lets n more primitive steps happen (mkdir, create+write, fsync, symlink, rename, remove), then
 * throws `PowerLoss` from the next one; `recover(keep)` returns the tree a reboot would find, where `keep(dir)` says
 * for which directories the un-synced entries happened to reach the disk anyway (a journal may commit them early, in
 * any order). A file whose data was never fsynced comes back empty. Counts fsyncs.
 */
import { dirname, join } from "node:path";
import type { FileStat, FileSystem } from "../../src/platform/fs.js";
import type { DirectoryFile, LinkFileSystem } from "../../src/platform/links.js";

type Node = FileNode | DirNode | LinkNode;
interface FileNode {
  kind: "file";
  data: string;
  synced: string | undefined;
}
interface DirNode {
  kind: "dir";
  entries: Map<string, Node>;
  synced: Map<string, Node>;
}
interface LinkNode {
  kind: "link";
  target: string;
}

export class PowerLoss extends Error {
  constructor() {
    super("power lost");
    this.name = "PowerLoss";
  }
}

function enoent(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
}

const dir = (): DirNode => ({ kind: "dir", entries: new Map(), synced: new Map() });

export class PowerLossFileSystem implements FileSystem, LinkFileSystem {
  root: DirNode = dir();
  fsyncs = 0;
  #budget = Infinity;

  /** Everything as it is now, made durable (a clean starting point). */
  syncAll(node: Node = this.root): void {
    if (node.kind === "file") node.synced = node.data;
    if (node.kind === "dir") {
      node.synced = new Map(node.entries);
      for (const child of node.entries.values()) this.syncAll(child);
    }
  }

  crashAfter(steps: number): void {
    this.#budget = steps;
  }

  /** The tree after a reboot; `keep(path)`: that directory's un-synced entries reached the disk too. */
  recover(keep: (path: string) => boolean = () => false): PowerLossFileSystem {
    const copy = (node: Node, path: string): Node => {
      if (node.kind === "file") return { kind: "file", data: node.synced ?? "", synced: node.synced ?? "" };
      if (node.kind === "link") return { ...node };
      const source = keep(path) ? node.entries : node.synced;
      const entries = new Map([...source].map(([name, child]) => [name, copy(child, join(path, name))]));
      return { kind: "dir", entries, synced: new Map(entries) };
    };
    const fs = new PowerLossFileSystem();
    fs.root = copy(this.root, "/") as DirNode;
    return fs;
  }

  #step(): void {
    if (this.#budget <= 0) throw new PowerLoss();
    this.#budget--;
  }

  /** The node at `path`, following symbolic links (also in the last component unless `noFollow`). */
  #lookup(path: string, noFollow = false, depth = 0): Node | undefined {
    if (depth > 16) throw Object.assign(new Error(`ELOOP: ${path}`), { code: "ELOOP" });
    let node: Node = this.root;
    let at = "/";
    const parts = path.split("/").filter((p) => p !== "");
    for (const [i, part] of parts.entries()) {
      if (node.kind !== "dir") return undefined;
      const child = node.entries.get(part);
      if (child === undefined) return undefined;
      const last = i === parts.length - 1;
      if (child.kind === "link" && !(last && noFollow)) {
        const resolved = this.#lookup(
          join(at, child.target, ...parts.slice(i + 1)).replace(/^(?!\/)/, "/"),
          noFollow,
          depth + 1,
        );
        return resolved;
      }
      node = child;
      at = join(at, part);
    }
    return node;
  }

  #parent(path: string): DirNode {
    const parent = this.#lookup(dirname(path));
    if (parent?.kind !== "dir") throw enoent(dirname(path));
    return parent;
  }

  #name(path: string): string {
    return (
      path
        .split("/")
        .filter((p) => p !== "")
        .pop() ?? ""
    );
  }

  // FileSystem: what the certificate store reads, and whole-file writes to set up a test.
  readTextIfExists(path: string): Promise<string | undefined> {
    const node = this.#lookup(path);
    return Promise.resolve(node?.kind === "file" ? node.data : undefined);
  }
  async readText(path: string): Promise<string> {
    const text = await this.readTextIfExists(path);
    if (text === undefined) throw enoent(path);
    return text;
  }
  async readFile(path: string): Promise<Buffer> {
    return Buffer.from(await this.readText(path));
  }
  async readPrefix(path: string, limit: number): Promise<Buffer> {
    return (await this.readFile(path)).subarray(0, limit);
  }
  /** Durable when it returns, as the real one (temporary file, fsync, rename, fsync of the directory). */
  writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
    const parent = this.#parent(path);
    const text = typeof data === "string" ? data : Buffer.from(data).toString();
    parent.entries.set(this.#name(path), { kind: "file", data: text, synced: text });
    parent.synced = new Map(parent.entries);
    return Promise.resolve();
  }
  exists(path: string): Promise<boolean> {
    return Promise.resolve(this.#lookup(path) !== undefined);
  }
  stat(path: string): Promise<FileStat | undefined> {
    const node = this.#lookup(path);
    if (node === undefined) return Promise.resolve(undefined);
    const size = node.kind === "file" ? Buffer.byteLength(node.data) : 0;
    return Promise.resolve({ mode: 0o644, uid: 0, gid: 0, size, mtimeMs: 0, isDirectory: node.kind === "dir" });
  }
  mkdirp(path: string): Promise<void> {
    let at = "/";
    for (const part of path.split("/").filter((p) => p !== "")) {
      const parent = this.#lookup(at) as DirNode;
      if (!parent.entries.has(part)) parent.entries.set(part, dir());
      at = join(at, part);
    }
    return Promise.resolve();
  }
  readdir(path: string): Promise<string[]> {
    const node = this.#lookup(path);
    if (node?.kind !== "dir") return Promise.reject(enoent(path));
    return Promise.resolve([...node.entries.keys()].sort());
  }
  remove(path: string): Promise<void> {
    return this.removeTree(path);
  }
  chown(path: string): Promise<void> {
    return this.#lookup(path) === undefined ? Promise.reject(enoent(path)) : Promise.resolve();
  }
  chmod(path: string): Promise<void> {
    return this.#lookup(path) === undefined ? Promise.reject(enoent(path)) : Promise.resolve();
  }

  // LinkFileSystem, step by step as platform/links.ts does it.
  replaceSymlink(path: string, target: string): Promise<void> {
    const parent = this.#parent(path);
    const tmp = `.${this.#name(path)}.tmp-${process.pid}-0`;
    this.#step();
    parent.entries.set(tmp, { kind: "link", target });
    this.#step();
    const link = parent.entries.get(tmp) as Node;
    parent.entries.delete(tmp);
    parent.entries.set(this.#name(path), link);
    this.#step();
    parent.synced = new Map(parent.entries);
    this.fsyncs++;
    return Promise.resolve();
  }
  readSymlink(path: string): Promise<string | undefined> {
    const node = this.#lookup(path, true);
    return Promise.resolve(node?.kind === "link" ? node.target : undefined);
  }
  writeDirectory(path: string, files: readonly DirectoryFile[]): Promise<void> {
    const parent = this.#parent(path);
    const name = this.#name(path);
    if (parent.entries.has(name))
      return Promise.reject(Object.assign(new Error(`EEXIST: ${path}`), { code: "EEXIST" }));
    this.#step();
    const created = dir();
    parent.entries.set(name, created);
    const nodes: FileNode[] = [];
    for (const file of files) {
      this.#step();
      const node: FileNode = {
        kind: "file",
        data: typeof file.data === "string" ? file.data : Buffer.from(file.data).toString(),
        synced: undefined,
      };
      created.entries.set(file.name, node);
      nodes.push(node);
    }
    for (const node of nodes) {
      this.#step();
      node.synced = node.data;
      this.fsyncs++;
    }
    this.#step();
    created.synced = new Map(created.entries);
    this.fsyncs++;
    return Promise.resolve();
  }
  removeTree(path: string): Promise<void> {
    const parent = this.#lookup(dirname(path));
    if (parent?.kind !== "dir" || !parent.entries.has(this.#name(path))) return Promise.resolve();
    this.#step();
    parent.entries.delete(this.#name(path));
    return Promise.resolve();
  }
}
