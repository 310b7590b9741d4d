/**
 * `istio-vm install BUNDLE` on the VM: a pure plan (what to install, write, restart) computed from the verified
 * bundle and the inspected system, and a thin executor that applies it through the ports.
 *
 * Safety contract:
 * - Nothing changes before the bundle's manifest verified, the per-VM settings and the resulting configuration
 *   validated (the same loader the agent uses), and dnsmasq was found.
 * - Every file is written atomically with the owner and mode of docs/protocols.md "Files on the VM"; a file whose
 *   content, mode and owner already match is not rewritten (a second run reports "unchanged" for every step).
 * - If a step after the files fails (dnsmasq, resolved, the agent not becoming ready), every file written is put
 *   back as it was (or removed if it was new), the services restarted with the old files, and the agent restarted
 *   if it was running before (stopped otherwise). The error names the failed step. The package is not downgraded:
 *   dpkg keeps the previous version if its own installation fails, and a newer package keeps working with the old
 *   files (the agent reads the same variables).
 * - Under ISTIO_VM_ROOT (tests, dry runs on a copy) files are placed under that root and no system command (dpkg,
 *   systemctl) is run.
 */
import { dirname, join } from "node:path";
import { quoteEnvValue } from "../config/env-file.js";
import type { ConfigValues } from "../config/registry.js";
import { agentProblems, configFilePaths, loadConfig } from "../config/load.js";
import { AgentError, ConfigError } from "../platform/errors.js";
import type { Clock } from "../platform/clock.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { ProcessRunner } from "../platform/process.js";
import { formatCommand } from "../platform/process.js";
import type { UserDirectory } from "../platform/users.js";
import type { VerifiedBundle } from "./bundle.js";
import { readBundle, settingsProblems } from "./bundle.js";
import type { InstallRecord, RecordedWrite } from "./install-record.js";
import { INSTALL_RECORD_PATH, parseInstallRecord, recordWrites, renderInstallRecord } from "./install-record.js";
import type { ResolverChoice, ResolverFacts, ResolverKind, ResolverPaths } from "./resolver.js";
import { chooseResolver, planResolver } from "./resolver.js";

export const UNIT = "istio-vm-agent.service";
export const PACKAGE = "istio-vm-agent";
export const PROXY_USER = "istio-proxy";

export interface InstallPorts {
  readonly fs: FileSystem;
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly env: NodeJS.ProcessEnv;
  /** Where istio-proxy is looked up (NSS; the relocated passwd file under ISTIO_VM_ROOT). */
  readonly users: UserDirectory;
  /** Whether this process may chown (root). */
  readonly isRoot: boolean;
  /** Progress lines (stderr). */
  readonly progress: (line: string) => void;
}

export interface InstallOptions {
  readonly bundlePath: string;
  /** Per-VM settings from --set; they win over the bundle's. */
  readonly settings: readonly { readonly key: string; readonly value: string }[];
  readonly resolver: ResolverChoice;
  readonly readyTimeoutMs: number;
  readonly dryRun: boolean;
}

type OwnerName = "root" | typeof PROXY_USER;

export type StepAction =
  "create" | "update" | "unchanged" | "install" | "upgrade" | "enable" | "start" | "restart" | "wait" | "skip";

export type Operation =
  | {
      readonly kind: "file";
      readonly path: string;
      readonly content: Buffer;
      readonly mode: number;
      readonly owner: OwnerName;
      /** What a change restarts: the agent, dnsmasq/resolved, or nothing (the install record). */
      readonly group: "agent" | "dns" | "record";
    }
  | { readonly kind: "sidecar-env"; readonly path: string; readonly settings: readonly EnvSetting[] }
  | { readonly kind: "package"; readonly deb: Uint8Array; readonly path: string }
  | { readonly kind: "systemctl"; readonly args: readonly string[] }
  | { readonly kind: "wait-ready" }
  | { readonly kind: "none" };

export interface Step {
  /** Stable name, used in errors and reports: package, cluster.env, key.pem, kubedns, dnsmasq, service, ready… */
  readonly id: string;
  readonly action: StepAction;
  readonly detail: string;
  readonly op: Operation;
}

interface EnvSetting {
  readonly key: string;
  readonly value: string;
}

export interface ExistingFile {
  readonly content: Buffer;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}

export interface SystemState {
  readonly relocated: boolean;
  readonly installedVersion: string | undefined;
  readonly unitEnabled: boolean;
  readonly unitActive: boolean;
  readonly dnsmasqInstalled: boolean;
  readonly dnsmasqActive: boolean;
  readonly resolver: ResolverFacts;
  /** Current files at every path the plan may write (undefined: absent). */
  readonly files: ReadonlyMap<string, ExistingFile | undefined>;
  /** Owners known now (istio-proxy is unknown before the package created it). */
  readonly owners: Readonly<Partial<Record<OwnerName, FileOwner>>>;
  /** The record of what earlier installs replaced (src/provision/install-record.ts); undefined: none yet. */
  readonly record: InstallRecord | undefined;
}

export interface InstallPaths extends ResolverPaths {
  readonly clusterEnv: string;
  readonly sidecarEnv: string;
  readonly certsDir: string;
  readonly tokenFile: string;
  readonly debCache: string;
  readonly dnsmasqBinary: string;
  /** What install replaced outside the package, for uninstall (src/provision/install-record.ts). */
  readonly installRecord: string;
}

// ── pure parts ──────────────────────────────────────────────────────────────────────────────

const MARKER = "# Set by `istio-vm install` (per-VM settings from the bundle and --set):";

/**
 * sidecar.env with `settings` applied: an existing assignment of a key is replaced in place (comments and the
 * documented template around it stay), a new key is appended under a marker comment.
 */
export function mergeEnvSettings(existing: string | undefined, settings: readonly EnvSetting[]): string {
  const lines = (existing ?? "").split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  const appended: string[] = [];
  for (const { key, value } of settings) {
    const line = `${key}=${quoteEnvValue(value)}`;
    const pattern = new RegExp(`^\\s*(export\\s+)?${key}=`);
    let index = -1;
    lines.forEach((l, i) => {
      if (pattern.test(l)) index = i;
    });
    if (index !== -1) lines[index] = line;
    else appended.push(line);
  }
  if (appended.length > 0) {
    if (!lines.includes(MARKER)) {
      if (lines.length > 0 && lines[lines.length - 1] !== "") lines.push("");
      lines.push(MARKER);
    }
    const at = lines.indexOf(MARKER) + 1;
    let end = at;
    while (end < lines.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(lines[end] ?? "")) end++;
    lines.splice(end, 0, ...appended);
  }
  return `${lines.join("\n")}\n`;
}

function sameFile(existing: ExistingFile | undefined, content: Buffer, mode: number, owner: FileOwner | undefined) {
  if (existing === undefined) return false;
  if (!existing.content.equals(content) || existing.mode !== mode) return false;
  return owner === undefined || (existing.uid === owner.uid && existing.gid === owner.gid);
}

function fileAction(existing: ExistingFile | undefined, same: boolean): StepAction {
  if (same) return "unchanged";
  return existing === undefined ? "create" : "update";
}

export interface PlanInput {
  readonly bundle: VerifiedBundle;
  readonly settings: readonly EnvSetting[];
  readonly paths: InstallPaths;
  readonly state: SystemState;
  readonly resolver: ResolverChoice;
  /**
   * The agent's DNS proxy answers mesh names (istiod profile, ISTIO_META_DNS_CAPTURE=true): no kubedns file, no
   * dnsmasq, the system resolver left as it is (the agent captures DNS to its proxy instead).
   */
  readonly dnsProxy?: boolean;
}

export interface InstallPlan {
  readonly steps: readonly Step[];
  readonly resolver: ResolverKind;
  readonly notes: readonly string[];
}

/** What install would do, from the verified bundle and the inspected system (pure). */
export function planInstall(input: PlanInput): InstallPlan {
  const { bundle, paths, state } = input;
  const steps: Step[] = [];
  const notes: string[] = [];
  const skipSystem = (id: string, what: string): void => {
    steps.push({
      id,
      action: "skip",
      detail: `${what} (ISTIO_VM_ROOT is set: no system command runs)`,
      op: { kind: "none" },
    });
  };

  // 1. The package first: its postinst creates istio-proxy and the directories the files go into.
  let packageChanged = false;
  if (state.relocated)
    skipSystem("package", bundle.deb === undefined ? "no .deb in the bundle" : `dpkg -i ${bundle.deb.info.file}`);
  else if (bundle.deb === undefined) {
    steps.push({
      id: "package",
      action: "unchanged",
      detail: `${PACKAGE} ${state.installedVersion ?? "?"} kept (the bundle has no .deb)`,
      op: { kind: "none" },
    });
  } else if (state.installedVersion === bundle.deb.info.version) {
    steps.push({
      id: "package",
      action: "unchanged",
      detail: `${PACKAGE} ${state.installedVersion} is installed`,
      op: { kind: "none" },
    });
  } else {
    packageChanged = true;
    steps.push({
      id: "package",
      action: state.installedVersion === undefined ? "install" : "upgrade",
      detail: `dpkg -i ${bundle.deb.info.file}${state.installedVersion === undefined ? "" : ` (from ${state.installedVersion})`}`,
      op: { kind: "package", deb: bundle.deb.data, path: join(paths.debCache, bundle.deb.info.file) },
    });
  }

  // 2. The files of docs/protocols.md "Files on the VM".
  // An object, not two lets: they are set inside the closure below.
  const changed = { agent: packageChanged, dns: false };
  const file = (
    id: string,
    path: string,
    content: string,
    mode: number,
    owner: OwnerName,
    group: "agent" | "dns",
  ): void => {
    const data = Buffer.from(content, "utf8");
    const existing = state.files.get(path);
    const known = state.owners[owner];
    const same = sameFile(existing, data, mode, state.relocated && known === undefined ? undefined : known);
    const action = fileAction(existing, same && (known !== undefined || state.relocated));
    if (action !== "unchanged") {
      if (group === "agent") changed.agent = true;
      else changed.dns = true;
    }
    steps.push({
      id,
      action,
      detail: `${path} (${owner}, 0${mode.toString(8)})`,
      op: { kind: "file", path, content: data, mode, owner, group },
    });
  };
  const certOrder = ["root-cert.pem", "cert-chain.pem", "key.pem"] as const;
  for (const name of certOrder) {
    const content = bundle.credentials.get(name);
    if (content !== undefined)
      file(name, join(paths.certsDir, name), content, name === "key.pem" ? 0o600 : 0o644, PROXY_USER, "agent");
  }
  const token = bundle.credentials.get("istio-token");
  if (token !== undefined) file("istio-token", paths.tokenFile, token, 0o600, PROXY_USER, "agent");
  if (input.settings.length > 0) {
    const existing = state.files.get(paths.sidecarEnv);
    const merged = Buffer.from(mergeEnvSettings(existing?.content.toString("utf8"), input.settings));
    const known = state.owners.root;
    const same = sameFile(existing, merged, existing?.mode ?? 0o644, known) && (existing?.mode ?? 0) === 0o644;
    const action = fileAction(existing, same);
    if (action !== "unchanged") changed.agent = true;
    steps.push({
      id: "sidecar.env",
      action,
      detail: `${paths.sidecarEnv} (root, 0644): ${input.settings.map((s) => s.key).join(", ")}`,
      op: { kind: "sidecar-env", path: paths.sidecarEnv, settings: input.settings },
    });
  }
  file("cluster.env", paths.clusterEnv, bundle.clusterEnv, 0o644, "root", "agent");
  if (input.dnsProxy === true) {
    notes.push(
      "ISTIO_META_DNS_CAPTURE=true: the agent's DNS proxy answers mesh names; dnsmasq and the system resolver are left untouched",
    );
    steps.push({
      id: "resolver",
      action: "unchanged",
      detail: "the agent's DNS proxy (127.0.0.1:15053) answers mesh names: no kubedns, dnsmasq or resolver change",
      op: { kind: "none" },
    });
    return finishServices({ steps, state, changed, restartDns: [], dnsmasq: false, resolver: "none", notes });
  }
  file("kubedns", join(paths.dnsmasqDir, "kubedns"), bundle.kubedns, 0o644, "root", "dns");

  // 3. The resolver.
  const kind = chooseResolver(state.resolver, input.resolver);
  if (state.resolver.networkManager && input.resolver === "auto" && kind !== "resolved") {
    notes.push(
      "NetworkManager is running: it may rewrite resolv.conf; configure it with dns=dnsmasq or use --resolver none",
    );
  }
  const resolvConf = state.files.get(paths.resolvConf)?.content.toString("utf8");
  const resolverPlan = planResolver(kind, { kubedns: bundle.kubedns, paths, resolvConf });
  notes.push(...resolverPlan.notes);
  for (const f of resolverPlan.files) {
    const id = f.path === paths.resolvConf ? "resolv.conf" : f.path.slice(f.path.lastIndexOf("/") + 1);
    file(id, f.path, f.content, f.mode, "root", "dns");
  }

  // 3b. Before the first DNS file changes: record the originals, so removing the package can put them back.
  const recordStep = planRecordStep(steps, state, paths.installRecord);
  if (recordStep !== undefined) {
    const firstDnsWrite = steps.findIndex(
      (s) => s.op.kind === "file" && s.op.group === "dns" && s.action !== "unchanged",
    );
    steps.splice(firstDnsWrite, 0, recordStep);
  }

  return finishServices({
    steps,
    state,
    changed,
    restartDns: resolverPlan.restart,
    dnsmasq: true,
    resolver: kind,
    notes,
  });
}

/** 4. Services: the resolver's services that need a restart, then the agent's unit. */
function finishServices(input: {
  steps: Step[];
  state: SystemState;
  changed: { agent: boolean; dns: boolean };
  restartDns: readonly string[];
  /** Whether dnsmasq is part of this install (not with the agent's DNS proxy). */
  dnsmasq: boolean;
  resolver: ResolverKind;
  notes: string[];
}): InstallPlan {
  const { steps, state, changed, resolver: kind, notes } = input;
  const skipSystem = (id: string, what: string): void => {
    steps.push({
      id,
      action: "skip",
      detail: `${what} (ISTIO_VM_ROOT is set: no system command runs)`,
      op: { kind: "none" },
    });
  };
  if (state.relocated) {
    if (input.dnsmasq) skipSystem("dnsmasq", "systemctl restart dnsmasq");
    if (input.restartDns.includes("systemd-resolved"))
      skipSystem("systemd-resolved", "systemctl restart systemd-resolved");
    skipSystem("service", `systemctl enable --now ${UNIT}`);
    return { steps, resolver: kind, notes };
  }
  for (const service of input.restartDns) {
    const active = service === "dnsmasq" ? state.dnsmasqActive : state.resolver.resolvedActive;
    const needed = changed.dns || !active;
    steps.push({
      id: service,
      action: needed ? (active ? "restart" : "start") : "unchanged",
      detail: needed ? `systemctl restart ${service}` : `${service} is active with this configuration`,
      op: needed ? { kind: "systemctl", args: ["restart", service] } : { kind: "none" },
    });
  }
  steps.push({
    id: "enable",
    action: state.unitEnabled ? "unchanged" : "enable",
    detail: state.unitEnabled ? `${UNIT} is enabled (starts at boot)` : `systemctl enable ${UNIT} (starts at boot)`,
    op: state.unitEnabled ? { kind: "none" } : { kind: "systemctl", args: ["enable", UNIT] },
  });
  const restart = changed.agent || !state.unitActive;
  steps.push({
    id: "service",
    action: restart ? (state.unitActive ? "restart" : "start") : "unchanged",
    detail: restart ? `systemctl restart ${UNIT}` : `${UNIT} is running with these files`,
    op: restart ? { kind: "systemctl", args: ["restart", "--no-block", UNIT] } : { kind: "none" },
  });
  steps.push({
    id: "ready",
    action: restart ? "wait" : "unchanged",
    detail: restart ? "wait until the agent runs and has started its components" : "the agent is ready",
    op: restart ? { kind: "wait-ready" } : { kind: "none" },
  });
  return { steps, resolver: kind, notes };
}

/** The install-record step for the DNS files this plan writes; undefined when it writes none. */
function planRecordStep(steps: readonly Step[], state: SystemState, path: string): Step | undefined {
  const writes: RecordedWrite[] = [];
  for (const step of steps) {
    const op = step.op;
    if (op.kind !== "file" || op.group !== "dns" || step.action === "unchanged") continue;
    writes.push({ path: op.path, content: op.content, previous: state.files.get(op.path) });
  }
  if (writes.length === 0) return undefined;
  const record = recordWrites(state.record, writes);
  const content = Buffer.from(renderInstallRecord(record));
  const existing = state.files.get(path);
  const root = state.owners.root;
  const action = fileAction(existing, sameFile(existing, content, 0o600, root));
  const originals = record.files.filter((f) => f.before !== undefined).length;
  return {
    id: "install-record",
    action,
    detail: `${path} (root, 0600): ${String(record.files.length)} DNS file(s), ${String(originals)} with an original to restore on package removal`,
    op: { kind: "file", path, content, mode: 0o600, owner: "root", group: "record" },
  };
}

// ── reading the system ──────────────────────────────────────────────────────────────────────

/** Where everything goes, from the configuration the agent will read (so OUTPUT_CERTS etc. in the bundle count). */
export function installPaths(env: NodeJS.ProcessEnv, values: ConfigValues): InstallPaths {
  const files = configFilePaths(env);
  const root = files.root;
  const at = (path: string): string => (root === "" ? path : join(root, path));
  return {
    clusterEnv: files.cluster,
    sidecarEnv: files.sidecar,
    certsDir: values.OUTPUT_CERTS,
    tokenFile: values.ISTIO_TOKEN_FILE,
    dnsmasqDir: values.ISTIO_DNSMASQ_DIR,
    resolvedConfDir: values.ISTIO_RESOLVED_CONF_DIR,
    resolvConf: values.ISTIO_RESOLV_CONF,
    dhclientHooksDir: at("/etc/dhcp/dhclient-enter-hooks.d"),
    debCache: at("/var/cache/istio-vm-agent"),
    dnsmasqBinary: at("/usr/sbin/dnsmasq"),
    installRecord: at(INSTALL_RECORD_PATH),
  };
}

/** uid and gid of the proxy user, once the package has created it. */
async function proxyOwner(users: UserDirectory): Promise<FileOwner | undefined> {
  const entry = await users.lookup(PROXY_USER);
  return entry === undefined ? undefined : { uid: entry.uid, gid: entry.gid };
}

async function systemctl(
  runner: ProcessRunner,
  args: readonly string[],
): Promise<{ code: number | null; out: string }> {
  const result = await runner.run("systemctl", args, { timeoutMs: 30_000 });
  return { code: result.code, out: result.stdout.trim() };
}

async function readExisting(fs: FileSystem, path: string): Promise<ExistingFile | undefined> {
  const stat = await fs.stat(path);
  if (stat === undefined || stat.isDirectory) return undefined;
  return { content: await fs.readFile(path), mode: stat.mode, uid: stat.uid, gid: stat.gid };
}

export async function inspectSystem(
  ports: InstallPorts,
  paths: InstallPaths,
  candidatePaths: readonly string[],
): Promise<SystemState> {
  const relocated = configFilePaths(ports.env).root !== "";
  const files = new Map<string, ExistingFile | undefined>();
  for (const path of [...new Set(candidatePaths)]) files.set(path, await readExisting(ports.fs, path));
  const owners: Partial<Record<OwnerName, FileOwner>> = {};
  if (!relocated || ports.isRoot) {
    owners.root = { uid: 0, gid: 0 };
    const proxy = await proxyOwner(ports.users);
    if (proxy !== undefined) owners[PROXY_USER] = proxy;
  }
  const at = (p: string): string => (relocated ? join(configFilePaths(ports.env).root, p) : p);
  const resolverFiles = {
    resolvconf: (await ports.fs.exists(at("/sbin/resolvconf"))) || (await ports.fs.exists(at("/usr/sbin/resolvconf"))),
    dhclient:
      (await ports.fs.exists(at("/sbin/dhclient-script"))) || (await ports.fs.exists(at("/usr/sbin/dhclient-script"))),
    networkManager: await ports.fs.exists(at("/run/NetworkManager")),
  };
  const dnsmasqInstalled = await ports.fs.exists(paths.dnsmasqBinary);
  const recordFile = files.get(paths.installRecord) ?? (await readExisting(ports.fs, paths.installRecord));
  files.set(paths.installRecord, recordFile);
  const record =
    recordFile === undefined ? undefined : parseInstallRecord(recordFile.content.toString("utf8"), paths.installRecord);
  if (relocated) {
    return {
      relocated,
      installedVersion: undefined,
      unitEnabled: false,
      unitActive: false,
      dnsmasqInstalled,
      dnsmasqActive: false,
      resolver: { resolvedActive: false, ...resolverFiles },
      files,
      owners,
      record,
    };
  }
  const query = await ports.runner.run("dpkg-query", ["-W", "-f", "${Status}\\t${Version}", PACKAGE], {
    timeoutMs: 30_000,
  });
  const [status = "", version] = query.stdout.split("\t");
  const installedVersion = query.code === 0 && status.endsWith(" installed") ? version : undefined;
  const [enabled, active, dnsmasq, resolved] = await Promise.all([
    systemctl(ports.runner, ["is-enabled", UNIT]),
    systemctl(ports.runner, ["is-active", UNIT]),
    systemctl(ports.runner, ["is-active", "dnsmasq.service"]),
    systemctl(ports.runner, ["is-active", "systemd-resolved.service"]),
  ]);
  return {
    relocated,
    installedVersion,
    unitEnabled: enabled.out === "enabled",
    unitActive: active.out === "active",
    dnsmasqInstalled,
    dnsmasqActive: dnsmasq.out === "active",
    resolver: { resolvedActive: resolved.out === "active", ...resolverFiles },
    files,
    owners,
    record,
  };
}

/** A FileSystem that shows `overrides` at their paths (for validating the configuration before writing it). */
function overlay(fs: FileSystem, overrides: ReadonlyMap<string, string>): FileSystem {
  return {
    ...fs,
    readTextIfExists: async (path) => overrides.get(path) ?? (await fs.readTextIfExists(path)),
    readText: async (path) => overrides.get(path) ?? (await fs.readText(path)),
  };
}

// ── executing ───────────────────────────────────────────────────────────────────────────────

export class InstallStepError extends AgentError {
  readonly step: string;
  readonly restored: readonly string[];

  constructor(step: string, cause: unknown, restored: readonly string[], hint?: string) {
    const message = cause instanceof Error ? cause.message : String(cause);
    super({
      code: "INSTALL_STEP_FAILED",
      message:
        `install step '${step}' failed: ${message}` +
        (restored.length > 0 ? `\nrestored the previous installation: ${restored.join(", ")}` : ""),
      subject: step,
      hint:
        hint ?? (cause instanceof AgentError ? cause.hint : undefined) ?? "fix the cause above and run install again",
      cause,
    });
    this.name = "InstallStepError";
    this.step = step;
    this.restored = restored;
  }
}

export interface UnitState {
  readonly ActiveState: string;
  readonly SubState: string;
  readonly StatusText: string;
  readonly Result: string;
  readonly MainPID: string;
}

export async function unitState(runner: ProcessRunner, unit: string = UNIT): Promise<UnitState> {
  const result = await runner.run(
    "systemctl",
    [
      "show",
      unit,
      "--property=ActiveState",
      "--property=SubState",
      "--property=StatusText",
      "--property=Result",
      "--property=MainPID",
    ],
    { timeoutMs: 30_000 },
  );
  const props = new Map(
    result.stdout
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
  return {
    ActiveState: props.get("ActiveState") ?? "unknown",
    SubState: props.get("SubState") ?? "unknown",
    StatusText: props.get("StatusText") ?? "",
    Result: props.get("Result") ?? "",
    MainPID: props.get("MainPID") ?? "0",
  };
}

/**
 * Waits for active/running from a new main process (`restart --no-block` only queues the job, so the old process
 * may still look active/running on the first look), and then for the agent to have started its components: READY=1
 * only means the agent runs; while it waits for a certificate, capture or Envoy its STATUS= begins "starting" or
 * "waiting for", and once every component has started, "ready" or "degraded" (e.g. Pilot not answering yet).
 */
async function waitReady(ports: InstallPorts, timeoutMs: number, oldPid: string): Promise<UnitState> {
  const started = ports.clock.monotonic();
  let last: UnitState | undefined;
  for (;;) {
    const state = await unitState(ports.runner);
    const fresh = state.MainPID !== oldPid || oldPid === "0";
    if (
      fresh &&
      state.ActiveState === "active" &&
      state.SubState === "running" &&
      /^(ready|degraded)\b/.test(state.StatusText)
    ) {
      return state;
    }
    if (
      state.ActiveState === "failed" ||
      (last !== undefined && state.ActiveState === "inactive" && state.Result !== "success")
    ) {
      const journal = await ports.runner.run("journalctl", ["-u", UNIT, "-n", "15", "--no-pager", "-o", "cat"], {
        timeoutMs: 30_000,
      });
      throw new AgentError({
        code: "AGENT_NOT_READY",
        message: `${UNIT} is ${state.ActiveState}/${state.SubState} (result ${state.Result}${state.StatusText === "" ? "" : `, status "${state.StatusText}"`})\n${journal.stdout.trimEnd()}`,
        subject: UNIT,
        hint: `see journalctl -u ${UNIT}`,
      });
    }
    if (last?.StatusText !== state.StatusText && state.StatusText !== "") ports.progress(`agent: ${state.StatusText}`);
    last = state;
    if (ports.clock.monotonic() - started > timeoutMs) {
      throw new AgentError({
        code: "AGENT_NOT_READY",
        message: `${UNIT} did not start its components within ${Math.round(timeoutMs / 1000)}s (${state.ActiveState}/${state.SubState}${state.StatusText === "" ? "" : `, "${state.StatusText}"`})`,
        subject: UNIT,
        hint: `see journalctl -u ${UNIT}; a longer --timeout helps if the CA is slow`,
      });
    }
    await ports.clock.sleep(500);
  }
}

interface Backup {
  readonly path: string;
  readonly previous: ExistingFile | undefined;
}

async function resolveOwner(
  ports: InstallPorts,
  paths: InstallPaths,
  state: SystemState,
  owner: OwnerName,
): Promise<FileOwner | undefined> {
  if (owner === "root") return state.relocated && !ports.isRoot ? undefined : { uid: 0, gid: 0 };
  const found = await proxyOwner(ports.users);
  if (found === undefined && !state.relocated) {
    throw new AgentError({
      code: "USER_MISSING",
      message: `user ${PROXY_USER} does not exist in ${ports.users.source}`,
      subject: PROXY_USER,
      hint: `the ${PACKAGE} package creates it: install the package (a bundle with its .deb does)`,
    });
  }
  return ports.isRoot ? found : undefined;
}

async function writeOwned(
  ports: InstallPorts,
  path: string,
  content: Buffer,
  mode: number,
  owner: FileOwner | undefined,
): Promise<void> {
  const dir = dirname(path);
  // Tokens and the install record (root restores what it names) live in directories only their owner can enter.
  const privateDir = path.includes("/tokens/") || path.endsWith(INSTALL_RECORD_PATH);
  if (!(await ports.fs.exists(dir))) await ports.fs.mkdirp(dir, privateDir ? 0o700 : 0o755);
  await ports.fs.writeFileAtomic(path, content, { mode, ...(owner === undefined ? {} : { owner }) });
}

export interface InstallReport {
  readonly bundle: string;
  readonly profile: string;
  readonly deb: string | undefined;
  readonly resolver: ResolverKind;
  readonly dryRun: boolean;
  readonly steps: readonly { readonly id: string; readonly action: StepAction; readonly detail: string }[];
  readonly changed: boolean;
  readonly notes: readonly string[];
  readonly unit: UnitState | undefined;
}

/** Reads and verifies the bundle, validates, plans, and (unless a dry run) applies with rollback. */
export async function runInstall(options: InstallOptions, ports: InstallPorts): Promise<InstallReport> {
  const archive = await ports.fs.readFile(options.bundlePath).catch((error: unknown) => {
    throw new AgentError({
      code: "BUNDLE_NOT_FOUND",
      message: `cannot read ${options.bundlePath}: ${(error as Error).message}`,
      subject: options.bundlePath,
      kind: "usage",
      hint: "make it with `istio-vm bundle -o FILE` and copy it to this VM",
    });
  });
  const bundle = readBundle(archive, options.bundlePath);
  const settings = [...bundle.sidecarSettings];
  for (const s of options.settings) {
    const i = settings.findIndex((x) => x.key === s.key);
    if (i === -1) settings.push(s);
    else settings[i] = s;
  }
  const settingProblems = settingsProblems(settings);
  if (settingProblems.length > 0) throw new ConfigError(settingProblems, "fix the settings; nothing was changed");

  // Validate the configuration the agent will read, before anything changes.
  const filePaths = configFilePaths(ports.env);
  const currentSidecar = await ports.fs.readTextIfExists(filePaths.sidecar);
  const sidecarText = settings.length > 0 ? mergeEnvSettings(currentSidecar, settings) : (currentSidecar ?? "");
  const loaded = await loadConfig({
    env: ports.env,
    fs: overlay(
      ports.fs,
      new Map([
        [filePaths.cluster, bundle.clusterEnv],
        [filePaths.sidecar, sidecarText],
      ]),
    ),
  });
  const problems = [...loaded.problems, ...agentProblems(loaded)];
  if (problems.length > 0) {
    throw new ConfigError(
      problems,
      "the bundle's configuration is not valid on this VM; nothing was changed. Per-VM values: `install --set KEY=VALUE` (e.g. --set ISTIO_SVC_IP=<this VM's IP>)",
    );
  }
  const paths = installPaths(ports.env, loaded.values);
  const dnsProxy = loaded.values.ISTIO_CONTROL_PLANE === "istiod" && loaded.values.ISTIO_META_DNS_CAPTURE;
  if (
    !dnsProxy &&
    options.resolver !== "none" &&
    !(await ports.fs.exists(paths.dnsmasqBinary)) &&
    configFilePaths(ports.env).root === ""
  ) {
    throw new AgentError({
      code: "DNSMASQ_MISSING",
      message: `dnsmasq is not installed (${paths.dnsmasqBinary}); it answers the mesh's names from kubedns`,
      subject: paths.dnsmasqBinary,
      kind: "config",
      hint: "apt-get install dnsmasq (nothing was changed), or --resolver none if the VM resolves cluster names another way",
    });
  }
  const candidates = [
    paths.clusterEnv,
    paths.sidecarEnv,
    paths.tokenFile,
    paths.resolvConf,
    ...["root-cert.pem", "cert-chain.pem", "key.pem"].map((n) => join(paths.certsDir, n)),
    join(paths.dnsmasqDir, "kubedns"),
    join(paths.dnsmasqDir, "istio-vm-local"),
    join(paths.resolvedConfDir, "istio-vm.conf"),
    join(paths.dhclientHooksDir, "istio-vm"),
  ];
  const state = await inspectSystem(ports, paths, candidates);
  const plan = planInstall({ bundle, settings, paths, state, resolver: options.resolver, dnsProxy });
  const report = (unit: UnitState | undefined): InstallReport => ({
    bundle: options.bundlePath,
    profile: bundle.info.profile,
    deb: bundle.deb === undefined ? undefined : `${bundle.deb.info.package} ${bundle.deb.info.version}`,
    resolver: plan.resolver,
    dryRun: options.dryRun,
    steps: plan.steps.map((s) => ({ id: s.id, action: s.action, detail: s.detail })),
    changed: plan.steps.some((s) => s.action !== "unchanged" && s.action !== "skip"),
    notes: plan.notes,
    unit,
  });
  if (options.dryRun) return report(undefined);

  const backups: Backup[] = [];
  const restarted: string[] = [];
  let agentPid = "0";
  let current = "";
  try {
    for (const step of plan.steps) {
      current = step.id;
      const op = step.op;
      if (step.action === "unchanged" || step.action === "skip" || op.kind === "none") continue;
      ports.progress(`${step.id}: ${step.action} ${step.detail}`);
      switch (op.kind) {
        case "package": {
          await writeOwned(ports, op.path, Buffer.from(op.deb), 0o644, undefined);
          try {
            const result = await ports.runner.run("dpkg", ["-i", "--force-confold", "--force-confdef", op.path], {
              env: { ...ports.env, DEBIAN_FRONTEND: "noninteractive" },
              timeoutMs: 10 * 60_000,
            });
            if (result.code !== 0) {
              throw new AgentError({
                code: "DPKG_FAILED",
                message: `dpkg -i exited ${result.code ?? result.signal ?? "?"}: ${(result.stderr || result.stdout).trim()}`,
                subject: op.path,
                hint: "dpkg keeps the previously installed version when an installation fails; see the output above",
              });
            }
          } finally {
            await ports.fs.remove(op.path);
          }
          break;
        }
        case "file": {
          const owner = await resolveOwner(ports, paths, state, op.owner);
          backups.push({ path: op.path, previous: await readExisting(ports.fs, op.path) });
          await writeOwned(ports, op.path, op.content, op.mode, owner);
          break;
        }
        case "sidecar-env": {
          // Merged now, after dpkg may have installed the conffile template.
          const previous = await readExisting(ports.fs, op.path);
          const merged = Buffer.from(mergeEnvSettings(previous?.content.toString("utf8"), op.settings));
          backups.push({ path: op.path, previous });
          await writeOwned(ports, op.path, merged, 0o644, await resolveOwner(ports, paths, state, "root"));
          break;
        }
        case "systemctl": {
          if (op.args.includes(UNIT) && op.args[0] === "restart") agentPid = (await unitState(ports.runner)).MainPID;
          const result = await ports.runner.run("systemctl", op.args, { timeoutMs: 120_000 });
          if (op.args[0] === "restart") restarted.push(op.args[op.args.length - 1] ?? "");
          if (result.code !== 0) {
            throw new AgentError({
              code: "SYSTEMCTL_FAILED",
              message: `${formatCommand("systemctl", op.args)} exited ${result.code ?? result.signal ?? "?"}: ${result.stderr.trim()}`,
              subject: op.args[op.args.length - 1] ?? "systemctl",
            });
          }
          break;
        }
        case "wait-ready":
          await waitReady(ports, options.readyTimeoutMs, agentPid);
          break;
      }
    }
  } catch (error) {
    const restored = await rollback(ports, backups, restarted, state);
    throw new InstallStepError(current, error, restored);
  }
  const unit = state.relocated ? undefined : await unitState(ports.runner);
  return report(unit);
}

/** Puts every written file back and restarts what was restarted, so the previous installation keeps working. */
async function rollback(
  ports: InstallPorts,
  backups: readonly Backup[],
  restarted: readonly string[],
  state: SystemState,
): Promise<string[]> {
  const restored: string[] = [];
  for (const backup of [...backups].reverse()) {
    try {
      if (backup.previous === undefined) await ports.fs.remove(backup.path);
      else {
        await ports.fs.writeFileAtomic(backup.path, backup.previous.content, {
          mode: backup.previous.mode,
          ...(ports.isRoot ? { owner: { uid: backup.previous.uid, gid: backup.previous.gid } } : {}),
        });
      }
      restored.push(backup.path);
    } catch (error) {
      ports.progress(`rollback: cannot restore ${backup.path}: ${(error as Error).message}`);
    }
  }
  if (state.relocated) return restored;
  for (const unit of restarted) {
    const agent = unit === UNIT;
    const args = agent && !state.unitActive ? ["stop", UNIT] : ["restart", unit];
    const result = await ports.runner.run("systemctl", args, { timeoutMs: 120_000 });
    restored.push(`${formatCommand("systemctl", args)}${result.code === 0 ? "" : " (failed)"}`);
  }
  return restored;
}
