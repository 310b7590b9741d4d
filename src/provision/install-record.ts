/**
 * What `istio-vm install` changed outside the package's own directories, so that removing the package can put it
 * back: for every DNS file install wrote (kubedns and the resolver wiring — the dnsmasq listen file, the
 * systemd-resolved drop-in, the dhclient enter hook, resolv.conf), the file as it was before the first install
 * (absent, or its bytes, mode and owner) and a digest of what install last wrote there.
 *
 * The record is one JSON file, root's and 0600 in a 0700 directory (root restores what it names, so no other user may
 * write it), replaced atomically together with the writes it describes. A later install keeps the original of a path
 * already recorded and only updates the digest, so the record always leads back to the state before the first install.
 */
import { createHash } from "node:crypto";
import { isAbsolute, normalize } from "node:path";
import { AgentError } from "../platform/errors.js";
import type { ExistingFile } from "./install-plan.js";

export const INSTALL_RECORD_PATH = "/var/lib/istio-vm-agent/install-record.json";
const KIND = "istio-vm-install-record";
const VERSION = 1;

export interface RecordedFile {
  readonly path: string;
  /** The file before the first install wrote it; undefined: it did not exist. */
  readonly before: ExistingFile | undefined;
  /** sha256 (hex) of the content install last wrote to the path. */
  readonly writtenSha256: string;
}

export interface InstallRecord {
  readonly files: readonly RecordedFile[];
}

export interface RecordedWrite {
  readonly path: string;
  readonly content: Buffer;
  /** The file as it is now, before this write. */
  readonly previous: ExistingFile | undefined;
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * The record after `writes`: a path seen for the first time gets its current state as the original; a path already
 * recorded keeps its original and gets the new digest. Order: first recorded first (the output is deterministic, so
 * an install that writes nothing leaves the record's bytes unchanged).
 */
export function recordWrites(record: InstallRecord | undefined, writes: readonly RecordedWrite[]): InstallRecord {
  const files = [...(record?.files ?? [])];
  for (const write of writes) {
    const at = files.findIndex((f) => f.path === write.path);
    const writtenSha256 = sha256(write.content);
    const existing = files[at];
    if (existing === undefined) files.push({ path: write.path, before: write.previous, writtenSha256 });
    else files[at] = { ...existing, writtenSha256 };
  }
  return { files };
}

export function renderInstallRecord(record: InstallRecord): string {
  const files = record.files.map((f) => ({
    path: f.path,
    before:
      f.before === undefined
        ? null
        : { mode: f.before.mode, uid: f.before.uid, gid: f.before.gid, base64: f.before.content.toString("base64") },
    written: f.writtenSha256,
  }));
  return `${JSON.stringify({ kind: KIND, version: VERSION, files }, null, 2)}\n`;
}

function invalid(path: string, why: string): AgentError {
  return new AgentError({
    code: "INSTALL_RECORD_INVALID",
    message: `${path} is not a valid install record: ${why}`,
    subject: path,
    kind: "config",
    hint: `it lists the files \`istio-vm install\` replaced and their originals; restore them by hand from it, then move it away`,
  });
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;

export function parseInstallRecord(text: string, path: string): InstallRecord {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw invalid(path, (error as Error).message);
  }
  const top = data as { kind?: unknown; version?: unknown; files?: unknown } | null;
  if (typeof top !== "object" || top === null || top.kind !== KIND) throw invalid(path, `no "kind": "${KIND}"`);
  if (top.version !== VERSION) throw invalid(path, `unknown version ${JSON.stringify(top.version)}`);
  if (!Array.isArray(top.files)) throw invalid(path, `"files" is not a list`);
  const files: RecordedFile[] = [];
  for (const [i, raw] of (top.files as unknown[]).entries()) {
    const f = raw as { path?: unknown; before?: unknown; written?: unknown } | null;
    const where = `files[${String(i)}]`;
    if (typeof f !== "object" || f === null) throw invalid(path, `${where} is not an object`);
    if (typeof f.path !== "string" || !isAbsolute(f.path) || normalize(f.path) !== f.path)
      throw invalid(path, `${where}.path is not a normalized absolute path`);
    if (typeof f.written !== "string" || !/^[0-9a-f]{64}$/.test(f.written))
      throw invalid(path, `${where}.written is not a sha256`);
    let before: ExistingFile | undefined;
    if (f.before !== null) {
      const b = f.before as { mode?: unknown; uid?: unknown; gid?: unknown; base64?: unknown } | undefined;
      if (
        typeof b !== "object" ||
        !isInt(b.mode) ||
        b.mode > 0o7777 ||
        !isInt(b.uid) ||
        !isInt(b.gid) ||
        typeof b.base64 !== "string"
      )
        throw invalid(path, `${where}.before is neither null nor {mode, uid, gid, base64}`);
      before = { content: Buffer.from(b.base64, "base64"), mode: b.mode, uid: b.uid, gid: b.gid };
    }
    if (files.some((x) => x.path === f.path)) throw invalid(path, `${f.path} is listed twice`);
    files.push({ path: f.path, before, writtenSha256: f.written });
  }
  return { files };
}
