/**
 * `istio-vm bundle -o FILE`: one archive with everything `istio-vm install` needs on a VM. The options and the
 * builder are shared with `istio-vm setup`, which makes the same bundle when not given one.
 */
import { join } from "node:path";
import type { Argv, CommandModule } from "yargs";
import { AgentError, UsageError } from "../platform/errors.js";
import { parseKeyValues, parsePortSpecs } from "../kube/register-inputs.js";
import type { WorkloadGroupInput, WorkloadGroupSettings } from "../kube/workload-group.js";
import { ensureWorkloadGroup, parseProbeFlag } from "../kube/workload-group.js";
import type { BundleInfo, DebInfo } from "../provision/bundle.js";
import { parseSettingFlags, planBundle, readDebInfo, renderBundle, sha256 } from "../provision/bundle.js";
import type { BundleSources } from "../provision/generate.js";
import { sourcesFromCluster, sourcesFromDirectory } from "../provision/generate.js";
import { programVersion } from "../version.js";
import type { KubeConnector, ProfileArgs } from "./admin-options.js";
import { checkOutputPath, connectKube, parseDurationFlag, profileFor, withProfileOptions } from "./admin-options.js";
import type { CommandRuntime } from "./context.js";
import type { KubeArgs } from "./kube-options.js";
import { KUBE_OPTIONS_EPILOGUE, withKubeOptions } from "./kube-options.js";
import { renderJson, renderTable } from "./render.js";

export interface BundleArgs extends KubeArgs, ProfileArgs {
  from: string | undefined;
  /** false with --no-deb (yargs' negation of --deb). */
  deb: string | false | undefined;
  "service-account": string;
  "service-cidr": string | undefined;
  "auth-policy": "MUTUAL_TLS" | "NONE";
  "workload-name": string | undefined;
  "gateway-ip": string | undefined;
  "trust-domain": string;
  wait: string;
  "token-duration": string;
  "svc-ip": string | undefined;
  "inbound-ports": string | undefined;
  set: string[];
  "workload-group": string | undefined;
  labels: string[];
  ports: string[];
  probe: string | undefined;
}

export function defaultDebPath(cwd: string = process.cwd()): string {
  return join(cwd, "dist", `istio-vm-agent_${programVersion()}_amd64.deb`);
}

/** The options of `bundle`, also offered by `setup`. */
export function withBundleOptions<T>(y: Argv<T>): Argv<T & BundleArgs> {
  return withProfileOptions(withKubeOptions(y))
    .option("from", {
      type: "string",
      describe: "take cluster.env, kubedns and the credentials from this directory instead of the cluster",
      requiresArg: true,
    })
    .option("deb", {
      type: "string",
      describe:
        "the istio-vm-agent .deb to include (default: dist/istio-vm-agent_<version>_amd64.deb); --no-deb leaves it " +
        "out (VMs that already have the package)",
    })
    .option("service-account", {
      alias: "s",
      type: "string",
      default: "default",
      describe: "the VM workload's service account (its credentials go into the bundle)",
      requiresArg: true,
    })
    .option("service-cidr", {
      type: "string",
      describe: "service CIDR(s) or *; default: asked from the cluster",
      requiresArg: true,
    })
    .option("auth-policy", {
      choices: ["MUTUAL_TLS", "NONE"] as const,
      default: "MUTUAL_TLS" as const,
      describe: "CONTROL_PLANE_AUTH_POLICY",
    })
    .option("workload-name", {
      type: "string",
      describe: "istiod: the VM workload's name (ISTIO_META_WORKLOAD_NAME, ISTIO_SERVICE, …)",
      requiresArg: true,
    })
    .option("gateway-ip", {
      type: "string",
      describe: "istiod: address of istiod for the VM, instead of the east-west gateway's load balancer",
      requiresArg: true,
    })
    .option("trust-domain", {
      type: "string",
      default: "cluster.local",
      describe: "trust domain of the workload identity (istiod: the mesh config's wins)",
      requiresArg: true,
    })
    .option("wait", {
      type: "string",
      default: "2m",
      describe: "how long to wait for load balancers that have no address yet",
      requiresArg: true,
    })
    .option("token-duration", {
      type: "string",
      default: "1h",
      describe: "istiod: lifetime of the bootstrap token (used only until the first certificate)",
      requiresArg: true,
    })
    .option("svc-ip", {
      type: "string",
      describe: "sidecar.env ISTIO_SVC_IP: the VM's mesh address (setup sets it per host when HOST is an IP)",
      requiresArg: true,
    })
    .option("inbound-ports", {
      type: "string",
      describe: "sidecar.env ISTIO_INBOUND_PORTS: ports (or *) whose inbound traffic goes through Envoy",
      requiresArg: true,
    })
    .option("set", {
      type: "string",
      array: true,
      default: [] as string[],
      describe: "any other sidecar.env setting, KEY=VALUE (repeatable), checked against the variable registry",
      requiresArg: true,
    })
    .option("workload-group", {
      type: "string",
      describe:
        "istiod: auto-register the VM into this WorkloadGroup (created from --labels, --ports, --service-account " +
        "and --probe when missing); istiod then adds and removes its WorkloadEntry and takes its health reports",
      requiresArg: true,
    })
    .option("labels", {
      type: "string",
      array: true,
      default: [] as string[],
      describe: "with --workload-group: the new group's labels k=v,k2=v2 (selected by Services)",
      requiresArg: true,
    })
    .option("ports", {
      type: "string",
      array: true,
      default: [] as string[],
      describe: "with --workload-group: the new group's ports, [name:]port (e.g. http:8080)",
      requiresArg: true,
    })
    .option("probe", {
      type: "string",
      describe:
        'with --workload-group: the new group\'s readiness probe as JSON, e.g. \'{"httpGet":{"path":"/ready","port":8080}}\' ' +
        "(httpGet, tcpSocket or exec; periodSeconds, timeoutSeconds, thresholds); the agent runs it and reports to istiod",
      requiresArg: true,
    });
}

/** --labels, --ports and --probe describe a group: checked before anything is fetched. */
function workloadGroupInput(
  args: Pick<
    BundleArgs,
    "workload-group" | "labels" | "ports" | "probe" | "from" | "workload-name" | "service-account"
  >,
): (Omit<WorkloadGroupInput, "namespace"> & { readonly explicit: boolean }) | undefined {
  const name = args["workload-group"];
  const explicit = args.labels.length > 0 || args.ports.length > 0 || args.probe !== undefined;
  if (name === undefined) {
    if (explicit)
      throw new UsageError("--labels, --ports and --probe describe a WorkloadGroup", "add --workload-group NAME");
    return undefined;
  }
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(name))
    throw new UsageError(
      `--workload-group '${name}' is not a valid name`,
      "lower-case letters, digits and '-', at most 63",
    );
  if (args.from !== undefined)
    throw new UsageError(
      "--workload-group needs the cluster, not --from",
      "leave out --from (the group is read or created there)",
    );
  if (args["workload-name"] !== undefined && args["workload-name"] !== name)
    throw new UsageError(
      `--workload-name ${args["workload-name"]} differs from --workload-group ${name}`,
      "the group's name is the workload's name; leave out --workload-name",
    );
  return {
    name,
    serviceAccount: args["service-account"],
    labels: parseKeyValues(args.labels, "labels"),
    ports: args.ports.length === 0 ? [] : parsePortSpecs(args.ports.flatMap((p) => p.split(","))),
    ...(args.probe === undefined ? {} : { probe: parseProbeFlag(args.probe).json }),
    explicit,
  };
}

export interface BuiltBundle {
  readonly archive: Buffer;
  readonly info: BundleInfo;
  readonly sources: BundleSources;
  readonly sha256: string;
}

/** Settings from --svc-ip, --inbound-ports and --set, in that order. */
export function settingsFromArgs(args: Pick<BundleArgs, "svc-ip" | "inbound-ports" | "set">): {
  key: string;
  value: string;
}[] {
  const settings: { key: string; value: string }[] = [];
  if (args["svc-ip"] !== undefined) settings.push({ key: "ISTIO_SVC_IP", value: args["svc-ip"] });
  if (args["inbound-ports"] !== undefined) settings.push({ key: "ISTIO_INBOUND_PORTS", value: args["inbound-ports"] });
  settings.push(...parseSettingFlags(args.set, "--set"));
  return settings;
}

async function loadDeb(
  rt: CommandRuntime,
  args: Pick<BundleArgs, "deb">,
): Promise<{ info: DebInfo; data: Uint8Array } | undefined> {
  if (args.deb === false) return undefined;
  if (args.deb === "") throw new AgentError({ code: "USAGE", message: "--deb needs a path", kind: "usage" });
  const path = args.deb ?? defaultDebPath();
  const stat = await rt.fs.stat(path);
  if (stat === undefined || stat.isDirectory) {
    throw new AgentError({
      code: "DEB_NOT_FOUND",
      message: `no .deb at ${path}`,
      subject: path,
      kind: "usage",
      hint:
        args.deb === undefined
          ? "build it with `npm run package`, pass --deb PATH, or --no-deb for VMs that already have the package"
          : "check the path given with --deb",
    });
  }
  const info = await readDebInfo(rt.runner, path);
  return { info, data: await rt.fs.readFile(path) };
}

/** Sources (cluster or --from), settings and the .deb → a verified archive in memory. */
export async function buildBundle(
  rt: CommandRuntime,
  args: BundleArgs,
  connect: KubeConnector = connectKube,
): Promise<BuiltBundle> {
  const settings = settingsFromArgs(args);
  const groupInput = workloadGroupInput(args);
  const deb = await loadDeb(rt, args);
  let sources: BundleSources;
  if (args.from !== undefined) {
    sources = await sourcesFromDirectory(rt.fs, args.from);
    if (args.profile !== undefined && args.profile !== sources.profile) {
      throw new AgentError({
        code: "PROFILE_MISMATCH",
        message: `--profile ${args.profile}, but ${join(args.from, "cluster.env")} is for ${sources.profile}`,
        subject: args.from,
        kind: "usage",
      });
    }
  } else {
    const tokenMs = parseDurationFlag("token-duration", args["token-duration"]);
    const client = await connect(rt, args);
    const detected = await profileFor(client, args);
    let workloadGroup: WorkloadGroupSettings | undefined;
    const groupWarnings: string[] = [];
    if (groupInput !== undefined) {
      if (detected.profile !== "istiod")
        throw new UsageError(
          "--workload-group needs the istiod profile (legacy Pilot has no auto-registration)",
          "register legacy VMs with `istio-vm register`",
        );
      workloadGroup = await ensureWorkloadGroup(client, { ...groupInput, namespace: client.namespace });
      rt.err(
        `${workloadGroup.created ? "created" : "using"} WorkloadGroup ${client.namespace}/${workloadGroup.name}\n`,
      );
      if (!workloadGroup.created && groupInput.explicit)
        groupWarnings.push(
          `WorkloadGroup ${client.namespace}/${workloadGroup.name} exists: its own labels, ports and probe apply, ` +
            "not --labels, --ports or --probe",
        );
    }
    sources = await sourcesFromCluster(client, {
      istioNamespace: args["istio-namespace"],
      detected,
      ...(workloadGroup === undefined ? {} : { workloadGroup }),
      serviceAccount: args["service-account"],
      ...(args["service-cidr"] === undefined ? {} : { serviceCidr: args["service-cidr"] }),
      authPolicy: args["auth-policy"],
      ...(args["workload-name"] === undefined ? {} : { workloadName: args["workload-name"] }),
      ...(args["gateway-ip"] === undefined ? {} : { gatewayAddress: args["gateway-ip"] }),
      waitMs: parseDurationFlag("wait", args.wait),
      tokenSeconds: Math.max(600, Math.round(tokenMs / 1000)),
      trustDomain: args["trust-domain"],
      clock: rt.clock,
      progress: (line) => {
        rt.err(`${line}\n`);
      },
    });
    sources = { ...sources, warnings: [...groupWarnings, ...sources.warnings] };
  }
  const members = planBundle({
    profile: sources.profile,
    clusterEnv: sources.clusterEnv,
    kubedns: sources.kubedns,
    credentials: sources.credentials,
    settings,
    ...(deb === undefined ? {} : { deb }),
    createdBy: `istio-vm ${programVersion()}`,
    createdAtMs: rt.clock.now(),
  });
  const info = JSON.parse(
    Buffer.from(members.find((m) => m.name === "bundle.json")?.data ?? []).toString("utf8"),
  ) as BundleInfo;
  const archive = renderBundle(members, { mtimeMs: rt.clock.now(), gzip: true });
  return { archive, info, sources, sha256: sha256(archive) };
}

export function describeBundle(built: BuiltBundle, path: string): string {
  const rows = built.info.members.map((m) => [m.name, m.mode, m.sha256.slice(0, 16)]);
  const deb = built.info.deb === null ? "no .deb" : `${built.info.deb.package} ${built.info.deb.version}`;
  return (
    `wrote ${path} (mode 0600, ${built.archive.length} bytes, sha256 ${built.sha256}): profile ${built.info.profile}, ${deb}\n` +
    renderTable(["MEMBER", "MODE", "SHA256"], rows)
  );
}

export function bundleCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, BundleArgs & { output: string }> {
  return {
    command: "bundle",
    describe: "Make one archive with everything a VM needs (config, kubedns, credentials, the .deb) for `install`",
    builder: (y) =>
      withBundleOptions(y)
        .option("output", {
          alias: "o",
          type: "string",
          demandOption: true,
          describe: "the archive to write (mode 0600, atomically); gzip-compressed tar",
          requiresArg: true,
        })
        .epilogue(
          "Members: SHA256SUMS (sha256 of every other member; `sha256sum -c` works on it), bundle.json, cluster.env, " +
            "kubedns, sidecar.env (only the settings given here), root-cert.pem, cert-chain.pem and key.pem (legacy) " +
            "or istio-token (istiod), and the .deb. Secrets (key.pem, istio-token) are 0600 inside the archive, and " +
            "the archive itself is 0600: treat it like a password. Without --from the content is generated from the " +
            "cluster exactly as `cluster-env`, `dnsmasq` and `certs` would. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example(
          "$0 bundle -n shop -s mysql-vm -o mysql.bundle.tgz",
          "from the cluster, for service account shop/mysql-vm",
        )
        .example(
          "$0 bundle --from out/ --svc-ip 10.0.0.5 --inbound-ports 3306 -o vm1.tgz",
          "from files made earlier, with per-VM settings",
        )
        .example(
          "$0 bundle --from out/ --set ISTIO_AGENT_COMPONENTS=certificates --no-deb -o certs-only.tgz",
          "any registry variable with --set; no .deb for VMs that have it",
        )
        .example(
          `$0 bundle -n shop -s mysql-vm --workload-group mysql --labels app=mysql --ports mysql:3306 --probe '{"tcpSocket":{"port":3306}}' -o mysql.tgz`,
          "istiod: the VM registers itself into WorkloadGroup shop/mysql and reports its probe",
        ),
    handler: async (args) => {
      const rt = runtime();
      await checkOutputPath(rt.fs, args.output, "-o");
      const built = await buildBundle(rt, args, connect);
      for (const warning of built.sources.warnings) rt.err(`warning: ${warning}\n`);
      await rt.fs.writeFileAtomic(args.output, built.archive, { mode: 0o600 });
      if (rt.options.json) {
        rt.out(renderJson({ path: args.output, bytes: built.archive.length, sha256: built.sha256, ...built.info }));
      } else {
        rt.out(describeBundle(built, args.output));
      }
    },
  };
}
