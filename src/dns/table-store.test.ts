import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { decodeStoredTable, encodeStoredTable, loadStoredTable, saveStoredTable } from "./table-store.js";

const stored = {
  table: { "reviews.bookinfo.svc.cluster.local": { ips: ["10.96.0.10"], shortname: "reviews", namespace: "bookinfo" } },
  receivedAt: Date.parse("2026-12-05T12:00:00Z"),
};

describe("table store", () => {
  it("round-trips a table through an atomic 0644 write", async () => {
    const fs = new MemoryFileSystem();
    await saveStoredTable(fs, "/var/lib/istio/dns/name-table.json", stored);
    expect(fs.files.get("/var/lib/istio/dns/name-table.json")?.mode).toBe(0o644);
    expect(await loadStoredTable(fs, "/var/lib/istio/dns/name-table.json")).toEqual({ kind: "loaded", stored });
  });

  it("says absent for no file and invalid (with the reason) for a damaged one, never throws", async () => {
    const fs = new MemoryFileSystem({ "/bad": "{not json", "/half": '{"version":1,"receivedAt":"x","table":{}}' });
    expect(await loadStoredTable(fs, "/missing")).toEqual({ kind: "absent" });
    expect(await loadStoredTable(fs, "/bad")).toMatchObject({ kind: "invalid", reason: /not JSON/ });
    expect(await loadStoredTable(fs, "/half")).toMatchObject({ kind: "invalid", reason: /receivedAt/ });
    const wrongIps = encodeStoredTable(stored).replace("10.96.0.10", "ten");
    expect(decodeStoredTable(wrongIps)).toMatchObject({ kind: "invalid", reason: /ips/ });
  });
});
