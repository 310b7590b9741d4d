/**
 * The Envoy supervisor's housekeeping (src/envoy/supervisor.ts runs the epochs): who Envoy runs as, the environment
 * it inherits, the hash of the certificates an epoch started with, and the clean-up of what a previous run left
 * before epoch 0.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CertStore } from "../certs/store.js";
import type { ConfigValues } from "../config/registry.js";
import type { Clock } from "../platform/clock.js";
import { AgentError, describeError } from "../platform/errors.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { HttpClient } from "../platform/http.js";
import type { LinkFileSystem } from "../platform/links.js";
import type { Logger } from "../platform/logger.js";
import type { UserDirectory } from "../platform/users.js";
import { usesSds } from "../sds/socket.js";
import { serviceNode } from "./bootstrap.js";

/** What the housekeeping reads: the supervisor's ports and the configuration in force. */
export interface Housekeeping {
  readonly config: ConfigValues;
  readonly fs: FileSystem;
  readonly links: LinkFileSystem;
  readonly http: HttpClient;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly users: UserDirectory;
  readonly hostname: string;
  /** The agent's own uid. */
  readonly uid: number;
}

const SYSTEMD_ONLY = ["NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/** The certificates' part of an epoch's identity (legacy profile: Envoy reads the PEM files at start). */
export async function certificateHash(h: Pick<Housekeeping, "config" | "fs" | "links">): Promise<string> {
  // istiod: Envoy gets its certificates over SDS (src/sds/), so they are no part of an epoch: a renewal is pushed
  // to the running Envoy and starts nothing.
  if (usesSds(h.config)) return "sds";
  // Read as the store's readers must (one snapshot of the pair, src/certs/store.ts), so a hash never mixes two
  // generations. Missing files are skipped, as pilot-agent did: a plain-text profile may have none.
  const store = new CertStore({ dir: h.config.OUTPUT_CERTS, fs: h.fs, links: h.links });
  const [pair, rootPem] = await Promise.all([store.read(), store.readRoot()]);
  const hash = createHash("sha256");
  for (const pem of [pair?.chainPem, pair?.keyPem, rootPem]) if (pem !== undefined) hash.update(pem);
  return hash.digest("hex");
}

/**
 * Before epoch 0: what a previous run left behind that would make Envoy fail to start (shared memory of another
 * user, bootstraps of epochs that no longer run, an Envoy of this VM's still holding the admin port).
 */
export async function prepareFirstEpoch(h: Housekeeping, owner: FileOwner | undefined): Promise<void> {
  await removeStaleSharedMemory(h, owner);
  await removeRetiredBootstraps(h);
  await quitStaleEnvoy(h);
}

/** The uid Envoy runs as owns its shared memory; a file of anyone else's (root's, usually) blocks epoch 0. */
async function removeStaleSharedMemory(h: Housekeeping, owner: FileOwner | undefined): Promise<void> {
  const dir = h.config.ISTIO_SHM_DIR;
  const uid = owner?.uid ?? h.uid;
  // Only this base id's region: another Envoy on the machine (another base id) keeps its own. Envoy since 1.14
  // names it base id × 10, older ones base id itself; for the default 0 both are envoy_shared_memory_0.
  const base = h.config.ENVOY_BASE_ID;
  for (const name of new Set([`envoy_shared_memory_${base * 10}`, `envoy_shared_memory_${base}`])) {
    const path = join(dir, name);
    const stat = await h.fs.stat(path).catch(() => undefined);
    if (stat === undefined || stat.uid === uid) continue;
    try {
      await h.fs.remove(path);
      h.logger.warn("removed stale Envoy shared memory owned by another user", { path, uid: stat.uid });
    } catch (error) {
      h.logger.error("cannot remove stale Envoy shared memory; Envoy will fail to start", {
        path,
        uid: stat.uid,
        error: describeError(error),
        hint: `remove it as root: rm ${path}`,
      });
    }
  }
}

/** Bootstraps of epochs that no longer run (a previous agent killed with its Envoys) are clutter with a key path. */
async function removeRetiredBootstraps(h: Housekeeping): Promise<void> {
  const dir = h.config.ISTIO_PROXY_CONFIG_DIR;
  let names: string[];
  try {
    names = await h.fs.readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (/^envoy-rev\d+\.json$/.test(name)) await h.fs.remove(join(dir, name));
  }
}

/** An Envoy not ours holding the admin port (a previous run's, istio/istio#35534) would make epoch 0 fail. */
async function quitStaleEnvoy(h: Housekeeping): Promise<void> {
  const admin = `http://127.0.0.1:${h.config.ENVOY_ADMIN_PORT}`;
  let body: string;
  try {
    body = (await h.http.request({ url: `${admin}/server_info`, timeoutMs: 1000 })).body.toString("utf8");
  } catch {
    return; // nothing listens: the usual case
  }
  const busy = (what: string): AgentError =>
    new AgentError({
      code: "ENVOY_ADMIN_PORT_BUSY",
      message: `${what} holds 127.0.0.1:${h.config.ENVOY_ADMIN_PORT}, Envoy's admin port (ENVOY_ADMIN_PORT)`,
      subject: admin,
      hint: "find it with `ss -ltnp` and stop it, or change ENVOY_ADMIN_PORT",
    });
  // Only an Envoy this VM's agent started earlier is stopped: same node id, or a bootstrap of ours.
  let options: { service_node?: string; config_path?: string } | undefined;
  try {
    options = (JSON.parse(body) as { command_line_options?: typeof options }).command_line_options;
  } catch {
    // not an Envoy
  }
  const node = serviceNode({ config: h.config, extraMetadata: {}, hostname: h.hostname });
  const ours =
    options?.service_node === node ||
    options?.config_path?.startsWith(join(h.config.ISTIO_PROXY_CONFIG_DIR, "envoy-rev")) === true;
  if (!ours) throw busy(options === undefined ? "a process that is not Envoy" : "an Envoy that is not this VM's");
  h.logger.warn("an Envoy left over from an earlier run holds the admin port; asking it to quit", { admin });
  try {
    await h.http.request({ url: `${admin}/quitquitquit`, method: "POST", timeoutMs: 1000 });
  } catch {
    // It may close the connection as it exits.
  }
  for (let i = 0; i < 50; i++) {
    try {
      await h.http.request({ url: `${admin}/server_info`, timeoutMs: 500 });
    } catch {
      return;
    }
    await h.clock.sleep(100);
  }
  throw busy("an Envoy that does not quit");
}

/** Who Envoy runs as: ENVOY_USER when the agent is root; the agent's own user otherwise. */
export async function resolveEnvoyOwner(h: Housekeeping): Promise<FileOwner | undefined> {
  const user = h.config.ENVOY_USER;
  const entry = await h.users.lookup(user);
  const where = h.users.source;
  if (entry === undefined) {
    if (h.uid !== 0) {
      h.logger.warn(`ENVOY_USER ${user} not found in ${where}; Envoy runs as the agent's user`, {
        uid: h.uid,
      });
      return undefined;
    }
    throw new AgentError({
      code: "PROXY_USER_MISSING",
      kind: "config",
      subject: user,
      message: `the proxy user '${user}' (ENVOY_USER) does not exist in ${where}; Envoy must not run as root`,
      hint: `create it (the package does: useradd --system --home-dir /var/lib/istio ${user}) or set ENVOY_USER`,
    });
  }
  if (entry.uid === h.uid) return undefined;
  if (h.uid !== 0) {
    h.logger.warn(`the agent is not root and cannot start Envoy as ${user}; Envoy runs as the agent's user`, {
      uid: h.uid,
    });
    return undefined;
  }
  return { uid: entry.uid, gid: entry.gid };
}

/** The environment Envoy inherits: the agent's, minus what belongs to systemd's dealings with the agent. */
export function envoyEnv(agentEnv: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env = { ...agentEnv };
  for (const name of SYSTEMD_ONLY) Reflect.deleteProperty(env, name);
  return env;
}
