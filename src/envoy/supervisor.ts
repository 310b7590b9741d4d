/**
 * Runs Envoy as pilot-agent's proxy mode did (docs/protocols.md), with what users missed added (docs/decisions.md):
 *
 * - Epochs. The desired state is the bootstrap plus (legacy profile only) a SHA-256 of the three PEM files; on the
 *   istiod profile Envoy gets its certificates over SDS, so a renewal changes no epoch. When it differs from the
 *   newest running epoch's, the next epoch (highest running + 1, or 0 when none runs) gets `envoy-rev<N>.json` and
 *   starts; Envoy's hot restart then retires the parent (it drains for --drain-time-s and exits at
 *   --parent-shutdown-time-s). The supervisor never kills a parent on a hot restart.
 * - Failures. An epoch that exits with an error, or the newest one exiting at all when nobody asked it to, aborts
 *   every epoch (hot-restart races, as pilot-agent said), and epoch 0 starts again after a backoff (RestartPolicy).
 *   When the budget is spent the supervisor gives up: `onFatal` is called, and the agent exits non-zero.
 * - Readiness is the admin's /ready of the newest epoch (its /server_info must name that epoch: during a hot restart
 *   the parent answers on the admin port until the child takes it over; admin.ts).
 * - Certificates (certificate-watch.ts): legacy profile, a change (announced, or noticed by hashing the PEM files
 *   every certPollMs) asks for a new epoch once per debounce window; istiod profile, nothing (SDS pushes them).
 * - Stop: POST /drain_listeners?graceful, wait the drain time (or until Envoy exits), SIGTERM each process group, and
 *   SIGKILL what is left after `killTimeoutMs`.
 * - Before epoch 0 (housekeeping.ts): shared-memory files in ISTIO_SHM_DIR owned by another user are removed (Envoy
 *   cannot reopen them: the original's "cannot open shared memory region"), and an Envoy left holding the admin port
 *   is asked to quit.
 * - Every Envoy runs in a process group of its own (platform/child.ts): nothing outlives the agent.
 */
import { createHash } from "node:crypto";
import type { ConfigValues } from "../config/registry.js";
import type { Clock } from "../platform/clock.js";
import { scheduleOnce } from "../platform/clock.js";
import type { ChildExit, ChildSpawner, GroupChild } from "../platform/child.js";
import { AgentError, describeError } from "../platform/errors.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { HttpClient } from "../platform/http.js";
import type { LinkFileSystem } from "../platform/links.js";
import type { Logger } from "../platform/logger.js";
import { formatCommand } from "../platform/process.js";
import type { UserDirectory } from "../platform/users.js";
import { usesSds } from "../sds/socket.js";
import { epochReady } from "./admin.js";
import type { BootstrapJson } from "./bootstrap.js";
import { CertificateWatch } from "./certificate-watch.js";
import type { Housekeeping } from "./housekeeping.js";
import { certificateHash, envoyEnv, prepareFirstEpoch, resolveEnvoyOwner } from "./housekeeping.js";
import { bootstrapPath, renderBootstrap, serializeBootstrap, serviceNode } from "./bootstrap.js";
import { envoyCommand, envoyLinePriority } from "./command-line.js";
import type { RestartPolicy } from "./restart-policy.js";
import { DEFAULT_RESTART_POLICY, nextRestart, recentFailures } from "./restart-policy.js";

export interface SupervisorOptions {
  readonly config: ConfigValues;
  /** ISTIO_META_* variables outside the registry (node metadata), by name. */
  readonly extraMetadata: Readonly<Record<string, string>>;
  readonly hostname: string;
  readonly fs: FileSystem;
  /** With `fs`: the certificate store's reader (legacy profile: the PEM files are part of an epoch). */
  readonly links: LinkFileSystem;
  readonly spawner: ChildSpawner;
  readonly http: HttpClient;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The environment Envoy inherits (the agent's, minus what belongs to systemd's dealings with the agent). */
  readonly env: NodeJS.ProcessEnv;
  /** The agent's own uid (process.getuid()); decides whether Envoy can be started as ENVOY_USER. */
  readonly uid: number;
  /** Where ENVOY_USER is looked up. */
  readonly users: UserDirectory;
  readonly policy?: RestartPolicy;
  /** Several certificate events within this window cause one restart (default 2 s). */
  readonly debounceMs?: number;
  /** How often the PEM files are hashed to notice a change nobody announced (default 5 s; 0: never). */
  readonly certPollMs?: number;
  /** After SIGTERM, how long Envoy gets before SIGKILL (default 5 s). */
  readonly killTimeoutMs?: number;
  /** Admin polling interval while waiting for readiness (default 100 ms). */
  readonly readyPollMs?: number;
  readonly onStatusChange?: () => void;
  readonly onFatal?: (error: Error) => void;
  /** Counters and gauges; called with every change. */
  readonly onEpochStarted?: (epoch: number, reason: RestartReason) => void;
}

export type RestartReason = "start" | "certificates" | "configuration" | "failure";

interface Desired {
  readonly bootstrap: BootstrapJson;
  readonly text: string;
  readonly hash: string;
  readonly certHash: string;
}

interface Epoch {
  readonly epoch: number;
  readonly child: GroupChild;
  readonly path: string;
  readonly hash: string;
  ready: boolean;
  /** Set when the supervisor ended it (stop or abort), so its exit is not a failure. */
  ending: boolean;
}

export interface SupervisorStatus {
  readonly state: "idle" | "starting" | "running" | "restarting" | "backoff" | "stopping" | "stopped" | "failed";
  /** The newest running epoch, if any. */
  readonly epoch: number | undefined;
  readonly pid: number | undefined;
  readonly ready: boolean;
  readonly epochsRunning: number;
  readonly restarts: number;
  readonly recentFailures: number;
  readonly lastError: string | undefined;
  readonly nextAttemptAt: number | undefined;
}

export class EnvoySupervisor {
  readonly #o: SupervisorOptions;
  readonly #log: Logger;
  readonly #policy: RestartPolicy;
  #config: ConfigValues;
  readonly #epochs = new Map<number, Epoch>();
  #queue: Promise<void> = Promise.resolve();
  #state: SupervisorStatus["state"] = "idle";
  #failures: number[] = [];
  #restarts = 0;
  #lastError: string | undefined;
  #nextAttemptAt: number | undefined;
  /** Pending timers on the clock port, as cancel functions (any delay is safe there; see src/platform/clock.ts). */
  #cancelRetry: (() => void) | undefined;
  readonly #certs: CertificateWatch;
  #pendingReason: RestartReason = "start";
  #stopping = false;
  #owner: FileOwner | undefined;
  #firstReady: { resolve: () => void; reject: (error: Error) => void } | undefined;

  constructor(options: SupervisorOptions) {
    this.#o = options;
    this.#config = options.config;
    this.#log = options.logger;
    this.#policy = options.policy ?? DEFAULT_RESTART_POLICY;
    this.#certs = new CertificateWatch({
      clock: options.clock,
      logger: options.logger,
      ...(options.debounceMs === undefined ? {} : { debounceMs: options.debounceMs }),
      ...(options.certPollMs === undefined ? {} : { pollMs: options.certPollMs }),
      hash: () => certificateHash(this.#housekeeping()),
      // Not started yet: start() hashes the files it finds, nothing to restart.
      paused: () => this.#stopping || this.#state === "idle",
      pushed: () => usesSds(this.#config), // pushed over SDS by the agent's sds component, no restart
      restart: () => {
        this.#enqueue("certificates");
      },
    });
  }

  /** Starts epoch 0 and resolves once it is ready; rejects when the restart budget runs out first, or on abort. */
  async start(signal: AbortSignal): Promise<void> {
    const binary = this.#config.ENVOY_BINARY;
    const stat = await this.#o.fs.stat(binary);
    if (stat === undefined || stat.isDirectory || (stat.mode & 0o111) === 0) {
      // Not a transient failure: retrying with backoff would only delay the message.
      throw new AgentError({
        code: "ENVOY_NOT_FOUND",
        kind: "config",
        subject: binary,
        message: `no Envoy executable at ${binary} (ENVOY_BINARY)${stat === undefined ? "" : ": not an executable file"}`,
        hint: "install Envoy (Istio's istio-sidecar package or Envoy's own puts it at /usr/local/bin/envoy) or set ENVOY_BINARY",
      });
    }
    this.#owner = await resolveEnvoyOwner(this.#housekeeping());
    const ready = new Promise<void>((resolve, reject) => {
      this.#firstReady = { resolve, reject };
    });
    const onAbort = (): void => {
      this.#firstReady?.reject(new Error("Envoy start aborted: the agent is stopping"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    this.#certs.seen(await certificateHash(this.#housekeeping()));
    this.#enqueue("start");
    this.#certs.startPolling();
    try {
      await ready;
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.#firstReady = undefined;
    }
  }

  /**
   * New certificates are on disk. Legacy profile: a new epoch after the debounce window (if the PEMs really changed).
   * istiod profile: nothing (SDS pushes them).
   */
  certificatesChanged(): void {
    this.#certs.changed();
  }

  /** A reloaded configuration: a new epoch when the bootstrap or the command line changed. */
  reload(config: ConfigValues): Promise<void> {
    this.#config = config;
    this.#enqueue("configuration");
    return this.#queue;
  }

  status(): SupervisorStatus {
    const newest = this.#newest();
    return {
      state: this.#state,
      epoch: newest?.epoch,
      pid: newest?.child.pid,
      ready: newest?.ready === true && (this.#state === "running" || this.#state === "restarting"),
      epochsRunning: this.#epochs.size,
      restarts: this.#restarts,
      recentFailures: recentFailures(this.#policy, this.#failures, this.#o.clock.now()).length,
      lastError: this.#lastError,
      nextAttemptAt: this.#nextAttemptAt,
    };
  }

  /** The bootstrap the next epoch would get (also what `istio-vm envoy bootstrap` prints). */
  bootstrap(): BootstrapJson {
    return this.#render();
  }

  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#setState("stopping");
    this.#cancelRetry?.();
    await this.#certs.stop();
    this.#firstReady?.reject(new Error("Envoy start aborted: the agent is stopping"));
    // Whatever is in flight (a start waiting for readiness) ends as soon as the epochs it waits for are gone.
    await this.#terminateAll();
    await this.#queue.catch(() => undefined);
    await this.#terminateAll();
    this.#setState("stopped");
  }

  // ── the control loop ────────────────────────────────────────────────────────────────────

  #enqueue(reason: RestartReason): void {
    if (reason !== "failure" || this.#pendingReason === "start") this.#pendingReason = reason;
    this.#queue = this.#queue
      .then(() => this.#reconcile())
      .catch((error: unknown) => {
        this.#log.error("Envoy supervision error", { error: describeError(error) });
      });
  }

  #render(): BootstrapJson {
    return renderBootstrap({ config: this.#config, extraMetadata: this.#o.extraMetadata, hostname: this.#o.hostname });
  }

  async #desired(): Promise<Desired> {
    const bootstrap = this.#render();
    const text = serializeBootstrap(bootstrap);
    const certHash = await certificateHash(this.#housekeeping());
    const command = envoyCommand({
      config: this.#config,
      epoch: 0,
      bootstrapPath: "",
      serviceNode: serviceNode({ config: this.#config, extraMetadata: {}, hostname: this.#o.hostname }),
    });
    const hash = createHash("sha256")
      .update(text)
      .update(certHash)
      .update(JSON.stringify([this.#config.ENVOY_BINARY, this.#config.ENVOY_USER, ...command.args]))
      .digest("hex");
    return { bootstrap, text, hash, certHash };
  }

  #newest(): Epoch | undefined {
    let newest: Epoch | undefined;
    for (const e of this.#epochs.values()) if (newest === undefined || e.epoch > newest.epoch) newest = e;
    return newest;
  }

  async #reconcile(): Promise<void> {
    if (this.#stopping) return;
    const reason = this.#pendingReason;
    const desired = await this.#desired();
    this.#certs.seen(desired.certHash);
    const newest = this.#newest();
    if (newest !== undefined && newest.hash === desired.hash) {
      if (reason !== "start") this.#log.info("Envoy configuration unchanged, no restart", { reason });
      return;
    }
    const epoch = newest === undefined ? 0 : newest.epoch + 1;
    this.#setState(epoch === 0 ? "starting" : "restarting");
    try {
      if (epoch === 0) await prepareFirstEpoch(this.#housekeeping(), this.#owner);
      await this.#startEpoch(epoch, desired, reason);
    } catch (error) {
      await this.#failed(`epoch ${epoch} failed to start: ${describeError(error)}`);
    }
  }

  async #startEpoch(epoch: number, desired: Desired, reason: RestartReason): Promise<void> {
    const config = this.#config;
    const path = bootstrapPath(config.ISTIO_PROXY_CONFIG_DIR, epoch);
    await this.#o.fs.mkdirp(config.ISTIO_PROXY_CONFIG_DIR, 0o755);
    await this.#o.fs.writeFileAtomic(path, desired.text, {
      mode: 0o600,
      ...(this.#owner === undefined ? {} : { owner: this.#owner }),
    });
    const command = envoyCommand({
      config,
      epoch,
      bootstrapPath: path,
      serviceNode: serviceNode({ config, extraMetadata: {}, hostname: this.#o.hostname }),
    });
    for (const warning of command.warnings) this.#log.warn(warning);
    this.#log.info(`Epoch ${epoch} starting`, { reason });
    this.#log.info(`Envoy command: ${formatCommand(config.ENVOY_BINARY, command.args)}`);
    let child: GroupChild;
    try {
      child = await this.#o.spawner.spawn(config.ENVOY_BINARY, command.args, {
        env: envoyEnv(this.#o.env),
        ...(this.#owner === undefined ? {} : { uid: this.#owner.uid, gid: this.#owner.gid }),
        onLine: (stream, line) => {
          const priority = stream === "stdout" ? "info" : envoyLinePriority(line);
          this.#log[priority](`envoy[epoch ${epoch}]: ${line}`);
        },
      });
    } catch (error) {
      await this.#o.fs.remove(path);
      throw error;
    }
    const record: Epoch = { epoch, child, path, hash: desired.hash, ready: false, ending: false };
    this.#epochs.set(epoch, record);
    this.#o.onEpochStarted?.(epoch, reason);
    if (epoch > 0) this.#restarts++;
    this.#notify();
    void child.exited.then((exit) => {
      this.#queue = this.#queue.then(() => this.#onExit(record, exit));
    });
    await this.#waitReady(record);
  }

  async #waitReady(record: Epoch): Promise<void> {
    const admin = `http://127.0.0.1:${this.#config.ENVOY_ADMIN_PORT}`;
    const poll = this.#o.readyPollMs ?? 100;
    const seen = { exited: false };
    void record.child.exited.then(() => {
      seen.exited = true;
    });
    while (!seen.exited && !this.#stopping && !record.ending) {
      if (await epochReady(this.#o.http, admin, record.epoch)) {
        record.ready = true;
        this.#nextAttemptAt = undefined;
        this.#setState("running");
        this.#log.info(`Epoch ${record.epoch} ready`, { pid: record.child.pid });
        this.#firstReady?.resolve();
        return;
      }
      await this.#o.clock.sleep(poll);
    }
    if (seen.exited && !this.#stopping && !record.ending) {
      const exit = await record.child.exited;
      throw new Error(`exited before it was ready (${describeExit(exit)})`);
    }
  }

  async #onExit(record: Epoch, exit: ChildExit): Promise<void> {
    await this.#o.fs.remove(record.path).catch(() => undefined);
    this.#epochs.delete(record.epoch);
    const newest = this.#newest();
    const clean = exit.code === 0;
    const retiredParent = newest !== undefined && newest.epoch > record.epoch;
    if (record.ending || this.#stopping) {
      this.#log.info(`Epoch ${record.epoch} ended`, { exit: describeExit(exit) });
    } else if (clean && retiredParent) {
      this.#log.info(`Epoch ${record.epoch} exited normally (hot restart: epoch ${newest.epoch} took over)`);
    } else {
      const what = clean ? "exited although nothing asked it to" : `terminated with an error: ${describeExit(exit)}`;
      this.#log.error(`Epoch ${record.epoch} ${what}`);
      await this.#failed(`epoch ${record.epoch} ${what}`);
    }
    this.#notify();
  }

  /** An epoch failed: abort them all, then try epoch 0 again after the backoff, or give up. */
  async #failed(reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#lastError = reason;
    await this.#abortAll();
    const now = this.#o.clock.now();
    this.#failures = [...recentFailures(this.#policy, this.#failures, now), now];
    const next = nextRestart(this.#policy, this.#failures, now);
    if (next === undefined) {
      const error = new AgentError({
        code: "ENVOY_FAILED",
        message: `Envoy keeps failing: ${this.#failures.length} failures within ${this.#policy.windowMs / 1000}s (last: ${reason})`,
        subject: this.#config.ENVOY_BINARY,
        hint: "see the envoy[epoch N] lines in the journal (journalctl -u istio-vm-agent); systemd restarts the agent",
      });
      this.#log.error("Permanent error: budget exhausted trying to fulfill the desired configuration", {
        failures: this.#failures.length,
      });
      this.#setState("failed");
      this.#firstReady?.reject(error);
      this.#o.onFatal?.(error);
      return;
    }
    this.#nextAttemptAt = now + next.delayMs;
    this.#setState("backoff");
    this.#log.warn(`restarting Envoy from epoch 0 in ${next.delayMs} ms`, {
      failures: next.attempt,
      budget: this.#policy.budget,
    });
    this.#cancelRetry = scheduleOnce(this.#o.clock, next.delayMs, () => {
      this.#cancelRetry = undefined;
      this.#enqueue("failure");
    });
  }

  /** Hot-restart races make a survivor useless: every epoch goes, at once (SIGKILL), as pilot-agent did. */
  async #abortAll(): Promise<void> {
    const all = [...this.#epochs.values()];
    if (all.length === 0) return;
    for (const e of all) {
      this.#log.warn(`Aborting epoch ${e.epoch}`, { pid: e.child.pid });
      e.ending = true;
      e.child.signal("SIGKILL");
    }
    await Promise.all(all.map((e) => e.child.exited));
    for (const e of all) {
      this.#epochs.delete(e.epoch);
      await this.#o.fs.remove(e.path).catch(() => undefined);
    }
    this.#log.warn("Aborted all epochs");
  }

  /** Stop: drain, wait the drain time, SIGTERM, SIGKILL after the timeout. */
  async #terminateAll(): Promise<void> {
    const all = [...this.#epochs.values()];
    if (all.length === 0) return;
    for (const e of all) e.ending = true;
    const newest = this.#newest();
    if (newest?.ready === true) {
      const admin = `http://127.0.0.1:${this.#config.ENVOY_ADMIN_PORT}`;
      try {
        await this.#o.http.request({ url: `${admin}/drain_listeners?graceful`, method: "POST", timeoutMs: 2000 });
        this.#log.info("draining Envoy's listeners", { seconds: this.#config.ENVOY_DRAIN_DURATION / 1000 });
        await this.#exitedWithin(all, this.#config.ENVOY_DRAIN_DURATION);
      } catch (error) {
        this.#log.warn("could not drain Envoy, stopping it now", { error: describeError(error) });
      }
    }
    for (const e of all) e.child.signal("SIGTERM");
    const timeout = this.#o.killTimeoutMs ?? 5000;
    const exitedInTime = await this.#exitedWithin(all, timeout);
    if (!exitedInTime) {
      for (const e of all) {
        if (e.child.signal("SIGKILL")) {
          this.#log.warn(`Epoch ${e.epoch} ignored SIGTERM for ${timeout} ms; killed`, { pid: e.child.pid });
        }
      }
    }
    await Promise.all(all.map((e) => e.child.exited));
    for (const e of all) {
      this.#epochs.delete(e.epoch);
      await this.#o.fs.remove(e.path).catch(() => undefined);
    }
  }

  /** True when every epoch exited within `ms`; the timer is cancelled either way (it must not hold the agent). */
  async #exitedWithin(epochs: readonly Epoch[], ms: number): Promise<boolean> {
    const cancel = new AbortController();
    try {
      return await Promise.race([
        Promise.all(epochs.map((e) => e.child.exited)).then(() => true),
        this.#o.clock.sleep(ms, cancel.signal).then(
          () => false,
          () => false,
        ),
      ]);
    } finally {
      cancel.abort();
    }
  }

  /** The ports and the configuration in force, for src/envoy/housekeeping.ts. */
  #housekeeping(): Housekeeping {
    return { ...this.#o, config: this.#config, logger: this.#log };
  }

  #setState(state: SupervisorStatus["state"]): void {
    if (this.#state === state) return;
    this.#state = state;
    this.#notify();
  }

  #notify(): void {
    this.#o.onStatusChange?.();
  }
}

export function describeExit(exit: ChildExit): string {
  return exit.signal === null ? `exit code ${exit.code ?? "?"}` : `signal ${exit.signal}`;
}
