// Generates the protobuf descriptors (protobufjs JSON) the code loads instead of .proto files, which do not travel in
// the esbuild bundle or the single executable; these JSON files do.
// - src/xds/xds-descriptor.json: the Envoy v3 xDS messages the discovery check and the dev Pilot use (ADS,
//   DiscoveryRequest/Response, Cluster, ClusterLoadAssignment, SDS and Secret, and what they reference), from Envoy's own .proto files
//   shipped in @grpc/grpc-js-xds. Run after upgrading @grpc/grpc-js-xds.
// - src/certs/ca-descriptor.json: the Istio CA messages (proto/istio-ca.proto) and the dev CA's admin message
//   (proto/dev-ca-admin.proto).
// - src/devplane/kube-descriptor.json: the Kubernetes objects the dev API decodes from protobuf (proto/kubernetes.proto).
// - src/xds/xds-v2-descriptor.json: the subset of Envoy's xDS v2 API (Istio 0.8's Pilot) the dev Pilot, the v2
//   discovery check and their tests use (proto/envoy-v2/, restated from Envoy's v2 .proto files: no installed package
//   carries them).
// Run after editing a file in proto/. `--check` exits 1 when a committed file is stale (a unit test runs it).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as prettier from "prettier";

const require = createRequire(import.meta.url);
const protoUtil = require("@grpc/proto-loader/build/src/util.js");

const repo = new URL("..", import.meta.url);
const path = (relative) => fileURLToPath(new URL(relative, repo));
const deps = new URL("node_modules/@grpc/grpc-js-xds/deps/", repo);
const xdsPackage = JSON.parse(readFileSync(new URL("node_modules/@grpc/grpc-js-xds/package.json", repo), "utf8"));
const XDS_FILES = [
  "envoy/service/discovery/v3/ads.proto",
  "envoy/config/cluster/v3/cluster.proto",
  "envoy/config/endpoint/v3/endpoint.proto",
  // SDS: the agent serves the workload certificate to Envoy (src/sds/).
  "envoy/service/secret/v3/sds.proto",
  "envoy/extensions/transport_sockets/tls/v3/secret.proto",
];

const TARGETS = [
  {
    out: path("src/xds/xds-descriptor.json"),
    files: XDS_FILES,
    includeDirs: [
      ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => fileURLToPath(new URL(d, deps))),
      // google/protobuf/descriptor.proto and friends, which Envoy's annotations import.
      path("node_modules/protobufjs"),
    ],
    source: `@grpc/grpc-js-xds@${xdsPackage.version} deps/envoy-api: ${XDS_FILES.join(", ")}`,
  },
  {
    out: path("src/certs/ca-descriptor.json"),
    files: ["istio-ca.proto", "dev-ca-admin.proto"],
    includeDirs: [path("proto")],
    source: "proto/istio-ca.proto, proto/dev-ca-admin.proto",
  },
  {
    out: path("src/xds/xds-v2-descriptor.json"),
    files: ["envoy-v2/api.proto"],
    includeDirs: [path("proto")],
    source: "proto/envoy-v2/*.proto (a subset of envoyproxy/envoy api/envoy/api/v2, the frozen v2 API)",
  },
  {
    out: path("src/devplane/kube-descriptor.json"),
    files: ["kubernetes.proto"],
    includeDirs: [path("proto")],
    source: "proto/kubernetes.proto",
  },
];

const check = process.argv.includes("--check");
let stale = false;
for (const target of TARGETS) {
  const root = protoUtil.loadProtosWithOptionsSync(target.files, { keepCase: true, includeDirs: target.includeDirs });
  root.resolveAll();
  const descriptor = { source: target.source, root: root.toJSON() };
  const options = (await prettier.resolveConfig(target.out)) ?? {};
  const text = await prettier.format(JSON.stringify(descriptor), { ...options, parser: "json", filepath: target.out });
  if (check) {
    let current = "";
    try {
      current = readFileSync(target.out, "utf8");
    } catch {
      // missing: stale
    }
    if (current !== text) {
      process.stderr.write(`${target.out} is out of date: run node scripts/gen-descriptors.mjs\n`);
      stale = true;
    }
  } else {
    writeFileSync(target.out, text);
    process.stdout.write(`wrote ${target.out} (${text.length} bytes)\n`);
  }
}
if (stale) process.exit(1);
