/**
 * `istio-vm install BUNDLE` on the VM: verifies and validates, plans (install-plan.ts, pure) from the verified
 * bundle and the inspected system (install-system.ts), and applies the plan through the ports (here).
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
import { agentProblems, configFilePaths, loadConfig } from "../config/load.js";
import { AgentError, ConfigError } from "../platform/errors.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import { formatCommand } from "../platform/process.js";
import { readBundle, settingsProblems } from "./bundle.js";
import { INSTALL_RECORD_PATH } from "./install-record.js";
import type { ResolverChoice, ResolverKind } from "./resolver.js";
import type { ExistingFile, InstallPaths, OwnerName, StepAction, SystemState } from "./install-plan.js";
import { PACKAGE, PROXY_USER, UNIT, mergeEnvSettings, planInstall } from "./install-plan.js";
import type { InstallPorts, UnitState } from "./install-system.js";
import { inspectSystem, installPaths, proxyOwner, readExisting, unitState } from "./install-system.js";

export interface InstallOptions {
  readonly bundlePath: string;
  /** Per-VM settings from --set; they win over the bundle's. */
  readonly settings: readonly { readonly key: string; readonly value: string }[];
  readonly resolver: ResolverChoice;
  readonly readyTimeoutMs: number;
  readonly dryRun: boolean;
}

/** A FileSystem that shows `overrides` at their paths (for validating the configuration before writing it). */
function overlay(fs: FileSystem, overrides: ReadonlyMap<string, string>): FileSystem {
  return {
    ...fs,
    readTextIfExists: async (path) => overrides.get(path) ?? (await fs.readTextIfExists(path)),
    readText: async (path) => overrides.get(path) ?? (await fs.readText(path)),
  };
}

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
