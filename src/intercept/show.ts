/**
 * Reads `iptables-save` output: which of our chains exist, their rules, the jumps to them from built-in chains, and
 * who else points at them. `diffWithPlan` compares that with a plan line by line (plans are written in save form).
 */
import type { OurChain, OurState, Rule, TablePlan } from "./planner.js";
import { BUILTIN_NAT_CHAINS, EMPTY_STATE, OUR_CHAINS, isOurChain, ruleLine } from "./planner.js";

export interface SavedTable {
  readonly name: string;
  /** Chain names in the order `iptables-save` declared them, built-in ones included. */
  readonly chains: readonly string[];
  readonly rules: readonly Rule[];
}

/** Parses the tables of an `iptables-save` dump (comments and counters ignored). */
export function parseSave(text: string): SavedTable[] {
  const tables: SavedTable[] = [];
  let current: { name: string; chains: string[]; rules: Rule[] } | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    if (line.startsWith("*")) {
      current = { name: line.slice(1), chains: [], rules: [] };
      continue;
    }
    if (current === undefined) continue;
    if (line === "COMMIT") {
      tables.push(current);
      current = undefined;
    } else if (line.startsWith(":")) {
      const name = line.slice(1).split(/\s+/)[0];
      if (name !== undefined && name !== "") current.chains.push(name);
    } else {
      // `-c pkts bytes` appears only with `iptables-save -c`; drop it so rules compare.
      const m = /^(?:\[\d+:\d+\]\s+)?-A\s+(\S+)\s*(.*)$/.exec(line);
      if (m?.[1] !== undefined) current.rules.push({ chain: m[1], spec: (m[2] ?? "").trim() });
    }
  }
  return tables;
}

export function natTable(text: string): SavedTable | undefined {
  return parseSave(text).find((t) => t.name === "nat");
}

/** The jump target of a rule (`-j X` or `-g X`), if any. */
export function ruleTarget(spec: string): string | undefined {
  return /(?:^|\s)-[jg]\s+(\S+)/.exec(spec)?.[1];
}

export function ourState(table: SavedTable | undefined): OurState {
  if (table === undefined) return EMPTY_STATE;
  const builtin = new Set<string>(BUILTIN_NAT_CHAINS);
  const chains = OUR_CHAINS.filter((c) => table.chains.includes(c));
  const rules = table.rules.filter((r) => isOurChain(r.chain));
  const jumps: Rule[] = [];
  const referencedByOthers = new Map<OurChain, string[]>();
  for (const rule of table.rules) {
    if (isOurChain(rule.chain)) continue;
    const target = ruleTarget(rule.spec);
    if (target === undefined || !isOurChain(target)) continue;
    if (builtin.has(rule.chain)) {
      jumps.push(rule);
    } else {
      referencedByOthers.set(target, [...(referencedByOthers.get(target) ?? []), rule.chain]);
    }
  }
  return { chains, rules, jumps, referencedByOthers };
}

export function stateIsEmpty(state: OurState): boolean {
  return state.chains.length === 0 && state.jumps.length === 0;
}

export interface PlanDiff {
  readonly matches: boolean;
  /** Planned rules (as `-A CHAIN spec` lines) the kernel lacks, and chains it lacks as `:CHAIN`. */
  readonly missing: readonly string[];
  /** Rules and chains of ours in the kernel that the plan does not have. */
  readonly unexpected: readonly string[];
  /** Same rules, different order in one of our chains. */
  readonly outOfOrder: readonly OurChain[];
}

function multisetMinus(a: readonly string[], b: readonly string[]): string[] {
  const counts = new Map<string, number>();
  for (const x of b) counts.set(x, (counts.get(x) ?? 0) + 1);
  const result: string[] = [];
  for (const x of a) {
    const n = counts.get(x) ?? 0;
    if (n > 0) counts.set(x, n - 1);
    else result.push(x);
  }
  return result;
}

/** Compares the kernel's rules of ours with a plan (undefined: the plan captures nothing in this family). */
export function diffWithPlan(plan: TablePlan | undefined, state: OurState): PlanDiff {
  const plannedLines = [...(plan?.chains ?? []).map((c) => `:${c}`), ...(plan?.rules ?? []).map(ruleLine)];
  const actualLines = [...state.chains.map((c) => `:${c}`), ...state.jumps.map(ruleLine), ...state.rules.map(ruleLine)];
  const missing = multisetMinus(plannedLines, actualLines);
  const unexpected = multisetMinus(actualLines, plannedLines);
  const outOfOrder = OUR_CHAINS.filter((chain) => {
    const planned = (plan?.rules ?? []).filter((r) => r.chain === chain).map((r) => r.spec);
    const actual = state.rules.filter((r) => r.chain === chain).map((r) => r.spec);
    return planned.length === actual.length && planned.join("\n") !== actual.join("\n");
  }).filter((chain) => !missing.some((l) => l.startsWith(`-A ${chain} `)));
  return {
    matches: missing.length === 0 && unexpected.length === 0 && outOfOrder.length === 0,
    missing,
    unexpected,
    outOfOrder,
  };
}
