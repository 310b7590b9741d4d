/**
 * The YAML that kubeconfig files are written in, and no more: block mappings and sequences (including a sequence at
 * its parent key's indentation, as kubectl writes it), plain, single- and double-quoted scalars, flow collections
 * (`{}`, `[a, "b"]`), `|`/`>` block scalars, comments, and a leading `---`. JSON is YAML too and is parsed as JSON.
 * Anchors, aliases, tags and multi-document streams are not kubeconfig features and are rejected with the line number.
 * (No YAML library is a dependency of this project; a kubeconfig is small and regular.)
 */

export class YamlError extends Error {
  readonly line: number;
  constructor(message: string, line: number) {
    super(`line ${line}: ${message}`);
    this.name = "YamlError";
    this.line = line;
  }
}

interface Line {
  readonly number: number;
  readonly indent: number;
  readonly text: string;
}

/** Removes a trailing comment: `#` at the start or after whitespace, outside quotes. */
function stripComment(text: string): string {
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote !== undefined) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if (c === '"' || c === "'") {
      if (i === 0 || /[\s:[{,-]/.test(text[i - 1] ?? "")) quote = c;
    } else if (c === "#" && (i === 0 || /\s/.test(text[i - 1] ?? ""))) {
      return text.slice(0, i).trimEnd();
    }
  }
  return text.trimEnd();
}

function splitLines(source: string): { lines: Line[]; raw: string[] } {
  const raw = source.replace(/\r\n?/g, "\n").split("\n");
  const lines: Line[] = [];
  raw.forEach((full, index) => {
    if (/^\t/.test(full)) throw new YamlError("tabs are not allowed for indentation", index + 1);
    const text = stripComment(full);
    if (text.trim() === "" || /^%/.test(text)) return;
    if (text === "---") {
      if (lines.length > 0) throw new YamlError("only one YAML document is supported", index + 1);
      return;
    }
    if (text === "...") return;
    const indent = text.length - text.trimStart().length;
    lines.push({ number: index + 1, indent, text: text.trimStart() });
  });
  return { lines, raw };
}

/** Index of the `:` that separates a mapping key from its value, or -1. */
function keySeparator(text: string): number {
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote !== undefined) {
      if (c === "\\" && quote === '"') i++;
      else if (c === quote) quote = undefined;
    } else if ((c === '"' || c === "'") && i === 0) {
      quote = c;
    } else if (c === ":" && (i + 1 === text.length || text[i + 1] === " ")) {
      return i;
    } else if ((c === "[" || c === "{") && i === 0) {
      return -1;
    }
  }
  return -1;
}

function isSequenceItem(text: string): boolean {
  return text === "-" || text.startsWith("- ");
}

function plainScalar(text: string, line: number): unknown {
  if (/^[&*!|>@`]/.test(text)) throw new YamlError(`unsupported YAML syntax: ${text}`, line);
  if (text === "" || text === "~" || text === "null" || text === "Null" || text === "NULL") return null;
  if (/^(true|True|TRUE)$/.test(text)) return true;
  if (/^(false|False|FALSE)$/.test(text)) return false;
  if (/^[-+]?(0|[1-9][0-9]*)$/.test(text)) return Number(text);
  if (/^[-+]?([0-9]*\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?$/.test(text)) return Number(text);
  return text;
}

function doubleQuoted(text: string, line: number): string {
  try {
    // YAML double-quoted escapes are a superset of JSON's; the ones kubeconfigs use (\", \\, \n, \t, \uXXXX) agree.
    return JSON.parse(text.replace(/\\x([0-9a-fA-F]{2})/g, "\\u00$1").replace(/\\\//g, "/")) as string;
  } catch {
    throw new YamlError(`invalid double-quoted string ${text}`, line);
  }
}

/** Parses one scalar or flow collection that fills `text` completely. */
function inlineValue(text: string, line: number): unknown {
  const parser = new FlowParser(text, line);
  const value = parser.value(true);
  parser.end();
  return value;
}

class FlowParser {
  #pos = 0;
  readonly #text: string;
  readonly #line: number;
  constructor(text: string, line: number) {
    this.#text = text;
    this.#line = line;
  }

  #skip(): void {
    while (this.#pos < this.#text.length && /\s/.test(this.#text[this.#pos] ?? "")) this.#pos++;
  }

  end(): void {
    this.#skip();
    if (this.#pos < this.#text.length) {
      throw new YamlError(`unexpected text after value: ${this.#text.slice(this.#pos)}`, this.#line);
    }
  }

  value(topLevel: boolean): unknown {
    this.#skip();
    const c = this.#text[this.#pos];
    if (c === "[") return this.#sequence();
    if (c === "{") return this.#mapping();
    if (c === '"') return doubleQuoted(this.#quotedSpan('"'), this.#line);
    if (c === "'") return this.#quotedSpan("'").slice(1, -1).replaceAll("''", "'");
    const start = this.#pos;
    if (topLevel) {
      this.#pos = this.#text.length;
    } else {
      while (this.#pos < this.#text.length && !/[,\]}]/.test(this.#text[this.#pos] ?? "")) {
        if (this.#text[this.#pos] === ":" && /[\s]/.test(this.#text[this.#pos + 1] ?? " ")) break;
        this.#pos++;
      }
    }
    return plainScalar(this.#text.slice(start, this.#pos).trim(), this.#line);
  }

  #quotedSpan(quote: string): string {
    const start = this.#pos;
    this.#pos++;
    while (this.#pos < this.#text.length) {
      const c = this.#text[this.#pos];
      if (quote === '"' && c === "\\") {
        this.#pos += 2;
        continue;
      }
      if (c === quote) {
        if (quote === "'" && this.#text[this.#pos + 1] === "'") {
          this.#pos += 2;
          continue;
        }
        this.#pos++;
        return this.#text.slice(start, this.#pos);
      }
      this.#pos++;
    }
    throw new YamlError(`unterminated ${quote === '"' ? "double" : "single"}-quoted string`, this.#line);
  }

  #expect(c: string): void {
    this.#skip();
    if (this.#text[this.#pos] !== c) throw new YamlError(`expected "${c}" in ${this.#text}`, this.#line);
    this.#pos++;
  }

  #sequence(): unknown[] {
    this.#expect("[");
    const items: unknown[] = [];
    this.#skip();
    if (this.#text[this.#pos] === "]") {
      this.#pos++;
      return items;
    }
    for (;;) {
      items.push(this.value(false));
      this.#skip();
      if (this.#text[this.#pos] === ",") {
        this.#pos++;
        this.#skip();
        if (this.#text[this.#pos] === "]") {
          this.#pos++;
          return items;
        }
        continue;
      }
      this.#expect("]");
      return items;
    }
  }

  #mapping(): Record<string, unknown> {
    this.#expect("{");
    const map: Record<string, unknown> = {};
    this.#skip();
    if (this.#text[this.#pos] === "}") {
      this.#pos++;
      return map;
    }
    for (;;) {
      const key = this.value(false);
      this.#expect(":");
      map[String(key)] = this.value(false);
      this.#skip();
      if (this.#text[this.#pos] === ",") {
        this.#pos++;
        continue;
      }
      this.#expect("}");
      return map;
    }
  }
}

class BlockParser {
  readonly #lines: Line[];
  readonly #raw: string[];
  #index = 0;
  constructor(lines: Line[], raw: string[]) {
    this.#lines = lines;
    this.#raw = raw;
  }

  #peek(): Line | undefined {
    return this.#lines[this.#index];
  }

  document(): unknown {
    const first = this.#peek();
    if (first === undefined) return null;
    const value = this.#node(first.indent);
    const rest = this.#peek();
    if (rest !== undefined) throw new YamlError(`unexpected indentation or text: ${rest.text}`, rest.number);
    return value;
  }

  /** A block node whose lines start at `indent`. */
  #node(indent: number): unknown {
    const line = this.#peek();
    if (line === undefined) return null;
    if (isSequenceItem(line.text)) return this.#sequence(indent);
    if (keySeparator(line.text) >= 0) return this.#mapping(indent);
    this.#index++;
    return inlineValue(line.text, line.number);
  }

  #sequence(indent: number): unknown[] {
    const items: unknown[] = [];
    for (let line = this.#peek(); line !== undefined; line = this.#peek()) {
      if (line.indent !== indent || !isSequenceItem(line.text)) break;
      const content = line.text.slice(1).trimStart();
      if (content === "") {
        this.#index++;
        const next = this.#peek();
        items.push(next !== undefined && next.indent > indent ? this.#node(next.indent) : null);
        continue;
      }
      // "- key: value" or "- - x": the item's content starts a nested block at its own column.
      const column = indent + (line.text.length - content.length);
      this.#lines[this.#index] = { number: line.number, indent: column, text: content };
      if (isSequenceItem(content) || keySeparator(content) >= 0) {
        items.push(this.#node(column));
      } else {
        this.#index++;
        items.push(this.#scalarOrBlock(content, line, indent));
      }
    }
    return items;
  }

  #mapping(indent: number): Record<string, unknown> {
    const map: Record<string, unknown> = {};
    for (let line = this.#peek(); line !== undefined; line = this.#peek()) {
      if (line.indent < indent) break;
      if (line.indent > indent) throw new YamlError(`unexpected indentation: ${line.text}`, line.number);
      if (isSequenceItem(line.text)) break;
      const sep = keySeparator(line.text);
      if (sep < 0) throw new YamlError(`expected "key: value", found: ${line.text}`, line.number);
      const key = String(inlineValue(line.text.slice(0, sep), line.number));
      if (Object.hasOwn(map, key)) throw new YamlError(`duplicate key "${key}"`, line.number);
      const rest = line.text.slice(sep + 1).trim();
      this.#index++;
      if (rest === "") {
        const next = this.#peek();
        if (next !== undefined && next.indent > indent) map[key] = this.#node(next.indent);
        else if (next !== undefined && next.indent === indent && isSequenceItem(next.text)) {
          map[key] = this.#sequence(indent);
        } else map[key] = null;
      } else {
        map[key] = this.#scalarOrBlock(rest, line, indent);
      }
    }
    return map;
  }

  /** A value on the key's line: a scalar, a flow collection, or the header of a `|`/`>` block scalar. */
  #scalarOrBlock(text: string, line: Line, parentIndent: number): unknown {
    const header = /^([|>])([+-]?)$/.exec(text);
    if (header === null) return inlineValue(text, line.number);
    const collected: string[] = [];
    let blockIndent: number | undefined;
    for (let next = this.#peek(); next !== undefined && next.indent > parentIndent; next = this.#peek()) {
      blockIndent ??= next.indent;
      // Block scalars keep comments and blank lines: take the raw text between the previous line and this one.
      this.#index++;
      collected.push(next.number.toString());
    }
    if (collected.length === 0 || blockIndent === undefined) return "";
    const first = Number(collected[0]);
    const last = Number(collected[collected.length - 1]);
    const body = this.#raw.slice(first - 1, last).map((l) => l.slice(blockIndent));
    const text2 = header[1] === "|" ? body.join("\n") : body.join(" ").replace(/ {2,}/g, " ");
    return header[2] === "-" ? text2 : `${text2}\n`;
  }
}

/** Parses a kubeconfig-shaped YAML (or JSON) document. */
export function parseYaml(source: string): unknown {
  const trimmed = source.trim();
  if (trimmed.startsWith("{")) {
    try {
      return JSON.parse(trimmed) as unknown;
    } catch (error) {
      throw new YamlError(`invalid JSON: ${(error as Error).message}`, 1);
    }
  }
  const { lines, raw } = splitLines(source);
  return new BlockParser(lines, raw).document();
}

function renderScalar(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  const text = typeof value === "string" ? value : JSON.stringify(value);
  const plain =
    /^[A-Za-z0-9_./][A-Za-z0-9_./:@+=-]*$/.test(text) &&
    !/^(true|false|null|yes|no|on|off|~)$/i.test(text) &&
    plainScalar(text, 0) === text;
  return plain ? text : JSON.stringify(text);
}

/** Renders plain data as block YAML that `parseYaml` and kubectl read back. */
export function renderYaml(value: unknown, indent = 0): string {
  const pad = " ".repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return `${pad}[]\n`;
    return value
      .map((item) => {
        if (item !== null && typeof item === "object" && Object.keys(item as object).length > 0) {
          const nested = renderYaml(item, indent + 2);
          return `${pad}- ${nested.slice(indent + 2)}`;
        }
        return `${pad}- ${renderInline(item)}\n`;
      })
      .join("");
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return `${pad}{}\n`;
    return entries
      .map(([k, v]) => {
        if (v !== null && typeof v === "object" && Object.keys(v).length > 0) {
          // Sequences under a key sit at the key's indentation, as kubectl writes them.
          return `${pad}${renderScalar(k)}:\n${renderYaml(v, Array.isArray(v) ? indent : indent + 2)}`;
        }
        return `${pad}${renderScalar(k)}: ${renderInline(v)}\n`;
      })
      .join("");
  }
  return `${pad}${renderScalar(value)}\n`;
}

function renderInline(value: unknown): string {
  if (Array.isArray(value)) return "[]";
  if (value !== null && typeof value === "object") return "{}";
  return renderScalar(value);
}
