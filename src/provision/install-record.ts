/**
 * What `istio-vm install` changed outside the package's own directories, so that removing the package can put it
 * back: for every DNS file install wrote (kubedns and the resolver wiring — the dnsmasq listen file, the
 * systemd-resolved drop-in, the dhclient enter hook, resolv.conf), the file as it was before the first install
 * (absent, or its bytes, mode and owner) and a digest of what install last wrote there.
 *
 * Besides whole files it lists the marked blocks install keeps inside a file that is not its own (the control plane's
 * names in /etc/hosts, src/provision/hosts-file.ts): for those only a digest of the block's lines is kept, since
 * uninstall removes the block and leaves every other line of the file as it is then.
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

/** A marked block install keeps in a file it does not own (e.g. /etc/hosts). */
export interface RecordedBlock {
  readonly path: string;
  /** sha256 (hex) of the block's inner lines as install last wrote them. */
  readonly writtenSha256: string;
}

export interface InstallRecord {
  readonly files: readonly RecordedFile[];
  /** Absent in records written before blocks existed: none. */
  readonly blocks?: readonly RecordedBlock[];
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
  return record?.blocks === undefined ? { files } : { files, blocks: record.blocks };
}

/** The record after install wrote the block at `path` with inner lines `body` (undefined: install removed it). */
export function recordBlock(record: InstallRecord | undefined, path: string, body: string | undefined): InstallRecord {
  const blocks = (record?.blocks ?? []).filter((b) => b.path !== path);
  if (body !== undefined) blocks.push({ path, writtenSha256: sha256(Buffer.from(body, "utf8")) });
  const files = record?.files ?? [];
  return blocks.length === 0 ? { files } : { files, blocks };
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
  const blocks = record.blocks?.map((b) => ({ path: b.path, written: b.writtenSha256 }));
  const body =
    blocks === undefined || blocks.length === 0
      ? { kind: KIND, version: VERSION, files }
      : { kind: KIND, version: VERSION, files, blocks };
  return `${JSON.stringify(body, null, 2)}\n`;
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
  const top = data as { kind?: unknown; version?: unknown; files?: unknown; blocks?: unknown } | null;
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
  if (top.blocks === undefined) return { files };
  if (!Array.isArray(top.blocks)) throw invalid(path, `"blocks" is not a list`);
  const blocks: RecordedBlock[] = [];
  for (const [i, raw] of (top.blocks as unknown[]).entries()) {
    const b = raw as { path?: unknown; written?: unknown } | null;
    const where = `blocks[${String(i)}]`;
    if (typeof b !== "object" || b === null) throw invalid(path, `${where} is not an object`);
    if (typeof b.path !== "string" || !isAbsolute(b.path) || normalize(b.path) !== b.path)
      throw invalid(path, `${where}.path is not a normalized absolute path`);
    if (typeof b.written !== "string" || !/^[0-9a-f]{64}$/.test(b.written))
      throw invalid(path, `${where}.written is not a sha256`);
    if (blocks.some((x) => x.path === b.path)) throw invalid(path, `block in ${b.path} is listed twice`);
    blocks.push({ path: b.path, writtenSha256: b.written });
  }
  return { files, blocks };
}
