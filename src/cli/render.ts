import { printable } from "../config/printable.js";

export interface TableOptions {
  /** Cells longer than this many characters are cut, with a marker giving the full length (for values, not names). */
  readonly maxCellWidth?: number;
}

/**
 * Plain-text tables for people; commands print `--json` for machines instead. Characters a terminal would act on
 * (ESC, CR, other controls, bidi overrides) are escaped in every cell, so a value cannot rewrite the screen or break
 * the table's lines; `--json` keeps them exact.
 */
export function renderTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  options: TableOptions = {},
): string {
  const shown = rows.map((r) => r.map((c) => printable(c, options.maxCellWidth)));
  const widths = header.map((h, i) => Math.max(h.length, ...shown.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(header), ...shown.map(line)].join("\n") + "\n";
}

export function renderJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}
