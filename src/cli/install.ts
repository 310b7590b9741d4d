/**
 * `istio-vm install BUNDLE`: on the VM, as root. Verifies the bundle, installs or upgrades the package, places the
 * files, wires DNS, enables and starts the agent, waits for READY and prints the `check` summary.
 */
import type { CommandModule } from "yargs";
import { checkDepsFrom } from "../checks/check.js";
import { buildChecks, runChecks } from "../checks/registry.js";
import { loadConfig } from "../config/load.js";
import { describeError } from "../platform/errors.js";
import { checkBundleFile } from "../provision/bundle-file.js";
import { parseSettingFlags } from "../provision/bundle.js";
import type { InstallReport } from "../provision/install.js";
import { runInstall } from "../provision/install.js";
import { UNIT } from "../provision/install-plan.js";
import { installPortsFrom } from "../provision/install-system.js";
import type { ResolverChoice } from "../provision/resolver.js";
import { RESOLVER_KINDS } from "../provision/resolver.js";
import { parseDurationFlag } from "./admin-options.js";
import { renderResults } from "./check.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface InstallArgs {
  bundle: string;
  "dry-run": boolean;
  set: string[];
  resolver: ResolverChoice;
  timeout: string;
  checks: boolean;
}

export function renderInstallReport(report: InstallReport): string {
  const head = report.dryRun
    ? `dry run: install would take these steps for ${report.bundle} (profile ${report.profile}, resolver ${report.resolver}):\n`
    : `installed ${report.bundle} (profile ${report.profile}, resolver ${report.resolver})${report.changed ? "" : ": nothing changed"}\n`;
  const table = renderTable(
    ["STEP", "ACTION", "DETAIL"],
    report.steps.map((s) => [s.id, s.action, s.detail]),
  );
  const notes = report.notes.map((n) => `note: ${n}\n`).join("");
  const unit =
    report.unit === undefined
      ? ""
      : `${UNIT}: ${report.unit.ActiveState}/${report.unit.SubState}${report.unit.StatusText === "" ? "" : ` — ${report.unit.StatusText}`}\n`;
  return head + table + notes + unit;
}

/** `istio-vm check` as a function, after the agent is ready; its failures are reported, not fatal to install. */
async function checkSummary(rt: CommandRuntime): Promise<string> {
  try {
    const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
    const checks = buildChecks(checkDepsFrom(rt, { loaded, logger: rt.logger, timeoutMs: 5000 }), []);
    const results = await runChecks(checks, new AbortController().signal);
    return `\n${renderResults(results, false)}`;
  } catch (error) {
    return `\ncheck could not run: ${describeError(error)}\n`;
  }
}

export function installCommand(runtime: () => CommandRuntime): CommandModule<object, InstallArgs> {
  return {
    command: "install <bundle>",
    describe: "On the VM (root): install a bundle from `istio-vm bundle` — package, files, DNS, enabled agent",
    builder: (y) =>
      y
        .positional("bundle", { type: "string", demandOption: true, describe: "the archive made by `istio-vm bundle`" })
        .option("dry-run", {
          type: "boolean",
          default: false,
          describe: "verify the bundle and list the steps install would take; change nothing",
        })
        .option("set", {
          type: "string",
          array: true,
          default: [] as string[],
          describe: "per-VM sidecar.env setting KEY=VALUE (repeatable); wins over the bundle's",
          requiresArg: true,
        })
        .option("resolver", {
          choices: ["auto", ...RESOLVER_KINDS] as const,
          default: "auto" as const,
          describe:
            "how the system resolver reaches dnsmasq: auto detects resolved (systemctl is-active), resolvconf, dhclient, else static",
        })
        .option("timeout", {
          type: "string",
          default: "90s",
          describe: "how long to wait for the agent's READY",
          requiresArg: true,
        })
        .option("checks", {
          type: "boolean",
          default: true,
          describe: "run `istio-vm check` after the agent is ready and print its summary (--no-checks to skip)",
        })
        .epilogue(
          "Steps, in order: verify SHA256SUMS (a changed member is named, nothing is touched); validate the resulting " +
            "configuration; dpkg -i the bundle's .deb unless that version is installed; write /etc/certs/*.pem " +
            "(istio-proxy; key.pem 0600), the token (istio-proxy, 0600), sidecar.env (your settings merged into the " +
            "conffile), cluster.env and /etc/dnsmasq.d/kubedns (root, 0644), atomically and only when different; make " +
            "the resolver send the mesh's names to dnsmasq durably (resolved: a drop-in with routing-only domains; " +
            "dhclient: an enter hook that keeps 127.0.0.1 first on every renewal; resolvconf: dnsmasq registers " +
            "itself; static: resolv.conf); restart dnsmasq; enable and (re)start istio-vm-agent and wait for READY. " +
            "Running it again changes nothing. If a later step fails, every file written is restored and the services " +
            "restarted with the old files. Before the first DNS file changes, the originals are recorded in " +
            "/var/lib/istio-vm-agent/install-record.json; removing the package (apt remove or purge) runs " +
            "`istio-vm uninstall`, which puts them back. Under ISTIO_VM_ROOT only files are placed, no system command runs.",
        )
        .example("sudo $0 install vm.bundle.tgz", "install or upgrade from a bundle")
        .example("sudo $0 install vm.bundle.tgz --set ISTIO_SVC_IP=10.0.0.5", "with this VM's address")
        .example("$0 install vm.bundle.tgz --dry-run", "verify the bundle and show the plan"),
    handler: async (args) => {
      const rt = runtime();
      await checkBundleFile(rt.fs, args.bundle, "bundle");
      const report = await runInstall(
        {
          bundlePath: args.bundle,
          settings: parseSettingFlags(args.set, "--set"),
          resolver: args.resolver,
          readyTimeoutMs: parseDurationFlag("timeout", args.timeout),
          dryRun: args["dry-run"],
        },
        installPortsFrom(rt, (line) => {
          rt.err(`${line}\n`);
        }),
      );
      if (rt.options.json) {
        rt.out(renderJson(report));
        return;
      }
      rt.out(renderInstallReport(report));
      if (!report.dryRun && report.unit !== undefined && args.checks) rt.out(await checkSummary(rt));
    },
  };
}
