/**
 * The certificate store in OUTPUT_CERTS (/etc/certs): the key and its certificate chain are replaced as one unit, so
 * a reader never finds a key next to a certificate it does not belong to, even if the writer is killed mid-way.
 *
 * Layout (paths Envoy and the docs use are kept as symbolic links):
 *
 *     /etc/certs/root-cert.pem             regular file, installed by `istio-vm install`; never written here
 *     /etc/certs/key.pem                -> live/key.pem
 *     /etc/certs/cert-chain.pem         -> live/cert-chain.pem
 *     /etc/certs/live                   -> pairs/<id>
 *     /etc/certs/pairs/<id>/key.pem        0600 istio-proxy
 *     /etc/certs/pairs/<id>/cert-chain.pem 0644 istio-proxy
 *
 * A new pair is written into a fresh directory (under a temporary name, fsynced, renamed into place), then `live` is
 * swapped with one rename(2). Pair directories are never modified after creation; the previous one is kept so a reader
 * that resolved `live` just before the swap can still read both files from it.
 *
 * `istio-vm install` writes key.pem and cert-chain.pem as plain files. The first replacement migrates them: the
 * installed pair is copied into a pair directory, `live` points at it, and each plain file is replaced by its link
 * (every step leaves a matching pair visible) before the new pair is swapped in.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { LinkFileSystem } from "../platform/links.js";
import type { ProcessRunner } from "../platform/process.js";
import type { VerifiedPair } from "./verify.js";
import { verifyPair } from "./verify.js";

export const KEY_FILE = "key.pem";
export const CHAIN_FILE = "cert-chain.pem";
export const ROOT_FILE = "root-cert.pem";
const LIVE = "live";
const PAIRS = "pairs";

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

/** `.NAME.tmp-<pid>-<hex>`: the temporary names of platform/fs.ts and platform/links.ts. */
const TEMPORARY = /^\..+\.tmp-(\d+)-[0-9a-f]+$/;

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

  /** True when key.pem and cert-chain.pem are links into `live` (written by this store). */
  async #linked(): Promise<boolean> {
    const [key, chain] = await Promise.all([
      this.#links.readSymlink(this.paths.key),
      this.#links.readSymlink(this.paths.chain),
    ]);
    return key === join(LIVE, KEY_FILE) && chain === join(LIVE, CHAIN_FILE);
  }

  /**
   * The current pair, read as one consistent snapshot: through one resolution of `live` when the store's layout is
   * in place, else the two plain files. Undefined when either file is missing.
   */
  async read(): Promise<CertPair | undefined> {
    let keyPath = this.paths.key;
    let chainPath = this.paths.chain;
    const live = await this.#links.readSymlink(join(this.paths.dir, LIVE));
    if (live !== undefined && (await this.#linked())) {
      keyPath = join(this.paths.dir, live, KEY_FILE);
      chainPath = join(this.paths.dir, live, CHAIN_FILE);
    }
    const [keyPem, chainPem] = await Promise.all([
      this.#fs.readTextIfExists(keyPath),
      this.#fs.readTextIfExists(chainPath),
    ]);
    if (keyPem === undefined || chainPem === undefined) return undefined;
    return { keyPem, chainPem };
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
    await this.#replace(pair);
    return verified;
  }

  async #writePairDirectory(pair: CertPair): Promise<string> {
    const id = randomBytes(8).toString("hex");
    const relative = join(PAIRS, id);
    await this.#links.writeDirectoryAtomic(
      join(this.paths.dir, relative),
      [
        { name: KEY_FILE, data: pair.keyPem, mode: 0o600 },
        { name: CHAIN_FILE, data: pair.chainPem, mode: 0o644 },
      ],
      { mode: 0o755, ...(this.#owner === undefined ? {} : { owner: this.#owner }) },
    );
    return relative;
  }

  async #pointLinksAtLive(): Promise<void> {
    // The chain first: while only one of the two is a link, both still resolve to the same pair (see migrate).
    await this.#links.replaceSymlink(this.paths.chain, join(LIVE, CHAIN_FILE), this.#owner);
    await this.#links.replaceSymlink(this.paths.key, join(LIVE, KEY_FILE), this.#owner);
  }

  async #replace(pair: CertPair): Promise<void> {
    await this.#fs.mkdirp(join(this.paths.dir, PAIRS), 0o755);
    await this.#removeAbandonedTemporaries();
    const liveLink = join(this.paths.dir, LIVE);
    if (!(await this.#linked())) {
      // Migrate the plain files of `istio-vm install` (or a layout broken by hand) without a moment of mismatch.
      const [keyPem, chainPem] = await Promise.all([
        this.#fs.readTextIfExists(this.paths.key),
        this.#fs.readTextIfExists(this.paths.chain),
      ]);
      if (keyPem !== undefined && chainPem !== undefined) {
        const installed = await this.#writePairDirectory({ keyPem, chainPem });
        await this.#links.replaceSymlink(liveLink, installed, this.#owner);
      }
    }
    const previous = await this.#links.readSymlink(liveLink);
    const next = await this.#writePairDirectory(pair);
    await this.#links.replaceSymlink(liveLink, next, this.#owner);
    if (!(await this.#linked())) await this.#pointLinksAtLive();
    await this.#removeOldPairs(new Set([next, ...(previous === undefined ? [] : [previous])]));
  }

  /** Keeps the current and the previous pair directory; removes the rest. */
  async #removeOldPairs(keep: ReadonlySet<string>): Promise<void> {
    for (const name of await this.#fs.readdir(join(this.paths.dir, PAIRS))) {
      if (TEMPORARY.test(name)) continue;
      if (!keep.has(join(PAIRS, name))) await this.#links.removeTree(join(this.paths.dir, PAIRS, name));
    }
  }

  /** Temporary files and directories of writers that died (SIGKILL, power loss) before their rename. */
  async #removeAbandonedTemporaries(): Promise<void> {
    for (const dir of [this.paths.dir, join(this.paths.dir, PAIRS)]) {
      for (const name of await this.#fs.readdir(dir)) {
        const m = TEMPORARY.exec(name);
        if (m !== null && !processAlive(Number(m[1]))) await this.#links.removeTree(join(dir, name));
      }
    }
  }
}

/**
 * The owner of certificate files: ENVOY_USER's uid and gid when running as root (looked up with getent, so NSS users
 * work), undefined otherwise (the files then belong to the running user, which is istio-proxy under systemd).
 */
export async function resolveCertOwner(
  user: string,
  deps: { readonly runner: ProcessRunner; readonly uid: number | undefined },
): Promise<FileOwner | undefined> {
  if (deps.uid !== 0) return undefined;
  const result = await deps.runner.run("getent", ["passwd", user], { timeoutMs: 5000 });
  const fields = result.code === 0 ? result.stdout.trim().split(":") : [];
  const uid = Number(fields[2]);
  const gid = Number(fields[3]);
  if (fields.length < 4 || !Number.isInteger(uid) || !Number.isInteger(gid)) return undefined;
  return { uid, gid };
}
