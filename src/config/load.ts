import { join } from "node:path";
import type { ConfigProblem } from "../platform/errors.js";
import { ConfigError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import type { EnvEntry } from "./env-file.js";
import { EnvFileError, parseEnvFile } from "./env-file.js";
import { parseReadinessProbe } from "./readiness-probe.js";
import type { ConfigValues, VariableName, VariableSpec } from "./registry.js";
import { VARIABLE_NAMES, VARIABLES, isMetadataName, isVariableName } from "./registry.js";
import { ValueError } from "./types.js";

export type ValueSource =
  | { readonly kind: "default" }
  | { readonly kind: "file"; readonly file: string; readonly line: number }
  | { readonly kind: "environment" }
  | { readonly kind: "flag" };

export interface ResolvedVariable {
  readonly name: string;
  /** The text the value was parsed from (after relocation under ISTIO_VM_ROOT). */
  readonly raw: string;
  readonly source: ValueSource;
  /** An alias whose value this variable took (e.g. ISTIO_CP_AUTH for CONTROL_PLANE_AUTH_POLICY). */
  readonly via?: string;
}

export interface ConfigFile {
  readonly role: "cluster.env" | "sidecar.env";
  readonly path: string;
  readonly present: boolean;
}

export interface LoadedConfig {
  /** Typed values; a variable whose value is invalid holds its default here and has a problem below. */
  readonly values: ConfigValues;
  readonly variables: Readonly<Record<VariableName, ResolvedVariable>>;
  /** `ISTIO_META_*` / `ISTIO_METAJSON_*` variables that are not in the registry, passed to Envoy as node metadata. */
  readonly metadata: Readonly<Record<string, ResolvedVariable>>;
  readonly files: readonly ConfigFile[];
  readonly problems: readonly ConfigProblem[];
  readonly warnings: readonly ConfigProblem[];
}

export interface LoadOptions {
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  /** Values from command-line flags; they win over everything else. */
  readonly overrides?: Readonly<Record<string, string>>;
}

export function describeSource(source: ValueSource): string {
  switch (source.kind) {
    case "default":
      return "default";
    case "file":
      return `${source.file}:${source.line}`;
    case "environment":
      return "environment";
    case "flag":
      return "command line";
  }
}

function spec(name: VariableName): VariableSpec<unknown> {
  return VARIABLES[name];
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0] ?? 0;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j] ?? 0;
      row[j] = Math.min((row[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = current;
    }
  }
  return row[b.length] ?? 0;
}

function suggestion(name: string): string {
  const best = VARIABLE_NAMES.map((n) => ({ n, d: editDistance(name, n) })).sort((x, y) => x.d - y.d)[0];
  return best !== undefined && best.d <= 3 ? `; did you mean ${best.n}?` : "";
}

interface Layer {
  readonly values: ReadonlyMap<string, { raw: string; source: ValueSource }>;
}

/** The two env files' locations: the environment can move them, ISTIO_VM_ROOT relocates the defaults. */
export function configFilePaths(env: NodeJS.ProcessEnv): { cluster: string; sidecar: string; root: string } {
  const root = env["ISTIO_VM_ROOT"] ?? "";
  const locate = (name: "ISTIO_CLUSTER_CONFIG" | "ISTIO_SIDECAR_CONFIG"): string => {
    const fromEnv = env[name];
    if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
    const declared = spec(name).default;
    const fallback = typeof declared === "string" ? declared : "";
    return root === "" ? fallback : join(root, fallback);
  };
  return { cluster: locate("ISTIO_CLUSTER_CONFIG"), sidecar: locate("ISTIO_SIDECAR_CONFIG"), root };
}

async function readLayer(
  fs: FileSystem,
  role: ConfigFile["role"],
  path: string,
  problems: ConfigProblem[],
  warnings: ConfigProblem[],
): Promise<{ layer: Layer; file: ConfigFile }> {
  const values = new Map<string, { raw: string; source: ValueSource }>();
  let text: string | undefined;
  try {
    text = await fs.readTextIfExists(path);
  } catch (error) {
    problems.push({ subject: role, message: `cannot read ${path}: ${(error as Error).message}` });
  }
  if (text === undefined) return { layer: { values }, file: { role, path, present: false } };
  let entries: readonly EnvEntry[];
  try {
    entries = parseEnvFile(text, path);
  } catch (error) {
    if (!(error instanceof EnvFileError)) throw error;
    for (const p of error.problems) problems.push({ subject: role, where: `${path}:${p.line}`, message: p.message });
    entries = error.entries;
  }
  for (const entry of entries) {
    if (!isVariableName(entry.key) && !isMetadataName(entry.key)) {
      warnings.push({
        subject: entry.key,
        where: `${path}:${entry.line}`,
        message: `unknown variable, ignored${suggestion(entry.key)}`,
      });
      continue;
    }
    const earlier = values.get(entry.key)?.source;
    if (earlier?.kind === "file") {
      // The last one wins, as when bash sources the file; but a second line for the same key is usually an edit that
      // forgot the first, so both lines are named.
      warnings.push({
        subject: entry.key,
        where: `${path}:${entry.line}`,
        message: `set twice, on ${path}:${earlier.line} and on ${path}:${entry.line}; the last one is used`,
      });
    }
    values.set(entry.key, { raw: entry.value, source: { kind: "file", file: path, line: entry.line } });
  }
  return { layer: { values }, file: { role, path, present: true } };
}

/**
 * Loads the configuration: defaults < cluster.env < sidecar.env < environment < flags. Never throws for bad input:
 * every problem is collected, so `istio-vm config` can show them all and callers decide (see `requireValid`).
 */
export async function loadConfig(options: LoadOptions): Promise<LoadedConfig> {
  const problems: ConfigProblem[] = [];
  const warnings: ConfigProblem[] = [];
  const paths = configFilePaths(options.env);
  const cluster = await readLayer(options.fs, "cluster.env", paths.cluster, problems, warnings);
  const sidecar = await readLayer(options.fs, "sidecar.env", paths.sidecar, problems, warnings);

  const envValues = new Map<string, { raw: string; source: ValueSource }>();
  for (const [key, value] of Object.entries(options.env)) {
    if (value !== undefined && (isVariableName(key) || isMetadataName(key))) {
      envValues.set(key, { raw: value, source: { kind: "environment" } });
    }
  }
  const flagValues = new Map<string, { raw: string; source: ValueSource }>();
  for (const [key, value] of Object.entries(options.overrides ?? {})) {
    flagValues.set(key, { raw: value, source: { kind: "flag" } });
  }
  // Highest precedence first.
  const layers: Layer[] = [{ values: flagValues }, { values: envValues }, sidecar.layer, cluster.layer];
  const explicit = (name: string): { raw: string; source: ValueSource } | undefined => {
    for (const layer of layers) {
      const hit = layer.values.get(name);
      if (hit !== undefined) return hit;
    }
    return undefined;
  };

  const root = paths.root;
  // Which variable is another's older name (the first one declared, as a search of VARIABLE_NAMES finds it),
  // worked out once instead of by a search through every variable for each variable.
  const aliasFor = new Map<string, VariableName>();
  for (const n of VARIABLE_NAMES) {
    const target = spec(n).aliasOf;
    if (target !== undefined && n !== "ISTIO_INBOUND_EXCLUDE_PORTS" && !aliasFor.has(target)) aliasFor.set(target, n);
  }
  const resolved = new Map<VariableName, ResolvedVariable>();
  const resolving = new Set<string>();
  const resolve = (name: VariableName): ResolvedVariable => {
    const done = resolved.get(name);
    if (done !== undefined) return done;
    if (resolving.has(name)) throw new Error(`default of ${name} depends on itself`);
    resolving.add(name);
    const s = spec(name);
    let result: ResolvedVariable;
    const set = explicit(name);
    const alias = aliasFor.get(name);
    const aliasValue = alias === undefined ? undefined : explicit(alias);
    if (set !== undefined) {
      result = { name, raw: set.raw, source: set.source };
      if (alias !== undefined && aliasValue !== undefined && aliasValue.raw !== "" && aliasValue.raw !== set.raw) {
        problems.push({
          subject: name,
          message: `conflicts with ${alias}=${aliasValue.raw} (${describeSource(aliasValue.source)}); set only one`,
        });
      }
    } else if (alias !== undefined && aliasValue !== undefined && aliasValue.raw !== "") {
      result = { name, raw: aliasValue.raw, source: aliasValue.source, via: alias };
    } else {
      const fallback =
        typeof s.default === "string" ? s.default : s.default((n) => (isVariableName(n) ? resolve(n).raw : ""));
      const relocated = s.relocatable === true && root !== "" ? join(root, fallback) : fallback;
      result = { name, raw: relocated, source: { kind: "default" } };
    }
    resolving.delete(name);
    resolved.set(name, result);
    return result;
  };

  const values: Record<string, unknown> = {};
  for (const name of VARIABLE_NAMES) {
    const variable = resolve(name);
    const s = spec(name);
    try {
      values[name] = s.type.parse(variable.raw);
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      problems.push({
        subject: variable.via ?? name,
        message: error.message,
        ...(variable.source.kind === "default" ? {} : { where: describeSource(variable.source) }),
      });
      const fallback = typeof s.default === "string" ? s.default : "";
      try {
        values[name] = s.type.parse(fallback);
      } catch {
        values[name] = undefined;
      }
    }
  }

  const metadata: Record<string, ResolvedVariable> = {};
  for (const layer of [...layers].reverse()) {
    for (const [key, hit] of layer.values) {
      if (!isVariableName(key) && isMetadataName(key)) metadata[key] = { name: key, raw: hit.raw, source: hit.source };
    }
  }
  for (const [key, variable] of Object.entries(metadata)) {
    if (key.startsWith("ISTIO_METAJSON_")) {
      try {
        JSON.parse(variable.raw);
      } catch {
        problems.push({ subject: key, where: describeSource(variable.source), message: "not valid JSON" });
      }
    }
  }

  const typed = values as unknown as ConfigValues;
  for (const problem of crossCheck(typed)) {
    const source = isVariableName(problem.subject) ? resolved.get(problem.subject)?.source : undefined;
    problems.push(
      source === undefined || source.kind === "default" ? problem : { ...problem, where: describeSource(source) },
    );
  }
  return {
    values: typed,
    variables: Object.fromEntries(resolved) as Record<VariableName, ResolvedVariable>,
    metadata,
    files: [cluster.file, sidecar.file],
    problems,
    warnings,
  };
}

/** Rules that involve more than one variable. */
function crossCheck(values: ConfigValues): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  // The agent's health component runs the ProxyConfig's readinessProbe (istiod): one it cannot run is a config error.
  for (const name of ["PROXY_CONFIG", "ISTIO_VM_PROXY_CONFIG"] as const) {
    const probe = values[name]["readinessProbe"] ?? values[name]["readiness_probe"];
    if (values.ISTIO_CONTROL_PLANE !== "istiod" || probe === undefined || probe === null) continue;
    const parsed = parseReadinessProbe(probe);
    if ("problems" in parsed)
      problems.push({ subject: name, message: `readinessProbe: ${parsed.problems.join("; ")}` });
  }
  if (values.ISTIO_INBOUND_INTERCEPTION_MODE === "TPROXY") {
    problems.push({
      subject: "ISTIO_INBOUND_INTERCEPTION_MODE",
      message: "TPROXY is not supported: it needs Envoy to run as root; use REDIRECT",
    });
  }
  // An invalid ENVOY_XDS_API is reported by its type and holds no value here.
  const xdsApi = values.ENVOY_XDS_API as string | undefined;
  if (values.ISTIO_CONTROL_PLANE === "istiod" && xdsApi !== undefined && xdsApi !== "v3") {
    // istiod serves xDS v3 only (Istio 1.9 removed v2; v1 went with Pilot's REST API in 1.0).
    problems.push({
      subject: "ENVOY_XDS_API",
      message: `${values.ENVOY_XDS_API} is not served by istiod (xDS v3 only); use v3, or ISTIO_CONTROL_PLANE=legacy`,
    });
  }
  const ports: [VariableName, number][] = [
    ["ENVOY_PORT", values.ENVOY_PORT],
    ["INBOUND_CAPTURE_PORT", values.INBOUND_CAPTURE_PORT],
    ["ENVOY_ADMIN_PORT", values.ENVOY_ADMIN_PORT],
    ["STATUS_PORT", values.STATUS_PORT],
  ];
  for (let i = 0; i < ports.length; i++) {
    for (let j = i + 1; j < ports.length; j++) {
      const [a, pa] = ports[i] ?? ["", 0];
      const [b, pb] = ports[j] ?? ["", 0];
      if (pa === pb && !(values.ISTIO_CONTROL_PLANE === "legacy" && [a, b].includes("INBOUND_CAPTURE_PORT"))) {
        problems.push({ subject: b, message: `port ${pb} is also ${a}; each needs its own port` });
      }
    }
  }
  if (Array.isArray(values.ISTIO_INBOUND_PORTS)) {
    for (const [name, p] of ports) {
      if (values.ISTIO_INBOUND_PORTS.includes(p)) {
        problems.push({
          subject: "ISTIO_INBOUND_PORTS",
          message: `port ${p} is ${name}; capturing it would loop traffic back into Envoy`,
        });
      }
    }
  }
  if (values.SECRET_GRACE_PERIOD_RATIO_JITTER > values.SECRET_GRACE_PERIOD_RATIO) {
    problems.push({
      subject: "SECRET_GRACE_PERIOD_RATIO_JITTER",
      message: "must not exceed SECRET_GRACE_PERIOD_RATIO",
    });
  }
  if (values.SECRET_TTL !== 0 && values.SECRET_TTL < 60_000) {
    problems.push({ subject: "SECRET_TTL", message: "must be at least 1m" });
  }
  return problems;
}

/** What the agent needs on top of a well-formed configuration. */
export function agentProblems(loaded: LoadedConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const clusterFile = loaded.files.find((f) => f.role === "cluster.env");
  if (clusterFile !== undefined && !clusterFile.present) {
    problems.push({
      subject: "cluster.env",
      message: `${clusterFile.path} not found; install it with \`istio-vm install\` (made by \`istio-vm cluster-env\`)`,
    });
  }
  if (loaded.values.ISTIO_SVC_IP === "") {
    problems.push({
      subject: "ISTIO_SVC_IP",
      message: "not set; put this VM's mesh IP in sidecar.env (the address given to `istio-vm register`)",
    });
  }
  return problems;
}

/** Throws one ConfigError listing every problem, or returns the values. */
export function requireValid(loaded: LoadedConfig, extra: readonly ConfigProblem[] = []): ConfigValues {
  const all = [...loaded.problems, ...extra];
  if (all.length > 0) throw new ConfigError(all);
  return loaded.values;
}

/** Ports never captured inbound: both names of the original recipe, merged. */
export function inboundExcludePorts(values: ConfigValues): number[] {
  return [...new Set([...values.ISTIO_LOCAL_EXCLUDE_PORTS, ...values.ISTIO_INBOUND_EXCLUDE_PORTS])];
}

/** The control-plane auth policy, after folding in its ISTIO_CP_AUTH alias (done by `loadConfig`). */
export function controlPlaneUsesTls(values: ConfigValues): boolean {
  return values.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS";
}
