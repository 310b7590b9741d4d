/**
 * The first look at a bundle file a user named (`install FILE`, `setup --bundle FILE`): before it is read whole, it
 * must exist, be a file, and start as gzip data does. A wrong path (a directory, /dev/zero, a key file) is then a
 * usage error naming the file, instead of a crash or a read without end; a damaged bundle is still reported by the
 * verification (src/provision/bundle.ts) as a failure.
 */
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";

/** gzip's magic number (RFC 1952, section 2.3.1). */
const GZIP_MAGIC = [0x1f, 0x8b];

export async function checkBundleFile(fs: FileSystem, path: string, flag: string): Promise<void> {
  const usage = (code: string, message: string, hint: string): AgentError =>
    new AgentError({ code, message: `${flag} ${path} ${message}`, subject: path, kind: "usage", hint });
  const make = "make one with `istio-vm bundle -o FILE` and copy it here";
  let head: Buffer;
  try {
    head = await fs.readPrefix(path, GZIP_MAGIC.length);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    if (code === "ENOENT" || code === "ENOTDIR") throw usage("BUNDLE_NOT_FOUND", "does not exist", make);
    if (code === "EISDIR") throw usage("BUNDLE_INVALID", "is a directory, not a bundle", make);
    const reason = error instanceof Error ? error.message : String(error);
    throw usage("BUNDLE_UNREADABLE", `cannot be read: ${reason}`, "check the file's permissions");
  }
  if (head.length < GZIP_MAGIC.length || GZIP_MAGIC.some((b, i) => head[i] !== b)) {
    throw usage("BUNDLE_INVALID", "is not a bundle (not gzip-compressed tar)", make);
  }
}
