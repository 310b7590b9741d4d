import { fstatSync } from "node:fs";

export type LogLevel = "error" | "warn" | "info" | "debug";
export const LOG_LEVELS: readonly LogLevel[] = ["error", "warn", "info", "debug"];

/** sd-daemon(3) priorities, so journald keeps the level of each line. */
const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export type LogFields = Readonly<Record<string, string | number | boolean | undefined>>;

export interface Logger {
  error(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
  /** A logger whose lines carry `component=<name>`. */
  child(component: string): Logger;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?(-----END \1-----|$)/g;
const JWT = /\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g;
const BEARER = /\b(Bearer)\s+[A-Za-z0-9._~+/=-]+/gi;

/**
 * Removes secrets from text: PEM blocks (keys, certificates, CSRs: none belong in a log line), JWTs and bearer
 * tokens. The logger applies it to every message and field, so no caller can forget.
 */
export function redact(text: string): string {
  return text
    .replace(PEM_BLOCK, (_m, label: string) => `[redacted ${label.toLowerCase()}]`)
    .replace(JWT, "[redacted token]")
    .replace(BEARER, "$1 [redacted]");
}

function renderValue(value: string | number | boolean): string {
  const text = String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export function formatLine(
  level: LogLevel,
  component: string | undefined,
  message: string,
  fields?: LogFields,
): string {
  const parts = [message];
  if (component !== undefined) parts.push(`component=${component}`);
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value !== undefined) parts.push(`${key}=${renderValue(value)}`);
  }
  // One record per line: a multi-line message must not turn into several journal entries of unknown priority.
  return redact(parts.join(" ")).replaceAll("\n", "\\n");
}

export interface LoggerOptions {
  readonly level: LogLevel;
  /** `journal`: `<N>` prefixes for journald; `plain`: timestamp and level words, for terminals and files. */
  readonly format: "journal" | "plain";
  readonly write: (line: string) => void;
  readonly now?: () => Date;
}

export function createLogger(options: LoggerOptions, component?: string): Logger {
  const emit = (level: LogLevel, message: string, fields?: LogFields): void => {
    if (RANK[level] > RANK[options.level]) return;
    const body = formatLine(level, component, message, fields);
    if (options.format === "journal") {
      options.write(`<${PRIORITY[level]}>${body}\n`);
    } else {
      const time = (options.now ?? (() => new Date()))().toISOString();
      options.write(`${time} ${level.toUpperCase().padEnd(5)} ${body}\n`);
    }
  };
  return {
    error: (m, f) => {
      emit("error", m, f);
    },
    warn: (m, f) => {
      emit("warn", m, f);
    },
    info: (m, f) => {
      emit("info", m, f);
    },
    debug: (m, f) => {
      emit("debug", m, f);
    },
    child: (name) => createLogger(options, component === undefined ? name : `${component}.${name}`),
  };
}

/**
 * True when stderr is connected to the journal: systemd sets JOURNAL_STREAM to the `dev:inode` of the stream it
 * passed, and it matches only while stderr has not been redirected elsewhere.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env["JOURNAL_STREAM"];
  if (stream === undefined || stream === "") return false;
  try {
    const stat = fstatSync(2);
    return stream === `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
}

export const silentLogger: Logger = createLogger({ level: "error", format: "plain", write: () => undefined });
