import { describe, expect, it } from "vitest";
import { nodeProcessRunner } from "../platform/process.js";
import { decodeDiscoveryRequest, encodeDiscoveryRequest, packCluster, unpackCluster } from "./protos.js";

describe("protobuf descriptors", () => {
  it("are generated from the installed Envoy protos and proto/ (run scripts/gen-descriptors.mjs)", async () => {
    const result = await nodeProcessRunner.run(process.execPath, ["scripts/gen-descriptors.mjs", "--check"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
  });

  it("round-trips a DiscoveryRequest with Struct metadata and an error_detail", () => {
    const request = {
      version_info: "7",
      node: {
        id: "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local",
        cluster: "rawvm.default",
        metadata: { NAMESPACE: "default", LABELS: { app: "vm", n: 2, on: true, list: ["a", null] } },
      },
      resource_names: ["a", "b"],
      type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
      response_nonce: "n1",
      error_detail: { code: 3, message: "bad" },
    };
    const decoded = decodeDiscoveryRequest(encodeDiscoveryRequest(request));
    expect(decoded).toMatchObject(request);
  });

  it("packs a Cluster whose wire form real Envoy types decode (name and EDS type)", () => {
    const any = packCluster({ name: "outbound|80||a.b.svc.cluster.local", type: "EDS" });
    expect(any.type_url).toBe("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    expect(unpackCluster(any)).toMatchObject({ name: "outbound|80||a.b.svc.cluster.local", type: "EDS" });
  });
});
