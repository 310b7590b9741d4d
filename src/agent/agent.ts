/**
 * The daemon frame of `istio-vm agent`: configuration → components started in order → READY=1; SIGHUP reloads;
 * SIGTERM/SIGINT stop the components in reverse order and exit 0. It owns sd_notify (READY, STATUS, WATCHDOG,
 * RELOADING, STOPPING), the status endpoint (/healthz/ready, /metrics on 127.0.0.1:STATUS_PORT) and the order;
 * the components (certificates, interception, Envoy, discovery checks) own everything else.
 */
import type { ConfigProblem } from "../platform/errors.js";
import { describeError } from "../platform/errors.js";
import type { Clock } from "../platform/clock.js";
import type { FileSystem } from "../platform/fs.js";
import type { Logger } from "../platform/logger.js";
import type { Notifier } from "../platform/notify.js";
import type { ProcessRunner } from "../platform/process.js";
import type { LoadedConfig } from "../config/load.js";
import { agentProblems, loadConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { AgentComponent, AgentDeps, ComponentLoader } from "./component.js";
import { createAgentEvents } from "./events.js";
import { MetricsRegistry } from "./metrics.js";
import { registerProcessMetrics } from "./process-metrics.js";
import type { StatusServer } from "./status-server.js";
import { startStatusServer } from "./status-server.js";

export type StopSignal = "SIGTERM" | "SIGINT";

/** Process signals as a port: the real one is `process`, tests raise them by hand. */
export interface SignalSource {
  on(signal: "SIGHUP" | StopSignal, listener: () => void): () => void;
}

export const processSignals: SignalSource = {
  on(signal, listener) {
    process.on(signal, listener);
    return () => process.off(signal, listener);
  },
};

export interface AgentOptions {
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly notifier: Notifier;
  readonly signals: SignalSource;
  readonly components: readonly ComponentLoader[];
  readonly version: string;
  /** Host of the status endpoint; loopback unless a test needs otherwise. */
  readonly statusHost?: string;
  /** Called with every problem when the configuration is invalid at start (the agent then exits 2). */
  readonly onInvalidConfig?: (problems: readonly ConfigProblem[]) => void;
  /** Called with the status endpoint's address once it listens (tests, the demo). */
  readonly onListening?: (address: string) => void;
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_CONFIG = 2;

/** How long one component may take to stop before the frame moves on (it must never hang the unit's stop). */
const COMPONENT_STOP_TIMEOUT_MS = 30_000;

function identityOf(config: ConfigValues): string {
  return `spiffe://${config.TRUST_DOMAIN}/ns/${config.POD_NAMESPACE}/sa/${config.SERVICE_ACCOUNT}`;
}

function logProblems(logger: Logger, problems: readonly ConfigProblem[]): void {
  logger.error(`invalid configuration: ${problems.length} problem${problems.length === 1 ? "" : "s"}`);
  for (const p of problems) {
    logger.error(`invalid configuration: ${p.where === undefined ? "" : `${p.where}: `}${p.subject}: ${p.message}`);
  }
}

function summarizeProblems(problems: readonly ConfigProblem[]): string {
  const first = problems[0];
  if (first === undefined) return "";
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more, see the journal)` : "";
  return `${first.subject}: ${first.message}${more}`;
}

export async function runAgent(options: AgentOptions): Promise<number> {
  const { logger, notifier } = options;
  const startedAt = options.clock.now();
  const loaded = await loadConfig({ env: options.env, fs: options.fs });
  for (const w of loaded.warnings)
    logger.warn(`${w.where === undefined ? "" : `${w.where}: `}${w.subject}: ${w.message}`);
  const problems = [...loaded.problems, ...agentProblems(loaded)];
  if (problems.length > 0) {
    logProblems(logger, problems);
    options.onInvalidConfig?.(problems);
    await notifier.notify({ STATUS: `invalid configuration: ${summarizeProblems(problems)}` });
    return EXIT_CONFIG;
  }
  let config = loaded.values;
  let currentLoaded: LoadedConfig = loaded;

  const metrics = new MetricsRegistry();
  registerProcessMetrics(metrics, startedAt);
  const info = metrics.gauge("istio_vm_agent_info", "Agent version and control-plane profile (always 1).", [
    "version",
    "profile",
  ]);
  info.set(1, { version: options.version, profile: config.ISTIO_CONTROL_PLANE });
  const readyGauge = metrics.gauge("istio_vm_agent_ready", "1 when every component of the agent is ready.");
  const reloads = metrics.counter("istio_vm_agent_reloads_total", "Configuration reloads (SIGHUP) by result.", [
    "result",
  ]);
  const watchdogPings = metrics.counter("istio_vm_agent_watchdog_pings_total", "WATCHDOG=1 messages sent to systemd.");

  const events = createAgentEvents();
  const abort = new AbortController();
  const started: AgentComponent[] = [];
  let phase: "starting" | "running" | "reloading" | "stopping" = "starting";
  let note: string | undefined;

  const readiness = (): { ready: boolean; details: string[] } => {
    const details = started.map((c) => {
      const s = c.status();
      return `${c.name}: ${s.ready ? "ready" : "not ready"}: ${s.summary}`;
    });
    const ready = phase === "running" && started.every((c) => c.status().ready);
    readyGauge.set(ready ? 1 : 0);
    return { ready, details };
  };
  const statusLine = (): string => {
    const base = `${config.ISTIO_CONTROL_PLANE} mesh, VM ${config.ISTIO_SVC_IP} as ${identityOf(config)}`;
    const parts = started.map((c) => c.status().summary).filter((s) => s !== "");
    const prefix = phase === "running" ? (readiness().ready ? "ready" : "degraded") : phase;
    return [`${prefix}: ${base}`, ...parts, ...(note === undefined ? [] : [note])].join("; ");
  };
  const sendStatus = async (): Promise<void> => {
    await notifier.notify({ STATUS: statusLine() });
  };

  let server: StatusServer;
  try {
    server = await startStatusServer({
      host: options.statusHost ?? "127.0.0.1",
      port: config.STATUS_PORT,
      readiness,
      metrics: () => metrics.render(),
    });
  } catch (error) {
    logger.error("cannot serve the status endpoint", {
      port: config.STATUS_PORT,
      error: describeError(error),
      hint: "another process holds the port (an old agent or pilot-agent?); change STATUS_PORT or stop it",
    });
    await notifier.notify({ STATUS: `failed: status port ${config.STATUS_PORT}: ${describeError(error)}` });
    return EXIT_FAILURE;
  }
  options.onListening?.(server.address);
  logger.info("agent starting", {
    version: options.version,
    profile: config.ISTIO_CONTROL_PLANE,
    ip: config.ISTIO_SVC_IP,
    identity: identityOf(config),
    status: server.address,
  });

  // Stop requests and fatal component errors can arrive at any time, also during start.
  let stopReason: string | undefined;
  let fatalError: Error | undefined;
  let wake: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const requestStop = (reason: string): void => {
    if (stopReason !== undefined) return;
    stopReason = reason;
    abort.abort(new Error(`agent stopping: ${reason}`));
    wake();
  };
  const unsubscribers = [
    options.signals.on("SIGTERM", () => {
      requestStop("SIGTERM");
    }),
    options.signals.on("SIGINT", () => {
      requestStop("SIGINT");
    }),
    events.on("fatal", (error) => {
      fatalError ??= error;
      logger.error("component failed, stopping the agent", { error: error.message });
      requestStop("fatal component error");
    }),
    events.on("status-changed", () => {
      if (phase === "running") void sendStatus();
    }),
  ];

  let watchdogTimer: NodeJS.Timeout | undefined;
  if (notifier.watchdogUsec !== undefined) {
    const intervalMs = Math.max(1, Math.floor(notifier.watchdogUsec / 2000));
    watchdogTimer = setInterval(() => {
      watchdogPings.inc();
      void notifier.notify({ WATCHDOG: "1" });
    }, intervalMs);
    logger.debug("watchdog enabled", { intervalMs });
  }

  const deps: AgentDeps = {
    config,
    loaded,
    fs: options.fs,
    runner: options.runner,
    clock: options.clock,
    logger,
    metrics,
    events,
    env: options.env,
  };

  let exitCode = EXIT_OK;
  try {
    await sendStatus();
    for (const factory of options.components) {
      if (stopReason !== undefined) break;
      const component = await factory(deps);
      if (component === undefined) continue;
      logger.info(`starting ${component.name}`);
      await sendStatus();
      started.push(component);
      await component.start(abort.signal);
      logger.info(`${component.name} started`, { status: component.status().summary });
    }
  } catch (error) {
    if (stopReason === undefined) {
      const message = describeError(error);
      logger.error("agent start failed", { error: message });
      note = `start failed: ${message}`;
      exitCode = EXIT_FAILURE;
      requestStop("start failed");
    }
  }

  let reloadChain = Promise.resolve();
  const reload = async (): Promise<void> => {
    if (phase !== "running") return;
    phase = "reloading";
    await notifier.notify({ RELOADING: "1", STATUS: "reloading configuration" });
    logger.info("reloading configuration (SIGHUP)");
    try {
      const next = await loadConfig({ env: options.env, fs: options.fs });
      const nextProblems = [...next.problems, ...agentProblems(next)];
      if (nextProblems.length > 0) {
        logProblems(logger, nextProblems);
        note = `reload rejected, running the previous configuration: ${summarizeProblems(nextProblems)}`;
        reloads.inc({ result: "rejected" });
      } else {
        const changed = (Object.keys(next.variables) as (keyof typeof next.variables)[]).filter(
          (name) => next.variables[name].raw !== currentLoaded.variables[name].raw,
        );
        for (const component of started) await component.reload?.(next.values);
        config = next.values;
        currentLoaded = next;
        note = undefined;
        reloads.inc({ result: "ok" });
        logger.info("configuration reloaded", { changed: changed.length === 0 ? "nothing" : changed.join(",") });
      }
    } catch (error) {
      note = `reload failed: ${describeError(error)}`;
      reloads.inc({ result: "failed" });
      logger.error("reload failed", { error: describeError(error) });
    } finally {
      if (stopReason === undefined) {
        phase = "running";
        await notifier.notify({ READY: "1", STATUS: statusLine() });
      }
    }
  };
  unsubscribers.push(
    options.signals.on("SIGHUP", () => {
      reloadChain = reloadChain.then(reload);
    }),
  );

  if (stopReason === undefined) {
    phase = "running";
    readiness();
    await notifier.notify({ READY: "1", STATUS: statusLine() });
    logger.info("agent ready", { status: statusLine() });
    await stopped;
  }

  // Stop: reverse order, every component, whatever happened before.
  phase = "stopping";
  await notifier.notify({ STOPPING: "1", STATUS: `stopping (${stopReason ?? "unknown"})` });
  logger.info("agent stopping", { reason: stopReason });
  await reloadChain;
  for (const component of [...started].reverse()) {
    try {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        component.stop(),
        new Promise<void>((_, reject) => {
          timer = setTimeout(() => {
            reject(new Error(`did not stop within ${COMPONENT_STOP_TIMEOUT_MS / 1000}s`));
          }, COMPONENT_STOP_TIMEOUT_MS);
        }),
      ]).finally(() => {
        clearTimeout(timer);
      });
      logger.info(`${component.name} stopped`);
    } catch (error) {
      logger.error(`${component.name} failed to stop cleanly`, { error: describeError(error) });
      exitCode = EXIT_FAILURE;
    }
  }
  if (watchdogTimer !== undefined) clearInterval(watchdogTimer);
  for (const unsubscribe of unsubscribers) unsubscribe();
  await server.close();
  if (fatalError !== undefined) exitCode = EXIT_FAILURE;
  logger.info("agent stopped", { exitCode });
  return exitCode;
}
