/**
 * `docs/configuration.md`: every variable of the registry with its type, default, description and the file it
 * belongs in, rendered from the registry as the conffile's comments are (`sidecar-template.ts`), so the reference
 * cannot drift from what the program reads. Regenerate with `npm run docs`; a unit test fails when the file is stale.
 */
import type { Home, VariableName } from "./registry.js";
import { VARIABLE_NAMES, VARIABLES } from "./registry.js";
import { defaultValue } from "./sidecar-template.js";

const SECTIONS: readonly { home: Home; title: string; intro: string }[] = [
  {
    home: "cluster.env",
    title: "`cluster.env`: settings of the cluster",
    intro:
      "Written by `istio-vm cluster-env` on the admin host and installed as `/var/lib/istio/envoy/cluster.env` by " +
      "`istio-vm install`. One file serves every VM of a cluster (or of a workload). A value set in `sidecar.env` " +
      "overrides it on one VM.",
  },
  {
    home: "sidecar.env",
    title: "`sidecar.env`: settings of this VM",
    intro:
      "`/var/lib/istio/envoy/sidecar.env`, a dpkg conffile that lists every variable below in comments. Edit it on " +
      "the VM (or pass `--set NAME=value` to `istio-vm bundle`/`install`); `systemctl reload istio-vm-agent` " +
      "re-reads it.",
  },
  {
    home: "environment",
    title: "Process environment only",
    intro:
      "Set in the environment of the command or the unit. `ISTIO_VM_ROOT`, `ISTIO_CLUSTER_CONFIG` and " +
      "`ISTIO_SIDECAR_CONFIG` say where the files are, so they count only from the environment.",
  },
];

/** A table cell: pipes escaped, line breaks folded. */
function cell(text: string): string {
  return text.replaceAll("|", "\\|").replaceAll("\n", " ");
}

function code(text: string): string {
  return text === "" ? "(empty)" : `\`${text}\``;
}

function describeDefault(name: VariableName): string {
  const declared = VARIABLES[name].default;
  if (typeof declared === "string") return code(declared);
  const istiod = defaultValue(name, { ISTIO_CONTROL_PLANE: "istiod" });
  const legacy = defaultValue(name, { ISTIO_CONTROL_PLANE: "legacy" });
  if (istiod === legacy) return code(istiod);
  return `istiod: ${code(istiod)}; legacy: ${code(legacy)}`;
}

function row(name: VariableName): string {
  const spec = VARIABLES[name];
  let description = spec.description;
  if (spec.aliasOf !== undefined) description += `; another name for \`${spec.aliasOf}\``;
  if (spec.relocatable === true) description += "; moves under `ISTIO_VM_ROOT` when left at its default";
  return `| \`${name}\` | ${cell(spec.type.label)} | ${cell(describeDefault(name))} | ${cell(description)} |`;
}

/** The whole document, ending in a newline. Pure: the same registry always gives the same text. */
export function renderConfigurationReference(): string {
  const out: string[] = [
    "# Configuration reference",
    "",
    "<!-- Generated from src/config/registry.ts by `npm run docs`; do not edit by hand. -->",
    "",
    "`cluster.env` (per cluster) and `sidecar.env` (per VM) are `KEY=value` files, parsed and never executed: " +
      "comments, blank lines, an optional `export `, single and double quotes and backslash escapes work; anything " +
      "a shell would expand or run is an error naming the file and line. Precedence: the process environment > " +
      "`sidecar.env` > `cluster.env` > the default (the reasons are in [decisions.md](decisions.md)). Every " +
      "variable can be set in any of the three places; the section says where it normally lives. " +
      "`istio-vm config` shows the effective value of each and where it came from, and the whole configuration is " +
      "validated at once, listing every problem.",
    "",
    "Values are checked strictly. In lists (ports, CIDRs, ids) items are separated by commas; spaces and tabs around " +
      "an item are ignored (`3306, 80`), and an empty item (`3306,,80`, or a comma at either end) is an error. " +
      "Numbers are plain decimals without leading zeros: `10.0.0.0/08`, `010.0.0.0` and port `080` are errors, " +
      "because iptables and `inet_aton` read them as octal. An IPv6 zone id (`fe80::1%eth0`) is an error: it names " +
      "an interface of one host, not part of an address. Files saved on Windows are read as meant: CRLF line ends, " +
      "and a UTF-8 byte-order mark at the very start. A byte-order mark elsewhere, a lone carriage return, or a " +
      "byte that is not UTF-8 is an error with its file and line. A variable set twice in one file takes the last " +
      "line's value, with a warning naming both lines. `istio-vm config` escapes control characters and cuts values " +
      "longer than 60 characters; `istio-vm config --json` shows every value exactly.",
    "",
    "Defaults that differ between the control-plane profiles (`ISTIO_CONTROL_PLANE`) are given for both. " +
      "`ISTIO_META_*` and `ISTIO_METAJSON_*` variables not listed here are passed to Envoy and the control plane " +
      "as node metadata.",
  ];
  for (const section of SECTIONS) {
    const names = VARIABLE_NAMES.filter((n) => VARIABLES[n].home === section.home);
    if (names.length === 0) continue;
    out.push("", `## ${section.title}`, "", section.intro, "");
    out.push("| variable | type | default | description |", "| --- | --- | --- | --- |");
    for (const name of names) out.push(row(name));
  }
  return out.join("\n") + "\n";
}
