/**
 * The certificate store in OUTPUT_CERTS (/etc/certs): the key and its certificate chain are replaced as one unit,
 * crash-safe, in the layout of Kubernetes' atomic writer (kubernetes pkg/volume/util/atomic_writer.go, v1.33), whose
 * `..data` link tools such as Envoy's `watched_directory` already know:
 *
 *     /etc/certs/root-cert.pem       regular file, 0644, installed by `istio-vm install`; never written here
 *     /etc/certs/key.pem          -> ..data/key.pem
 *     /etc/certs/cert-chain.pem   -> ..data/cert-chain.pem
 *     /etc/certs/..data           -> ..2026_12_05_11_51_42.<pid>-<hex>      (one generation: a pair, never modified)
 *     /etc/certs/..<generation>/key.pem          0600 ENVOY_USER
 *     /etc/certs/..<generation>/cert-chain.pem   0644 ENVOY_USER
 *
 * What a reader gets (the guarantee):
 * - Each file, opened by its name, is complete: all of one generation's file, never a partial write, at every
 *   moment and after a crash at any point (SIGKILL, power loss) of a write.
 * - A pair read through ONE resolution of `..data` belongs together: readlink `..data` once and read both files
 *   from the generation it names (or open `..data` as a directory and openat() both). A generation never changes
 *   once `..data` has named it. The current and the previous generation are kept; a reader that sees ENOENT was
 *   outpaced by two swaps and reads again. `CertStore.read()` does exactly this.
 * - Opening `key.pem` and then `cert-chain.pem` by name are two resolutions: a swap between them yields a key and a
 *   chain of different generations. No file layout can prevent that for a reader that does not cooperate (the
 *   writer cannot hold a path lookup back); such a reader detects it by reading `..data` before and after its two
 *   reads and reading again when it changed. Envoy reads the files by name when the agent starts it (or a new
 *   epoch after a swap); a swap that lands during that start changes the files again, which the supervisor's poll
 *   sees, so another epoch reads a matching pair.
 * - Concurrent writers (the agent and `istio-vm certs renew`) do not corrupt each other: the last swap wins, and a
 *   writer removes only its own old generations or those of writers that died.
 *
 * A write is four fsyncs, the fewest that keep it crash-safe on a POSIX file system, which promises durability only
 * for what an fsync covered: each of the two files (their data must be on disk before a name points at them; the two
 * are written and fsynced side by side, so they cost the wall time of one), the generation directory (the entries
 * of both files: without it a crash after the swap could leave `..data` naming a directory that comes back empty),
 * and /etc/certs after the rename of a new `..data` link over the old one (the swap itself, together with the
 * generation's own entry made in the same directory earlier). Fewer is not safe: one fsync of the directory cannot
 * stand in for the files' (it does not write their data), and the files' cannot stand in for their directory's
 * entries. After the last fsync the new pair survives power loss, so only then are older generations removed.
 * (Before this layout a write took five: the pair directory was renamed into place too; issue 14's table counted
 * six, the temporary-link layout before that.)
 *
 * Upgrades: `istio-vm install` writes key.pem and cert-chain.pem as plain files, and earlier versions of this store
 * linked them through `live` -> `pairs/<id>`. A write first migrates whatever it finds without changing what the
 * two names show: the visible pair is copied into a generation, `..data` names it, then cert-chain.pem and key.pem
 * become links one at a time (both still show that pair); only then is the new pair swapped in, and the old `live`
 * and `pairs/` are removed after it. A crash anywhere in this leaves both names showing the same pair, and the next
 * write resumes. A migrating write takes ten fsyncs (3 for the copy, 1 each for `..data` and the two links, then 4).
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { LinkFileSystem } from "../platform/links.js";
import type { UserDirectory } from "../platform/users.js";
import type { VerifiedPair } from "./verify.js";
import { verifyPair } from "./verify.js";

export const KEY_FILE = "key.pem";
export const CHAIN_FILE = "cert-chain.pem";
export const ROOT_FILE = "root-cert.pem";
/** The link both names resolve through (Kubernetes' name for it). */
export const DATA_LINK = "..data";
/** The layout of earlier versions, migrated on the first write. */
const OLD_LIVE = "live";
const OLD_PAIRS = "pairs";
/** A reader that loses a generation to two swaps while reading tries again, this many times at most. */
const READ_ATTEMPTS = 5;

export interface CertPair {
  readonly keyPem: string;
  readonly chainPem: string;
}

export interface CertStoreOptions {
  /** OUTPUT_CERTS. */
  readonly dir: string;
  readonly fs: FileSystem;
  readonly links: LinkFileSystem;
  /** Owner of new files (istio-proxy); absent: the writing process (tests, or an agent already running as it). */
  readonly owner?: FileOwner;
}

export interface CertStorePaths {
  readonly dir: string;
  readonly key: string;
  readonly chain: string;
  readonly root: string;
}

/** `.NAME.tmp-<pid>-<hex>`: the temporary links of platform/links.ts. */
const TEMPORARY = /^\..+\.tmp-(\d+)-[0-9a-f]+$/;
/** `..YYYY_MM_DD_HH_MM_SS.<pid>-<hex>`: a generation directory, named for when and by whom it was written. */
const GENERATION = /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.(\d+)-[0-9a-f]+$/;

/** Generations this process is writing and has not swapped in yet: its own clean-up must not take them. */
const inFlight = new Set<string>();

function generationName(now: number): string {
  const stamp = new Date(now).toISOString().slice(0, 19).replace(/[-T:]/g, "_");
  return `..${stamp}.${String(process.pid)}-${randomBytes(4).toString("hex")}`;
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class CertStore {
  readonly paths: CertStorePaths;
  readonly #fs: FileSystem;
  readonly #links: LinkFileSystem;
  readonly #owner: FileOwner | undefined;

  constructor(options: CertStoreOptions) {
    this.#fs = options.fs;
    this.#links = options.links;
    this.#owner = options.owner;
    this.paths = {
      dir: options.dir,
      key: join(options.dir, KEY_FILE),
      chain: join(options.dir, CHAIN_FILE),
      root: join(options.dir, ROOT_FILE),
    };
  }

  /** The trust anchors (root-cert.pem), or undefined when it is missing. */
  async readRoot(): Promise<string | undefined> {
    return await this.#fs.readTextIfExists(this.paths.root);
  }

  /** The generation `..data` names, when key.pem and cert-chain.pem both resolve through it. */
  async #current(): Promise<string | undefined> {
    const [data, key, chain] = await Promise.all([
      this.#links.readSymlink(join(this.paths.dir, DATA_LINK)),
      this.#links.readSymlink(this.paths.key),
      this.#links.readSymlink(this.paths.chain),
    ]);
    const linked = key === join(DATA_LINK, KEY_FILE) && chain === join(DATA_LINK, CHAIN_FILE);
    return linked && data !== undefined && GENERATION.test(data) ? data : undefined;
  }

  /**
   * The current pair, as one consistent snapshot (the reader contract above): through one resolution of `..data`
   * when the store's layout is in place, else the two files by name (an installed pair, or an earlier layout, which
   * nothing swaps while this version runs). Undefined when either file is missing.
   */
  async read(): Promise<CertPair | undefined> {
    for (let attempt = 1; ; attempt++) {
      const generation = await this.#current();
      const keyPath = generation === undefined ? this.paths.key : join(this.paths.dir, generation, KEY_FILE);
      const chainPath = generation === undefined ? this.paths.chain : join(this.paths.dir, generation, CHAIN_FILE);
      const [keyPem, chainPem] = await Promise.all([
        this.#fs.readTextIfExists(keyPath),
        this.#fs.readTextIfExists(chainPath),
      ]);
      if (keyPem !== undefined && chainPem !== undefined) return { keyPem, chainPem };
      // A generation removed under the reader (two swaps meanwhile) is read again from the new one.
      if (generation === undefined || attempt >= READ_ATTEMPTS || (await this.#current()) === generation)
        return undefined;
    }
  }

  /**
   * Verifies `pair` (chain to root-cert.pem, identity, validity, key match) and only then makes it the current pair.
   * Throws `CertificateRejected` (the old pair stays) or a file-system error (the old pair stays too).
   */
  async accept(
    pair: CertPair,
    check: { readonly expectedIdentity: string; readonly now: number },
  ): Promise<VerifiedPair> {
    const rootPem = await this.readRoot();
    if (rootPem === undefined)
      throw new Error(`${this.paths.root} is missing: it is installed by \`istio-vm install\``);
    const verified = verifyPair({ ...pair, rootPem, ...check });
    await this.#replace(pair, check.now);
    return verified;
  }

  /** A new generation directory holding `pair` (3 fsyncs: both files, the directory); nothing names it yet. */
  async #writeGeneration(pair: CertPair, now: number, written: string[]): Promise<string> {
    const name = generationName(now);
    inFlight.add(join(this.paths.dir, name));
    written.push(name);
    await this.#links.writeDirectory(
      join(this.paths.dir, name),
      [
        { name: KEY_FILE, data: pair.keyPem, mode: 0o600 },
        { name: CHAIN_FILE, data: pair.chainPem, mode: 0o644 },
      ],
      { mode: 0o755, ...(this.#owner === undefined ? {} : { owner: this.#owner }) },
    );
    return name;
  }

  /** The swap: one rename(2) of a new `..data` link, then the fsync of the directory (the 4th fsync). */
  async #pointDataAt(generation: string): Promise<void> {
    await this.#links.replaceSymlink(join(this.paths.dir, DATA_LINK), generation, this.#owner);
  }

  /**
   * Brings plain files (install), the `live`/`pairs` layout or a layout broken by hand to `..data` without changing
   * the pair the two names show. Returns the generation `..data` names afterwards (undefined: there was no pair).
   */
  async #migrate(now: number, written: string[]): Promise<string | undefined> {
    const [keyPem, chainPem] = await Promise.all([
      this.#fs.readTextIfExists(this.paths.key),
      this.#fs.readTextIfExists(this.paths.chain),
    ]);
    if (keyPem === undefined || chainPem === undefined) return undefined;
    const installed = await this.#writeGeneration({ keyPem, chainPem }, now, written);
    await this.#pointDataAt(installed);
    // One name at a time; both show the installed pair throughout, and each step is durable before the next.
    await this.#links.replaceSymlink(this.paths.chain, join(DATA_LINK, CHAIN_FILE), this.#owner);
    await this.#links.replaceSymlink(this.paths.key, join(DATA_LINK, KEY_FILE), this.#owner);
    return installed;
  }

  async #replace(pair: CertPair, now: number): Promise<void> {
    await this.#removeAbandonedTemporaries();
    const written: string[] = [];
    try {
      let previous = await this.#current();
      previous ??= await this.#migrate(now, written);
      const next = await this.#writeGeneration(pair, now, written);
      await this.#pointDataAt(next);
      if (previous === undefined) {
        // First pair in an empty directory: the names appear after `..data` (nothing was there to show before).
        await this.#links.replaceSymlink(this.paths.chain, join(DATA_LINK, CHAIN_FILE), this.#owner);
        await this.#links.replaceSymlink(this.paths.key, join(DATA_LINK, KEY_FILE), this.#owner);
      }
      await this.#removeOldGenerations(new Set([next, ...(previous === undefined ? [] : [previous])]));
    } finally {
      for (const name of written) inFlight.delete(join(this.paths.dir, name));
    }
  }

  /**
   * Keeps the current and the previous generation, and generations a live writer may still be about to swap in;
   * removes this process's other ones, those of writers that died, and the `live`/`pairs` layout of earlier versions.
   */
  async #removeOldGenerations(keep: ReadonlySet<string>): Promise<void> {
    const current = await this.#links.readSymlink(join(this.paths.dir, DATA_LINK));
    const names = await this.#fs.readdir(this.paths.dir);
    for (const name of names) {
      const m = GENERATION.exec(name);
      if (m === null || keep.has(name) || name === current || inFlight.has(join(this.paths.dir, name))) continue;
      const pid = Number(m[1]);
      if (pid === process.pid || !processAlive(pid)) await this.#removeIfAllowed(join(this.paths.dir, name));
    }
    // The old layout is looked at only when the listing shows some of it (a migration, or one a crash interrupted).
    if ((names.includes(OLD_LIVE) || names.includes(OLD_PAIRS)) && (await this.#current()) !== undefined) {
      if ((await this.#links.readSymlink(join(this.paths.dir, OLD_LIVE))) !== undefined)
        await this.#removeIfAllowed(join(this.paths.dir, OLD_LIVE));
      await this.#removeIfAllowed(join(this.paths.dir, OLD_PAIRS));
    }
  }

  /**
   * Clean-up never fails a write whose swap is done: what this user may not remove (a root-owned generation left by
   * `istio-vm certs renew` run without the owner lookup, seen by the agent running as ENVOY_USER) stays for a
   * writer that may.
   */
  async #removeIfAllowed(path: string): Promise<void> {
    try {
      await this.#links.removeTree(path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "EACCES" && code !== "EPERM") throw error;
    }
  }

  /** Temporary links of writers that died (SIGKILL, power loss) before their rename. */
  async #removeAbandonedTemporaries(): Promise<void> {
    for (const name of await this.#fs.readdir(this.paths.dir)) {
      const m = TEMPORARY.exec(name);
      if (m !== null && !processAlive(Number(m[1]))) await this.#removeIfAllowed(join(this.paths.dir, name));
    }
  }
}

/**
 * The owner of certificate files: ENVOY_USER's uid and gid when running as root (from the users port, so NSS users
 * work), undefined otherwise (the files then belong to the running user, which is istio-proxy under systemd).
 */
export async function resolveCertOwner(
  user: string,
  deps: { readonly users: UserDirectory; readonly uid: number | undefined },
): Promise<FileOwner | undefined> {
  if (deps.uid !== 0) return undefined;
  const entry = await deps.users.lookup(user);
  return entry === undefined ? undefined : { uid: entry.uid, gid: entry.gid };
}
