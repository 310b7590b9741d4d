/**
 * The few protobuf messages of the Istio CA protocols, encoded by hand. `.proto` files do not travel in the esbuild
 * bundle or the single executable, and these messages have four fields each, so a small wire codec is simpler than
 * generated code. Unknown fields are skipped, as protobuf requires; a malformed message throws `WireError`.
 */
export class WireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WireError";
  }
}

const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const FIXED32 = 5;

export class WireWriter {
  readonly #chunks: Buffer[] = [];

  #varint(value: bigint): void {
    // Negative int32/int64 values are encoded as 10-byte two's complement varints.
    let v = value < 0n ? BigInt.asUintN(64, value) : value;
    const bytes: number[] = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      bytes.push(byte);
    } while (v !== 0n);
    this.#chunks.push(Buffer.from(bytes));
  }

  #tag(field: number, wireType: number): void {
    this.#varint(BigInt((field << 3) | wireType));
  }

  /** Writes an integer field (int32, int64, bool); zero is the default and is omitted, as proto3 does. */
  int(field: number, value: number | bigint | boolean): this {
    const v = typeof value === "boolean" ? (value ? 1n : 0n) : BigInt(value);
    if (v === 0n) return this;
    this.#tag(field, VARINT);
    this.#varint(v);
    return this;
  }

  /** Writes a string or bytes field; empty values are omitted. */
  bytes(field: number, value: string | Uint8Array): this {
    const data = typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value);
    if (data.length === 0) return this;
    return this.#lengthDelimited(field, data);
  }

  /** Writes a repeated string field: one element per occurrence, empty ones included. */
  repeatedString(field: number, values: readonly string[]): this {
    for (const value of values) this.#lengthDelimited(field, Buffer.from(value, "utf8"));
    return this;
  }

  /** Writes an embedded message field. */
  message(field: number, value: WireWriter): this {
    return this.#lengthDelimited(field, value.finish());
  }

  #lengthDelimited(field: number, data: Buffer): this {
    this.#tag(field, LENGTH_DELIMITED);
    this.#varint(BigInt(data.length));
    this.#chunks.push(data);
    return this;
  }

  finish(): Buffer {
    return Buffer.concat(this.#chunks);
  }
}

export type WireValue =
  { readonly kind: "varint"; readonly value: bigint } | { readonly kind: "bytes"; readonly value: Buffer };

/** Decodes one message into field number → values in wire order. Fixed-width fields are skipped. */
export function readFields(data: Uint8Array): Map<number, WireValue[]> {
  const buf = Buffer.from(data);
  const fields = new Map<number, WireValue[]>();
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new WireError("truncated varint");
      const byte = buf[pos++] ?? 0;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new WireError("varint too long");
    }
  };
  while (pos < buf.length) {
    const tag = varint();
    const field = Number(tag >> 3n);
    const wireType = Number(tag & 7n);
    if (field === 0) throw new WireError("field number 0");
    let value: WireValue | undefined;
    switch (wireType) {
      case VARINT:
        value = { kind: "varint", value: varint() };
        break;
      case LENGTH_DELIMITED: {
        const length = Number(varint());
        if (pos + length > buf.length) throw new WireError("truncated length-delimited field");
        value = { kind: "bytes", value: buf.subarray(pos, pos + length) };
        pos += length;
        break;
      }
      case FIXED64:
        pos += 8;
        break;
      case FIXED32:
        pos += 4;
        break;
      default:
        throw new WireError(`unsupported wire type ${wireType}`);
    }
    if (pos > buf.length) throw new WireError("truncated fixed-width field");
    if (value !== undefined) {
      const list = fields.get(field) ?? [];
      list.push(value);
      fields.set(field, list);
    }
  }
  return fields;
}

function last(fields: Map<number, WireValue[]>, field: number): WireValue | undefined {
  const list = fields.get(field);
  return list?.[list.length - 1];
}

function expectBytes(value: WireValue | undefined, field: number): Buffer | undefined {
  if (value === undefined) return undefined;
  if (value.kind !== "bytes") throw new WireError(`field ${field} has the wrong wire type`);
  return value.value;
}

export function getBytes(fields: Map<number, WireValue[]>, field: number): Buffer {
  return expectBytes(last(fields, field), field) ?? Buffer.alloc(0);
}

export function getString(fields: Map<number, WireValue[]>, field: number): string {
  return getBytes(fields, field).toString("utf8");
}

export function getRepeatedString(fields: Map<number, WireValue[]>, field: number): string[] {
  return (fields.get(field) ?? []).map((v) => (expectBytes(v, field) ?? Buffer.alloc(0)).toString("utf8"));
}

export function getInt(fields: Map<number, WireValue[]>, field: number): bigint {
  const value = last(fields, field);
  if (value === undefined) return 0n;
  if (value.kind !== "varint") throw new WireError(`field ${field} has the wrong wire type`);
  return value.value;
}

/** int32 fields arrive as 64-bit varints; reinterpret as signed. */
export function getInt32(fields: Map<number, WireValue[]>, field: number): number {
  return Number(BigInt.asIntN(32, getInt(fields, field)));
}
