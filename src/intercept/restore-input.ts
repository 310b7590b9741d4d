/**
 * The `iptables-restore --noflush` text: what the kernel holds of ours (`OurState`, read by show.ts) and the input that
 * turns it into a plan. The planner decides the rules; this is the only place restore text is written, so what
 * `istio-vm iptables plan` prints and what the applier feeds to the kernel cannot differ.
 */
import type { InterceptionPlan, OurChain, Rule, TableName, TablePlan } from "./planner.js";
import { TABLES, ruleLine } from "./planner.js";

/** What the kernel holds of ours in one table of one family (show.ts reads it from `iptables-save`). */
export interface OurState {
  readonly table: TableName;
  /** Our chains that exist, in OUR_CHAINS order. */
  readonly chains: readonly OurChain[];
  /** Rules inside our chains, in kernel order per chain. */
  readonly rules: readonly Rule[];
  /** Rules in built-in chains that jump to one of our chains (tagged or left by an older tool with our names). */
  readonly jumps: readonly Rule[];
  /** Our chains that a chain of someone else's jumps to: they can be flushed but not deleted. */
  readonly referencedByOthers: ReadonlyMap<OurChain, readonly string[]>;
}

export function emptyState(table: TableName): OurState {
  return { table, chains: [], rules: [], jumps: [], referencedByOthers: new Map() };
}

export const EMPTY_STATE: OurState = emptyState("nat");

/** One family's state: one entry per table of TABLES (a table missing from the save is empty). */
export type FamilyState = readonly OurState[];

export function stateIsEmpty(state: OurState): boolean {
  return state.chains.length === 0 && state.jumps.length === 0;
}

/**
 * The `iptables-restore --noflush` input that turns `state` into `plan` (undefined plan: remove everything of ours);
 * the only place restore text is written. Our jumps in built-in chains are deleted by their exact saved text (a
 * changed rule makes the restore fail rather than delete the wrong one); every chain of ours is declared, which
 * creates or flushes it; chains no longer planned are then deleted unless someone else's chain jumps to them (those
 * stay, empty). The built-in chains are never flushed. From an empty kernel this is the plan itself.
 */
export function restoreInput(plan: TablePlan | undefined, state: OurState = EMPTY_STATE): string {
  const planned = new Set<OurChain>(plan?.chains ?? []);
  const stale = state.chains.filter((c) => !planned.has(c));
  const lines = [
    `*${plan?.table ?? state.table}`,
    ...state.jumps.map((j) => `-D ${j.chain} ${j.spec}`),
    ...[...planned, ...stale].map((c) => `:${c} - [0:0]`),
    ...stale.filter((c) => !state.referencedByOthers.has(c)).map((c) => `-X ${c}`),
    ...(plan?.rules ?? []).map(ruleLine),
    "COMMIT",
    "",
  ];
  return lines.join("\n");
}

/**
 * One family's `iptables-restore --noflush` input: a `*table … COMMIT` block for each table that is planned or
 * holds something of ours, nat first (a rejected raw block then leaves the redirects without zones, which still
 * resolve, rather than zones without redirects).
 */
export function familyRestoreInput(tables: readonly TablePlan[], states: FamilyState = []): string {
  return TABLES.map((name) => {
    const plan = tables.find((t) => t.table === name);
    const state = states.find((s) => s.table === name) ?? emptyState(name);
    return plan === undefined && stateIsEmpty(state) ? "" : restoreInput(plan, state);
  }).join("");
}

/** The whole plan as text, one block per family: what `istio-vm iptables plan` prints (the restore input for an
 * empty kernel). */
export function renderPlan(plan: InterceptionPlan): string {
  return plan.families
    .map((f) => {
      const tool = f.family === 4 ? "iptables-restore" : "ip6tables-restore";
      const header = `# IPv${f.family}: ${tool} --noflush input`;
      if (f.tables.length === 0) return `${header}\n# (nothing to capture)\n`;
      return `${header}\n${familyRestoreInput(f.tables)}`;
    })
    .join("\n");
}
