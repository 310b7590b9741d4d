// Generates src/xds/xds-descriptor.json: the protobuf descriptor (protobufjs JSON) of the Envoy v3 xDS messages the
// discovery check, the dev Pilot and the agent's SDS server use (ADS, SDS, DiscoveryRequest/Response, Cluster,
// ClusterLoadAssignment, Secret and what they reference), from Envoy's own .proto files shipped in
// @grpc/grpc-js-xds. The .proto files do not travel in the
// esbuild bundle or the single executable; this JSON does. Run after upgrading @grpc/grpc-js-xds; `--check` exits 1
// when the committed file is stale (a unit test runs it).
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as prettier from "prettier";

const require = createRequire(import.meta.url);
const protoUtil = require("@grpc/proto-loader/build/src/util.js");

const repo = new URL("..", import.meta.url);
const deps = new URL("node_modules/@grpc/grpc-js-xds/deps/", repo);
const includeDirs = [
  ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => fileURLToPath(new URL(d, deps))),
  // google/protobuf/descriptor.proto and friends, which Envoy's annotations import.
  fileURLToPath(new URL("node_modules/protobufjs", repo)),
];
const FILES = [
  "envoy/service/discovery/v3/ads.proto",
  "envoy/config/cluster/v3/cluster.proto",
  "envoy/config/endpoint/v3/endpoint.proto",
  // SDS: the agent serves the workload certificate to Envoy (src/sds/).
  "envoy/service/secret/v3/sds.proto",
  "envoy/extensions/transport_sockets/tls/v3/secret.proto",
];
const OUT = fileURLToPath(new URL("src/xds/xds-descriptor.json", repo));

const root = protoUtil.loadProtosWithOptionsSync(FILES, { keepCase: true, includeDirs });
root.resolveAll();
const pkg = JSON.parse(readFileSync(new URL("node_modules/@grpc/grpc-js-xds/package.json", repo), "utf8"));
const descriptor = {
  source: `@grpc/grpc-js-xds@${pkg.version} deps/envoy-api: ${FILES.join(", ")}`,
  root: root.toJSON(),
};
const options = (await prettier.resolveConfig(OUT)) ?? {};
const text = await prettier.format(JSON.stringify(descriptor), { ...options, parser: "json", filepath: OUT });

if (process.argv.includes("--check")) {
  let current = "";
  try {
    current = readFileSync(OUT, "utf8");
  } catch {
    // missing: stale
  }
  if (current !== text) {
    process.stderr.write(`${OUT} is out of date: run node scripts/gen-xds-descriptor.mjs\n`);
    process.exit(1);
  }
} else {
  writeFileSync(OUT, text);
  process.stdout.write(`wrote ${OUT} (${text.length} bytes)\n`);
}
