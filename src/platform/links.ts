/**
 * Symbolic links and whole-directory writes: what the certificate store needs to replace a key and its certificate
 * as one unit (see src/certs/store.ts, which states the guarantee and counts the fsyncs). `replaceSymlink` is atomic
 * and durable when it returns; `writeDirectory` makes a directory nobody names yet durable in its content.
 */
import { constants } from "node:fs";
import { dirname, join } from "node:path";
import type { FileOwner } from "./fs.js";
import { fsp, fsyncDirectory, isNotFound, temporaryName } from "./fs.js";

export interface DirectoryFile {
  readonly name: string;
  readonly data: string | Uint8Array;
  readonly mode: number;
}

export interface LinkFileSystem {
  /** Points `path` at `target` atomically: a new link under a temporary name, renamed over whatever `path` was. */
  replaceSymlink(path: string, target: string, owner?: FileOwner): Promise<void>;
  /** The target of a symbolic link, or undefined when `path` is missing or not a link. */
  readSymlink(path: string): Promise<string | undefined>;
  /**
   * Creates directory `dir` (which must not exist) holding `files`, and fsyncs each file and then `dir` itself, so
   * its content is on disk before anything names it. `dir`'s own entry in its parent is made durable by the caller's
   * next fsync of the parent (the certificate store's swap). On error the directory is removed again.
   */
  writeDirectory(
    dir: string,
    files: readonly DirectoryFile[],
    options: { readonly mode: number; readonly owner?: FileOwner },
  ): Promise<void>;
  /** Removes a file or a directory tree; missing is not an error. */
  removeTree(path: string): Promise<void>;
}

export const nodeLinkFileSystem: LinkFileSystem = {
  async replaceSymlink(path, target, owner) {
    const tmp = temporaryName(path);
    await fsp().symlink(target, tmp);
    try {
      if (owner !== undefined) await fsp().lchown(tmp, owner.uid, owner.gid);
      await fsp().rename(tmp, path);
    } catch (error) {
      await fsp().rm(tmp, { force: true });
      throw error;
    }
    await fsyncDirectory(dirname(path));
  },
  async readSymlink(path) {
    try {
      return await fsp().readlink(path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (isNotFound(error) || code === "EINVAL") return undefined;
      throw error;
    }
  },
  async writeDirectory(dir, files, options) {
    await fsp().mkdir(dir, { mode: options.mode });
    try {
      await fsp().chmod(dir, options.mode);
      if (options.owner !== undefined) await fsp().chown(dir, options.owner.uid, options.owner.gid);
      // The files are written and fsynced side by side (the thread pool runs both fsyncs at once); the directory's
      // own fsync, or the clean-up after a failure, waits for all of them.
      const written = await Promise.allSettled(
        files.map(async (file) => {
          const handle = await fsp().open(
            join(dir, file.name),
            constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
            file.mode,
          );
          try {
            await handle.writeFile(file.data);
            await handle.chmod(file.mode);
            if (options.owner !== undefined) await handle.chown(options.owner.uid, options.owner.gid);
            await handle.sync();
          } finally {
            await handle.close();
          }
        }),
      );
      const failed = written.find((r) => r.status === "rejected");
      if (failed !== undefined) throw failed.reason;
      await fsyncDirectory(dir);
    } catch (error) {
      await fsp().rm(dir, { recursive: true, force: true });
      throw error;
    }
  },
  removeTree: (path) => fsp().rm(path, { recursive: true, force: true }),
};
