import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { blank, edgeText, hexGroup, zoneId } from "../../test/support/config-arbitraries.js";
import { VARIABLES } from "./registry.js";
import type { ValueType } from "./types.js";
import {
  cidrList,
  cidrsOrAll,
  duration,
  hostPort,
  idList,
  integer,
  optionalIp,
  parseCidr,
  portList,
  portsOrAll,
  ValueError,
} from "./types.js";

/** The message of the ValueError `parse` throws, or "" when it accepts the text. */
function rejection<T>(type: ValueType<T>, raw: string): string {
  try {
    type.parse(raw);
    return "";
  } catch (error) {
    if (error instanceof ValueError) return error.message;
    throw error;
  }
}

describe("value types", () => {
  it("ports: lists, *, and every bad item named", () => {
    expect(portsOrAll.parse("3306, 8080,3306")).toEqual([3306, 8080]);
    expect(portsOrAll.parse("*")).toBe("*");
    expect(portsOrAll.parse("")).toEqual([]);
    expect(() => portsOrAll.parse("0,65536,http,-1")).toThrow(
      "port 0 is out of range (1–65535); port 65536 is out of range (1–65535); 'http' is not a port number; '-1' is not a port number",
    );
  });

  it("lists: spaces and tabs around items are ignored, an empty item is an error", () => {
    expect(portList.parse("80 ")).toEqual([80]);
    expect(portList.parse("\t80 ,  443\t")).toEqual([80, 443]);
    expect(portList.parse("   ")).toEqual([]);
    expect(rejection(portList, "3306,,80")).toBe(
      "'3306,,80' has an empty item (two commas in a row, or a comma at the start or end); remove the extra comma",
    );
    expect(rejection(portList, ",80")).toContain("has an empty item");
    expect(rejection(portList, "80,")).toContain("has an empty item");
    expect(rejection(portList, "80, ,443,")).toContain("has 2 empty items");
    expect(rejection(cidrList, "10.0.0.0/8,,fd00::/8")).toContain("has an empty item");
    expect(rejection(idList, "1337,")).toContain("has an empty item");
    // Only spaces and tabs: other white space is a mistake and is named, escaped.
    expect(rejection(portList, "80\u00a0")).toBe("'80\\xa0' is not a port number");
    expect(rejection(portList, "80\r")).toBe("'80\\r' is not a port number");
    expect(rejection(portList, "\ufeff80")).toBe("'\\u{feff}80' is not a port number");
  });

  it("numbers: a leading zero is an error, not octal or decimal by guess", () => {
    expect(rejection(portList, "080")).toBe("port '080' has a leading zero; write 80");
    expect(rejection(integer(0, 100), "007")).toBe("'007' has a leading zero; write 7");
    expect(rejection(idList, "01337")).toBe("id '01337' has a leading zero; write 1337");
    expect(rejection(idList, "4294967295")).toContain("out of range");
    expect(integer(0, 100).parse("0")).toBe(0);
  });

  it("CIDRs: IPv4 and IPv6, bare addresses, host bits rejected", () => {
    expect(parseCidr("10.96.0.0/12")).toEqual({ family: 4, address: "10.96.0.0", prefix: 12 });
    expect(parseCidr("fd00:10:96::/112")).toEqual({ family: 6, address: "fd00:10:96::", prefix: 112 });
    expect(parseCidr("169.254.169.254")).toEqual({ family: 4, address: "169.254.169.254", prefix: 32 });
    expect(parseCidr("0.0.0.0/0")).toEqual({ family: 4, address: "0.0.0.0", prefix: 0 });
    expect(parseCidr("::ffff:10.0.0.0/104")).toEqual({ family: 6, address: "::ffff:10.0.0.0", prefix: 104 });
    expect(() => parseCidr("10.96.0.1/12")).toThrow(ValueError);
    expect(() => parseCidr("fd00::1/64")).toThrow("host bits set");
    expect(() => parseCidr("10.0.0.0/33")).toThrow("invalid prefix length");
    expect(() => parseCidr("10.0.0.0/")).toThrow("invalid prefix length");
    expect(() => parseCidr("10.0.0.0/8/8")).toThrow("invalid prefix length");
    expect(() => parseCidr("10.0.0/8")).toThrow("is not a CIDR");
    expect(cidrsOrAll.render(cidrsOrAll.parse("10.0.0.0/8,fd00::/8"))).toBe("10.0.0.0/8,fd00::/8");
  });

  it("CIDRs: an IPv6 zone id is a configuration error, with or without a prefix (it used to throw RangeError)", () => {
    const zone = "it has an IPv6 zone id (%eth0): a zone id names an interface of this host, not part of an address";
    expect(rejection(cidrList, "fe80::%eth0/64")).toBe(`'fe80::%eth0/64' is not a CIDR: ${zone}; remove it`);
    expect(rejection(cidrList, "fe80::1%eth0")).toBe(`'fe80::1%eth0' is not a CIDR: ${zone}; remove it`);
    expect(rejection(cidrsOrAll, "10.0.0.0/8,fe80::%25eth0/64")).toContain("zone id (%25eth0)");
    expect(rejection(cidrList, "fe80::%/64")).toContain("is not a CIDR");
    expect(rejection(optionalIp, "fe80::1%eth0")).toContain("is not an IP address: it has an IPv6 zone id (%eth0)");
    expect(rejection(hostPort, "[fe80::1%eth0]:15012")).toContain("host 'fe80::1%eth0': it has an IPv6 zone id");
  });

  it("CIDRs: leading zeros in the prefix length or an octet are errors", () => {
    expect(rejection(cidrList, "10.0.0.0/08")).toBe(
      "'10.0.0.0/08': the prefix length '08' has a leading zero; write /8",
    );
    expect(rejection(cidrList, "fd00::/064")).toContain("the prefix length '064' has a leading zero");
    expect(rejection(cidrList, "010.0.0.0/8")).toBe(
      "'010.0.0.0/8' is not a CIDR: octet '010' has a leading zero (inet_aton would read it as octal); write 10",
    );
    expect(rejection(cidrList, "10.0.0.256")).toContain("octet 256 is out of range (0–255)");
    expect(rejection(optionalIp, "10.0.0.05")).toContain("octet '05' has a leading zero");
    expect(rejection(hostPort, "10.0.0.010:15012")).toContain("octet '010' has a leading zero");
  });

  it("durations in Go syntax", () => {
    expect(duration.parse("24h")).toBe(86_400_000);
    expect(duration.parse("1m30s")).toBe(90_000);
    expect(duration.parse("500ms")).toBe(500);
    expect(duration.render(90_500)).toBe("1m30s500ms");
    expect(() => duration.parse("10")).toThrow("is not a duration");
  });

  it("host:port, with bracketed IPv6", () => {
    expect(hostPort.parse("istiod.istio-system.svc:15012")).toEqual({ host: "istiod.istio-system.svc", port: 15012 });
    expect(hostPort.parse("istiod.istio-system.svc.cluster.local.:15012").host).toBe(
      "istiod.istio-system.svc.cluster.local.",
    );
    expect(hostPort.parse("[fd00::1]:8060")).toEqual({ host: "fd00::1", port: 8060 });
    expect(hostPort.render({ host: "fd00::1", port: 8060 })).toBe("[fd00::1]:8060");
    expect(() => hostPort.parse("istiod")).toThrow("is not host:port");
    expect(() => hostPort.parse("fd00::1:8060")).toThrow("is not host:port");
    expect(rejection(hostPort, "[10.0.0.1]:80")).toContain("only an IPv6 address goes in brackets");
    expect(rejection(hostPort, "ist iod:80")).toContain("host 'ist iod': not a host name or IP address");
    expect(rejection(hostPort, "istiod:080")).toContain("leading zero");
  });

  it("error messages escape what a terminal would act on and cut huge values", () => {
    expect(rejection(portList, "\x1b[2J80")).toBe("'\\x1b[2J80' is not a port number");
    const huge = rejection(hostPort, "x".repeat(1_000_000));
    expect(huge.length).toBeLessThan(200);
    expect(huge).toContain("… (1000000 characters in all)");
  });
});

// ── properties ─────────────────────────────────────────────────────────────────────────────

/** Every value type the registry uses (each once), so a new variable's type is covered without listing it here. */
const REGISTRY_TYPES = [...new Set(Object.values(VARIABLES).map((v) => v.type as ValueType<unknown>))];

describe("properties", () => {
  fcTest.prop([edgeText], { numRuns: 300 })(
    "every registry type either parses a text or throws ValueError, never a RangeError or TypeError",
    (raw) => {
      for (const type of REGISTRY_TYPES) {
        try {
          type.parse(raw);
        } catch (error) {
          expect(error).toBeInstanceOf(ValueError);
        }
      }
    },
  );

  fcTest.prop([edgeText], { numRuns: 300 })(
    "a value that parses renders to text that parses to the same value",
    (raw) => {
      for (const type of REGISTRY_TYPES) {
        let value: unknown;
        try {
          value = type.parse(raw);
        } catch {
          continue;
        }
        expect(type.parse(type.render(value))).toEqual(value);
      }
    },
  );

  fcTest.prop([fc.ipV6(), zoneId, fc.option(fc.nat({ max: 128 }))])(
    "a zone id is always refused, naming the zone id",
    (address, zone, prefix) => {
      const raw = `${address}%${zone}${prefix === null ? "" : `/${prefix}`}`;
      expect(rejection(cidrList, raw)).toContain("is not a CIDR");
      expect(rejection(optionalIp, `${address}%${zone}`)).toContain("is not an IP address");
    },
  );

  /** A valid CIDR: a random address with its host bits cleared. */
  const ipv4Cidr = fc.tuple(fc.ipV4(), fc.nat({ max: 32 })).map(([a, prefix]) => {
    const n = a.split(".").reduce((acc, o) => (acc << 8n) | BigInt(o), 0n);
    const net = (n >> BigInt(32 - prefix)) << BigInt(32 - prefix);
    return `${[24n, 16n, 8n, 0n].map((s) => String((net >> s) & 0xffn)).join(".")}/${prefix}`;
  });
  const ipv6Cidr = fc
    .tuple(fc.array(hexGroup, { minLength: 8, maxLength: 8 }), fc.nat({ max: 128 }))
    .map(([groups, prefix]) => {
      const n = groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
      const net = (n >> BigInt(128 - prefix)) << BigInt(128 - prefix);
      const out = [];
      for (let i = 7n; i >= 0n; i--) out.push(((net >> (i * 16n)) & 0xffffn).toString(16));
      return `${out.join(":")}/${prefix}`;
    });
  const validCidr = fc.oneof(ipv4Cidr, ipv6Cidr, fc.ipV4(), fc.ipV6());

  fcTest.prop([fc.array(validCidr, { minLength: 1, maxLength: 5 }), fc.array(fc.constantFrom("", " ", "\t", " \t"))])(
    "valid CIDR lists round-trip, whatever spaces and tabs surround the items",
    (cidrs, pads) => {
      const padded = cidrs.map((c, i) => `${pads[i] ?? ""}${c}${pads[i + 1] ?? ""}`).join(",");
      const parsed = cidrList.parse(padded);
      expect(parsed).toEqual(cidrList.parse(cidrs.join(",")));
      expect(cidrList.parse(cidrList.render(parsed))).toEqual(parsed);
    },
  );

  fcTest.prop([fc.array(validCidr, { minLength: 1, maxLength: 4 }), fc.nat()])(
    "an empty item anywhere in a list is refused",
    (cidrs, at) => {
      const items = [...cidrs];
      items.splice(at % (items.length + 1), 0, "");
      expect(rejection(cidrList, items.join(","))).toContain("empty item");
    },
  );

  fcTest.prop([ipv4Cidr, fc.nat({ max: 3 })])("a leading zero in any octet or the prefix is refused", (cidr, at) => {
    const [address = "", prefix = ""] = cidr.split("/");
    const parts = [...address.split("."), prefix];
    parts[at === 3 ? 4 : at] = `0${parts[at === 3 ? 4 : at] ?? ""}`;
    const raw = `${parts.slice(0, 4).join(".")}/${parts[4] ?? ""}`;
    expect(rejection(cidrList, raw)).toContain("leading zero");
  });

  fcTest.prop([fc.ipV4Extended()])("IPv4 only in dotted decimal without leading zeros", (text) => {
    const strict =
      /^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/.test(text) && text.split(".").every((o) => Number(o) <= 255);
    expect(rejection(optionalIp, text) === "").toBe(strict);
  });

  fcTest.prop([fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 8 }), blank])(
    "valid port lists round-trip; a stray CR, BOM, no-break space or control character is refused",
    (ports, junk) => {
      expect(portList.parse(portList.render(ports))).toEqual(ports);
      const accepted = junk === " " || junk === "\t" || junk === "  ";
      expect(rejection(portList, `${ports.join(",")}${junk}`) === "").toBe(accepted);
      expect(rejection(portList, `${junk}${ports.join(",")}`) === "").toBe(accepted);
    },
  );

  fcTest.prop([fc.oneof(fc.domain(), fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65535 })])(
    "host:port round-trips for names, IPv4 and IPv6",
    (host, port) => {
      const value = { host, port };
      expect(hostPort.parse(hostPort.render(value))).toEqual(value);
    },
  );
});
