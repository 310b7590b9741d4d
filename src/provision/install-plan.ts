/**
 * `istio-vm install`, the pure part: what to install, write and restart, computed from the verified bundle and the
 * inspected system (install-system.ts); install.ts applies it. The files and their owners and modes are those of
 * docs/protocols.md "Files on the VM"; a file whose content, mode and owner already match is "unchanged".
 */
import { join } from "node:path";
import { quoteEnvValue } from "../config/env-file.js";
import type { FileOwner } from "../platform/fs.js";
import type { VerifiedBundle } from "./bundle.js";
import type { InstallRecord, RecordedWrite } from "./install-record.js";
import { recordWrites, renderInstallRecord } from "./install-record.js";
import type { ResolverChoice, ResolverFacts, ResolverKind, ResolverPaths } from "./resolver.js";
import { chooseResolver, planResolver } from "./resolver.js";

export const UNIT = "istio-vm-agent.service";
export const PACKAGE = "istio-vm-agent";
export const PROXY_USER = "istio-proxy";

export type OwnerName = "root" | typeof PROXY_USER;

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

export interface EnvSetting {
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

export function sameFile(
  existing: ExistingFile | undefined,
  content: Buffer,
  mode: number,
  owner: FileOwner | undefined,
) {
  if (existing === undefined) return false;
  if (!existing.content.equals(content) || existing.mode !== mode) return false;
  return owner === undefined || (existing.uid === owner.uid && existing.gid === owner.gid);
}

export function fileAction(existing: ExistingFile | undefined, same: boolean): StepAction {
  if (same) return "unchanged";
  return existing === undefined ? "create" : "update";
}

/** A system command that does not run under ISTIO_VM_ROOT, listed as skipped. */
function skipSystem(steps: Step[], id: string, what: string): void {
  steps.push({
    id,
    action: "skip",
    detail: `${what} (ISTIO_VM_ROOT is set: no system command runs)`,
    op: { kind: "none" },
  });
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
  // 1. The package first: its postinst creates istio-proxy and the directories the files go into.
  let packageChanged = false;
  if (state.relocated)
    skipSystem(
      steps,
      "package",
      bundle.deb === undefined ? "no .deb in the bundle" : `dpkg -i ${bundle.deb.info.file}`,
    );
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
  if (state.relocated) {
    if (input.dnsmasq) skipSystem(steps, "dnsmasq", "systemctl restart dnsmasq");
    if (input.restartDns.includes("systemd-resolved"))
      skipSystem(steps, "systemd-resolved", "systemctl restart systemd-resolved");
    skipSystem(steps, "service", `systemctl enable --now ${UNIT}`);
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
