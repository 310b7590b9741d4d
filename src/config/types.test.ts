import { describe, expect, it } from "vitest";
import { cidrsOrAll, duration, hostPort, parseCidr, portsOrAll, ValueError } from "./types.js";

describe("value types", () => {
  it("ports: lists, *, and every bad item named", () => {
    expect(portsOrAll.parse("3306, 8080,3306")).toEqual([3306, 8080]);
    expect(portsOrAll.parse("*")).toBe("*");
    expect(portsOrAll.parse("")).toEqual([]);
    expect(() => portsOrAll.parse("0,65536,http,-1")).toThrow(
      "port 0 is out of range (1–65535); port 65536 is out of range (1–65535); 'http' is not a port number; '-1' is not a port number",
    );
  });

  it("CIDRs: IPv4 and IPv6, bare addresses, host bits rejected", () => {
    expect(parseCidr("10.96.0.0/12")).toEqual({ family: 4, address: "10.96.0.0", prefix: 12 });
    expect(parseCidr("fd00:10:96::/112")).toEqual({ family: 6, address: "fd00:10:96::", prefix: 112 });
    expect(parseCidr("169.254.169.254")).toEqual({ family: 4, address: "169.254.169.254", prefix: 32 });
    expect(() => parseCidr("10.96.0.1/12")).toThrow(ValueError);
    expect(() => parseCidr("fd00::1/64")).toThrow("host bits set");
    expect(() => parseCidr("10.0.0.0/33")).toThrow("invalid prefix length");
    expect(() => parseCidr("10.0.0/8")).toThrow("is not a CIDR");
    expect(cidrsOrAll.render(cidrsOrAll.parse("10.0.0.0/8,fd00::/8"))).toBe("10.0.0.0/8,fd00::/8");
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
    expect(hostPort.parse("[fd00::1]:8060")).toEqual({ host: "fd00::1", port: 8060 });
    expect(hostPort.render({ host: "fd00::1", port: 8060 })).toBe("[fd00::1]:8060");
    expect(() => hostPort.parse("istiod")).toThrow("is not host:port");
  });
});
