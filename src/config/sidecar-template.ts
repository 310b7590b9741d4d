/**
 * The `sidecar.env` the Debian package ships (a conffile): every variable an admin may set in `sidecar.env` or
 * `cluster.env`, commented out, with its type, default and description, generated from the registry so the file
 * can never drift from what the program reads. Settings normally in `cluster.env` are listed too, because the
 * per-VM file wins over it.
 */
import { quoteEnvValue } from "./env-file.js";
import type { Get, Home, VariableName } from "./registry.js";
import { VARIABLE_NAMES, VARIABLES, isVariableName } from "./registry.js";

const WIDTH = 118;

/** The default of `name` when every variable is at its default, except the ones in `overrides`. */
export function defaultValue(name: VariableName, overrides: Readonly<Record<string, string>> = {}): string {
  const resolving = new Set<string>();
  const resolve = (n: VariableName): string => {
    const fixed = overrides[n];
    if (fixed !== undefined) return fixed;
    if (resolving.has(n)) throw new Error(`default of ${n} depends on itself`);
    resolving.add(n);
    const declared = VARIABLES[n].default;
    const get: Get = (other) => (isVariableName(other) ? resolve(other) : "");
    const value = typeof declared === "string" ? declared : declared(get);
    resolving.delete(n);
    return value;
  };
  return resolve(name);
}

function wrapComment(text: string): string[] {
  const lines: string[] = [];
  let line = "#";
  for (const word of text.split(/\s+/).filter((w) => w !== "")) {
    if (line.length + 1 + word.length > WIDTH && line !== "#") {
      lines.push(line);
      line = "#";
    }
    line += ` ${word}`;
  }
  lines.push(line);
  return lines;
}

function describeDefault(name: VariableName): string {
  const istiod = defaultValue(name, { ISTIO_CONTROL_PLANE: "istiod" });
  const legacy = defaultValue(name, { ISTIO_CONTROL_PLANE: "legacy" });
  const show = (value: string): string => (value === "" ? "(empty)" : value);
  if (istiod === legacy) return show(istiod);
  return `${show(istiod)} (istiod profile); ${show(legacy)} (legacy profile)`;
}

function renderVariable(name: VariableName): string[] {
  const spec = VARIABLES[name];
  const lines = wrapComment(`${name}: ${spec.description}.`);
  const facts = [`type: ${spec.type.label}`, `default: ${describeDefault(name)}`];
  if (spec.aliasOf !== undefined) facts.push(`another name for ${spec.aliasOf}`);
  lines.push(...wrapComment(facts.join("; ")));
  const example = typeof spec.default === "string" ? spec.default : defaultValue(name);
  lines.push(`#${name}=${quoteEnvValue(example)}`);
  return lines;
}

const SECTIONS: readonly { home: Home; title: string; intro: string }[] = [
  {
    home: "sidecar.env",
    title: "Settings of this VM",
    intro: "Per-VM settings. Uncomment a line and change its value.",
  },
  {
    home: "cluster.env",
    title: "Settings of the cluster",
    intro:
      "Normally written into cluster.env by `istio-vm install` (from `istio-vm cluster-env`). A value set here " +
      "overrides cluster.env on this VM only.",
  },
];

/** The whole file, ending in a newline. Pure: the same registry always gives the same text. */
export function renderSidecarTemplate(): string {
  const out: string[] = [
    "# /var/lib/istio/envoy/sidecar.env: settings of this VM for istio-vm (istio-vm-agent).",
    "#",
    ...wrapComment(
      "This file is parsed, never executed: KEY=value lines, `#` comments, blank lines, an optional `export `, " +
        "single or double quotes. Precedence: the process environment > this file > cluster.env > the defaults " +
        "below. `istio-vm config` shows the effective value of every variable and where it came from; " +
        "`systemctl reload istio-vm-agent` makes the agent re-read this file.",
    ),
    "#",
    ...wrapComment(
      "Generated from the program's variable registry; every line is commented out, so the defaults apply.",
    ),
  ];
  for (const section of SECTIONS) {
    const names = VARIABLE_NAMES.filter((n) => VARIABLES[n].home === section.home);
    if (names.length === 0) continue;
    out.push("", `# ${"=".repeat(WIDTH - 2)}`, `# ${section.title}`, ...wrapComment(section.intro));
    out.push(`# ${"=".repeat(WIDTH - 2)}`);
    for (const name of names) out.push("", ...renderVariable(name));
  }
  return out.join("\n") + "\n";
}
