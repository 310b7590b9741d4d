/**
 * The `KEY=value` files of the original recipe (`cluster.env`, `sidecar.env`). They were sourced by bash as root; here
 * they are parsed, never executed. Supported: blank lines, `#` comments, an optional `export `, unquoted values,
 * single quotes (literal), double quotes (with the backslash escapes bash honours inside them), backslash escapes
 * outside quotes, and adjacent quoted parts (`'it'\''s'`). Anything that would make bash run or expand something
 * (`$`, backticks, `;`, `|`, `&`, redirections, unquoted spaces) is an error with file:line.
 *
 * Files saved by Windows editors are read as meant, where bash would not: CRLF line ends are read as LF everywhere
 * (also inside a quoted multi-line value), and a UTF-8 byte-order mark as the very first character is skipped. A
 * carriage return not followed by a line feed outside quotes, a byte-order mark anywhere else, and bytes that are not
 * UTF-8 (a file saved as Latin-1), are errors that name the character.
 */

import { escapeHidden } from "./printable.js";

export interface EnvEntry {
  readonly key: string;
  readonly value: string;
  /** 1-based line on which the assignment starts. */
  readonly line: number;
}

export interface EnvFileProblem {
  readonly line: number;
  readonly message: string;
}

export class EnvFileError extends Error {
  readonly file: string;
  readonly problems: readonly EnvFileProblem[];
  /** The well-formed lines, so callers can validate them too and report every problem in one pass. */
  readonly entries: readonly EnvEntry[];

  constructor(file: string, problems: readonly EnvFileProblem[], entries: readonly EnvEntry[] = []) {
    super(problems.map((p) => `${file}:${p.line}: ${p.message}`).join("\n"));
    this.name = "EnvFileError";
    this.file = file;
    this.problems = problems;
    this.entries = entries;
  }
}

const KEY_START = /[A-Za-z_]/;
const KEY_CHAR = /[A-Za-z0-9_]/;
const SHELL_SYNTAX = new Set([";", "|", "&", "<", ">", "(", ")"]);
const DOUBLE_QUOTE_ESCAPABLE = new Set(["$", "`", '"', "\\"]);

const BOM = "\uFEFF";
const MISPLACED_BOM =
  "byte-order mark (U+FEFF) inside the file; it is accepted only as the very first character of the file, remove this one";

// What a UTF-8 decoder makes of a byte that is not UTF-8 (a file saved as Latin-1 or Windows-1252).
const REPLACEMENT = "\uFFFD";
const NOT_UTF8 = "not UTF-8: a byte here is not valid UTF-8 (read as U+FFFD); save the file as UTF-8";

class LineError extends Error {}

// Runs of characters that need no decision, taken in one step (a 1,000-port list is 6,000 characters; one closure
// call per character was most of reading sidecar.env at every start). Each class leaves out exactly what the
// character-by-character path below treats specially (line ends, quotes, escapes, expansion and shell syntax, NUL,
// a byte-order mark, U+FFFD), so those still go through it.
const PLAIN_RUN = /[^ \t\n'"\\$`;|&<>()\r\0\uFEFF\uFFFD]+/y;
const SINGLE_QUOTED_RUN = /[^'\n\0\uFEFF\uFFFD]+/y;
const DOUBLE_QUOTED_RUN = /[^"\\$`\n\0\uFEFF\uFFFD]+/y;

/** Names a character a person cannot see (U+00A0, a zero-width space, a control character), or nothing. */
function invisible(ch: string | undefined): string {
  if (ch === undefined || ch === "\n") return "";
  const shown = escapeHidden(ch);
  return shown === ch ? "" : ` (found the invisible character ${shown})`;
}

/** Parses an env file; all malformed lines are reported together in one `EnvFileError`. */
export function parseEnvFile(input: string | Uint8Array, file: string): EnvEntry[] {
  const decoded = typeof input === "string" ? input : Buffer.from(input).toString("utf8");
  const text = (decoded.startsWith(BOM) ? decoded.slice(1) : decoded).replaceAll("\r\n", "\n");
  const entries: EnvEntry[] = [];
  const problems: EnvFileProblem[] = [];
  let pos = 0;
  let line = 1;

  const peek = (): string | undefined => text[pos];
  const atLineEnd = (): boolean => pos >= text.length || text[pos] === "\n";
  const skipBlanks = (): void => {
    while (peek() === " " || peek() === "\t") pos++;
  };
  const skipToNextLine = (): void => {
    while (pos < text.length && text[pos] !== "\n") pos++;
    if (pos < text.length) {
      pos++;
      line++;
    }
  };
  const take = (): string => {
    const ch = text[pos++] ?? "";
    if (ch === "\n") line++;
    if (ch === "\0") throw new LineError("NUL byte in file");
    if (ch === BOM) throw new LineError(MISPLACED_BOM);
    if (ch === REPLACEMENT) throw new LineError(NOT_UTF8);
    return ch;
  };

  /** The run of `pattern` (a sticky class) at pos, consumed; "" when there is none. */
  const takeRun = (pattern: RegExp): string => {
    pattern.lastIndex = pos;
    const run = pattern.exec(text)?.[0] ?? "";
    pos += run.length;
    return run;
  };

  const parseValue = (): string => {
    let value = "";
    for (;;) {
      value += takeRun(PLAIN_RUN);
      if (atLineEnd()) return value;
      const ch = peek() ?? "";
      if (ch === " " || ch === "\t") {
        skipBlanks();
        if (atLineEnd()) return value;
        if (peek() === "#") {
          while (!atLineEnd()) pos++;
          return value;
        }
        throw new LineError("unquoted whitespace in value (bash would run the rest as a command); quote the value");
      }
      if (ch === "'") {
        const startLine = line;
        pos++;
        for (;;) {
          value += takeRun(SINGLE_QUOTED_RUN);
          if (pos >= text.length) throw new LineError(`unterminated single quote (opened on line ${startLine})`);
          const c = take();
          if (c === "'") break;
          value += c;
        }
        continue;
      }
      if (ch === '"') {
        const startLine = line;
        pos++;
        for (;;) {
          value += takeRun(DOUBLE_QUOTED_RUN);
          if (pos >= text.length) throw new LineError(`unterminated double quote (opened on line ${startLine})`);
          const c = take();
          if (c === '"') break;
          if (c === "\\") {
            if (pos >= text.length) throw new LineError(`unterminated double quote (opened on line ${startLine})`);
            const next = take();
            if (next === "\n") continue; // line continuation
            value += DOUBLE_QUOTE_ESCAPABLE.has(next) ? next : `\\${next}`;
            continue;
          }
          if (c === "$" || c === "`") {
            throw new LineError(
              `'${c}' inside double quotes would be expanded by bash; use single quotes for a literal value`,
            );
          }
          value += c;
        }
        continue;
      }
      if (ch === "\\") {
        pos++;
        if (pos >= text.length) throw new LineError("backslash at end of file");
        const next = take();
        if (next === "\n") continue; // line continuation
        value += next;
        continue;
      }
      if (ch === "$" || ch === "`") {
        throw new LineError(
          `'${ch}' would be expanded by bash; values are not expanded here, use single quotes for a literal`,
        );
      }
      if (SHELL_SYNTAX.has(ch)) {
        throw new LineError(`unquoted '${ch}' is shell syntax; quote the value`);
      }
      if (ch === "\r") throw new LineError("stray carriage return (\\r) not followed by a line feed; quote the value");
      value += take();
    }
  };

  while (pos < text.length) {
    const startLine = line;
    try {
      skipBlanks();
      if (atLineEnd()) {
        skipToNextLine();
        continue;
      }
      if (peek() === "#") {
        skipToNextLine();
        continue;
      }
      if (text.startsWith("export", pos) && (text[pos + 6] === " " || text[pos + 6] === "\t")) {
        pos += 6;
        skipBlanks();
      }
      let key = "";
      if (peek() === BOM) throw new LineError(MISPLACED_BOM);
      if (!KEY_START.test(peek() ?? "")) throw new LineError(`expected KEY=value${invisible(peek())}`);
      while (KEY_CHAR.test(peek() ?? "")) key += take();
      if (peek() !== "=") {
        throw new LineError(
          peek() === " " || peek() === "\t"
            ? `no spaces allowed around '=' after ${key}`
            : `expected '=' after ${key}${invisible(peek())}`,
        );
      }
      pos++;
      const value = parseValue();
      entries.push({ key, value, line: startLine });
      skipToNextLine();
    } catch (error) {
      if (!(error instanceof LineError)) throw error;
      problems.push({ line: startLine, message: error.message });
      // Resume at the line after the one where parsing stopped.
      skipToNextLine();
    }
  }
  if (problems.length > 0) throw new EnvFileError(file, problems, entries);
  return entries;
}

const SAFE_UNQUOTED = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** Quotes a value so that both bash and `parseEnvFile` read it back unchanged. */
export function quoteEnvValue(value: string, quote: "always" | "when-needed" = "when-needed"): string {
  if (quote === "when-needed" && SAFE_UNQUOTED.test(value)) return value;
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

export interface RenderOptions {
  /** Comment lines written first (without the leading `# `). */
  readonly header?: readonly string[];
  readonly quote?: "always" | "when-needed";
}

export function renderEnvFile(entries: readonly { key: string; value: string }[], options: RenderOptions = {}): string {
  const lines = (options.header ?? []).map((h) => (h === "" ? "#" : `# ${h}`));
  for (const { key, value } of entries) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new Error(`invalid variable name: ${key}`);
    lines.push(`${key}=${quoteEnvValue(value, options.quote)}`);
  }
  return `${lines.join("\n")}\n`;
}
