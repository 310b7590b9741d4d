/**
 * fast-check generators for configuration values near the edges people and editors produce: IPv6 zone ids, empty
 * list items, leading zeros, byte-order marks, carriage returns, blanks that are not spaces, control characters and
 * huge values. Shared by the value-type, env-file and loader properties.
 */
import { fc } from "@fast-check/vitest";

export const hexGroup = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));
export const zoneId = fc.oneof(fc.constantFrom("eth0", "ens3", "25eth0", "1", ""), fc.string({ maxLength: 8 }));
export const blank = fc.constantFrom(" ", "\t", "  ", "\u00a0", "\r", "\n", "\r\n", "\ufeff", "\u200b", "\v", "\f");
export const control = fc
  .integer({ min: 0, max: 0x9f })
  .filter((c) => c < 0x20 || c >= 0x7f)
  .map((c) => String.fromCharCode(c));

/** Texts near the edge of every type: zone ids, empty items, leading zeros, BOMs, CRs, blanks, controls, huge. */
export const edgeText: fc.Arbitrary<string> = fc.oneof(
  fc
    .tuple(fc.ipV6(), zoneId, fc.option(fc.nat({ max: 130 })))
    .map(([a, z, p]) => `${a}%${z}${p === null ? "" : `/${p}`}`),
  fc.tuple(hexGroup, zoneId).map(([g, z]) => `fe80::${g}%${z}`),
  fc
    .tuple(fc.array(hexGroup, { maxLength: 3 }), zoneId, fc.option(fc.nat({ max: 128 })))
    .map(([gs, z, p]) => `${gs.join(":")}::%${z}${p === null ? "" : `/${p}`}`),
  fc.tuple(fc.ipV4(), fc.nat({ max: 40 })).map(([a, p]) => `${a}/0${p}`),
  fc.ipV4Extended(),
  fc.tuple(fc.ipV4Extended(), fc.nat({ max: 33 })).map(([a, p]) => `${a}/${p}`),
  fc
    .array(fc.oneof(fc.constant(""), fc.nat({ max: 70000 }).map(String), fc.constant("0080")), { maxLength: 6 })
    .map((a) => a.join(",")),
  fc
    .tuple(blank, fc.constantFrom("80", "10.0.0.0/8", "*", "true", "24h", "istiod:15012", "/etc/x", "fd00::1"), blank)
    .map(([a, v, b]) => `${a}${v}${b}`),
  fc.tuple(fc.constantFrom("80", "10.0.0.0/8", "istiod:15012", "/etc/x"), control).map(([v, c]) => `${v}${c}`),
  fc
    .tuple(fc.constantFrom("1", "a", ",", "0", ":", "."), fc.integer({ min: 1000, max: 100_000 }))
    .map(([c, n]) => c.repeat(n)),
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ maxLength: 40 }),
);
