import { describe, expect, it } from "vitest";
import { parseResolvConf, splitServer } from "./resolv-conf.js";

describe("parseResolvConf", () => {
  it("reads every nameserver (not only three), the last search list, and skips comments", () => {
    const conf = parseResolvConf(
      [
        "# generated",
        "nameserver 10.0.0.2",
        "nameserver 10.0.0.3 ; trailing",
        "nameserver fd00::53",
        "nameserver 10.0.0.4",
        "nameserver 10.0.0.2",
        "nameserver bogus",
        "domain first.example",
        "search bookinfo.svc.cluster.local. svc.cluster.local cluster.local",
        "options ndots:5",
      ].join("\n"),
    );
    expect(conf).toEqual({
      servers: ["10.0.0.2:53", "10.0.0.3:53", "[fd00::53]:53", "10.0.0.4:53"],
      addresses: ["10.0.0.2", "10.0.0.3", "fd00::53", "10.0.0.4"],
      search: ["bookinfo.svc.cluster.local", "svc.cluster.local", "cluster.local"],
    });
  });

  it("falls back to the local server as glibc does, and lets a later domain replace search", () => {
    expect(parseResolvConf("search a.example\ndomain b.example\n")).toEqual({
      servers: ["127.0.0.1:53"],
      addresses: [],
      search: ["b.example"],
    });
  });

  it("splits what it produced", () => {
    expect(splitServer("[fd00::53]:53")).toEqual({ host: "fd00::53", port: 53 });
    expect(splitServer("10.0.0.2:5353")).toEqual({ host: "10.0.0.2", port: 5353 });
  });
});
