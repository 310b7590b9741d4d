/**
 * The command table `main.ts` registers: each command's name and one-line description, and how to load the rest.
 * A command's module (its options, its handler and everything they import: gRPC and protobuf, the kube client, the
 * dev control plane, the provisioning code) is loaded only when that command runs, so `istio-vm --version`,
 * `--help` and `config` never pay for the others. esbuild turns each `import()` below into a lazy initialiser inside
 * the one bundle (format cjs: the module's top level runs on the first call, not at start-up).
 * `commands.test.ts` checks that every entry says what its module says.
 */
import type { CommandModule } from "yargs";
import type { CommandRuntime } from "./context.js";

// Each factory has its own argument type; yargs only needs the module shape here.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- heterogeneous command argument types
export type CommandFactory = (runtime: () => CommandRuntime) => CommandModule<object, any>;

export interface CommandEntry {
  /** The yargs command string, positionals included (`register <svc> <ip> <ports..>`). */
  readonly command: string;
  readonly describe: string;
  readonly load: () => Promise<CommandFactory>;
}

/** Every implemented command, in --help order; a command appears in --help only once it works. */
export const COMMANDS: readonly CommandEntry[] = [
  {
    command: "agent",
    describe: "Run the VM agent: certificates, traffic capture and Envoy (the daemon of istio-vm-agent.service)",
    load: async () => (await import("./agent.js")).agentCommand,
  },
  {
    command: "config",
    describe: "Show the effective configuration of this VM and where each value came from",
    load: async () => (await import("./config.js")).configCommand,
  },
  {
    command: "iptables",
    describe: "Plan, apply, remove and show the traffic capture rules (replaces istio-iptables.sh)",
    load: async () => (await import("./iptables.js")).iptablesCommand,
  },
  {
    command: "envoy",
    describe: "Envoy as the agent runs it: the bootstrap it writes (Envoy itself is not shipped)",
    load: async () => (await import("./envoy.js")).envoyCommandModule,
  },
  {
    command: "cluster-env",
    describe: "Generate cluster.env (service CIDR, control plane, identity) from the cluster's API",
    load: async () => (await import("./cluster-env.js")).clusterEnvCommand,
  },
  {
    command: "dnsmasq",
    describe: "Generate the dnsmasq file kubedns that resolves the control plane's names to its load balancers",
    load: async () => (await import("./dnsmasq.js")).dnsmasqCommand,
  },
  {
    command: "certs [sa] [ns]",
    describe: "Fetch and verify a VM's bootstrap credentials (legacy: istio.<sa> PEMs; istiod: root cert + token)",
    load: async () => (await import("./certs.js")).certsCommand,
  },
  {
    command: "register <svc> <ip> <ports..>",
    describe: "Make a VM service known to the mesh: a selector-less Service plus Endpoints holding the VM's IP",
    load: async () => (await import("./register.js")).registerCommand,
  },
  {
    command: "deregister <svc> <ip>",
    describe: "Remove a VM's IP from a registered service (the Service itself is kept)",
    load: async () => (await import("./register.js")).deregisterCommand,
  },
  {
    command: "dev",
    describe: "Run a local stand-in control plane (Kubernetes API + Istio pieces) for demos and tests",
    load: async () => (await import("./dev.js")).devCommand,
  },
  {
    command: "check",
    describe:
      "Check this VM: DNS, discovery (Pilot), CA, certificate, traffic capture and Envoy (exit 1 on any failure)",
    load: async () => (await import("./check.js")).checkCommand,
  },
  {
    command: "bundle",
    describe: "Make one archive with everything a VM needs (config, kubedns, credentials, the .deb) for `install`",
    load: async () => (await import("./bundle.js")).bundleCommand,
  },
  {
    command: "install <bundle>",
    describe: "On the VM (root): install a bundle from `istio-vm bundle` — package, files, DNS, enabled agent",
    load: async () => (await import("./install.js")).installCommand,
  },
  {
    command: "uninstall",
    describe:
      "On the VM (root): put back the resolver and dnsmasq files `istio-vm install` changed (package removal runs it)",
    load: async () => (await import("./uninstall.js")).uninstallCommand,
  },
  {
    command: "setup [hosts..]",
    describe: "Set up VMs over SSH (bundle, scp, sudo istio-vm install), many in parallel; or --cloud-init user-data",
    load: async () => (await import("./setup.js")).setupCommand,
  },
];

/** `register <svc> <ip> <ports..>` → `register`. */
export function commandName(entry: Pick<CommandEntry, "command">): string {
  return entry.command.split(" ")[0] ?? "";
}

/**
 * The command argv names: the first argument that is a command's name. Global flags come before it (`--json`,
 * `--log-level debug`: no command is named like a log level); bash completion asks
 * `--get-yargs-completions istio-vm <words…>`, where the first word is the program's name.
 */
export function requestedCommand(argv: readonly string[]): CommandEntry | undefined {
  const end = argv.indexOf("--");
  const words = end === -1 ? argv : argv.slice(0, end);
  const completion = words.indexOf("--get-yargs-completions");
  const candidates = completion === -1 ? words : words.slice(completion + 2);
  for (const word of candidates) {
    const entry = COMMANDS.find((e) => commandName(e) === word);
    if (entry !== undefined) return entry;
  }
  return undefined;
}
