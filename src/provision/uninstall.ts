/**
 * `istio-vm uninstall` on the VM: puts back what `istio-vm install` changed outside the package's own directories —
 * kubedns and the resolver wiring (dnsmasq's listen file, the systemd-resolved drop-in, the dhclient enter hook,
 * resolv.conf) — from the record install kept (src/provision/install-record.ts), and restarts dnsmasq and
 * systemd-resolved so they drop the mesh's names. The package's prerm runs it on `remove` (and so on `purge`): the
 * agent is gone with the package, and a hook that keeps 127.0.0.1 first on every lease must not outlive it.
 *
 * Per recorded path (pure plan, thin executor):
 * - absent before the first install → removed;
 * - content still what install wrote → the original bytes, mode and owner are restored;
 * - changed since (a DHCP lease event rewrote resolv.conf through the hook) → resolv.conf loses the
 *   `nameserver 127.0.0.1` line install added (unless the original had one); any other file is kept and named.
 * Files install names as its own (istio-vm-local, the istio-vm.conf drop-in, the istio-vm hook) that the record does
 * not list (installed by a version that kept no record) are removed; resolv.conf is then left alone (the original is
 * unknown) and a note says so.
 *
 * Only the services change state, never the agent: the maintainer script stops it first.
 */
import { dirname, join } from "node:path";
import { configFilePaths, loadConfig } from "../config/load.js";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import { formatCommand } from "../platform/process.js";
import type { ExistingFile, InstallPaths } from "./install-plan.js";
import type { InstallPorts } from "./install-system.js";
import { installPaths } from "./install-system.js";
import type { InstallRecord } from "./install-record.js";
import { parseInstallRecord, sha256 } from "./install-record.js";
import { DHCLIENT_HOOK_NAME, DNSMASQ_LOCAL_NAME, RESOLVED_DROPIN_NAME } from "./resolver.js";

export type UninstallAction = "restore" | "remove" | "edit" | "keep" | "unchanged" | "restart" | "skip";

export type UninstallOperation =
  | { readonly kind: "restore"; readonly path: string; readonly file: ExistingFile }
  | { readonly kind: "write"; readonly path: string; readonly content: Buffer; readonly like: ExistingFile }
  | { readonly kind: "remove"; readonly path: string }
  | { readonly kind: "systemctl"; readonly args: readonly string[] }
  | { readonly kind: "none" };

export interface UninstallStep {
  readonly id: string;
  readonly action: UninstallAction;
  readonly detail: string;
  readonly op: UninstallOperation;
}

export interface UninstallPlan {
  readonly steps: readonly UninstallStep[];
  readonly notes: readonly string[];
}

export interface UninstallState {
  readonly relocated: boolean;
  readonly record: InstallRecord | undefined;
  readonly recordPath: string;
  /** Current state of every recorded path, of install's own file names and of resolv.conf (undefined: absent). */
  readonly files: ReadonlyMap<string, ExistingFile | undefined>;
  readonly dnsmasqActive: boolean;
  readonly resolvedActive: boolean;
}

export type UninstallPaths = Pick<
  InstallPaths,
  "dnsmasqDir" | "resolvedConfDir" | "resolvConf" | "dhclientHooksDir" | "installRecord"
>;

const LOOPBACK_NAMESERVER = /^\s*nameserver\s+127\.0\.0\.1\s*$/;

/** resolv.conf without the `nameserver 127.0.0.1` lines (every other line kept, in order). */
export function withoutLoopback(resolvConf: string): string {
  const lines = resolvConf.split("\n");
  const trailing = lines[lines.length - 1] === "";
  if (trailing) lines.pop();
  const kept = lines.filter((l) => !LOOPBACK_NAMESERVER.test(l));
  return kept.length === 0 ? "" : `${kept.join("\n")}${trailing ? "\n" : ""}`;
}

const hasLoopback = (text: string): boolean => text.split("\n").some((l) => LOOPBACK_NAMESERVER.test(l));

function sameAs(current: ExistingFile, file: ExistingFile): boolean {
  return (
    current.content.equals(file.content) &&
    current.mode === file.mode &&
    current.uid === file.uid &&
    current.gid === file.gid
  );
}

/** The paths install writes under names of its own (everything it may have written without a record). */
export function ownFilePaths(paths: UninstallPaths): string[] {
  return [
    join(paths.dnsmasqDir, DNSMASQ_LOCAL_NAME),
    join(paths.resolvedConfDir, RESOLVED_DROPIN_NAME),
    join(paths.dhclientHooksDir, DHCLIENT_HOOK_NAME),
  ];
}

/** What uninstall would do (pure). */
export function planUninstall(state: UninstallState, paths: UninstallPaths): UninstallPlan {
  const steps: UninstallStep[] = [];
  const notes: string[] = [];
  const changed: string[] = [];
  const id = (path: string): string =>
    path === paths.resolvConf ? "resolv.conf" : path.slice(path.lastIndexOf("/") + 1);
  const recorded = new Set(state.record?.files.map((f) => f.path));

  for (const entry of state.record?.files ?? []) {
    const current = state.files.get(entry.path);
    const before = entry.before;
    if (before === undefined) {
      if (current === undefined) {
        steps.push({
          id: id(entry.path),
          action: "unchanged",
          detail: `${entry.path} is absent, as before install`,
          op: { kind: "none" },
        });
      } else {
        changed.push(entry.path);
        steps.push({
          id: id(entry.path),
          action: "remove",
          detail: `${entry.path} (did not exist before install)`,
          op: { kind: "remove", path: entry.path },
        });
      }
      continue;
    }
    if (current !== undefined && sameAs(current, before)) {
      steps.push({
        id: id(entry.path),
        action: "unchanged",
        detail: `${entry.path} is as before install`,
        op: { kind: "none" },
      });
      continue;
    }
    if (current === undefined || sha256(current.content) === entry.writtenSha256) {
      changed.push(entry.path);
      steps.push({
        id: id(entry.path),
        action: "restore",
        detail: `${entry.path} (the original from before install, 0${before.mode.toString(8)})`,
        op: { kind: "restore", path: entry.path, file: before },
      });
      continue;
    }
    // Changed since install wrote it.
    const text = current.content.toString("utf8");
    if (entry.path === paths.resolvConf && !hasLoopback(before.content.toString("utf8")) && hasLoopback(text)) {
      changed.push(entry.path);
      steps.push({
        id: id(entry.path),
        action: "edit",
        detail: `${entry.path}: rewritten since install (a DHCP lease event); only the nameserver 127.0.0.1 line install added is removed`,
        op: { kind: "write", path: entry.path, content: Buffer.from(withoutLoopback(text)), like: current },
      });
      continue;
    }
    steps.push({
      id: id(entry.path),
      action: "keep",
      detail: `${entry.path} changed since install wrote it: kept as it is`,
      op: { kind: "none" },
    });
    notes.push(`${entry.path} was changed after install; its original is in ${state.recordPath} until this succeeds`);
  }

  // Install's own files that no record covers (an install by a version that kept no record).
  for (const path of ownFilePaths(paths)) {
    if (recorded.has(path) || state.files.get(path) === undefined) continue;
    changed.push(path);
    steps.push({
      id: id(path),
      action: "remove",
      detail: `${path} (written by istio-vm install)`,
      op: { kind: "remove", path },
    });
  }
  if (state.record === undefined) {
    const resolv = state.files.get(paths.resolvConf);
    if (resolv !== undefined && hasLoopback(resolv.content.toString("utf8"))) {
      notes.push(
        `no install record (${state.recordPath}): ${paths.resolvConf} keeps its nameserver 127.0.0.1 line, which install may have added; remove it if dnsmasq is not meant to answer there`,
      );
    }
  } else {
    steps.push({
      id: "install-record",
      action: "remove",
      detail: `${state.recordPath} (everything it lists is handled above)`,
      op: { kind: "remove", path: state.recordPath },
    });
  }

  if (state.relocated) {
    if (changed.length > 0)
      steps.push({
        id: "services",
        action: "skip",
        detail: "ISTIO_VM_ROOT is set: no system command runs",
        op: { kind: "none" },
      });
    return { steps, notes };
  }
  const inResolved = changed.some((p) => dirname(p) === paths.resolvedConfDir);
  if (changed.length > 0 && state.dnsmasqActive) {
    steps.push({
      id: "dnsmasq",
      action: "restart",
      detail: "systemctl restart dnsmasq (drops the mesh's names)",
      op: { kind: "systemctl", args: ["restart", "dnsmasq"] },
    });
  }
  if (inResolved && state.resolvedActive) {
    steps.push({
      id: "systemd-resolved",
      action: "restart",
      detail: "systemctl restart systemd-resolved (no more routing of the mesh's names to 127.0.0.1)",
      op: { kind: "systemctl", args: ["restart", "systemd-resolved"] },
    });
  }
  return { steps, notes };
}

// ── reading the system and executing ─────────────────────────────────────────────────────────

async function readExisting(fs: FileSystem, path: string): Promise<ExistingFile | undefined> {
  const stat = await fs.stat(path);
  if (stat === undefined || stat.isDirectory) return undefined;
  return { content: await fs.readFile(path), mode: stat.mode, uid: stat.uid, gid: stat.gid };
}

/** Paths from the configuration if it can be read at all (a broken sidecar.env must not stop a package removal). */
export async function uninstallPaths(ports: Pick<InstallPorts, "env" | "fs">): Promise<UninstallPaths> {
  const loaded = await loadConfig({ env: ports.env, fs: ports.fs });
  // Invalid values hold their defaults in `values`: the paths are usable even when the configuration is not.
  return installPaths(ports.env, loaded.values);
}

export async function inspectForUninstall(
  ports: Pick<InstallPorts, "env" | "fs" | "runner">,
  paths: UninstallPaths,
): Promise<UninstallState> {
  const relocated = configFilePaths(ports.env).root !== "";
  const recordText = await ports.fs.readTextIfExists(paths.installRecord);
  const record = recordText === undefined ? undefined : parseInstallRecord(recordText, paths.installRecord);
  const files = new Map<string, ExistingFile | undefined>();
  for (const path of [...(record?.files.map((f) => f.path) ?? []), ...ownFilePaths(paths), paths.resolvConf]) {
    if (!files.has(path)) files.set(path, await readExisting(ports.fs, path));
  }
  if (relocated)
    return { relocated, record, recordPath: paths.installRecord, files, dnsmasqActive: false, resolvedActive: false };
  const active = async (unit: string): Promise<boolean> =>
    (await ports.runner.run("systemctl", ["is-active", unit], { timeoutMs: 30_000 })).stdout.trim() === "active";
  return {
    relocated,
    record,
    recordPath: paths.installRecord,
    files,
    dnsmasqActive: await active("dnsmasq.service"),
    resolvedActive: await active("systemd-resolved.service"),
  };
}

export interface UninstallReport {
  readonly record: string;
  readonly recorded: boolean;
  readonly dryRun: boolean;
  readonly steps: readonly {
    readonly id: string;
    readonly action: UninstallAction | "failed";
    readonly detail: string;
  }[];
  readonly changed: boolean;
  readonly failed: boolean;
  readonly notes: readonly string[];
}

/**
 * Plans and (unless a dry run) applies. A file that cannot be restored stops the run before the record is removed,
 * so a second run can finish the job; a service that does not restart is reported (failed) and the run goes on.
 */
export async function runUninstall(
  options: { readonly dryRun: boolean },
  ports: InstallPorts,
): Promise<UninstallReport> {
  const paths = await uninstallPaths(ports);
  const state = await inspectForUninstall(ports, paths);
  const plan = planUninstall(state, paths);
  const steps: { id: string; action: UninstallAction | "failed"; detail: string }[] = plan.steps.map((s) => ({
    id: s.id,
    action: s.action,
    detail: s.detail,
  }));
  const report = (): UninstallReport => ({
    record: paths.installRecord,
    recorded: state.record !== undefined,
    dryRun: options.dryRun,
    steps,
    changed: plan.steps.some((s) => s.op.kind !== "none"),
    failed: steps.some((s) => s.action === "failed"),
    notes: plan.notes,
  });
  if (options.dryRun) return report();
  for (const [i, step] of plan.steps.entries()) {
    const op = step.op;
    if (op.kind === "none") continue;
    ports.progress(`${step.id}: ${step.action} ${step.detail}`);
    try {
      switch (op.kind) {
        case "restore":
        case "write": {
          const like = op.kind === "restore" ? op.file : op.like;
          const content = op.kind === "restore" ? op.file.content : op.content;
          if (!(await ports.fs.exists(dirname(op.path)))) await ports.fs.mkdirp(dirname(op.path), 0o755);
          await ports.fs.writeFileAtomic(op.path, content, {
            mode: like.mode,
            ...(ports.isRoot ? { owner: { uid: like.uid, gid: like.gid } } : {}),
          });
          break;
        }
        case "remove":
          await ports.fs.remove(op.path);
          break;
        case "systemctl": {
          const result = await ports.runner.run("systemctl", op.args, { timeoutMs: 120_000 });
          if (result.code !== 0) {
            const s = steps[i];
            if (s !== undefined) {
              s.action = "failed";
              s.detail = `${formatCommand("systemctl", op.args)} exited ${String(result.code ?? result.signal ?? "?")}: ${result.stderr.trim()}`;
            }
          }
          break;
        }
      }
    } catch (error) {
      throw new AgentError({
        code: "UNINSTALL_STEP_FAILED",
        message: `uninstall step '${step.id}' failed: ${(error as Error).message}`,
        subject: "path" in op ? op.path : step.id,
        hint: `fix the cause and run \`istio-vm uninstall\` again; the originals stay in ${paths.installRecord} until it succeeds`,
        cause: error,
      });
    }
  }
  return report();
}
