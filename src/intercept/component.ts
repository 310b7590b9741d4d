/**
 * The agent's interception component: applies the plan after certificates are valid and before Envoy starts,
 * re-plans and re-applies on SIGHUP (a rejected restore keeps the previous rules: it is atomic), and removes every
 * rule of ours on stop. With DNS capture it also re-applies when resolv.conf's nameservers change (DHCP, VPN), polled
 * as the DNS proxy polls them, so the rules always cover the servers the applications ask. A crash or SIGKILL skips `stop`; the unit's `ExecStopPost=+/usr/bin/istio-vm iptables clean`
 * covers that path. With ISTIO_CUSTOM_IP_TABLES=true the admin owns capture and the component is left out.
 */
import type { AgentComponent, AgentDeps, ComponentFactory, ComponentStatus } from "../agent/component.js";
import type { ConfigValues } from "../config/registry.js";
import { describeError } from "../platform/errors.js";
import type { Logger } from "../platform/logger.js";
import type { FamilyApplyResult, IptablesDeps } from "./applier.js";
import { applyInterception, cleanInterception, familyName } from "./applier.js";
import { parseResolvConf } from "../dns/resolv-conf.js";
import { planInterception, ruleCount } from "./planner.js";
import { interceptionSettings } from "./settings.js";

/** How often resolv.conf is compared with the nameservers the DNS rules cover (the DNS proxy's own period). */
export const RESOLV_CONF_POLL_MS = 5000;

class InterceptionComponent implements AgentComponent {
  readonly name = "interception";
  readonly #deps: AgentDeps;
  readonly #log: Logger;
  #config: ConfigValues;
  #state: "idle" | "applied" | "failed" | "removed" = "idle";
  #rules = 0;
  #lastError: string | undefined;
  /** The nameservers the applied DNS rules cover (comma-joined); undefined without DNS capture. */
  #nameservers: string | undefined;
  #watch: { readonly controller: AbortController; readonly done: Promise<void> } | undefined;
  readonly #failures;
  readonly #applied;

  constructor(deps: AgentDeps) {
    this.#deps = deps;
    this.#config = deps.config;
    this.#log = deps.logger.child("interception");
    this.#failures = deps.metrics.counter(
      "istio_vm_interception_apply_failures_total",
      "iptables-restore runs that were rejected (the previous rules stayed in place).",
    );
    this.#applied = deps.metrics.counter(
      "istio_vm_interception_applies_total",
      "Times the capture rules were written to the kernel (an unchanged plan is not rewritten).",
    );
    deps.metrics.gaugeFn("istio_vm_interception_active", "1 while the capture rules are applied, else 0.", () =>
      this.#state === "applied" ? 1 : 0,
    );
    deps.metrics.gaugeFn("istio_vm_interception_rules", "Capture rules applied (all families).", () =>
      this.#state === "applied" ? this.#rules : 0,
    );
  }

  #iptables(config: ConfigValues): IptablesDeps {
    return { runner: this.#deps.runner, choice: config.FORCE_IPTABLES_BINARY, logger: this.#log };
  }

  async #apply(config: ConfigValues): Promise<void> {
    try {
      const settings = await interceptionSettings(config, this.#deps.users, this.#deps.fs);
      const plan = planInterception(settings);
      for (const warning of plan.warnings) this.#log.warn(warning);
      const results = await applyInterception(this.#iptables(config), plan);
      this.#report(results);
      if (results.some((r) => r.action === "applied" || r.action === "removed")) this.#applied.inc();
      this.#config = config;
      this.#rules = ruleCount(plan);
      this.#nameservers = settings.dns?.nameservers.join(",");
      this.#state = "applied";
      this.#lastError = undefined;
    } catch (error) {
      this.#failures.inc();
      this.#lastError = describeError(error);
      if (this.#state !== "applied") this.#state = "failed";
      throw error;
    } finally {
      this.#deps.events.emit("status-changed");
    }
  }

  #report(results: readonly FamilyApplyResult[]): void {
    for (const r of results) {
      if (r.action === "nothing") continue;
      this.#log.info(`${familyName(r.family)} capture ${r.action}`, { backend: r.backend, rules: r.rules });
    }
  }

  async start(signal: AbortSignal): Promise<void> {
    await this.#apply(this.#config);
    if (this.#watch === undefined) {
      const controller = new AbortController();
      this.#watch = { controller, done: this.#watchResolvConf(AbortSignal.any([signal, controller.signal])) };
    }
  }

  async #watchResolvConf(signal: AbortSignal): Promise<void> {
    for (;;) {
      try {
        await this.#deps.clock.sleep(RESOLV_CONF_POLL_MS, signal);
      } catch {
        return;
      }
      if (this.#nameservers === undefined || this.#state !== "applied") continue;
      let now: string;
      try {
        const text = (await this.#deps.fs.readTextIfExists(this.#config.ISTIO_RESOLV_CONF)) ?? "";
        now = parseResolvConf(text).addresses.join(",");
      } catch (error) {
        this.#log.warn("cannot read resolv.conf; the DNS rules stay as they are", { error: describeError(error) });
        continue;
      }
      if (now === this.#nameservers) continue;
      this.#log.info("resolv.conf's nameservers changed: re-applying the DNS capture", {
        from: this.#nameservers,
        to: now,
      });
      try {
        await this.#apply(this.#config);
      } catch (error) {
        this.#log.error("could not re-apply the capture; the previous rules stay", { error: describeError(error) });
      }
    }
  }

  async reload(config: ConfigValues): Promise<void> {
    await this.#apply(config);
  }

  async stop(): Promise<void> {
    this.#watch?.controller.abort();
    await this.#watch?.done;
    this.#watch = undefined;
    try {
      const results = await cleanInterception(this.#iptables(this.#config));
      const removed = results.filter((r) => r.removedChains.length > 0 || r.removedJumps > 0);
      this.#log.info("capture rules removed", { families: removed.map((r) => familyName(r.family)).join(",") });
      this.#state = "removed";
    } catch (error) {
      // The unit's ExecStopPost runs `istio-vm iptables clean` again; say so rather than fail the stop.
      this.#lastError = describeError(error);
      this.#log.error("could not remove the capture rules; ExecStopPost will retry", { error: this.#lastError });
    }
  }

  status(): ComponentStatus {
    switch (this.#state) {
      case "applied":
        return {
          ready: true,
          summary:
            this.#rules === 0
              ? "nothing to capture (no inbound ports, no service CIDRs)"
              : `capture on (${this.#rules} rules)`,
        };
      case "failed":
        return { ready: false, summary: `capture failed: ${this.#lastError ?? "unknown error"}` };
      case "removed":
        return { ready: false, summary: "capture removed" };
      case "idle":
        return { ready: false, summary: "capture not applied yet" };
    }
  }
}

export const interceptionComponent: ComponentFactory = (deps) => {
  if (deps.config.ISTIO_CUSTOM_IP_TABLES) {
    deps.logger.child("interception").info("ISTIO_CUSTOM_IP_TABLES=true: the admin manages iptables; not touching it");
    return undefined;
  }
  return new InterceptionComponent(deps);
};
