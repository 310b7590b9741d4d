import { describe, expect, it } from "vitest";
import { buildLookupTable, lookupHost, nameTableProblem } from "./name-table.js";
import type { NameTable } from "./name-table.js";

const TABLE: NameTable = {
  "reviews.bookinfo.svc.cluster.local": {
    ips: ["10.96.0.10", "fd00::10"],
    registry: "Kubernetes",
    shortname: "reviews",
    namespace: "bookinfo",
  },
  "ratings.other.svc.cluster.local": {
    ips: ["10.96.0.11"],
    registry: "Kubernetes",
    shortname: "ratings",
    namespace: "other",
  },
  "db.example.com": { ips: ["192.0.2.7"], registry: "External" },
  "*.wild.example.com": { ips: ["192.0.2.8"], registry: "External" },
  "v6only.bookinfo.svc.cluster.local": { ips: ["fd00::12"], shortname: "v6only", namespace: "bookinfo" },
  "legacy.bookinfo.svc.cluster.local": {
    ips: ["10.96.0.13"],
    shortname: "legacy",
    namespace: "bookinfo",
    altHosts: ["legacy.bookinfo.svc.cluster"],
  },
};

const context = {
  namespace: "bookinfo",
  clusterDomain: "cluster.local",
  searchDomains: ["bookinfo.svc.cluster.local"],
};
const table = buildLookupTable(TABLE, context);

describe("lookupHost", () => {
  it.each([
    "reviews.bookinfo.svc.cluster.local",
    "reviews.bookinfo.svc.cluster.local.",
    "REVIEWS.Bookinfo.svc.cluster.local.",
    "reviews",
    "reviews.bookinfo",
    "reviews.bookinfo.svc",
  ])("answers %s with the service's IPv4 address", (name) => {
    const answer = lookupHost(table, "A", name);
    expect(answer).toMatchObject({ found: true, addresses: ["10.96.0.10"] });
  });

  it("answers AAAA with the IPv6 addresses only", () => {
    expect(lookupHost(table, "AAAA", "reviews")).toMatchObject({ found: true, addresses: ["fd00::10"] });
  });

  it("gives another namespace's service no bare short name, but name.ns and name.ns.svc", () => {
    expect(lookupHost(table, "A", "ratings")).toEqual({ found: false });
    expect(lookupHost(table, "A", "ratings.other")).toMatchObject({ found: true, addresses: ["10.96.0.11"] });
    expect(lookupHost(table, "A", "ratings.other.svc")).toMatchObject({ found: true });
  });

  it("answers a known name with no address of the family as found and empty (NODATA, not forwarded)", () => {
    expect(lookupHost(table, "A", "v6only")).toEqual({ found: true, owner: "v6only.", addresses: [] });
  });

  it("answers a search-expanded name with a CNAME to the name, then its addresses", () => {
    const answer = lookupHost(table, "A", "db.example.com.bookinfo.svc.cluster.local.");
    expect(answer).toEqual({
      found: true,
      cname: { name: "db.example.com.bookinfo.svc.cluster.local.", target: "db.example.com." },
      owner: "db.example.com.",
      addresses: ["192.0.2.7"],
    });
  });

  it("keeps a short form that is itself a real name out of the CNAME table", () => {
    // reviews + first search domain = the service's own FQDN: a plain answer, not a CNAME to itself.
    const answer = lookupHost(table, "A", "reviews.bookinfo.svc.cluster.local.");
    expect(answer).toMatchObject({ found: true, owner: "reviews.bookinfo.svc.cluster.local." });
    expect(answer).not.toHaveProperty("cname");
  });

  it("answers names below a wildcard host with the question as owner", () => {
    expect(lookupHost(table, "A", "a.b.wild.example.com")).toEqual({
      found: true,
      owner: "a.b.wild.example.com.",
      addresses: ["192.0.2.8"],
    });
    expect(lookupHost(table, "A", "wild.example.com")).toEqual({ found: false });
  });

  it("adds alt_hosts as they are", () => {
    expect(lookupHost(table, "A", "legacy.bookinfo.svc.cluster")).toMatchObject({ found: true });
  });

  it("forwards names it does not hold", () => {
    expect(lookupHost(table, "A", "www.example.org")).toEqual({ found: false });
    expect(lookupHost(table, "A", "reviews.bookinfo.svc.cluster.local.evil.com")).toEqual({ found: false });
  });

  it("builds no short forms for hosts outside the cluster domain", () => {
    const other = buildLookupTable(
      { "x.ns.svc.other.local": { ips: ["10.0.0.1"], shortname: "x", namespace: "bookinfo" } },
      context,
    );
    expect(lookupHost(other, "A", "x")).toEqual({ found: false });
    expect(lookupHost(other, "A", "x.ns.svc.other.local")).toMatchObject({ found: true });
  });
});

describe("nameTableProblem", () => {
  it("accepts a NameTable and rejects what is not one", () => {
    expect(nameTableProblem(TABLE)).toBeUndefined();
    expect(nameTableProblem([])).toBe("not an object");
    expect(nameTableProblem({ a: { ips: ["not-an-ip"] } })).toMatch(/ips/);
    expect(nameTableProblem({ a: { ips: [], namespace: 3 } })).toMatch(/namespace/);
  });
});
