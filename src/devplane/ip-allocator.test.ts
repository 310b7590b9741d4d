import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { ClusterIpAllocator, bigIntToIp, cidrContains, ipToBigInt, parseCidr } from "./ip-allocator.js";

describe("CIDRs", () => {
  it("normalises the network address and rejects what is not a CIDR", () => {
    expect(parseCidr("10.100.3.4/16").text).toBe("10.100.0.0/16");
    expect(parseCidr("fd00:10:96::1/112").text).toBe("fd00:10:96::/112");
    expect(() => parseCidr("10.96.0.0")).toThrow(/not a CIDR/);
    expect(() => parseCidr("10.96.0.0/33")).toThrow(/not a CIDR/);
    expect(() => parseCidr("nonsense/8")).toThrow(/not a CIDR/);
    // Node's isIP accepts zone ids; these reached BigInt(NaN) (a RangeError) before.
    expect(() => parseCidr("fe80::%eth0/64")).toThrow(/not a CIDR/);
    expect(() => ipToBigInt("fe80::1%eth0")).toThrow(/not an IP address/);
    expect(new ClusterIpAllocator([parseCidr("fd00::/108")]).reserve("fd00::10%eth0")).toBe("family-not-configured");
  });

  it("knows which addresses lie inside", () => {
    const cidr = parseCidr("10.96.0.0/12");
    expect(cidrContains(cidr, "10.111.255.254")).toBe(true);
    expect(cidrContains(cidr, "10.112.0.1")).toBe(false);
    expect(cidrContains(cidr, "fd00::1")).toBe(false);
  });

  test.prop([fc.ipV4()])("IPv4 text survives the round trip", (ip) => {
    expect(bigIntToIp(ipToBigInt(ip), 4)).toBe(ip.replace(/\b0+(\d)/g, "$1"));
  });

  test.prop([fc.ipV6()])("IPv6 addresses keep their value", (ip) => {
    expect(ipToBigInt(bigIntToIp(ipToBigInt(ip), 6))).toBe(ipToBigInt(ip));
  });
});

describe("ClusterIpAllocator", () => {
  it("reserves explicit addresses once, inside the range only, never the network or broadcast address", () => {
    const allocator = new ClusterIpAllocator([parseCidr("10.96.0.0/24")]);
    expect(allocator.reserve("10.96.0.10")).toBe("ok");
    expect(allocator.reserve("10.96.0.10")).toBe("allocated");
    expect(allocator.reserve("10.0.0.1")).toBe("out-of-range");
    expect(allocator.reserve("10.96.0.0")).toBe("out-of-range");
    expect(allocator.reserve("10.96.0.255")).toBe("out-of-range");
    expect(allocator.reserve("fd00::1")).toBe("family-not-configured");
    expect(allocator.rangeText).toBe("10.96.0.0/24");
  });

  it("hands out each free address once until the range is full, and reuses released ones", () => {
    const allocator = new ClusterIpAllocator([parseCidr("192.168.0.0/29")]);
    const ips = new Set<string>();
    for (let ip = allocator.allocate(); ip !== undefined; ip = allocator.allocate()) ips.add(ip);
    expect([...ips].sort()).toEqual([
      "192.168.0.1",
      "192.168.0.2",
      "192.168.0.3",
      "192.168.0.4",
      "192.168.0.5",
      "192.168.0.6",
    ]);
    allocator.release("192.168.0.3");
    expect(allocator.allocate()).toBe("192.168.0.3");
    expect(allocator.allocate()).toBeUndefined();
  });

  it("allocates from the IPv6 range when asked", () => {
    const allocator = new ClusterIpAllocator([parseCidr("10.96.0.0/12"), parseCidr("fd00:10:96::/112")]);
    expect(allocator.allocate(6)).toBe("fd00:10:96::10");
    expect(allocator.rangeText).toBe("10.96.0.0/12,fd00:10:96::/112");
  });
});
