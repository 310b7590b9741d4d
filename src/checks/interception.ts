/**
 * The interception check: the kernel holds exactly istio-vm's planned rules (nat, and raw with DNS capture) (chains, jumps and rules, in order)
 * for every family the plan covers, in the back end `apply` would use. Planning and reading are the interception
 * module's own (`src/intercept/`), so `check` agrees with `istio-vm iptables show`.
 */
import { familyName, readInterception } from "../intercept/applier.js";
import { AgentError } from "../platform/errors.js";
import { planInterception } from "../intercept/planner.js";
import { interceptionSettings } from "../intercept/settings.js";
import { diffFamily } from "../intercept/show.js";
import type { Check, CheckDeps } from "./check.js";
import { fail, pass } from "./check.js";

export const INTERCEPTION_CHECK = "interception";

export function interceptionCheck(deps: CheckDeps): Check {
  return {
    name: INTERCEPTION_CHECK,
    description: "istio-vm's iptables chains are present and equal to the plan (`istio-vm iptables show`)",
    async run() {
      const plan = planInterception(await interceptionSettings(deps.values, deps.users, deps.fs));
      let shows: Awaited<ReturnType<typeof readInterception>>;
      try {
        shows = await readInterception({
          runner: deps.runner,
          choice: deps.values.FORCE_IPTABLES_BINARY,
          logger: deps.logger.child("iptables"),
          timeoutMs: Math.max(deps.timeoutMs, 5000),
        });
      } catch (error) {
        if (!(error instanceof AgentError)) throw error;
        return fail(
          INTERCEPTION_CHECK,
          error.message,
          error.code === "IPTABLES_PERMISSION_DENIED"
            ? "reading iptables needs CAP_NET_ADMIN: run `sudo istio-vm check`"
            : (error.hint ?? "`istio-vm iptables show` reads the same rules and says more"),
        );
      }
      const details: string[] = [];
      const problems: string[] = [];
      let unreadable: string | undefined;
      let ruleCount = 0;
      for (const show of shows) {
        const tables = plan.families.find((f) => f.family === show.family)?.tables ?? [];
        const planned = tables.length === 0 ? undefined : tables.reduce((n, t) => n + t.rules.length, 0);
        const name = familyName(show.family);
        if (!show.readable) {
          // A family the plan does not use may be unreadable (no ip6tables) without consequence.
          if (planned !== undefined) {
            unreadable = show.reason ?? "unknown reason";
            problems.push(`${name}: cannot read rules (${unreadable})`);
          } else details.push(`${name}: not read (${show.reason ?? "unknown"}), nothing planned`);
          continue;
        }
        const diff = diffFamily(tables, show.states);
        ruleCount += planned ?? 0;
        if (diff.matches) {
          details.push(
            `${name} (${show.backend}): ${planned === undefined ? "nothing planned, none present" : `${planned} rules as planned`}`,
          );
          continue;
        }
        const parts = [
          diff.missing.length > 0 ? `${diff.missing.length} missing` : "",
          diff.unexpected.length > 0 ? `${diff.unexpected.length} unexpected` : "",
          diff.outOfOrder.length > 0 ? `order differs in ${diff.outOfOrder.join(", ")}` : "",
        ].filter((p) => p !== "");
        problems.push(`${name}: ${parts.join(", ")}`);
        details.push(...diff.missing.slice(0, 5).map((l) => `${name} missing: ${l}`));
        details.push(...diff.unexpected.slice(0, 5).map((l) => `${name} unexpected: ${l}`));
      }
      if (problems.length === 0) {
        return pass(
          INTERCEPTION_CHECK,
          ruleCount === 0 ? "nothing to capture, no rules present" : `rules as planned (${ruleCount})`,
          details,
        );
      }
      const hint =
        unreadable !== undefined
          ? "reading iptables needs CAP_NET_ADMIN: run `sudo istio-vm check`"
          : "the rules differ from the plan: is the agent running (`systemctl status istio-vm-agent`)? `istio-vm iptables show` lists the differences, `sudo istio-vm iptables apply` restores them";
      return fail(INTERCEPTION_CHECK, problems.join("; "), hint, [...problems, ...details]);
    },
  };
}
