/**
 * A minimal POSIX ustar writer and reader for the provisioning bundle: regular files only, flat names, explicit
 * modes, owner root. The reader refuses everything else (links, devices, directories, path traversal, duplicate
 * names, corrupt headers), so a bundle cannot make `install` write outside the files it knows. gzip on top is
 * detected by its magic number.
 *
 * A member marked `compressed` (the .deb: its data.tar is xz already) is stored, not deflated again: the gzip output
 * is a series of gzip members (RFC 1952 §2.2 allows any number; gzip, tar -z and zlib's gunzip read them as one
 * stream), deflated at level 6 around such a member's bytes and at level 0 (stored blocks, a CRC and a copy) for
 * them. Deflating a 28 MB package again costs about a second of CPU and saves nothing.
 */
import { gunzipSync, gzipSync } from "node:zlib";
import { AgentError } from "../platform/errors.js";

export interface TarMember {
  readonly name: string;
  readonly data: Uint8Array;
  /** Permission bits, e.g. 0o600. */
  readonly mode: number;
  /** Already compressed (a .deb): stored as is inside the gzip stream. */
  readonly compressed?: boolean;
}

const BLOCK = 512;
/** ustar's size field holds 11 octal digits. */
const MAX_SIZE = 0o77777777777;

function writeString(header: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length > length) throw new Error(`tar: '${value}' does not fit in ${length} bytes`);
  bytes.copy(header, offset);
}

function writeOctal(header: Buffer, offset: number, length: number, value: number): void {
  writeString(header, offset, length, `${value.toString(8).padStart(length - 1, "0")}\0`);
}

function headerFor(member: TarMember, mtimeSeconds: number): Buffer {
  const header = Buffer.alloc(BLOCK);
  if (member.data.length > MAX_SIZE) throw new Error(`tar: ${member.name} is too large for ustar`);
  writeString(header, 0, 100, member.name);
  writeOctal(header, 100, 8, member.mode & 0o7777);
  writeOctal(header, 108, 8, 0);
  writeOctal(header, 116, 8, 0);
  writeOctal(header, 124, 12, member.data.length);
  writeOctal(header, 136, 12, Math.max(0, Math.floor(mtimeSeconds)));
  header.fill(0x20, 148, 156);
  header[156] = 0x30; // '0': regular file
  writeString(header, 257, 6, "ustar\0");
  writeString(header, 263, 2, "00");
  writeString(header, 265, 32, "root");
  writeString(header, 297, 32, "root");
  let sum = 0;
  for (const byte of header) sum += byte;
  writeString(header, 148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
  return header;
}

/** A tar archive of `members` in the given order, gzip-compressed when `gzip` is true. */
export function writeTar(members: readonly TarMember[], options: { mtimeMs: number; gzip: boolean }): Buffer {
  // Runs of tar bytes, each deflated (level 6) or stored (level 0) as one gzip member.
  const runs: { stored: boolean; parts: Buffer[] }[] = [{ stored: false, parts: [] }];
  const append = (stored: boolean, part: Buffer): void => {
    let last = runs[runs.length - 1];
    if (last?.stored !== stored) {
      last = { stored, parts: [] };
      runs.push(last);
    }
    last.parts.push(part);
  };
  for (const member of members) {
    append(false, headerFor(member, options.mtimeMs / 1000));
    append(member.compressed === true, Buffer.from(member.data));
    const pad = (BLOCK - (member.data.length % BLOCK)) % BLOCK;
    if (pad > 0) append(false, Buffer.alloc(pad));
  }
  append(false, Buffer.alloc(BLOCK * 2));
  if (!options.gzip) return Buffer.concat(runs.flatMap((r) => r.parts));
  return Buffer.concat(
    runs.filter((r) => r.parts.length > 0).map((r) => gzipSync(Buffer.concat(r.parts), { level: r.stored ? 0 : 6 })),
  );
}

function invalid(subject: string, message: string): AgentError {
  return new AgentError({
    code: "BUNDLE_INVALID",
    message: `${subject}: ${message}`,
    subject,
    hint: "the file is not a bundle made by `istio-vm bundle`, or it was damaged in transfer; make and copy it again",
  });
}

function readString(block: Buffer, offset: number, length: number): string {
  const slice = block.subarray(offset, offset + length);
  const end = slice.indexOf(0);
  return slice.subarray(0, end === -1 ? length : end).toString("utf8");
}

function readOctal(block: Buffer, offset: number, length: number, subject: string, field: string): number {
  const text = readString(block, offset, length).trim();
  if (!/^[0-7]+$/.test(text)) throw invalid(subject, `bad ${field} field in a tar header`);
  return parseInt(text, 8);
}

/** A safe member name: one path component, no hidden tricks. */
export function isSafeMemberName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/.test(name) && name.length <= 100;
}

/** Reads a tar or tar.gz archive made of regular files with safe, unique names. */
export function readTar(archive: Uint8Array, subject: string): TarMember[] {
  let tar = Buffer.from(archive);
  if (tar.length >= 2 && tar[0] === 0x1f && tar[1] === 0x8b) {
    try {
      tar = gunzipSync(tar);
    } catch (error) {
      throw invalid(subject, `gzip data is corrupt (${(error as Error).message})`);
    }
  }
  const members: TarMember[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (;;) {
    if (offset + BLOCK > tar.length) throw invalid(subject, "archive ends without its end-of-archive marker");
    const header = tar.subarray(offset, offset + BLOCK);
    if (header.every((b) => b === 0)) break;
    const name = readString(header, 0, 100);
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
    if (readOctal(header, 148, 8, subject, "checksum") !== sum) {
      throw invalid(subject, `tar header checksum mismatch at member '${name}'`);
    }
    const type = String.fromCharCode(header[156] ?? 0);
    if (type !== "0" && type !== "\0") {
      throw invalid(subject, `member '${name}' is not a regular file (tar type '${type}')`);
    }
    const prefix = readString(header, 345, 155);
    if (prefix !== "" || !isSafeMemberName(name)) throw invalid(subject, `unsafe member name '${prefix}${name}'`);
    if (seen.has(name)) throw invalid(subject, `member '${name}' appears twice`);
    seen.add(name);
    const size = readOctal(header, 124, 12, subject, "size");
    const mode = readOctal(header, 100, 8, subject, "mode");
    const start = offset + BLOCK;
    if (start + size > tar.length) throw invalid(subject, `member '${name}' is truncated`);
    members.push({ name, mode: mode & 0o7777, data: tar.subarray(start, start + size) });
    offset = start + Math.ceil(size / BLOCK) * BLOCK;
  }
  return members;
}
