/**
 * Reads `iptables-save` output: which of our chains exist, their rules, the jumps to them from built-in chains, and
 * who else points at them. `diffWithPlan` compares that with a plan line by line (plans are written in save form).
 */
import type { OurChain, Rule, TableName, TablePlan } from "./planner.js";
import type { FamilyState, OurState } from "./restore-input.js";
import { BUILTIN_CHAINS, TABLES, TABLE_CHAINS, isOurChain, ruleLine } from "./planner.js";
import { emptyState, stateIsEmpty } from "./restore-input.js";

export { stateIsEmpty };

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

/** Our state in every table of TABLES, from one `iptables-save` dump of a family. */
export function familyState(text: string): FamilyState {
  const tables = parseSave(text);
  return TABLES.map((name) =>
    ourState(
      tables.find((t) => t.name === name),
      name,
    ),
  );
}

export function familyStateIsEmpty(states: FamilyState): boolean {
  return states.every(stateIsEmpty);
}

/** A line or chain name of a table other than nat carries the table, as `iptables -t raw` would. */
export function qualified(table: TableName, text: string): string {
  return table === "nat" ? text : `-t ${table} ${text}`;
}

/** The jump target of a rule (`-j X` or `-g X`), if any. */
export function ruleTarget(spec: string): string | undefined {
  return /(?:^|\s)-[jg]\s+(\S+)/.exec(spec)?.[1];
}

export function ourState(table: SavedTable | undefined, name: TableName = "nat"): OurState {
  if (table === undefined) return emptyState(name);
  const tableName: TableName = table.name === "raw" ? "raw" : "nat";
  const isOurs = (chain: string): chain is OurChain => isOurChain(chain, tableName);
  const builtin = new Set<string>(BUILTIN_CHAINS[tableName]);
  const chains = TABLE_CHAINS[tableName].filter((c) => table.chains.includes(c));
  const rules = table.rules.filter((r) => isOurs(r.chain));
  const jumps: Rule[] = [];
  const referencedByOthers = new Map<OurChain, string[]>();
  for (const rule of table.rules) {
    if (isOurs(rule.chain)) continue;
    const target = ruleTarget(rule.spec);
    if (target === undefined || !isOurs(target)) continue;
    if (builtin.has(rule.chain)) {
      jumps.push(rule);
    } else {
      referencedByOthers.set(target, [...(referencedByOthers.get(target) ?? []), rule.chain]);
    }
  }
  return { table: tableName, chains, rules, jumps, referencedByOthers };
}

export interface PlanDiff {
  readonly matches: boolean;
  /** Planned rules (as `-A CHAIN spec` lines) the kernel lacks, and chains it lacks as `:CHAIN`. */
  readonly missing: readonly string[];
  /** Rules and chains of ours in the kernel that the plan does not have. */
  readonly unexpected: readonly string[];
  /** Same rules, different order in one of our chains (`-t raw CHAIN` outside nat). */
  readonly outOfOrder: readonly string[];
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

/** Compares the kernel's rules of ours in one table with its plan (undefined: nothing planned in that table). */
export function diffWithPlan(plan: TablePlan | undefined, state: OurState): PlanDiff {
  const plannedLines = [...(plan?.chains ?? []).map((c) => `:${c}`), ...(plan?.rules ?? []).map(ruleLine)];
  const actualLines = [...state.chains.map((c) => `:${c}`), ...state.jumps.map(ruleLine), ...state.rules.map(ruleLine)];
  const missing = multisetMinus(plannedLines, actualLines);
  const unexpected = multisetMinus(actualLines, plannedLines);
  const outOfOrder = TABLE_CHAINS[state.table]
    .filter((chain) => {
      const planned = (plan?.rules ?? []).filter((r) => r.chain === chain).map((r) => r.spec);
      const actual = state.rules.filter((r) => r.chain === chain).map((r) => r.spec);
      return planned.length === actual.length && planned.join("\n") !== actual.join("\n");
    })
    .filter((chain) => !missing.some((l) => l.startsWith(`-A ${chain} `)));
  return {
    matches: missing.length === 0 && unexpected.length === 0 && outOfOrder.length === 0,
    missing,
    unexpected,
    outOfOrder,
  };
}

/** Compares one family's tables with its plan; lines of tables other than nat are qualified (`-t raw -A …`). */
export function diffFamily(tables: readonly TablePlan[], states: FamilyState): PlanDiff {
  const diffs = TABLES.map((name) => {
    const state = states.find((s) => s.table === name) ?? emptyState(name);
    const diff = diffWithPlan(
      tables.find((t) => t.table === name),
      state,
    );
    return {
      matches: diff.matches,
      missing: diff.missing.map((l) => qualified(name, l)),
      unexpected: diff.unexpected.map((l) => qualified(name, l)),
      outOfOrder: diff.outOfOrder.map((c) => qualified(name, c)),
    };
  });
  return {
    matches: diffs.every((d) => d.matches),
    missing: diffs.flatMap((d) => d.missing),
    unexpected: diffs.flatMap((d) => d.unexpected),
    outOfOrder: diffs.flatMap((d) => d.outOfOrder),
  };
}

/** Our chains, jumps and rules of one family as `iptables-save` lines (qualified outside nat), for `show`. */
export function stateLines(states: FamilyState): string[] {
  return states.flatMap((s) =>
    [...s.chains.map((c) => `:${c}`), ...s.jumps.map(ruleLine), ...s.rules.map(ruleLine)].map((l) =>
      qualified(s.table, l),
    ),
  );
}
