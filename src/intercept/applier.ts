/**
 * Applies a plan to the kernel through the ProcessRunner port: per family, one `iptables-save` to see what is there
 * and at most one `iptables-restore --noflush -w` (nat, and raw with DNS capture), whatever the number of ports. The restore input
 * is the planner's (`restoreInput`, from the plan and what the save shows); it deletes our old jumps, flushes
 * (re)declared chains of ours and adds the new rules in one transaction, so:
 * - a failing restore changes nothing (both back ends commit a table atomically);
 * - applying twice gives the same `iptables-save` (and the second apply is a no-op: the kernel already matches);
 * - chains and rules that are not ours are never touched; built-in chains are never flushed.
 * Back end: `FORCE_IPTABLES_BINARY`, else legacy when iptables-legacy already holds rules (like istio-iptables), else
 * nft, else plain `iptables-restore`.
 */
import { AgentError } from "../platform/errors.js";
import type { Logger } from "../platform/logger.js";
import type { ProcessRunner } from "../platform/process.js";
import type { Family, InterceptionPlan, TablePlan } from "./planner.js";
import type { FamilyState } from "./restore-input.js";
import { FAMILIES } from "./planner.js";
import { familyRestoreInput } from "./restore-input.js";
import { diffFamily, familyState, familyStateIsEmpty, qualified } from "./show.js";

export type Backend = "legacy" | "nft" | "default";
export type BackendChoice = "auto" | "legacy" | "nft";

export interface IptablesDeps {
  readonly runner: ProcessRunner;
  readonly choice: BackendChoice;
  readonly logger?: Logger;
  /** Per command; iptables-restore has been seen to hang (istio#29249). Default 30 s. */
  readonly timeoutMs?: number;
}

export function toolName(family: Family, backend: Backend, kind: "save" | "restore"): string {
  const base = family === 4 ? "iptables" : "ip6tables";
  return backend === "default" ? `${base}-${kind}` : `${base}-${backend}-${kind}`;
}

export function familyName(family: Family): string {
  return family === 4 ? "IPv4" : "IPv6";
}

const DEFAULT_TIMEOUT_MS = 30_000;

const PERMISSION_DENIED = /permission denied|must be root|operation not permitted/i;

type SaveResult =
  | { readonly ok: true; readonly text: string }
  | { readonly ok: false; readonly reason: string; readonly denied: boolean };

/**
 * Runs `*-save`; a missing tool, a kernel without that family or a refusal is a result, not an exception. (A
 * non-root process with CAP_NET_ADMIN can use nft but cannot read /proc/net/ip_tables_names, so legacy is refused.)
 */
export async function runSave(deps: IptablesDeps, family: Family, backend: Backend): Promise<SaveResult> {
  const tool = toolName(family, backend, "save");
  let result;
  try {
    result = await deps.runner.run(tool, [], { timeoutMs: deps.timeoutMs ?? DEFAULT_TIMEOUT_MS });
  } catch (error) {
    if (error instanceof AgentError && error.code === "COMMAND_NOT_FOUND") {
      return { ok: false, reason: `${tool} is not installed`, denied: false };
    }
    throw error;
  }
  if (result.timedOut) return { ok: false, reason: `${tool} timed out`, denied: false };
  if (result.code !== 0) {
    const detail = result.stderr.trim() || `exit ${result.code}`;
    return { ok: false, reason: `${tool} failed: ${detail}`, denied: PERMISSION_DENIED.test(detail) };
  }
  return { ok: true, text: result.stdout };
}

/** Never report "nothing there" because nothing could be read. */
function deniedError(family: Family, backend: Backend, saved: SaveResult): AgentError | undefined {
  if (saved.ok || !saved.denied) return undefined;
  return new AgentError({
    code: "IPTABLES_PERMISSION_DENIED",
    subject: toolName(family, backend, "save"),
    message: `cannot read the ${familyName(family)} rules: ${saved.reason}`,
    hint: "run as root (sudo istio-vm iptables …), or with CAP_NET_ADMIN and CAP_NET_RAW (nft back end)",
  });
}

function holdsRules(saveText: string): boolean {
  return saveText.split("\n").some((l) => l.startsWith("-A "));
}

export interface Detected {
  readonly backend: Backend;
  /** The chosen back end's `iptables-save`. */
  readonly saved: SaveResult;
  /** Saves of the other back ends read along the way (auto mode), for residue checks. */
  readonly others: ReadonlyMap<Backend, SaveResult>;
}

export async function detectBackend(deps: IptablesDeps, family: Family): Promise<Detected> {
  if (deps.choice !== "auto") {
    const saved = await runSave(deps, family, deps.choice);
    const denied = deniedError(family, deps.choice, saved);
    if (denied !== undefined) throw denied;
    return { backend: deps.choice, saved, others: new Map() };
  }
  // Both back ends are read at once (apply needs both anyway: the one not chosen is checked for residue of ours), so a
  // start waits for one save instead of two in a row.
  const [legacy, nft] = await Promise.all([runSave(deps, family, "legacy"), runSave(deps, family, "nft")]);
  if (legacy.ok && holdsRules(legacy.text))
    return { backend: "legacy", saved: legacy, others: new Map([["nft", nft]]) };
  if (nft.ok) return { backend: "nft", saved: nft, others: new Map([["legacy", legacy]]) };
  const denied = deniedError(family, "nft", nft) ?? deniedError(family, "legacy", legacy);
  if (denied !== undefined) throw denied;
  if (legacy.ok) return { backend: "legacy", saved: legacy, others: new Map() };
  return { backend: "default", saved: await runSave(deps, family, "default"), others: new Map() };
}

async function runRestore(deps: IptablesDeps, family: Family, backend: Backend, input: string): Promise<void> {
  const tool = toolName(family, backend, "restore");
  const result = await deps.runner.run(tool, ["--noflush", "-w"], {
    input,
    timeoutMs: deps.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  });
  if (result.code === 0 && !result.timedOut) return;
  const detail = result.timedOut ? "timed out" : result.stderr.trim() || `exit ${result.code}`;
  throw new AgentError({
    code: "IPTABLES_RESTORE_FAILED",
    subject: tool,
    message: `${tool} --noflush rejected the ${familyName(family)} rules (nothing was changed): ${detail}`,
    hint: "run `istio-vm iptables apply --dry-run` to see the input; `istio-vm iptables show` shows what is in the kernel",
  });
}

function savedOrThrow(family: Family, backend: Backend, saved: SaveResult): string {
  if (saved.ok) return saved.text;
  throw new AgentError({
    code: "IPTABLES_SAVE_FAILED",
    subject: toolName(family, backend, "save"),
    message: `cannot read the ${familyName(family)} rules: ${saved.reason}`,
    hint: "istio-vm needs root (or CAP_NET_ADMIN) and the iptables package",
  });
}

export interface FamilyApplyResult {
  readonly family: Family;
  readonly backend: Backend;
  /** applied: rules written; unchanged: the kernel already matched; removed: the plan is empty and ours were removed. */
  readonly action: "applied" | "unchanged" | "removed" | "nothing";
  readonly rules: number;
  /** The restore input that was (or, with dryRun, would be) run. */
  readonly restore?: string;
  /** Other back ends that held chains of ours (left by an earlier run), cleaned. */
  readonly residueCleaned: readonly Backend[];
}

export interface ApplyOptions {
  readonly dryRun?: boolean;
  /** Restore even when the kernel already matches the plan. */
  readonly force?: boolean;
}

async function applyFamily(
  deps: IptablesDeps,
  tables: readonly TablePlan[],
  family: Family,
  options: ApplyOptions,
  detected: Detected,
): Promise<FamilyApplyResult> {
  const { backend } = detected;
  const rules = tables.reduce((n, t) => n + t.rules.length, 0);
  const planned = tables.length > 0;
  if (!planned && !detected.saved.ok) {
    // Nothing to capture and nothing readable (no ip6tables, or no IPv6 in the kernel): nothing of ours can be there.
    return { family, backend, action: "nothing", rules, residueCleaned: [] };
  }
  const state = familyState(savedOrThrow(family, backend, detected.saved));
  const residueCleaned: Backend[] = [];
  if (deps.choice === "auto") {
    for (const other of (["legacy", "nft"] as const).filter((b) => b !== backend)) {
      const saved = detected.others.get(other) ?? (await runSave(deps, family, other));
      const residue = saved.ok ? familyState(saved.text) : undefined;
      if (residue === undefined || familyStateIsEmpty(residue)) continue;
      if (options.dryRun !== true) await runRestore(deps, family, other, familyRestoreInput([], residue));
      deps.logger?.warn("removed interception rules left in the other iptables back end", { family, backend: other });
      residueCleaned.push(other);
    }
  }
  const empty = familyStateIsEmpty(state);
  if (!planned && empty) return { family, backend, action: "nothing", rules, residueCleaned };
  if (options.force !== true && diffFamily(tables, state).matches) {
    return { family, backend, action: "unchanged", rules, residueCleaned };
  }
  const restore = familyRestoreInput(tables, state);
  if (options.dryRun !== true) await runRestore(deps, family, backend, restore);
  return { family, backend, action: planned ? "applied" : "removed", rules, restore, residueCleaned };
}

/** Brings every family's rules of ours (nat, raw) to the plan. Throws on the first failing family. */
export async function applyInterception(
  deps: IptablesDeps,
  plan: InterceptionPlan,
  options: ApplyOptions = {},
): Promise<FamilyApplyResult[]> {
  // Every family's rules are read at once: reading changes nothing, and one family's restore never touches another
  // family's tables, so IPv6's save runs while IPv4 is read and restored instead of after it (a whole `iptables
  // apply` then waits for one save less). The families are still applied in order, and the first failing one
  // (detection included) is the error, as before.
  const detections = FAMILIES.map((family) => detectBackend(deps, family));
  for (const detection of detections) detection.catch(() => undefined);
  const results: FamilyApplyResult[] = [];
  for (const [i, family] of FAMILIES.entries()) {
    const tables = plan.families.find((f) => f.family === family)?.tables ?? [];
    const detected = detections[i];
    if (detected === undefined) throw new Error(`no detection for family ${family}`);
    results.push(await applyFamily(deps, tables, family, options, await detected));
  }
  return results;
}

export interface CleanResult {
  readonly family: Family;
  readonly backend: Backend;
  /** Chain names, qualified outside nat (`-t raw ISTIO_INBOUND`). */
  readonly removedChains: readonly string[];
  readonly removedJumps: number;
  /** Our chains someone else's chain jumps to: flushed, not deleted. */
  readonly keptChains: readonly string[];
  readonly restore?: string;
  /** Why this back end was not looked at (tool missing, no IPv6 in the kernel). */
  readonly skipped?: string;
}

function backendsToClean(choice: BackendChoice): Backend[] {
  return choice === "auto" ? ["legacy", "nft"] : [choice];
}

/**
 * Removes our chains and the jumps to them, in every back end that has them (auto) or the forced one. Never fails
 * because there is nothing to clean or a back end is not installed; fails only when a restore is rejected.
 */
export async function cleanInterception(
  deps: IptablesDeps,
  options: { dryRun?: boolean } = {},
): Promise<CleanResult[]> {
  const results: CleanResult[] = [];
  for (const family of FAMILIES) {
    const backends = backendsToClean(deps.choice);
    let readable = 0;
    for (const backend of backends) {
      const saved = await runSave(deps, family, backend);
      if (!saved.ok) {
        results.push({ family, backend, removedChains: [], removedJumps: 0, keptChains: [], skipped: saved.reason });
        continue;
      }
      readable++;
      results.push(await cleanState(deps, family, backend, saved.text, options));
    }
    if (readable === 0) {
      const denied = results
        .filter((r) => r.family === family)
        .map((r) => (r.skipped !== undefined && PERMISSION_DENIED.test(r.skipped) ? r : undefined))
        .find((r) => r !== undefined);
      if (denied !== undefined) {
        throw new AgentError({
          code: "IPTABLES_PERMISSION_DENIED",
          subject: toolName(family, denied.backend, "save"),
          message: `cannot read the ${familyName(family)} rules: ${denied.skipped ?? ""}`,
          hint: "run as root (the unit's ExecStopPost uses the + prefix for this)",
        });
      }
    }
    if (readable === 0 && deps.choice === "auto") {
      // Neither iptables-legacy nor iptables-nft: an older iptables without the split names.
      const saved = await runSave(deps, family, "default");
      if (saved.ok) results.push(await cleanState(deps, family, "default", saved.text, options));
    }
  }
  return results;
}

async function cleanState(
  deps: IptablesDeps,
  family: Family,
  backend: Backend,
  saveText: string,
  options: { dryRun?: boolean },
): Promise<CleanResult> {
  const states = familyState(saveText);
  if (familyStateIsEmpty(states)) return { family, backend, removedChains: [], removedJumps: 0, keptChains: [] };
  const restore = familyRestoreInput([], states);
  if (options.dryRun !== true) await runRestore(deps, family, backend, restore);
  const chains = (kept: boolean): string[] =>
    states.flatMap((s) =>
      s.chains.filter((c) => s.referencedByOthers.has(c) === kept).map((c) => qualified(s.table, c)),
    );
  return {
    family,
    backend,
    removedChains: chains(false),
    removedJumps: states.reduce((n, s) => n + s.jumps.length, 0),
    keptChains: chains(true),
    restore,
  };
}

export interface FamilyShow {
  readonly family: Family;
  readonly backend: Backend;
  readonly readable: boolean;
  readonly reason?: string;
  /** One entry per table (nat, raw). */
  readonly states: FamilyState;
}

/** What the kernel holds of ours, per family, in the back end apply would use. */
export async function readInterception(deps: IptablesDeps): Promise<FamilyShow[]> {
  // Reads only: every family at once; the first family that fails is the error, as when they were read in turn.
  const detections = FAMILIES.map((family) => detectBackend(deps, family));
  for (const detection of detections) detection.catch(() => undefined);
  const shows: FamilyShow[] = [];
  for (const [i, family] of FAMILIES.entries()) {
    const pending = detections[i];
    if (pending === undefined) throw new Error(`no detection for family ${family}`);
    const detected = await pending;
    shows.push(
      detected.saved.ok
        ? { family, backend: detected.backend, readable: true, states: familyState(detected.saved.text) }
        : {
            family,
            backend: detected.backend,
            readable: false,
            reason: detected.saved.reason,
            states: familyState(""),
          },
    );
  }
  return shows;
}
