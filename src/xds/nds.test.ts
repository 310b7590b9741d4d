import protobuf from "protobufjs";
import { describe, expect, it } from "vitest";
import { decodeNameTable, encodeNameTable } from "./nds.js";

describe("NDS NameTable", () => {
  it("round-trips a table, leaving proto3 defaults out", () => {
    const table = {
      "reviews.bookinfo.svc.cluster.local": {
        ips: ["10.96.0.10", "fd00::10"],
        registry: "Kubernetes",
        shortname: "reviews",
        namespace: "bookinfo",
      },
      "db.example.com": { ips: ["192.0.2.7"], registry: "External", altHosts: ["db"] },
    };
    expect(decodeNameTable(encodeNameTable(table))).toEqual(table);
  });

  it("reads the wire form nds.proto defines (map field 1 of NameInfo{ips=1, registry=2, shortname=3, namespace=4})", () => {
    // Written by hand with protobufjs' Writer, field by field, independent of the declared type.
    const info = protobuf.Writer.create();
    info.uint32((1 << 3) | 2).string("10.0.0.1");
    info.uint32((2 << 3) | 2).string("Kubernetes");
    info.uint32((3 << 3) | 2).string("a");
    info.uint32((4 << 3) | 2).string("ns");
    const infoBytes = info.finish();
    const entry = protobuf.Writer.create();
    entry.uint32((1 << 3) | 2).string("a.ns.svc.cluster.local");
    entry.uint32((2 << 3) | 2).bytes(infoBytes);
    const entryBytes = entry.finish();
    const table = protobuf.Writer.create();
    table.uint32((1 << 3) | 2).bytes(entryBytes);
    expect(decodeNameTable(table.finish())).toEqual({
      "a.ns.svc.cluster.local": { ips: ["10.0.0.1"], registry: "Kubernetes", shortname: "a", namespace: "ns" },
    });
  });
});
