import type { Argv, CommandModule } from "yargs";
import { AgentError } from "../platform/errors.js";
import type { DeregisterReport, ObjectAction, RegisterReport } from "../kube/register.js";
import { deregister, parseKeyValues, parsePortSpecs, register, validateTarget } from "../kube/register.js";
import { renderYaml } from "../kube/yaml.js";
import type { KubeConnector, ProfileArgs } from "./admin-options.js";
import { connectKube, profileFor, withProfileOptions } from "./admin-options.js";
import type { CommandRuntime } from "./context.js";
import type { KubeArgs } from "./kube-options.js";
import { KUBE_OPTIONS_EPILOGUE, withKubeOptions } from "./kube-options.js";
import { renderJson } from "./render.js";

/** What register and deregister share: the cluster, the profile, the target and the two write modes. */
interface TargetArgs extends KubeArgs, ProfileArgs {
  svc: string;
  ip: string;
  "dry-run": boolean;
  "workload-entry": boolean;
}

interface RegisterArgs extends TargetArgs {
  ports: (string | number)[];
  labels: string[];
  annotations: string[];
  serviceaccount: string;
}

type DeregisterArgs = TargetArgs;

/** The cluster and profile options and the `<svc> <ip>` positionals of register and deregister. */
function withTarget<T>(
  y: Argv<T>,
  ipDescribe: string,
): Argv<T & KubeArgs & ProfileArgs & Pick<TargetArgs, "svc" | "ip">> {
  return withProfileOptions(withKubeOptions(y))
    .positional("svc", { type: "string", describe: "Service name", demandOption: true })
    .positional("ip", { type: "string", describe: ipDescribe, demandOption: true });
}

/** `--dry-run` and `--workload-entry`, described for what the command writes. */
function withWriteModes<T>(
  y: Argv<T>,
  describe: { readonly dryRun: string; readonly workloadEntry: string },
): Argv<T & Pick<TargetArgs, "dry-run" | "workload-entry">> {
  return y
    .option("dry-run", { type: "boolean", default: false, describe: describe.dryRun })
    .option("workload-entry", { type: "boolean", default: false, describe: describe.workloadEntry });
}

/** The objects a dry run would write, as YAML documents kubectl can read. */
export function renderDryRun(actions: readonly ObjectAction[]): string {
  const docs = actions
    .filter((a) => a.object !== undefined || a.action === "delete")
    .map((a) =>
      a.object === undefined
        ? `# ${a.action} ${a.kind} ${a.namespace}/${a.name}\n`
        : `# ${a.action} ${a.kind} ${a.namespace}/${a.name}\n${renderYaml(a.object)}`,
    );
  return docs.length === 0 ? "# nothing to change\n" : docs.join("---\n");
}

const PAST: Readonly<Record<ObjectAction["action"], string>> = {
  create: "created",
  update: "updated",
  delete: "deleted",
  unchanged: "unchanged",
  absent: "absent",
};

function summary(actions: readonly ObjectAction[]): string {
  return actions.map((a) => `${a.kind} ${PAST[a.action]}`).join(", ");
}

/** How register and deregister run: dry run or not, the clock for conflict retries, progress lines on stderr. */
function runOptions(
  rt: CommandRuntime,
  args: TargetArgs,
): { dryRun: boolean; clock: CommandRuntime["clock"]; log: (line: string) => void } {
  return {
    dryRun: args["dry-run"],
    clock: rt.clock,
    log: (line) => {
      rt.err(`${line}\n`);
    },
  };
}

/** The report as JSON (--json), a dry run's objects as YAML, else the one line `line` makes of it. */
function printReport(rt: CommandRuntime, report: RegisterReport | DeregisterReport, line: () => string): void {
  if (rt.options.json) rt.out(renderJson(report));
  else if (report.dryRun) rt.out(renderDryRun(report.actions));
  else rt.out(line());
}

async function requireIstiod(client: Awaited<ReturnType<KubeConnector>>, args: ProfileArgs): Promise<void> {
  const detected = await profileFor(client, args);
  if (detected.profile !== "istiod") {
    throw new AgentError({
      code: "WORKLOAD_ENTRY_NEEDS_ISTIOD",
      message: `--workload-entry needs the istiod profile, but the cluster runs the legacy control plane (${detected.evidence ?? "--profile legacy"})`,
      kind: "usage",
      hint: "Istio 0.x knows only Service + Endpoints; drop --workload-entry",
    });
  }
}

export function registerCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, RegisterArgs> {
  return {
    command: "register <svc> <ip> <ports..>",
    describe: "Make a VM service known to the mesh: a selector-less Service plus Endpoints holding the VM's IP",
    builder: (y) =>
      withWriteModes(
        withTarget(y, "the VM's IP (its ISTIO_SVC_IP)")
          .positional("ports", {
            type: "string",
            array: true,
            describe: "[name:]port… (bare 80 → http, 443 → https, 3306 → mysql, 8080 → http, else the number)",
            demandOption: true,
          })
          .option("labels", {
            alias: "l",
            type: "string",
            array: true,
            default: [] as string[],
            describe: "labels k=v,k2=v2 for the Service and Endpoints",
            requiresArg: true,
          })
          .option("annotations", {
            alias: "a",
            type: "string",
            array: true,
            default: [] as string[],
            describe: "annotations k=v,k2 (an item without = gets an empty value)",
            requiresArg: true,
          })
          .option("serviceaccount", {
            alias: "s",
            type: "string",
            default: "default",
            describe: "service account the VM runs as (annotation alpha.istio.io/kubernetes-serviceaccounts)",
            requiresArg: true,
          }),
        {
          dryRun: "print the objects that would be written (YAML, or JSON with --json); the API server validates them",
          workloadEntry: "istiod: also write a networking.istio.io/v1 WorkloadEntry <svc>-<ip> with the VM's identity",
        },
      )
        .epilogue(
          "Idempotent: registering an IP twice leaves it listed once (duplicates left by older tools are removed and " +
            "reported). An existing Service is never modified. Concurrent registrations are safe: a resourceVersion " +
            "conflict makes the command re-read and retry. Progress lines go to standard error. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example(
          "$0 register mysqldb 10.128.0.5 3306 -n shop -s mysql-vm",
          "Service shop/mysqldb, port 3306 named mysql",
        )
        .example(
          "$0 register web 10.128.0.6 http:8080 grpc:9090 -l app=web --dry-run",
          "show the objects, change nothing",
        )
        .example("$0 register web 10.128.0.6 http:8080 --workload-entry", "istiod: plus WorkloadEntry web-10-128-0-6"),
    handler: async (args) => {
      const rt = runtime();
      validateTarget(args.svc, args.ip);
      const ports = parsePortSpecs(args.ports.map(String));
      const labels = parseKeyValues(args.labels, "labels");
      const annotations = parseKeyValues(args.annotations, "annotations");
      const client = await connect(rt, args);
      if (args["workload-entry"]) await requireIstiod(client, args);
      const report: RegisterReport = await register(
        client,
        {
          service: args.svc,
          namespace: client.namespace,
          ip: args.ip,
          ports,
          labels,
          annotations,
          serviceAccount: args.serviceaccount,
          workloadEntry: args["workload-entry"],
        },
        runOptions(rt, args),
      );
      printReport(
        rt,
        report,
        () =>
          `registered ${report.ip} in ${report.namespace}/${report.service}: ${summary(report.actions)}; ${report.endpoints} endpoints` +
          `${report.duplicatesRemoved > 0 ? `; removed ${report.duplicatesRemoved} duplicate(s)` : ""}\n`,
      );
    },
  };
}

export function deregisterCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, DeregisterArgs> {
  return {
    command: "deregister <svc> <ip>",
    describe: "Remove a VM's IP from a registered service (the Service itself is kept)",
    builder: (y) =>
      withWriteModes(withTarget(y, "the VM's IP"), {
        dryRun: "print the Endpoints that would be written; change nothing",
        workloadEntry: "istiod: also delete the WorkloadEntry <svc>-<ip>",
      })
        .epilogue(
          "Removes every occurrence of the IP from the Service's Endpoints and drops subsets left empty; retries on " +
            "concurrent updates. An IP that is not registered is reported, not an error. " +
            KUBE_OPTIONS_EPILOGUE,
        )
        .example("$0 deregister mysqldb 10.128.0.5 -n shop", "the VM stops receiving mysqldb traffic")
        .example("$0 deregister web 10.128.0.6 --workload-entry", "istiod: also delete WorkloadEntry web-10-128-0-6"),
    handler: async (args) => {
      const rt = runtime();
      validateTarget(args.svc, args.ip);
      const client = await connect(rt, args);
      const report: DeregisterReport = await deregister(
        client,
        { service: args.svc, namespace: client.namespace, ip: args.ip, workloadEntry: args["workload-entry"] },
        runOptions(rt, args),
      );
      printReport(rt, report, () =>
        report.removed === 0
          ? `${report.ip} was not registered in ${report.namespace}/${report.service}\n`
          : `deregistered ${report.ip} from ${report.namespace}/${report.service}: ${report.endpoints} endpoints left\n`,
      );
    },
  };
}
