/**
 * The certificate loop, one component of `istio-vm agent`: on start it makes sure a valid pair is in OUTPUT_CERTS
 * (fetching one when it is missing, expired or due), then renews it on schedule for as long as the agent runs.
 *
 * Failures are retried with capped exponential backoff and never given up. While the current certificate is still
 * valid the component is ready; readiness compares NotAfter with the clock on every answer, so a certificate that
 * expires while a retry sleeps is reported expired at once (the loop also wakes at NotAfter to say so in STATUS=).
 * Once it has expired, the token path (istiod) re-bootstraps it; without one the loop stays up in a degraded state
 * whose status names the fix, and keeps re-reading the store, so a pair installed by the admin is picked up without
 * a restart. `reload()` (SIGHUP) re-reads the settings (CA_ADDR, SECRET_TTL, key type, grace ratio) and retries at
 * once when the loop was failing.
 */
import type { AgentComponent, AgentEvents, ComponentStatus } from "../agent/component.js";
import type { Counter, MetricsRegistry } from "../agent/metrics.js";
import type { Clock } from "../platform/clock.js";
import { describeError } from "../platform/errors.js";
import type { Logger } from "../platform/logger.js";
import type { CurrentPair, RenewContext } from "./renew.js";
import { RenewError, inspectCurrent, renewOnce } from "./renew.js";
import type { BackoffPolicy, Random, RenewalPolicy } from "./schedule.js";
import { backoffDelay, delayUntil, nextRenewalAt } from "./schedule.js";
import type { CertificateInfo } from "./verify.js";
import { describeLeaf } from "./verify.js";

/** What the configuration decides; re-read on `reload()`. */
export interface CertificateLoopSettings {
  readonly context: RenewContext;
  readonly renewal: RenewalPolicy;
  /** What to tell the admin when the VM can no longer renew on its own. */
  readonly reprovisionHint: string;
  /** CA_ADDR as written, for messages. */
  readonly caAddress: string;
}

export interface CertificateLoopOptions {
  /** Builds the settings (owner lookup and the like may need I/O): when the loop starts and after each reload. */
  readonly settings: () => Promise<CertificateLoopSettings>;
  readonly backoff: BackoffPolicy;
  readonly random: Random;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly events: Pick<AgentEvents, "emit">;
}

type LoopState =
  | { readonly kind: "starting" }
  | { readonly kind: "valid"; readonly renewAt: number }
  | { readonly kind: "retrying"; readonly reason: string; readonly retryAt: number }
  | { readonly kind: "degraded"; readonly message: string; readonly retryAt: number };

function shortTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 16)}Z`;
}

function shortDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

export class CertificateLoop implements AgentComponent {
  readonly name = "certificates";
  readonly #options: CertificateLoopOptions;
  readonly #renewals: Counter;
  readonly #failures: Counter;
  #state: LoopState = { kind: "starting" };
  /** The leaf on disk as last seen (also when invalid), for the expiry metric and the status line. */
  #info: CertificateInfo | undefined;
  /** Whether that leaf passed every check when last read; its NotAfter is compared with now on every answer. */
  #valid = false;
  #identity = "";
  #now: () => number = Date.now;
  #settings: CertificateLoopSettings | undefined;
  #reloadRequested = false;
  #abort: AbortController | undefined;
  #running: Promise<void> | undefined;
  /** Serial of the pair last seen or written, to notice a pair replaced behind the loop's back. */
  #knownSerial: string | undefined;
  /** Aborted by `reload()` to end the current sleep early. */
  #wake = new AbortController();

  constructor(options: CertificateLoopOptions) {
    this.#options = options;
    this.#renewals = options.metrics.counter(
      "istio_vm_cert_renewals_total",
      "Workload certificates obtained from the CA",
    );
    this.#failures = options.metrics.counter(
      "istio_vm_cert_renewal_failures_total",
      "Failed certificate renewals, by reason (unavailable, untrusted, deadline, denied, unauthenticated, chain, identity, …)",
      ["reason"],
    );
    options.metrics.gaugeFn(
      "istio_vm_cert_expiry_seconds",
      "Seconds until the workload certificate expires (negative once expired; NaN when there is none)",
      () => (this.#info === undefined ? Number.NaN : Math.round((this.#info.notAfter.getTime() - this.#now()) / 1000)),
    );
  }

  async start(signal: AbortSignal): Promise<void> {
    const settings = await this.#options.settings();
    this.#settings = settings;
    this.#identity = settings.context.identity;
    this.#now = () => settings.context.clock.now();
    const abort = new AbortController();
    this.#abort = abort;
    const onAbort = (): void => {
      abort.abort(signal.reason);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });

    let settle: { resolve: () => void; reject: (error: unknown) => void } | undefined;
    const ready = new Promise<void>((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.#running = this.#run(settings.context.clock, abort.signal, () => settle?.resolve()).then(
      () => settle?.reject(abort.signal.reason ?? new Error("certificate loop stopped before a valid certificate")),
      (error: unknown) => {
        settle?.reject(error);
      },
    );
    await ready;
  }

  async stop(): Promise<void> {
    this.#abort?.abort(new Error("agent stopping"));
    try {
      await this.#running;
    } catch {
      // stop never throws; the loop already logged its last error.
    }
    this.#settings?.context.close?.();
  }

  /**
   * SIGHUP: re-read the settings (a corrected CA_ADDR, a new SECRET_TTL or key type) and look at the store again now
   * (e.g. after `istio-vm certs renew` or a re-install wrote a new pair), instead of at the next scheduled renewal. A
   * failing loop retries at once; a valid pair keeps its schedule (new settings apply from the next renewal). A pair
   * changed on disk raises certificates-changed.
   */
  reload(): Promise<void> {
    this.#reloadRequested = true;
    this.#wake.abort();
    return Promise.resolve();
  }

  /** Whether the certificate last read is valid at this moment (not only when it was read). */
  #validNow(): boolean {
    return this.#valid && this.#info !== undefined && this.#info.notAfter.getTime() > this.#now();
  }

  status(): ComponentStatus {
    const state = this.#state;
    const info = this.#info;
    const expired = this.#valid && info !== undefined && info.notAfter.getTime() <= this.#now();
    const cert =
      info === undefined ? "" : ` ${expired ? "EXPIRED at" : "expires"} ${shortTime(info.notAfter.getTime())}`;
    switch (state.kind) {
      case "starting":
        return {
          ready: false,
          summary: `requesting the certificate of ${this.#identity} from CA ${this.#settings?.caAddress ?? "?"}`,
        };
      case "valid":
        return { ready: this.#validNow(), summary: `cert ${this.#identity}${cert}` };
      case "retrying":
        return {
          ready: this.#validNow(),
          summary: `cert ${this.#identity}${cert}; renewal failing (${state.reason}), retry in ${shortDuration(state.retryAt - this.#now())}`,
        };
      case "degraded":
        return {
          ready: false,
          summary: `${state.message} (retry in ${shortDuration(state.retryAt - this.#now())})`,
        };
    }
  }

  #setState(state: LoopState): void {
    this.#state = state;
    this.#options.events.emit("status-changed");
  }

  #observe(current: CurrentPair): void {
    this.#valid = current.state === "valid";
    if (current.state === "valid") this.#info = current.info;
    else if (current.state === "invalid") this.#info = describeLeaf(current.pair.chainPem);
    else this.#info = undefined;
  }

  /** "<what is wrong>; <the CA's answer>; fix: <what to do>", for STATUS= and /healthz/ready. */
  #degradedMessage(settings: CertificateLoopSettings, current: CurrentPair | undefined, error: RenewError): string {
    const context = settings.context;
    const what =
      current === undefined
        ? "certificate store unreadable"
        : current.state === "missing"
          ? "no certificate"
          : this.#info !== undefined && this.#info.notAfter.getTime() <= this.#now()
            ? `certificate expired at ${shortTime(this.#info.notAfter.getTime())}`
            : "certificate unusable";
    const tokenHint =
      context.protocol === "istiod" ? `, or put a new service-account token in ${context.tokenFile}` : "";
    const reprovision = `re-provision: ${settings.reprovisionHint}${tokenHint}`;
    let fix: string;
    switch (error.reason) {
      case "unavailable":
      case "deadline":
        // The CA cannot be reached: a wrong CA_ADDR, DNS, a firewall, or the CA is down. If the VM still holds a
        // usable credential (istiod: the token), reaching the CA is all it takes.
        fix =
          `check CA_ADDR (${settings.caAddress}) and the network (\`istio-vm check --only dns,ca\`); ` +
          `then \`systemctl reload istio-vm-agent\`${current?.state === "valid" || context.protocol === "istiod" ? "" : `; if the certificate has expired, ${reprovision}`}`;
        break;
      case "untrusted":
        fix =
          `the CA at ${settings.caAddress} is not trusted by ${context.store.paths.root} (another mesh, or a rotated ` +
          `root?): check CA_ADDR and ISTIOD_SAN, or ${reprovision}`;
        break;
      default:
        fix = reprovision;
    }
    return `${what}: ${error.message}; fix: ${fix}`;
  }

  async #run(clock: Clock, signal: AbortSignal, onValid: () => void): Promise<void> {
    const logger = this.#options.logger;
    let failures = 0;
    let scheduled: { serial: string; at: number } | undefined;
    const stopped = (): boolean => signal.aborted;
    while (!stopped()) {
      let current: CurrentPair | undefined;
      if (this.#reloadRequested) {
        this.#reloadRequested = false;
        await this.#reloadSettings();
        // The renewal time depends on the grace ratio: compute it again.
        scheduled = undefined;
      }
      const settings = this.#settings;
      if (settings === undefined) return;
      const context = settings.context;
      try {
        current = await inspectCurrent(context);
        this.#observe(current);
        if (current.state === "valid") {
          const serial = current.info.serialNumber;
          if (this.#knownSerial !== undefined && this.#knownSerial !== serial) {
            logger.info("certificate replaced on disk", { identity: this.#identity, serial });
            this.#options.events.emit("certificates-changed");
            // A new valid pair ends a failure streak: renew it on its own schedule.
            failures = 0;
          }
          this.#knownSerial = serial;
        }
        if (current.state === "valid") {
          if (scheduled?.serial !== current.info.serialNumber) {
            const at = nextRenewalAt(
              { notBefore: current.info.notBefore.getTime(), notAfter: current.info.notAfter.getTime() },
              settings.renewal,
              this.#options.random,
            );
            scheduled = { serial: current.info.serialNumber, at };
          }
          if (failures === 0 && clock.now() < scheduled.at) {
            this.#setState({ kind: "valid", renewAt: scheduled.at });
            onValid();
            logger.info("certificate valid", {
              identity: this.#identity,
              notAfter: current.info.notAfter.toISOString(),
              renewAt: new Date(scheduled.at).toISOString(),
            });
            if (!(await this.#sleep(clock, delayUntil(scheduled.at, clock.now()), signal))) break;
            continue;
          }
        } else if (failures === 0) {
          logger.warn("no usable certificate, requesting one", {
            identity: this.#identity,
            problem: current.state === "missing" ? current.problem : current.problem.message,
          });
        }

        const result = await renewOnce(context, signal);
        failures = 0;
        this.#knownSerial = result.info.serialNumber;
        this.#renewals.inc();
        this.#info = result.info;
        this.#valid = true;
        logger.info("certificate renewed", {
          identity: this.#identity,
          serial: result.info.serialNumber,
          notAfter: result.info.notAfter.toISOString(),
          via: result.credential === "mtls" ? "mTLS" : "token",
        });
        this.#options.events.emit("certificates-changed");
      } catch (caught) {
        if (stopped()) break;
        // Anything unexpected (a file-system error, a bug) is one more failed attempt: the loop never ends by itself.
        const error = caught instanceof RenewError ? caught : new RenewError("error", describeError(caught), caught);
        failures++;
        this.#failures.inc({ reason: error.reason });
        const delay = backoffDelay(failures, this.#options.backoff, this.#options.random);
        const retryAt = clock.now() + delay;
        const fields = { reason: error.reason, error: error.message, attempt: failures, retryIn: shortDuration(delay) };
        const notAfter = current?.state === "valid" ? current.info.notAfter.getTime() : undefined;
        if (notAfter !== undefined && notAfter > clock.now()) {
          logger.warn("certificate renewal failed; the current certificate stays in place", fields);
          this.#setState({ kind: "retrying", reason: error.reason, retryAt });
          // A valid pair is in place: the agent can go on while renewal retries in the background.
          onValid();
          if (notAfter < retryAt) {
            // It expires before the retry: wake then, so STATUS= and the log say so when it happens.
            if (!(await this.#sleep(clock, delayUntil(notAfter, clock.now()), signal))) break;
            if (this.#wokenEarly) continue;
            this.#valid = false;
            const message = this.#degradedMessage(settings, current, error);
            logger.error(`certificate expired while renewal was failing: ${message}`, fields);
            this.#setState({ kind: "degraded", message, retryAt });
          }
        } else {
          const message = this.#degradedMessage(settings, current, error);
          logger.error(`certificate renewal failed: ${message}`, fields);
          this.#setState({ kind: "degraded", message, retryAt });
        }
        if (!(await this.#sleep(clock, delayUntil(retryAt, clock.now()), signal))) break;
      }
    }
  }

  async #reloadSettings(): Promise<void> {
    const logger = this.#options.logger;
    const before = this.#settings;
    try {
      const next = await this.#options.settings();
      this.#settings = next;
      // No renewal is in flight between the loop's steps: the old context's CA connection can go.
      if (before !== next) before?.context.close?.();
      this.#identity = next.context.identity;
      const changes: Record<string, string> = {};
      if (before?.caAddress !== next.caAddress) changes["ca"] = next.caAddress;
      if (before?.context.ttlMs !== next.context.ttlMs) changes["ttl"] = shortDuration(next.context.ttlMs);
      const keyType = (spec: RenewContext["keySpec"]): string =>
        spec.type === "RSA" ? `RSA-${spec.rsaBits}` : spec.type;
      if (before === undefined || keyType(before.context.keySpec) !== keyType(next.context.keySpec)) {
        changes["keyType"] = keyType(next.context.keySpec);
      }
      logger.info("certificate settings reloaded", {
        changed: Object.keys(changes).length === 0 ? "nothing" : Object.keys(changes).join(","),
        ...changes,
      });
    } catch (error) {
      logger.error("certificate settings not reloaded; keeping the previous ones", { error: describeError(error) });
    }
  }

  /** Set by #sleep: the last sleep ended early because of reload(). */
  #wokenEarly = false;

  /** Sleeps on the context's clock until `ms` passed or `reload()` woke it; false when the loop was stopped. */
  async #sleep(clock: Clock, ms: number, signal: AbortSignal): Promise<boolean> {
    if (this.#wake.signal.aborted && !this.#reloadRequested) this.#wake = new AbortController();
    this.#wokenEarly = false;
    try {
      await clock.sleep(ms, AbortSignal.any([signal, this.#wake.signal]));
    } catch {
      this.#wokenEarly = !signal.aborted;
    }
    if (this.#wake.signal.aborted) this.#wake = new AbortController();
    return !signal.aborted;
  }
}
