/**
 * The daemon frame of `istio-vm agent`: configuration → the agent's own loops (status endpoint, signals, watchdog)
 * → READY=1 → components started in order (certificates valid → interception applied → Envoy ready → discovery);
 * SIGHUP reloads; SIGTERM/SIGINT stop the components in reverse order and exit 0. It owns sd_notify (READY, STATUS,
 * WATCHDOG, RELOADING, STOPPING), the status endpoint (/healthz/ready, /metrics on 127.0.0.1:STATUS_PORT) and the
 * order; the components own everything else.
 *
 * The readiness contract (docs/architecture.md): READY=1 means the agent runs, not that the VM is in the mesh, so
 * systemd's start never waits on the network (a CA unreachable at boot must not end in a start timeout and a
 * restart loop). Until every component is started and ready, STATUS= begins with "waiting for …" (or "degraded: …"
 * afterwards) and says what is missing and how to fix it, and /healthz/ready answers 503. Scripts wait for the mesh
 * with `istio-vm check --wait` (or /healthz/ready), not for the unit's start.
 */
import type { ConfigProblem } from "../platform/errors.js";
import { describeError } from "../platform/errors.js";
import type { Clock } from "../platform/clock.js";
import { scheduleOnce } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { Notifier } from "../platform/notify.js";
import type { SystemPorts } from "../platform/ports.js";
import { portsOf } from "../platform/ports.js";
import type { LoadedConfig } from "../config/load.js";
import { agentProblems, loadConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { AgentComponent, AgentDeps, ComponentLoader } from "./component.js";
import { createAgentEvents } from "./events.js";
import { createAgentXdsChannels } from "../xds/agent-channel.js";
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

/** The ports (src/platform/ports.ts) the components get, and the frame's own. */
export interface AgentOptions extends SystemPorts {
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

/** What STATUS= says the agent waits for while a component starts ("waiting for a certificate: …"). */
const WAITING_FOR: Readonly<Record<string, string>> = {
  certificates: "a certificate",
  interception: "traffic capture",
  envoy: "Envoy",
  discovery: "discovery",
};

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
  const reloads = metrics.counter("istio_vm_agent_reloads_total", "Configuration reloads (SIGHUP) by result.", [
    "result",
  ]);
  const watchdogPings = metrics.counter("istio_vm_agent_watchdog_pings_total", "WATCHDOG=1 messages sent to systemd.");

  const events = createAgentEvents();
  const xds = createAgentXdsChannels();
  const abort = new AbortController();
  /** Components whose start began, in order (the last may still be starting). */
  const started: AgentComponent[] = [];
  /** The component whose start is in progress; undefined before the first and once all are started. */
  let starting: AgentComponent | undefined;
  let allStarted = false;
  let phase: "starting" | "running" | "reloading" | "stopping" = "starting";
  let note: string | undefined;

  const readiness = (): { ready: boolean; details: string[] } => {
    const details = started.map((c) => {
      const s = c.status();
      return `${c.name}: ${s.ready ? "ready" : "not ready"}: ${s.summary}`;
    });
    if (!allStarted && phase !== "stopping") {
      details.push(
        starting === undefined
          ? "(components not started yet)"
          : `(the components after ${starting.name} start once it is ready)`,
      );
    }
    const ready = phase === "running" && allStarted && started.every((c) => c.status().ready);
    return { ready, details };
  };
  // Computed at each scrape, like /healthz/ready: a certificate expires without anyone asking.
  metrics.gaugeFn("istio_vm_agent_ready", "1 when every component of the agent is ready.", () =>
    readiness().ready ? 1 : 0,
  );
  const statusLine = (): string => {
    const base = `${config.ISTIO_CONTROL_PLANE} mesh, VM ${config.ISTIO_SVC_IP} as ${identityOf(config)}`;
    const tail = note === undefined ? [] : [note];
    if (phase === "running" && !allStarted && starting === undefined) return `starting: ${base}`;
    if (phase === "running" && !allStarted && starting !== undefined) {
      // What is awaited comes first: it is what `systemctl status` users need to read.
      const waited = starting;
      const others = started.filter((c) => c !== waited).map((c) => c.status().summary);
      const what = WAITING_FOR[waited.name] ?? waited.name;
      return [`waiting for ${what}: ${waited.status().summary}`, base, ...others, ...tail]
        .filter((s) => s !== "")
        .join("; ");
    }
    const parts = started.map((c) => c.status().summary).filter((s) => s !== "");
    const prefix = phase === "running" ? (readiness().ready ? "ready" : "degraded") : phase;
    return [`${prefix}: ${base}`, ...parts, ...tail].join("; ");
  };
  let lastStatus: string | undefined;
  const sendStatus = async (): Promise<void> => {
    const line = statusLine();
    // Components raise status-changed freely; systemd needs only the changes.
    if (line === lastStatus) return;
    lastStatus = line;
    await notifier.notify({ STATUS: line });
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

  // The watchdog runs from before READY=1 until the end, on the clock port like every other wait.
  // It keeps pinging while the components stop (Envoy's drain can take longer than WatchdogSec).
  const watchdogEnd = new AbortController();
  let watchdog: Promise<void> = Promise.resolve();
  if (notifier.watchdogUsec !== undefined) {
    const intervalMs = Math.max(1, Math.floor(notifier.watchdogUsec / 2000));
    watchdog = (async () => {
      while (!watchdogEnd.signal.aborted) {
        watchdogPings.inc();
        await notifier.notify({ WATCHDOG: "1" });
        await options.clock.sleep(intervalMs, watchdogEnd.signal).catch(() => undefined);
      }
    })();
    logger.debug("watchdog enabled", { intervalMs });
  }

  let exitCode = EXIT_OK;
  const ports = portsOf(options);
  const depsFor = (): AgentDeps => ({ ...ports, config, loaded: currentLoaded, logger, metrics, events, xds });

  /**
   * Starts the components in order, after READY=1. Each is built when its turn comes, from the configuration in
   * force then (a SIGHUP while the agent waits for a certificate reaches the components that start later).
   */
  const startComponents = async (): Promise<void> => {
    try {
      for (const factory of options.components) {
        if (stopReason !== undefined) return;
        const component = await factory(depsFor());
        if (component === undefined) continue;
        logger.info(`starting ${component.name}`);
        starting = component;
        started.push(component);
        const run = component.start(abort.signal);
        await sendStatus();
        await run;
        logger.info(`${component.name} started`, { status: component.status().summary });
      }
      starting = undefined;
      allStarted = true;
      const { ready } = readiness();
      logger.info(ready ? "agent ready" : "agent running, not ready", { status: statusLine() });
      await sendStatus();
    } catch (error) {
      if (stopReason === undefined) {
        const message = describeError(error);
        logger.error("agent start failed", { component: starting?.name, error: message });
        note = `start failed: ${message}`;
        exitCode = EXIT_FAILURE;
        await sendStatus();
        requestStop("start failed");
      }
    }
  };

  let reloadChain = Promise.resolve();
  const reload = async (): Promise<void> => {
    if (phase !== "running") return;
    phase = "reloading";
    await notifier.notify({ RELOADING: "1", STATUS: "reloading configuration" });
    lastStatus = undefined;
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
        // The component still starting gets it too: a CA_ADDR fixed while the agent waits for a certificate.
        for (const component of started) await component.reload?.(next.values, next);
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
        lastStatus = statusLine();
        await notifier.notify({ READY: "1", STATUS: lastStatus });
      }
    }
  };
  unsubscribers.push(
    options.signals.on("SIGHUP", () => {
      reloadChain = reloadChain.then(reload);
    }),
  );

  let startup: Promise<void> = Promise.resolve();
  if (stopReason === undefined) {
    phase = "running";
    lastStatus = statusLine();
    await notifier.notify({ READY: "1", STATUS: lastStatus });
    logger.info("agent running; starting the components", { status: lastStatus });
    startup = startComponents();
    await stopped;
  }

  // Stop: reverse order, every component, whatever happened before.
  phase = "stopping";
  await notifier.notify({ STOPPING: "1", STATUS: `stopping (${stopReason ?? "unknown"})` });
  logger.info("agent stopping", { reason: stopReason });
  await reloadChain;
  // The component still starting sees the abort; its stop below ends it in any case.
  const startupEnded = await withDeadline(options.clock, startup, COMPONENT_STOP_TIMEOUT_MS);
  if (!startupEnded) logger.warn("a component did not end its start on abort; stopping it anyway");
  for (const component of [...started].reverse()) {
    try {
      if (!(await withDeadline(options.clock, component.stop(), COMPONENT_STOP_TIMEOUT_MS))) {
        throw new Error(`did not stop within ${COMPONENT_STOP_TIMEOUT_MS / 1000}s`);
      }
      logger.info(`${component.name} stopped`);
    } catch (error) {
      logger.error(`${component.name} failed to stop cleanly`, { error: describeError(error) });
      exitCode = EXIT_FAILURE;
    }
  }
  watchdogEnd.abort();
  await watchdog;
  for (const unsubscribe of unsubscribers) unsubscribe();
  await server.close();
  if (fatalError !== undefined) exitCode = EXIT_FAILURE;
  logger.info("agent stopped", { exitCode });
  return exitCode;
}

/** True when `work` settled within `ms` (its rejection is passed on); false when the deadline came first. */
async function withDeadline(clock: Clock, work: Promise<void>, ms: number): Promise<boolean> {
  let cancel: () => void = () => undefined;
  const late = new Promise<false>((resolve) => {
    cancel = scheduleOnce(clock, ms, () => {
      resolve(false);
    });
  });
  try {
    return await Promise.race([work.then(() => true as const), late]);
  } finally {
    cancel();
  }
}
