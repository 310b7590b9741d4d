import type { CommandModule } from "yargs";
import { AgentError } from "../platform/errors.js";
import { dnsLabel, dnsName, portsOrAll, ValueError } from "../config/types.js";
import type { DnsCaptureChoice, DnsCaptureDecision, ServiceCidr } from "../kube/cluster-env.js";
import {
  clusterEnvEntries,
  decideDnsCapture,
  discoverServiceCidr,
  parseProxyConfigFlag,
  planClusterEnv,
  readMeshSettings,
} from "../kube/cluster-env.js";
import { DEFAULT_LB_OPTIONS } from "../kube/kubedns.js";
import type { ControlPlaneProfile } from "../kube/profile.js";
import { corePath, getIfExists } from "../kube/profile.js";
import type { KubeConnector, OutputArgs, ProfileArgs } from "./admin-options.js";
import { connectKube, profileFor, emitFile, withOutputOption, withProfileOptions } from "./admin-options.js";
import type { CommandRuntime } from "./context.js";
import type { KubeArgs } from "./kube-options.js";
import { KUBE_OPTIONS_EPILOGUE, withKubeOptions } from "./kube-options.js";
import { renderJson } from "./render.js";

interface ClusterEnvArgs extends KubeArgs, ProfileArgs, OutputArgs {
  "service-cidr": string | undefined;
  "auth-policy": "MUTUAL_TLS" | "NONE";
  "inbound-ports": string | undefined;
  "service-account": string;
  "trust-domain": string | undefined;
  "cluster-id": string | undefined;
  "mesh-id": string | undefined;
  network: string | undefined;
  "workload-name": string | undefined;
  "canonical-revision": string;
  "istio-version": string | undefined;
  "proxy-config": string | undefined;
  "dns-capture": DnsCaptureChoice;
  "dns-namespace": string;
  "dns-service": string;
}

export interface ClusterEnvReport {
  readonly profile: ControlPlaneProfile;
  readonly detectedFrom: string | undefined;
  readonly serviceCidr: ServiceCidr;
  /** istiod profile only. */
  readonly dnsCapture: DnsCaptureDecision | undefined;
  readonly variables: Readonly<Record<string, string>>;
  readonly written: string | undefined;
  readonly content: string;
}

function checked(flag: string, raw: string | undefined, parse: (raw: string) => unknown): void {
  if (raw === undefined) return;
  try {
    parse(raw);
  } catch (error) {
    if (!(error instanceof ValueError)) throw error;
    throw new AgentError({ code: "USAGE", message: `--${flag}: ${error.message}`, subject: raw, kind: "usage" });
  }
}

export function clusterEnvCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, ClusterEnvArgs> {
  return {
    command: "cluster-env",
    describe: "Generate cluster.env (service CIDR, control plane, identity) from the cluster's API",
    builder: (y) =>
      withOutputOption(withProfileOptions(withKubeOptions(y)))
        .option("service-cidr", {
          type: "string",
          describe: "service CIDR(s), comma-separated, or * for all outbound traffic; default: asked from the cluster",
          requiresArg: true,
        })
        .option("auth-policy", {
          choices: ["MUTUAL_TLS", "NONE"] as const,
          default: "MUTUAL_TLS" as const,
          describe: "CONTROL_PLANE_AUTH_POLICY: how the VM talks to the control plane",
        })
        .option("inbound-ports", {
          type: "string",
          describe:
            "also write ISTIO_INBOUND_PORTS (ports or *) for every VM; normally set per VM in sidecar.env, which wins",
          requiresArg: true,
        })
        .option("service-account", {
          alias: "s",
          type: "string",
          default: "default",
          describe: "istiod: the workload's service account (SERVICE_ACCOUNT)",
          requiresArg: true,
        })
        .option("trust-domain", {
          type: "string",
          describe: "istiod: TRUST_DOMAIN; default: the mesh config's trustDomain, else cluster.local",
          requiresArg: true,
        })
        .option("cluster-id", {
          type: "string",
          describe: "istiod: ISTIO_META_CLUSTER_ID; default: the injector's multiCluster.clusterName, else Kubernetes",
          requiresArg: true,
        })
        .option("mesh-id", {
          type: "string",
          describe: "istiod: ISTIO_META_MESH_ID; default: the injector's meshID",
          requiresArg: true,
        })
        .option("network", {
          type: "string",
          describe: "istiod: ISTIO_META_NETWORK; default: the injector's network",
          requiresArg: true,
        })
        .option("workload-name", {
          type: "string",
          describe:
            "istiod: name of the VM workload (ISTIO_META_WORKLOAD_NAME, ISTIO_SERVICE, CANONICAL_SERVICE, app label)",
          requiresArg: true,
        })
        .option("istio-version", {
          type: "string",
          describe: "istiod: ISTIO_VERSION; default: the istiod Deployment's image tag, else its istio.io/rev label",
          requiresArg: true,
        })
        .option("proxy-config", {
          type: "string",
          describe: "istiod: PROXY_CONFIG (ProxyConfig, JSON or YAML); default: the mesh config's defaultConfig",
          requiresArg: true,
        })
        .option("dns-capture", {
          choices: ["auto", "true", "false"] as const,
          default: "auto" as const,
          describe:
            "istiod: ISTIO_META_DNS_CAPTURE (the agent's DNS proxy); auto: on unless the kube-dns load balancer exists",
        })
        .option("dns-namespace", {
          type: "string",
          default: DEFAULT_LB_OPTIONS.dnsNamespace,
          describe: "istiod, --dns-capture auto: namespace of the kube-dns load balancer",
          requiresArg: true,
        })
        .option("dns-service", {
          type: "string",
          default: DEFAULT_LB_OPTIONS.dnsService,
          describe: "istiod, --dns-capture auto: the kube-dns load balancer Service (as `istio-vm dnsmasq` reads it)",
          requiresArg: true,
        })
        .option("canonical-revision", {
          type: "string",
          default: "latest",
          describe: "istiod: CANONICAL_REVISION (with --workload-name)",
          requiresArg: true,
        })
        .epilogue(
          "The service CIDR comes from --service-cidr, else the networking.k8s.io/v1 ServiceCIDR 'kubernetes', else the " +
            "API server's answer to a dry-run Service with an out-of-range clusterIP (nothing is created). The profile " +
            "is detected from the control-plane Services. For istiod the workload's namespace is -n (default: the " +
            "context's). The legacy file has exactly the original lines (ISTIO_SERVICE_CIDR, ISTIO_SYSTEM_NAMESPACE, " +
            "CONTROL_PLANE_AUTH_POLICY) plus ISTIO_CONTROL_PLANE. istiod: ISTIO_META_DNS_CAPTURE='true' (the agent's DNS " +
            "proxy answers mesh names; no dnsmasq, no kube-dns exposure) unless the kube-dns load balancer " +
            "(--dns-namespace/--dns-service) exists, in which case VMs use `istio-vm dnsmasq`; --dns-capture decides. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example("$0 cluster-env -o cluster.env", "detect everything, write ./cluster.env")
        .example(
          "$0 cluster-env -n shop -s mysql-vm --workload-name mysql",
          "istiod: for VMs of workload mysql in namespace shop",
        )
        .example(
          "$0 cluster-env --service-cidr 10.96.0.0/12 --profile legacy",
          "no detection: an Istio 0.x cluster's file",
        ),
    handler: async (args) => {
      const rt = runtime();
      checked("inbound-ports", args["inbound-ports"], (raw) => portsOrAll.parse(raw));
      checked("trust-domain", args["trust-domain"], (raw) => dnsName.parse(raw));
      checked("istio-namespace", args["istio-namespace"], (raw) => dnsLabel.parse(raw));
      checked("service-account", args["service-account"], (raw) => dnsName.parse(raw));
      checked("dns-namespace", args["dns-namespace"], (raw) => dnsLabel.parse(raw));
      checked("dns-service", args["dns-service"], (raw) => dnsLabel.parse(raw));
      const client = await connect(rt, args);
      const istioNamespace = args["istio-namespace"];
      const detected = await profileFor(client, args);
      const serviceCidr = await discoverServiceCidr(client, {
        ...(args["service-cidr"] === undefined ? {} : { flag: args["service-cidr"] }),
        probeNamespace: client.namespace,
      });
      let workload;
      let dnsCapture: DnsCaptureDecision | undefined;
      if (detected.profile === "istiod") {
        const dnsService = `${args["dns-namespace"]}/${args["dns-service"]}`;
        const exists =
          args["dns-capture"] === "auto" &&
          (await getIfExists(client, corePath("services", args["dns-namespace"], args["dns-service"]))) !== undefined;
        dnsCapture = decideDnsCapture(args["dns-capture"], dnsService, exists);
        const proxyConfig =
          args["proxy-config"] === undefined ? undefined : await parseProxyConfigFlag(args["proxy-config"]);
        const needsMesh =
          args["trust-domain"] === undefined ||
          args["cluster-id"] === undefined ||
          args["mesh-id"] === undefined ||
          args.network === undefined ||
          args["istio-version"] === undefined ||
          proxyConfig === undefined;
        const mesh = needsMesh ? await readMeshSettings(client, istioNamespace, detected.istiodService) : {};
        const istioVersion = args["istio-version"] ?? mesh.istioVersion?.value;
        const meshProxyConfig = proxyConfig ?? mesh.proxyConfig;
        const meshId = args["mesh-id"] ?? mesh.meshId;
        const network = args.network ?? mesh.network;
        workload = {
          namespace: client.namespace,
          serviceAccount: args["service-account"],
          trustDomain: args["trust-domain"] ?? mesh.trustDomain ?? "cluster.local",
          clusterId: args["cluster-id"] ?? mesh.clusterId ?? "Kubernetes",
          ...(meshId === undefined ? {} : { meshId }),
          ...(network === undefined ? {} : { network }),
          ...(args["workload-name"] === undefined ? {} : { workloadName: args["workload-name"] }),
          canonicalRevision: args["canonical-revision"],
          ...(istioVersion === undefined ? {} : { istioVersion }),
          ...(meshProxyConfig === undefined ? {} : { proxyConfig: meshProxyConfig }),
        };
        if (istioVersion === undefined) {
          rt.err(
            "warning: the mesh's Istio version was not found (no istiod Deployment image tag or version label); " +
              "ISTIO_VERSION is not written and istiod will treat the VM as the newest proxy. Pass --istio-version.\n",
          );
        }
      }
      const input = {
        profile: detected.profile,
        serviceCidr: serviceCidr.value,
        systemNamespace: istioNamespace,
        authPolicy: args["auth-policy"],
        ...(args["inbound-ports"] === undefined ? {} : { inboundPorts: args["inbound-ports"] }),
        ...(workload === undefined ? {} : { workload }),
        istiodService: detected.istiodService,
        ...(dnsCapture === undefined ? {} : { dnsCapture: dnsCapture.capture }),
      };
      const content = planClusterEnv(input);
      const written = await emitFile(rt, { path: args.output, content });
      const report: ClusterEnvReport = {
        profile: detected.profile,
        detectedFrom: detected.evidence,
        serviceCidr,
        dnsCapture,
        variables: Object.fromEntries(clusterEnvEntries(input).map((e) => [e.key, e.value])),
        written,
        content,
      };
      if (rt.options.json) rt.out(renderJson(report));
      else if (written !== undefined) {
        rt.out(
          `wrote ${written}: profile ${detected.profile}${detected.evidence === undefined ? "" : ` (found ${detected.evidence})`}, ` +
            `service CIDR ${serviceCidr.value} (from ${serviceCidr.source})` +
            (dnsCapture === undefined
              ? ""
              : `, DNS proxy ${dnsCapture.capture ? "on" : "off"} (${dnsCapture.reason})`) +
            "\n",
        );
      }
      if (written !== undefined && !rt.options.json) {
        rt.err("Install it on each VM as /var/lib/istio/envoy/cluster.env (istio-vm install does).\n");
      }
    },
  };
}
