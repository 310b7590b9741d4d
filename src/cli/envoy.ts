/**
 * `istio-vm envoy bootstrap`: the Envoy bootstrap and command line the agent would use for an epoch, computed from
 * this VM's configuration exactly as the agent computes them (src/envoy/bootstrap.ts, command-line.ts). For operators
 * debugging a VM: nothing is written and nothing is started.
 */
import type { Argv, CommandModule } from "yargs";
import { loadConfig, requireValid } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { BootstrapJson } from "../envoy/bootstrap.js";
import {
  bootstrapPath,
  discoverySan,
  renderBootstrap,
  serializeBootstrap,
  serviceNode,
  xdsApiReason,
} from "../envoy/bootstrap.js";
import { envoyCommand } from "../envoy/command-line.js";
import { UsageError } from "../platform/errors.js";
import { formatCommand } from "../platform/process.js";
import type { CommandRuntime } from "./context.js";
import { withFlagValues } from "./flag-values.js";

interface EnvoyArgs {
  epoch?: number;
}

/** What istiod keys on, in one glance: node.cluster, ISTIO_VERSION, where PROXY_CONFIG came from. */
function nodeSummary(config: ConfigValues, bootstrap: BootstrapJson): string[] {
  if (config.ENVOY_XDS_API === "v1") {
    return [
      `# node: --service-cluster ${config.ISTIO_SERVICE} (ISTIO_SERVICE) and --service-node (v1 has no node block)`,
    ];
  }
  const node = bootstrap["node"] as { cluster: string; metadata: Record<string, unknown> };
  if (config.ISTIO_CONTROL_PLANE === "legacy") return [`# node.cluster ${node.cluster} (ISTIO_SERVICE)`];
  const version = node.metadata["ISTIO_VERSION"];
  const layers = [
    Object.keys(config.PROXY_CONFIG).length > 0 ? "PROXY_CONFIG" : "",
    Object.keys(config.ISTIO_VM_PROXY_CONFIG).length > 0 ? "ISTIO_VM_PROXY_CONFIG" : "",
  ].filter((l) => l !== "");
  return [
    `# node.cluster ${node.cluster} (${config.ISTIO_SERVICE === "" ? "Istio's rule: app label, else workload name, else istio-proxy; .<namespace>" : "ISTIO_SERVICE"})`,
    typeof version === "string"
      ? `# ISTIO_VERSION ${version}`
      : "# ISTIO_VERSION not set: istiod treats this VM as the newest proxy (istio-vm cluster-env writes it)",
    `# PROXY_CONFIG: Istio's defaults${layers.map((l) => ` + ${l}`).join("")} + this agent's addresses and ports`,
  ];
}

function bootstrapCommand(runtime: () => CommandRuntime): CommandModule<object, EnvoyArgs> {
  return {
    command: "bootstrap",
    describe: "Print the Envoy bootstrap (and command line) the agent would write for an epoch; changes nothing",
    builder: (y: Argv) =>
      y.option("epoch", {
        type: "number",
        default: 0,
        describe: "hot-restart epoch: names the file (envoy-rev<N>.json) and --restart-epoch",
      }),
    handler: async (args) => {
      const rt = runtime();
      const epoch = args.epoch ?? 0;
      if (!Number.isInteger(epoch) || epoch < 0)
        throw new UsageError(`--epoch must be a whole number ≥ 0, not ${epoch}`);
      const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
      const config = requireValid(
        loaded,
        loaded.values.ISTIO_SVC_IP === ""
          ? [{ subject: "ISTIO_SVC_IP", message: "not set; the node id needs this VM's mesh IP (sidecar.env)" }]
          : [],
      );
      const input = {
        config,
        extraMetadata: Object.fromEntries(Object.entries(loaded.metadata).map(([name, v]) => [name, v.raw])),
        hostname: rt.hostname(),
      };
      const bootstrap = renderBootstrap(input);
      if (rt.options.json) {
        rt.out(serializeBootstrap(bootstrap));
        return;
      }
      const path = bootstrapPath(config.ISTIO_PROXY_CONFIG_DIR, epoch);
      const command = envoyCommand({ config, epoch, bootstrapPath: path, serviceNode: serviceNode(input) });
      const san = discoverySan(config);
      for (const warning of command.warnings) rt.err(`warning: ${warning}\n`);
      rt.out(
        [
          `# ${path} (mode 0600, owner ${config.ENVOY_USER}), for Envoy started as ${config.ENVOY_USER}:`,
          `#   ${formatCommand(config.ENVOY_BINARY, command.args)}`,
          `# discovery: ${config.DISCOVERY_ADDRESS.host}:${config.DISCOVERY_ADDRESS.port} ` +
            (config.CONTROL_PLANE_AUTH_POLICY === "MUTUAL_TLS"
              ? `over mTLS (certificates in ${config.OUTPUT_CERTS}, server ${san.type} SAN ${san.value})`
              : "in plain text (CONTROL_PLANE_AUTH_POLICY=NONE)"),
          `# API ${xdsApiReason(config, loaded.variables.ENVOY_XDS_API.source.kind !== "default")}`,
          ...nodeSummary(config, bootstrap),
          "# --json prints the bootstrap alone.",
          "",
        ].join("\n"),
      );
      rt.out(serializeBootstrap(bootstrap));
    },
  };
}

export function envoyCommandModule(runtime: () => CommandRuntime): CommandModule<object, EnvoyArgs> {
  return {
    command: "envoy",
    describe: "Envoy as the agent runs it: the bootstrap it writes (Envoy itself is not shipped)",
    builder: (y) =>
      (y as unknown as Argv<EnvoyArgs>)
        .command(withFlagValues(bootstrapCommand(runtime)))
        .demandCommand(1, "name an envoy command: bootstrap")
        .example("$0 envoy bootstrap", "the bootstrap for this VM, with the Envoy command line as comments")
        .example(
          "$0 envoy bootstrap --json > /tmp/b.json && envoy --mode validate -c /tmp/b.json",
          "check it with Envoy",
        )
        .example("$0 envoy bootstrap --epoch 3", "what epoch 3 would get (envoy-rev3.json, --restart-epoch 3)"),
    handler: () => undefined,
  };
}
