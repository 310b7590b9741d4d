/**
 * YAML as the programs that read and write ours understand it, through the `yaml` package (eemeli/yaml).
 *
 * Both readers implement YAML 1.1, so this module does too: kubectl decodes kubeconfigs and manifests with
 * sigs.k8s.io/yaml on top of go-yaml v2 (`yes`/`on` are booleans, `0600` is octal, `<<` merge keys work), and cloud-init
 * reads user-data with PyYAML. Rendering in 1.1 quotes every string a 1.1 reader would take for something else.
 * One document per text, duplicate keys rejected (go-yaml v2 rejects them too), aliases capped against expansion bombs.
 */
import type { Alias } from "yaml";
import { Document, LineCounter, parseDocument, visit } from "yaml";

export class YamlError extends Error {
  /** 1-based line and column of the first problem. */
  readonly line: number;
  readonly column: number;
  /** The problem without its position. */
  readonly reason: string;
  constructor(reason: string, line: number, column: number) {
    super(`line ${line}, column ${column}: ${reason}`);
    this.name = "YamlError";
    this.reason = reason;
    this.line = line;
    this.column = column;
  }
}

/** Aliases a document may expand; kubeconfigs with anchors use a handful. */
const MAX_ALIAS_COUNT = 100;

/** Parses one YAML 1.1 document (JSON included) to plain data; `null` for an empty text. */
export function parseYaml(text: string): unknown {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { version: "1.1", lineCounter, prettyErrors: false, uniqueKeys: true });
  const error = doc.errors[0];
  if (error !== undefined) {
    const { line, col } = lineCounter.linePos(error.pos[0]);
    throw new YamlError(error.message, line, col);
  }
  // An alias whose anchor is missing (or comes later) parses, and fails only when converted: find it first.
  let unresolved: Alias | undefined;
  visit(doc, {
    Alias(_key, node) {
      if (node.resolve(doc) !== undefined) return undefined;
      unresolved = node;
      return visit.BREAK;
    },
  });
  if (unresolved !== undefined) {
    const { line, col } = lineCounter.linePos(unresolved.range?.[0] ?? 0);
    throw new YamlError(`alias *${unresolved.source} refers to no anchor &${unresolved.source} above it`, line, col);
  }
  try {
    return doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as unknown;
  } catch (cause) {
    // What remains is the alias cap: the document is valid, but expanding it is an exhaustion attack.
    throw new YamlError(`${(cause as Error).message} (more than ${MAX_ALIAS_COUNT} aliases expanded)`, 1, 1);
  }
}

/**
 * Renders plain data as block YAML (sequences at their key's indentation, as kubectl writes them; no line folding).
 * `comment` lines go first, each after a `#` as given (`["cloud-config", " made by …"]`).
 */
export function renderYaml(value: unknown, comment: readonly string[] = []): string {
  const doc = new Document(value, { version: "1.1" });
  if (comment.length > 0) doc.commentBefore = comment.join("\n");
  return doc.toString({ indentSeq: false, lineWidth: 0 });
}
