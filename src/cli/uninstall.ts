/**
 * `istio-vm uninstall`: on the VM, as root. Puts back the DNS files `istio-vm install` changed outside the package
 * (kubedns, the resolver wiring) from the record install kept, and restarts dnsmasq/resolved. The package's prerm
 * runs it on removal; the agent and the package itself are dpkg's business (`apt remove istio-vm-agent`).
 */
import type { CommandModule } from "yargs";
import type { UninstallReport } from "../provision/uninstall.js";
import { installPortsFrom } from "../provision/install-system.js";
import { runUninstall } from "../provision/uninstall.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface UninstallArgs {
  "dry-run": boolean;
}

export function renderUninstallReport(report: UninstallReport): string {
  if (report.steps.length === 0) {
    return `nothing to restore: no install record (${report.record}) and no file of istio-vm install's\n`;
  }
  const head = report.dryRun
    ? `dry run: uninstall would take these steps (record ${report.recorded ? report.record : "none"}):\n`
    : report.changed
      ? `restored what istio-vm install changed outside the package${report.failed ? " (with failures)" : ""}\n`
      : "nothing to restore\n";
  const table = renderTable(
    ["STEP", "ACTION", "DETAIL"],
    report.steps.map((s) => [s.id, s.action, s.detail]),
  );
  return head + table + report.notes.map((n) => `note: ${n}\n`).join("");
}

export function uninstallCommand(runtime: () => CommandRuntime): CommandModule<object, UninstallArgs> {
  return {
    command: "uninstall",
    describe:
      "On the VM (root): put back the resolver and dnsmasq files `istio-vm install` changed (package removal runs it)",
    builder: (y) =>
      y
        .option("dry-run", {
          type: "boolean",
          default: false,
          describe: "list the steps uninstall would take; change nothing",
        })
        .epilogue(
          `install records, before it first changes them, the DNS files it writes outside the package: ` +
            "/etc/dnsmasq.d/kubedns and istio-vm-local, the systemd-resolved drop-in istio-vm.conf, the dhclient enter " +
            "hook istio-vm and resolv.conf (/var/lib/istio-vm-agent/install-record.json, root only). uninstall removes " +
            "the files that did not exist, restores the others (bytes, mode, owner) when they still hold what install " +
            "wrote, removes only install's nameserver 127.0.0.1 from a resolv.conf a DHCP lease event rewrote since, " +
            "keeps (and names) any other file changed since, then restarts dnsmasq and systemd-resolved. " +
            "`apt remove istio-vm-agent` (and purge) runs it after stopping the agent.",
        )
        .example("sudo $0 uninstall --dry-run", "show what would be put back")
        .example("sudo apt remove istio-vm-agent", "stops the agent, runs uninstall, removes the package"),
    handler: async (args) => {
      const rt = runtime();
      const report = await runUninstall(
        { dryRun: args["dry-run"] },
        installPortsFrom(rt, (line) => {
          rt.err(`${line}\n`);
        }),
      );
      rt.out(rt.options.json ? renderJson(report) : renderUninstallReport(report));
      if (report.failed) rt.exitCode = 1;
    },
  };
}
