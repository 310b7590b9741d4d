import type { CommandModule } from "yargs";
import type { LoadedConfig } from "../config/load.js";
import { agentProblems, describeSource, loadConfig } from "../config/load.js";
import type { VariableName } from "../config/registry.js";
import { VARIABLE_NAMES, VARIABLES } from "../config/registry.js";
import { escapeHidden, exceeds, printable } from "../config/printable.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface ConfigArgs {
  changed: boolean;
}

export interface ConfigReport {
  readonly files: LoadedConfig["files"];
  readonly variables: readonly {
    name: string;
    value: string;
    source: string;
    group: string;
    description: string;
    via?: string;
  }[];
  readonly problems: LoadedConfig["problems"];
  readonly warnings: LoadedConfig["warnings"];
}

export function configReport(loaded: LoadedConfig, onlyChanged: boolean): ConfigReport {
  const problems = [...loaded.problems, ...agentProblems(loaded)];
  const variables = [
    ...VARIABLE_NAMES.map((name: VariableName) => {
      const v = loaded.variables[name];
      const s = VARIABLES[name];
      return {
        name,
        value: v.raw,
        source: describeSource(v.source),
        group: s.group,
        description: s.description,
        ...(v.via === undefined ? {} : { via: v.via }),
      };
    }),
    ...Object.values(loaded.metadata).map((m) => ({
      name: m.name,
      value: m.raw,
      source: describeSource(m.source),
      group: "metadata",
      description: "node metadata passed to Envoy",
    })),
  ].filter((v) => !onlyChanged || v.source !== "default");
  return { files: loaded.files, variables, problems, warnings: loaded.warnings };
}

/** Values longer than this are cut in the table (a 1 MB value would otherwise pad every row to 1 MB). */
export const TABLE_VALUE_WIDTH = 60;

function renderText(report: ConfigReport): string {
  const files = report.files
    .map((f) => `${f.role.padEnd(12)} ${escapeHidden(f.path)}${f.present ? "" : "  (not found)"}`)
    .join("\n");
  const rows = report.variables.map((v) => [
    v.name,
    v.value === "" ? '""' : printable(v.value, TABLE_VALUE_WIDTH),
    v.via === undefined ? v.source : `${v.source} (as ${v.via})`,
  ]);
  let text = `${files}\n\n${renderTable(["NAME", "VALUE", "SOURCE"], rows)}`;
  if (report.variables.some((v) => exceeds(v.value, TABLE_VALUE_WIDTH))) {
    text += `(values longer than ${TABLE_VALUE_WIDTH} characters are cut at …; \`istio-vm config --json\` shows them whole)\n`;
  }
  const list = (title: string, items: ConfigReport["problems"]): string =>
    items.length === 0
      ? ""
      : `\n${title}:\n${items.map((p) => escapeHidden(`  - ${p.where === undefined ? "" : `${p.where}: `}${p.subject}: ${p.message}`)).join("\n")}\n`;
  text += list("warnings", report.warnings);
  text += list("problems", report.problems);
  if (report.problems.length === 0) text += "\nconfiguration is valid\n";
  return text;
}

export function configCommand(runtime: () => CommandRuntime): CommandModule<object, ConfigArgs> {
  return {
    command: "config",
    describe: "Show the effective configuration of this VM and where each value came from",
    builder: (y) =>
      y
        .option("changed", { type: "boolean", default: false, describe: "show only values that are not defaults" })
        .epilogue(
          "Values come from, lowest first: built-in defaults, cluster.env, sidecar.env, the environment. The files are " +
            "parsed, never executed. ISTIO_VM_ROOT=DIR relocates every default path under DIR. Exits 2 when the " +
            "configuration has problems, listing all of them.",
        )
        .example("$0 config", "every variable, its value and its source")
        .example("$0 config --changed --json", "only what cluster.env, sidecar.env or the environment set, as JSON"),
    handler: async (args) => {
      const rt = runtime();
      const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
      const report = configReport(loaded, args.changed);
      rt.out(rt.options.json ? renderJson(report) : renderText(report));
      if (report.problems.length > 0) rt.exitCode = 2;
    },
  };
}
