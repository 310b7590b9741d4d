import type { CommandModule } from "yargs";
import type { LbAddresses, LbRole } from "../kube/kubedns.js";
import { DEFAULT_LB_OPTIONS, kubednsTargets, planKubedns, resolveLoadBalancers } from "../kube/kubedns.js";
import type { ControlPlaneProfile } from "../kube/profile.js";
import type { KubeConnector, OutputArgs, ProfileArgs } from "./admin-options.js";
import {
  connectKube,
  profileFor,
  emitFile,
  parseDurationFlag,
  withOutputOption,
  withProfileOptions,
} from "./admin-options.js";
import type { CommandRuntime } from "./context.js";
import type { KubeArgs } from "./kube-options.js";
import { KUBE_OPTIONS_EPILOGUE, withKubeOptions } from "./kube-options.js";
import { renderJson } from "./render.js";

interface DnsmasqArgs extends KubeArgs, ProfileArgs, OutputArgs {
  wait: string;
  "poll-interval": string;
  "dns-namespace": string;
  "dns-service": string;
  "gateway-service": string;
  "gateway-ip": string | undefined;
}

export interface DnsmasqReport {
  readonly profile: ControlPlaneProfile;
  readonly addresses: LbAddresses;
  readonly sources: Partial<Record<LbRole, string>>;
  readonly absent: readonly string[];
  readonly written: string | undefined;
  readonly content: string;
}

export function dnsmasqCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, DnsmasqArgs> {
  return {
    command: "dnsmasq",
    describe: "Generate the dnsmasq file kubedns that resolves the control plane's names to its load balancers",
    builder: (y) =>
      withOutputOption(withProfileOptions(withKubeOptions(y)))
        .option("wait", {
          type: "string",
          default: "2m",
          describe: "how long to wait for load balancers that have no address yet (0: do not wait)",
          requiresArg: true,
        })
        .option("poll-interval", {
          type: "string",
          default: "5s",
          describe: "how often to look again while waiting",
          requiresArg: true,
        })
        .option("dns-namespace", {
          type: "string",
          default: DEFAULT_LB_OPTIONS.dnsNamespace,
          describe: "namespace of kube-dns's load balancer",
          requiresArg: true,
        })
        .option("dns-service", {
          type: "string",
          default: DEFAULT_LB_OPTIONS.dnsService,
          describe: "kube-dns's load-balancer Service (required for legacy, optional for istiod)",
          requiresArg: true,
        })
        .option("gateway-service", {
          type: "string",
          default: DEFAULT_LB_OPTIONS.gatewayService,
          describe: "istiod: the load-balancer Service that exposes istiod (in --istio-namespace)",
          requiresArg: true,
        })
        .option("gateway-ip", {
          type: "string",
          describe: "istiod: use this address for istiod instead of reading --gateway-service",
          requiresArg: true,
        })
        .epilogue(
          "legacy: server=/svc.cluster.local/<dns-ilb> and address= lines for istio-mixer, istio-pilot and istio-ca (bare " +
            "and .<istio-namespace>) from mixer-ilb, istio-pilot-ilb and istio-ca-ilb, exactly as setupMeshEx.sh wrote " +
            "them. istiod: istiod, istiod.<ns> and istiod.<ns>.svc → the east-west gateway, plus the server= line when " +
            "kube-dns has a load balancer. Addresses come from status.loadBalancer.ingress[0].ip (else " +
            "spec.externalIPs[0]); IPv6 is fine. Install the file as /etc/dnsmasq.d/kubedns. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example("$0 dnsmasq -o kubedns", "detect the profile, wait up to 2m for addresses, write ./kubedns")
        .example(
          "$0 dnsmasq --gateway-ip 203.0.113.7 --wait 0",
          "istiod behind a known address, fail at once if kube-dns's LB is pending",
        ),
    handler: async (args) => {
      const rt = runtime();
      const waitMs = parseDurationFlag("wait", args.wait);
      const intervalMs = Math.max(100, parseDurationFlag("poll-interval", args["poll-interval"]));
      const client = await connect(rt, args);
      const istioNamespace = args["istio-namespace"];
      const detected = await profileFor(client, args);
      const targets = kubednsTargets(detected.profile, {
        istioNamespace,
        dnsNamespace: args["dns-namespace"],
        dnsService: args["dns-service"],
        gatewayService: args["gateway-service"],
        ...(args["gateway-ip"] === undefined ? {} : { gatewayAddress: args["gateway-ip"] }),
      });
      const resolved = await resolveLoadBalancers(client, targets, {
        clock: rt.clock,
        waitMs,
        intervalMs,
        progress: (line) => {
          rt.err(`${line}\n`);
        },
      });
      for (const missing of resolved.absent) {
        rt.err(`note: no Service ${missing}; the VM resolves cluster names some other way (no server= line)\n`);
      }
      const content = planKubedns(detected.profile, resolved.addresses, istioNamespace, detected.istiodService);
      const written = await emitFile(rt, { path: args.output, content });
      if (rt.options.json) {
        const report: DnsmasqReport = {
          profile: detected.profile,
          addresses: resolved.addresses,
          sources: resolved.sources,
          absent: resolved.absent,
          written,
          content,
        };
        rt.out(renderJson(report));
      } else if (written !== undefined) {
        rt.out(`wrote ${written} (profile ${detected.profile})\n`);
        rt.err(`Generated dnsmasq config file '${written}'. Install it in /etc/dnsmasq.d and restart dnsmasq.\n`);
      }
    },
  };
}
