/**
 * The last NDS name table on disk, so the proxy answers mesh names from the first second after a restart and while
 * istiod is unreachable (istio-agent keeps it only in memory: every query before the table arrives fails there,
 * istio/istio#43276). Written atomically (a reader sees the old or the new table, never half of one), mode 0644
 * (names and service IPs, no secrets). A file that cannot be parsed is ignored with a reason, never fatal: the
 * proxy then forwards until istiod sends a table.
 */
import type { FileSystem } from "../platform/fs.js";
import { nameTableProblem } from "./name-table.js";
import type { NameTable } from "./name-table.js";

const FORMAT_VERSION = 1;

export interface StoredTable {
  readonly table: NameTable;
  /** When istiod sent it (epoch ms). */
  readonly receivedAt: number;
}

export type LoadedTable =
  | { readonly kind: "loaded"; readonly stored: StoredTable }
  | { readonly kind: "absent" }
  | { readonly kind: "invalid"; readonly reason: string };

export function encodeStoredTable(stored: StoredTable): string {
  return `${JSON.stringify({ version: FORMAT_VERSION, receivedAt: new Date(stored.receivedAt).toISOString(), table: stored.table })}\n`;
}

export function decodeStoredTable(text: string): LoadedTable {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { kind: "invalid", reason: `not JSON: ${(error as Error).message}` };
  }
  const record = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
  if (record["version"] !== FORMAT_VERSION) return { kind: "invalid", reason: "unknown format version" };
  const receivedAt = typeof record["receivedAt"] === "string" ? Date.parse(record["receivedAt"]) : NaN;
  if (Number.isNaN(receivedAt)) return { kind: "invalid", reason: "receivedAt is not a timestamp" };
  const problem = nameTableProblem(record["table"]);
  if (problem !== undefined) return { kind: "invalid", reason: `table: ${problem}` };
  return { kind: "loaded", stored: { table: record["table"] as NameTable, receivedAt } };
}

export async function loadStoredTable(fs: FileSystem, path: string): Promise<LoadedTable> {
  let text: string | undefined;
  try {
    text = await fs.readTextIfExists(path);
  } catch (error) {
    return { kind: "invalid", reason: (error as Error).message };
  }
  return text === undefined ? { kind: "absent" } : decodeStoredTable(text);
}

export async function saveStoredTable(fs: FileSystem, path: string, stored: StoredTable): Promise<void> {
  await fs.writeFileAtomic(path, encodeStoredTable(stored), { mode: 0o644 });
}
