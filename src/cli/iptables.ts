/**
 * `istio-vm iptables plan | apply | clean | show`: the traffic capture rules, computed from the configuration
 * (src/intercept/planner.ts), applied in one atomic iptables-restore per family, removed exactly.
 */
import type { Argv, CommandModule } from "yargs";
import { loadConfig, requireValid } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { CleanResult, FamilyApplyResult, FamilyShow, IptablesDeps } from "../intercept/applier.js";
import { applyInterception, cleanInterception, familyName, readInterception, toolName } from "../intercept/applier.js";
import type { InterceptionPlan } from "../intercept/planner.js";
import { planInterception, ruleLine } from "../intercept/planner.js";
import { renderPlan } from "../intercept/restore-input.js";
import { interceptionSettings } from "../intercept/settings.js";
import type { PlanDiff } from "../intercept/show.js";
import { diffFamily, stateLines } from "../intercept/show.js";
import { describeError } from "../platform/errors.js";
import type { CommandRuntime } from "./context.js";
import { withFlagValues } from "./flag-values.js";
import { renderJson } from "./render.js";

interface IptablesArgs {
  "dry-run"?: boolean;
  force?: boolean;
}

const SEMANTICS =
  "What is captured (nat table, REDIRECT; TCP, and UDP only for DNS):\n" +
  "  inbound   ISTIO_INBOUND_PORTS: a list, or * for all; empty captures nothing. Ports in ISTIO_LOCAL_EXCLUDE_PORTS " +
  "or ISTIO_INBOUND_EXCLUDE_PORTS (both names are honoured) are never captured. SSH (port 22) is always returned " +
  "before any capture rule, even when listed, so the VM stays reachable.\n" +
  "  outbound  ISTIO_SERVICE_CIDR: a list of CIDRs, or * for all; EMPTY CAPTURES NO OUTBOUND TRAFFIC (Istio 0.8's " +
  "meaning, not 0.2-0.7's capture-all). ISTIO_SERVICE_EXCLUDE_CIDR is returned first.\n" +
  "  owners    traffic of the proxy's uid AND gid (ENVOY_UID/ENVOY_GID, else ENVOY_USER looked up with getent passwd, so NSS users count) " +
  "is never captured; root's is (the agent runs as the proxy user).\n" +
  "  IPv6      ip6tables rules only with ENABLE_INBOUND_IPV6=true or IPv6 entries in ISTIO_SERVICE_CIDR; the host's " +
  "own IPv6 firewall (INPUT) is never touched.\n" +
  "Profiles (ISTIO_CONTROL_PLANE): legacy = the original istio-iptables.sh layout (ISTIO_INBOUND, ISTIO_OUTPUT, " +
  "ISTIO_REDIRECT → ENVOY_PORT for both directions); istiod = the current layout (inbound → ISTIO_IN_REDIRECT → " +
  "INBOUND_CAPTURE_PORT, INBOUND_TUNNEL_PORT returned, outbound → ISTIO_REDIRECT → ENVOY_PORT).\n" +
  "  DNS       istiod profile with ISTIO_META_DNS_CAPTURE=true: TCP and UDP :53 to each resolv.conf nameserver " +
  "(ISTIO_RESOLV_CONF) → ISTIO_OUTPUT_DNS → DNS_PROXY_PORT, in the nameserver's family, for every user but the " +
  "proxy's; raw-table conntrack zones (ISTIO_OUTPUT_DNS, ISTIO_INBOUND) keep the proxy's upstream flow apart.\n" +
  "Only the chains ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS, ISTIO_REDIRECT (nat), " +
  "ISTIO_INBOUND, ISTIO_OUTPUT_DNS (raw) and the jumps to them from PREROUTING/OUTPUT (tagged with the comment " +
  "istio-vm) are ever changed. Back end: FORCE_IPTABLES_BINARY=legacy|nft, " +
  "else legacy when iptables-legacy already holds rules, else nft.";

async function loadValues(rt: CommandRuntime): Promise<ConfigValues> {
  return requireValid(await loadConfig({ env: rt.env, fs: rt.fs }));
}

async function planFromConfig(rt: CommandRuntime): Promise<{ values: ConfigValues; plan: InterceptionPlan }> {
  const values = await loadValues(rt);
  const plan = planInterception(await interceptionSettings(values, rt.users, rt.fs));
  return { values, plan };
}

function depsFor(rt: CommandRuntime, values: Pick<ConfigValues, "FORCE_IPTABLES_BINARY">): IptablesDeps {
  return { runner: rt.runner, choice: values.FORCE_IPTABLES_BINARY, logger: rt.logger.child("iptables") };
}

function warn(rt: CommandRuntime, warnings: readonly string[]): void {
  for (const w of warnings) rt.err(`warning: ${w}\n`);
}

function planJson(plan: InterceptionPlan): unknown {
  return {
    profile: plan.settings.profile,
    proxy: plan.settings.proxy,
    families: plan.families.map((f) => ({
      family: f.family,
      chains: f.tables.flatMap((t) => t.chains),
      rules: f.tables.flatMap((t) => t.rules.map(ruleLine)),
    })),
    restore: renderPlan(plan),
    warnings: plan.warnings,
  };
}

function describeApply(r: FamilyApplyResult, dryRun: boolean): string {
  const where = `${familyName(r.family)} (${toolName(r.family, r.backend, "restore")})`;
  const residue =
    r.residueCleaned.length === 0 ? "" : `; removed old rules of ours from ${r.residueCleaned.join(", ")}`;
  const would = dryRun ? "would be " : "";
  switch (r.action) {
    case "nothing":
      return `${familyName(r.family)}: nothing to capture${residue}`;
    case "unchanged":
      return `${where}: already in place, ${r.rules} rules${residue}`;
    case "removed":
      return `${where}: nothing to capture, rules of ours ${would}removed${residue}`;
    case "applied":
      return `${where}: ${r.rules} rules ${would}applied${residue}`;
  }
}

function describeClean(results: readonly CleanResult[]): string {
  const lines: string[] = [];
  for (const r of results) {
    if (r.removedChains.length === 0 && r.removedJumps === 0 && r.keptChains.length === 0) continue;
    const where = `${familyName(r.family)} (${toolName(r.family, r.backend, "restore")})`;
    let line = `${where}: removed ${r.removedJumps} jump(s) and chain(s) ${r.removedChains.join(", ") || "none"}`;
    if (r.keptChains.length > 0) {
      line += `; flushed but kept ${r.keptChains.join(", ")} (another chain jumps to it)`;
    }
    lines.push(line);
  }
  return lines.length === 0 ? "nothing to clean: no istio-vm rules in the kernel\n" : `${lines.join("\n")}\n`;
}

interface ShowFamily {
  readonly show: FamilyShow;
  readonly diff: PlanDiff | undefined;
}

function renderShow(families: readonly ShowFamily[], planError: string | undefined): string {
  const blocks = families.map(({ show, diff }) => {
    const title = `${familyName(show.family)} (${toolName(show.family, show.backend, "save")})`;
    if (!show.readable) return `${title}: cannot read: ${show.reason ?? "unknown"}\n`;
    const lines = stateLines(show.states);
    let text = `${title}: ${lines.length === 0 ? "no istio-vm rules" : ""}\n`;
    for (const line of lines) text += `  ${line}\n`;
    if (diff === undefined) return text;
    if (diff.matches) return `${text}  = matches the plan\n`;
    text += "  ≠ differs from the plan:\n";
    for (const l of diff.missing) text += `    missing     ${l}\n`;
    for (const l of diff.unexpected) text += `    unexpected  ${l}\n`;
    for (const c of diff.outOfOrder) text += `    order       rules of ${c} are in a different order\n`;
    return text;
  });
  const tail = planError === undefined ? "" : `\nno plan to compare with: ${planError}\n`;
  return blocks.join("\n") + tail;
}

function subcommands(runtime: () => CommandRuntime): CommandModule<object, IptablesArgs>[] {
  const dryRun = { type: "boolean", default: false } as const;
  return [
    {
      command: "plan",
      describe: "Print the iptables-restore input the configuration gives, per family (changes nothing)",
      handler: async () => {
        const rt = runtime();
        const { plan } = await planFromConfig(rt);
        warn(rt, plan.warnings);
        rt.out(rt.options.json ? renderJson(planJson(plan)) : renderPlan(plan));
      },
    },
    {
      command: "apply",
      describe: "Apply the capture rules: one atomic iptables-restore per family (needs root or CAP_NET_ADMIN)",
      builder: (y: Argv) =>
        y
          .option("dry-run", { ...dryRun, describe: "read the kernel and print the restore input without running it" })
          .option("force", { type: "boolean", default: false, describe: "restore even if the kernel already matches" }),
      handler: async (args) => {
        const rt = runtime();
        const { values, plan } = await planFromConfig(rt);
        warn(rt, plan.warnings);
        if (values.ISTIO_CUSTOM_IP_TABLES) {
          warn(rt, ["ISTIO_CUSTOM_IP_TABLES=true: the agent leaves capture to the admin; applying anyway as asked"]);
        }
        const dry = args["dry-run"] === true;
        const results = await applyInterception(depsFor(rt, values), plan, { dryRun: dry, force: args.force === true });
        if (rt.options.json) {
          rt.out(renderJson({ dryRun: dry, results, warnings: plan.warnings }));
          return;
        }
        for (const r of results) {
          rt.out(`${describeApply(r, dry)}\n`);
          if (dry && r.restore !== undefined) rt.out(r.restore);
        }
      },
    },
    {
      command: "clean",
      describe: "Remove istio-vm's chains and the jumps to them, in every back end; exits 0 when there is nothing",
      builder: (y: Argv) => y.option("dry-run", { ...dryRun, describe: "print what would be removed" }),
      handler: async (args) => {
        const rt = runtime();
        // The unit's ExecStopPost: must work without configuration files and with a broken configuration.
        const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
        const forced = loaded.problems.some((p) => p.subject === "FORCE_IPTABLES_BINARY")
          ? "auto"
          : loaded.values.FORCE_IPTABLES_BINARY;
        const dry = args["dry-run"] === true;
        const results = await cleanInterception(depsFor(rt, { FORCE_IPTABLES_BINARY: forced }), { dryRun: dry });
        if (rt.options.json) {
          rt.out(renderJson({ dryRun: dry, results }));
          return;
        }
        rt.out(dry ? describeClean(results).replace(/removed/g, "would remove") : describeClean(results));
        if (dry) for (const r of results) if (r.restore !== undefined) rt.out(r.restore);
      },
    },
    {
      command: "show",
      describe: "Show istio-vm's rules as they are in the kernel and whether they match the plan (exit 1 if not)",
      handler: async () => {
        const rt = runtime();
        let plan: InterceptionPlan | undefined;
        let planError: string | undefined;
        const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
        try {
          plan = planInterception(await interceptionSettings(requireValid(loaded), rt.users, rt.fs));
        } catch (error) {
          planError = describeError(error);
        }
        const choice = loaded.problems.length === 0 ? loaded.values.FORCE_IPTABLES_BINARY : "auto";
        const shows = await readInterception(depsFor(rt, { FORCE_IPTABLES_BINARY: choice }));
        const families: ShowFamily[] = shows.map((show) => ({
          show,
          diff:
            plan === undefined || !show.readable
              ? undefined
              : diffFamily(plan.families.find((f) => f.family === show.family)?.tables ?? [], show.states),
        }));
        // An unreadable family (no ip6tables, no IPv6 in the kernel) is fine only if the plan captures nothing there.
        const planned = (family: number): number => plan?.families.find((p) => p.family === family)?.tables.length ?? 0;
        const matches = plan !== undefined && families.every((f) => f.diff?.matches ?? planned(f.show.family) === 0);
        if (rt.options.json) {
          rt.out(
            renderJson({
              matches,
              planError: planError ?? null,
              families: families.map(({ show, diff }) => ({
                family: show.family,
                backend: show.backend,
                readable: show.readable,
                ...(show.reason === undefined ? {} : { reason: show.reason }),
                chains: show.states.flatMap((s) => s.chains.map((c) => (s.table === "nat" ? c : `-t ${s.table} ${c}`))),
                rules: stateLines(show.states).filter((l) => !/^(-t \S+ )?:/.test(l)),
                ...(diff === undefined ? {} : diff),
              })),
            }),
          );
        } else {
          rt.out(renderShow(families, planError));
        }
        if (planError !== undefined) rt.exitCode = 2;
        else if (!matches) rt.exitCode = 1;
      },
    },
  ];
}

export function iptablesCommand(runtime: () => CommandRuntime): CommandModule<object, IptablesArgs> {
  return {
    command: "iptables",
    describe: "Plan, apply, remove and show the traffic capture rules (replaces istio-iptables.sh)",
    builder: (y) => {
      let parser = y as unknown as Argv<IptablesArgs>;
      for (const sub of subcommands(runtime)) parser = parser.command(withFlagValues(sub));
      return parser
        .demandCommand(1, "name an iptables command: plan, apply, clean or show")
        .epilogue(SEMANTICS)
        .example("$0 iptables plan", "the rules this VM's cluster.env and sidecar.env give, as iptables-restore input")
        .example("ISTIO_INBOUND_PORTS=8080,9090 ISTIO_SERVICE_CIDR=10.96.0.0/12 $0 iptables plan", "try settings")
        .example("$0 iptables apply --dry-run", "what apply would feed to iptables-restore, given the kernel's state")
        .example("$0 iptables apply", "capture now (the agent does this itself at start)")
        .example("$0 iptables show --json", "our rules in the kernel, and whether they match the plan")
        .example("$0 iptables clean", "remove every istio-vm rule (the unit's ExecStopPost); safe to repeat");
    },
    handler: () => undefined,
  };
}
