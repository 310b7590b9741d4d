/**
 * Protobuf request bodies decoded to the JSON the API server works on, pinned in __golden__/kube-protobuf/.
 * test/fixtures/kube-protobuf/kubectl-*.hex are the bodies kubectl 1.33 sent to `istio-vm dev` (captured with
 * `kubectl -v=9`, which hex-dumps protobuf bodies): create secret generic, configmap (literal and --from-file), service
 * clusterip/nodeport/loadbalancer/externalname, namespace, serviceaccount and token. synthetic-*.hex carry the fields
 * kubectl's typed commands leave out (labels, timestamps, int and named target ports, Endpoints). The goldens were
 * recorded from the first, hand-written decoder.
 */
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ProtobufError, decodeKubernetesProtobuf } from "./kube-protobuf.js";

const fixtures = join(import.meta.dirname, "..", "..", "test", "fixtures", "kube-protobuf");
const bodies = readdirSync(fixtures)
  .filter((name) => name.endsWith(".hex"))
  .map((name) => [name.slice(0, -4), Buffer.from(readFileSync(join(fixtures, name), "utf8").trim(), "hex")] as const);

describe("decodeKubernetesProtobuf", () => {
  it.each(bodies)("%s decodes as pinned", async (name, body) => {
    const json = `${JSON.stringify(decodeKubernetesProtobuf(body), null, 2)}\n`;
    await expect(json).toMatchFileSnapshot(`__golden__/kube-protobuf/${name}.json.golden`);
  });

  it("rejects what it cannot decode with a ProtobufError", () => {
    const secret = bodies.find(([name]) => name === "kubectl-secret")?.[1] ?? Buffer.alloc(0);
    const reject = (body: Buffer): unknown => {
      try {
        decodeKubernetesProtobuf(body);
      } catch (error) {
        return error;
      }
      return undefined;
    };
    expect(reject(Buffer.from("{}"))).toEqual(new ProtobufError("missing the k8s protobuf magic"));
    expect(reject(secret.subarray(0, secret.length - 3))).toBeInstanceOf(ProtobufError);
    // typeMeta {apiVersion: "apps/v1", kind: "Deployment"}
    const deployment = Buffer.concat([
      Buffer.from("k8s\0"),
      Buffer.from([0x0a, 0x15, 0x0a, 0x07, ...Buffer.from("apps/v1"), 0x12, 0x0a, ...Buffer.from("Deployment")]),
    ]);
    expect(reject(deployment)).toEqual(
      new ProtobufError("protobuf for apps/v1/Deployment is not supported; send JSON"),
    );
    const gzip = Buffer.concat([secret, Buffer.from([0x1a, 0x04, ...Buffer.from("gzip")])]);
    expect(reject(gzip)).toEqual(new ProtobufError("content encoding gzip is not supported"));
  });
});
