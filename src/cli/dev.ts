/**
 * `istio-vm dev`: runs the dev control plane (a stand-in Kubernetes API with a mesh-expansion-shaped cluster, plus
 * the attached dev services) until SIGTERM/SIGINT, then shuts down cleanly and exits 0.
 */
import { isIP } from "node:net";
import type { CommandModule } from "yargs";
import { ValueError, duration } from "../config/types.js";
import { DEV_SERVICES } from "../devplane/services.js";
import { KUBECONFIG_CONTEXTS, startDevPlane } from "../devplane/dev-plane.js";
import type { DevPlane } from "../devplane/dev-plane.js";
import type { Cidr } from "../devplane/ip-allocator.js";
import { parseCidr } from "../devplane/ip-allocator.js";
import { PROFILES } from "../devplane/seed.js";
import type { Profile } from "../devplane/seed.js";
import { DEFAULT_TRUST_DOMAIN } from "../devplane/mesh-ca.js";
import { AgentError, UsageError } from "../platform/errors.js";
import { checkOutputPath } from "./admin-options.js";
import type { CommandRuntime } from "./context.js";

const DEFAULT_PROFILE: Profile = "istiod";

interface DevArgs {
  profile: Profile;
  listen: string[];
  port: number;
  "service-cidr": string;
  "servicecidr-api": boolean;
  "lb-ip": string;
  "lb-delay": string;
  "trust-domain": string;
  "cert-ttl": string;
  "write-kubeconfig": string | undefined;
  "service-port": string[];
}

/** `ADDR`, `ADDR:PORT`, `[V6]` or `[V6]:PORT` → host and port (`defaultPort` when none is given). */
export function parseListen(value: string, defaultPort: number): { host: string; port: number } {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(value);
  let host: string;
  let portText: string | undefined;
  if (bracketed !== null) {
    host = bracketed[1] ?? "";
    portText = bracketed[2];
  } else if (isIP(value) === 6) {
    host = value;
  } else {
    const [h = "", p, ...rest] = value.split(":");
    if (rest.length > 0) throw new UsageError(`--listen ${value}: write IPv6 addresses in brackets, e.g. [::1]:6443`);
    host = h;
    portText = p;
  }
  if (isIP(host) === 0 && host !== "localhost") {
    throw new UsageError(
      `--listen ${value}: "${host}" is not an IP address`,
      "e.g. --listen 127.0.0.1 or --listen 10.0.0.1:6443",
    );
  }
  const port = portText === undefined ? defaultPort : Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--listen ${value}: invalid port`);
  return { host: host === "localhost" ? "127.0.0.1" : host, port };
}

function parseDuration(flag: string, value: string): number {
  try {
    return duration.parse(value);
  } catch (error) {
    if (error instanceof ValueError) throw new UsageError(`--${flag}: ${error.message}`);
    throw error;
  }
}

function parseServiceCidrs(value: string): Cidr[] {
  const cidrs = value
    .split(",")
    .map((c) => c.trim())
    .filter((c) => c !== "")
    .map((c) => {
      try {
        return parseCidr(c);
      } catch (error) {
        throw new UsageError(`--service-cidr: ${(error as Error).message}`);
      }
    });
  if (cidrs.length === 0 || cidrs.length > 2 || (cidrs.length === 2 && cidrs[0]?.family === cidrs[1]?.family)) {
    throw new UsageError("--service-cidr: give one CIDR, or one IPv4 and one IPv6 CIDR separated by a comma");
  }
  return cidrs;
}

function parseServicePorts(values: readonly string[]): Map<string, number> {
  const ports = new Map<string, number>();
  for (const value of values) {
    const m = /^([\w.-]+)=(\d+)$/.exec(value);
    const port = Number(m?.[2]);
    if (m?.[1] === undefined || port > 65535) throw new UsageError(`--service-port ${value}: expected NAME=PORT`);
    ports.set(m[1], port);
  }
  return ports;
}

function renderStart(plane: DevPlane, args: DevArgs, kubeconfigPath: string | undefined): string {
  const rows: [string, string][] = [
    ...plane.kubeApi.urls.map((url): [string, string] => ["kubernetes API", url]),
    ...plane.services.flatMap((s) => s.addresses.map((a): [string, string] => [`${s.name}: ${a.name}`, a.address])),
    [
      "service CIDR",
      `${plane.context.serviceCidrs.map((c) => c.text).join(",")}${args["servicecidr-api"] ? "" : " (no ServiceCIDR API)"}`,
    ],
    ["load balancers", `from ${args["lb-ip"]}, assigned after ${args["lb-delay"]}`],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  const lines = [
    `istio-vm dev: local test double of a Kubernetes cluster with Istio (profile ${args.profile}), real wire protocols`,
    "",
    ...rows.map(([name, value]) => `  ${name.padEnd(width)}  ${value}`),
    "",
  ];
  if (kubeconfigPath === undefined) {
    lines.push("No kubeconfig written: run with --write-kubeconfig FILE to use kubectl and the admin commands.");
  } else {
    lines.push(
      `kubeconfig: ${kubeconfigPath} (contexts ${KUBECONFIG_CONTEXTS.admin} = admin, ${KUBECONFIG_CONTEXTS.token} = token-user, ${KUBECONFIG_CONTEXTS.viewer} = read-only)`,
      "",
      `  export KUBECONFIG=${kubeconfigPath}`,
      "  kubectl get svc -A",
      "  istio-vm cluster-env && istio-vm dnsmasq",
    );
  }
  lines.push("", "Stop with Ctrl-C or SIGTERM.");
  return lines.join("\n") + "\n";
}

/** Resolves on the first SIGTERM or SIGINT. */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals): void => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(signal);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
}

/**
 * startDevPlane, with the errors of binding a port said for a user: which address and port, who may hold it, what to
 * do (Node's own error is `listen EADDRINUSE: address already in use 127.0.0.1:6443` and a stack).
 */
async function listening(args: DevArgs, options: Parameters<typeof startDevPlane>[0]): Promise<DevPlane> {
  try {
    return await startDevPlane(options);
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { address?: string; port?: number };
    if (e.code !== "EADDRINUSE" && e.code !== "EACCES" && e.code !== "EADDRNOTAVAIL") throw error;
    const where =
      e.address === undefined
        ? "the address"
        : `${e.address.includes(":") ? `[${e.address}]` : e.address}:${e.port ?? "?"}`;
    const apiPort = e.port === args.port;
    const hint =
      e.code === "EADDRINUSE"
        ? `another program holds it${apiPort ? " (another `istio-vm dev`?)" : ""}: stop it, or ${apiPort ? "use --port 0 for any free port (the URLs are printed, and written with --write-kubeconfig)" : "choose another port with --service-port NAME=PORT, or leave it out for any free port"}`
        : e.code === "EACCES"
          ? "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher port, or --port 0"
          : "the address is not one of this machine's; check --listen";
    const what =
      e.code === "EADDRINUSE"
        ? "is already in use"
        : e.code === "EACCES"
          ? "may not be bound (permission denied)"
          : "is not available here";
    throw new AgentError({
      code: `DEV_LISTEN_${e.code}`,
      message: `cannot listen on ${where}: it ${what}`,
      subject: where,
      hint,
      kind: "usage",
      cause: error,
    });
  }
}

export function devCommand(runtime: () => CommandRuntime): CommandModule<object, DevArgs> {
  return {
    command: "dev",
    describe: "Run a local stand-in control plane (Kubernetes API + Istio pieces) for demos and tests",
    builder: (y) =>
      y
        .option("profile", {
          choices: PROFILES,
          default: DEFAULT_PROFILE,
          describe: "what the cluster looks like: Istio 0.2–0.8 (legacy), current Istio (istiod), or nothing Istio",
        })
        .option("listen", {
          type: "string",
          array: true,
          default: ["127.0.0.1"],
          describe: "address to serve on, ADDR or ADDR:PORT (repeatable)",
        })
        .option("port", {
          type: "number",
          default: 6443,
          describe: "Kubernetes API port for --listen addresses without one (0: any free port)",
        })
        .option("service-cidr", {
          type: "string",
          default: "10.96.0.0/12",
          describe: "service CIDR(s) clusterIPs come from (IPv4, or IPv4,IPv6)",
        })
        .option("servicecidr-api", {
          type: "boolean",
          default: true,
          describe: "serve networking.k8s.io/v1 ServiceCIDR (--no-servicecidr-api: an older cluster without it)",
        })
        .option("lb-ip", {
          type: "string",
          default: "10.128.0.6",
          describe: "first load-balancer address; the seeded internal load balancers get it and the next ones",
        })
        .option("lb-delay", {
          type: "string",
          default: "1s",
          describe: "how long a LoadBalancer service stays pending before it gets its address",
        })
        .option("trust-domain", { type: "string", default: DEFAULT_TRUST_DOMAIN, describe: "mesh trust domain" })
        .option("cert-ttl", {
          type: "string",
          default: "2160h",
          describe: "lifetime of the istio.<sa> workload certificates of the legacy profile (Istio 0.8: 90 days)",
        })
        .option("write-kubeconfig", {
          type: "string",
          requiresArg: true,
          describe: "write a kubeconfig for this cluster to FILE (mode 0600)",
        })
        .option("service-port", {
          type: "string",
          array: true,
          default: [] as string[],
          describe: "fixed port for an attached dev service, NAME=PORT (default: any free port)",
        })
        .epilogue(
          "THIS IS A TEST DOUBLE, NOT A CLUSTER. It speaks the real protocols (Kubernetes API over HTTPS with client " +
            "certificates, bearer tokens, RBAC and Status errors; TokenRequest JWTs; real X.509 from its own CAs) from " +
            "an in-memory store, so kubectl and the istio-vm admin commands work against it unchanged. Everything is " +
            "lost when it stops. Point the admin commands at a real cluster for real VMs.\n\n" +
            "The kubeconfig has three contexts: istio-vm-dev (user admin, client certificate, all rights), " +
            "istio-vm-dev-token (bearer token, all rights) and istio-vm-dev-viewer (read-only: writes get 403).\n\n" +
            'With --json, one line is printed once everything serves: {"ready":true,"kubeApi":[URL…],…}. ' +
            "SIGTERM or SIGINT stops it (exit 0).",
        )
        .example("$0 dev --write-kubeconfig /tmp/dev.kubeconfig", "istiod-shaped cluster on https://127.0.0.1:6443")
        .example(
          "$0 dev --profile legacy --lb-ip 10.10.0.6 --lb-delay 5s --write-kubeconfig kc",
          "Istio 0.x mesh-expansion cluster whose ILBs stay pending for 5 s",
        )
        .example(
          "$0 dev --port 0 --json --no-servicecidr-api --write-kubeconfig kc",
          "any free port, machine-readable ready line, no ServiceCIDR API",
        ),
    handler: async (args) => {
      const rt = runtime();
      const listen = args.listen.map((l) => parseListen(l, args.port));
      if (listen.length === 0) throw new UsageError("--listen: give at least one address");
      const lbIp = args["lb-ip"];
      if (isIP(lbIp) === 0) throw new UsageError(`--lb-ip: "${lbIp}" is not an IP address`);
      if (args["write-kubeconfig"] !== undefined) {
        await checkOutputPath(rt.fs, args["write-kubeconfig"], "--write-kubeconfig");
      }
      const plane = await listening(args, {
        profile: args.profile,
        listen,
        serviceCidrs: parseServiceCidrs(args["service-cidr"]),
        serviceCidrApi: args["servicecidr-api"],
        lbIpBase: lbIp,
        lbDelayMs: parseDuration("lb-delay", args["lb-delay"]),
        trustDomain: args["trust-domain"],
        workloadCertTtlMs: parseDuration("cert-ttl", args["cert-ttl"]),
        services: DEV_SERVICES,
        ports: parseServicePorts(args["service-port"]),
        logger: rt.logger.child("dev"),
      });
      const stopped = untilSignal();
      try {
        const kubeconfigPath = args["write-kubeconfig"];
        if (kubeconfigPath !== undefined)
          await rt.fs.writeFileAtomic(kubeconfigPath, plane.kubeconfig(), { mode: 0o600 });
        if (rt.options.json) {
          rt.out(
            JSON.stringify({
              ready: true,
              profile: args.profile,
              kubeApi: plane.kubeApi.urls,
              kubeconfig: kubeconfigPath ?? null,
              serviceCidr: plane.context.serviceCidrs.map((c) => c.text).join(","),
              services: plane.services.map((s) => ({ name: s.name, addresses: s.addresses })),
              pid: process.pid,
            }) + "\n",
          );
        } else {
          rt.out(renderStart(plane, args, kubeconfigPath));
        }
        const signal = await stopped;
        rt.logger.info(`received ${signal}, shutting down`);
      } finally {
        await plane.close();
      }
    },
  };
}
