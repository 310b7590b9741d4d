/**
 * The istiod profile's auto-registration and health, as `npm start -- --profile istiod` shows them on loopback
 * (test/e2e/recipe.ts calls this): `istio-vm bundle --workload-group` creates the WorkloadGroup, an agent with only
 * its `health` component connects to the dev istiod with the bundle's token, istiod creates the WorkloadEntry, the
 * probe's flips move the VM in and out of EDS, and the entry is deleted 10 s after the agent stops.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import type { AddressInfo, Server } from "node:net";
import { join } from "node:path";
import type { CommandResult } from "./debian-harness.js";
import { runHost } from "./debian-harness.js";

export interface AutoRegistrationContext {
  readonly cli: string;
  readonly work: string;
  readonly kubeconfig: string;
  /** The dev Pilot's plain and TLS xDS addresses. */
  readonly grpc: string;
  readonly grpcTls: string;
  readonly eds: string;
  readonly step: (
    id: string,
    title: string,
    body: (s: { saw: string[]; data: Record<string, unknown> }) => Promise<void>,
  ) => Promise<unknown>;
  readonly show: (command: string, result?: CommandResult | string) => void;
  readonly must: (command: string, result: CommandResult) => CommandResult;
  readonly admin: (args: readonly string[]) => Promise<CommandResult>;
  readonly addCleanup: (label: string, action: () => Promise<unknown>) => void;
}

const GROUP = "vm-app";
const VM_IP = "10.0.0.6";

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(250);
  }
}

function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => socket.destroy());
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      resolve(server);
    });
  });
}

async function freePort(): Promise<number> {
  const server = await listen(0);
  const port = (server.address() as AddressInfo).port;
  await closeServer(server);
  return port;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => {
      resolve();
    });
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const state = { exited: false };
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      state.exited = true;
      resolve();
    });
  });
  child.kill("SIGTERM");
  await Promise.race([exited, pause(10_000)]);
  if (!state.exited) child.kill("SIGKILL");
}

export async function autoRegistrationWalkthrough(ctx: AutoRegistrationContext): Promise<void> {
  // istiod's name for the entry: <group>-<IP>[-<network>] (the dev mesh has a network, as multi-network meshes do).
  let ENTRY = `${GROUP}-${VM_IP}`;
  const kubectl = async (args: readonly string[]): Promise<CommandResult> =>
    runHost("kubectl", ["--kubeconfig", ctx.kubeconfig, ...args], { timeoutMs: 30_000 });
  const entry = async (): Promise<Record<string, unknown> | undefined> => {
    const result = await kubectl(["get", "workloadentries", ENTRY, "-n", "default", "-o", "json"]);
    return result.code === 0 ? (JSON.parse(result.stdout) as Record<string, unknown>) : undefined;
  };
  const healthy = async (): Promise<string | undefined> => {
    const e = await entry();
    const conditions = (e?.["status"] as { conditions?: { type: string; status: string }[] } | undefined)?.conditions;
    return conditions?.find((c) => c.type === "Healthy")?.status;
  };
  const cluster = `outbound|80||${GROUP}.default.svc.cluster.local`;
  const eds = async (): Promise<string> =>
    ctx.must("eds", await runHost(process.execPath, [ctx.eds, ctx.grpc, cluster])).stdout.trim();

  const app = await listen(0);
  const appPort = (app.address() as AddressInfo).port;
  let appServer: Server | undefined = app;
  ctx.addCleanup("stop the demo application", async () => {
    if (appServer !== undefined) await closeServer(appServer);
  });
  let agent: ChildProcess | undefined;
  ctx.addCleanup("stop the health agent", async () => {
    if (agent !== undefined) await stop(agent);
  });

  await ctx.step("workload-group", `Admin side: istio-vm bundle --workload-group ${GROUP}`, async (s) => {
    const svc = await kubectl(["create", "service", "clusterip", GROUP, `--tcp=80:${String(appPort)}`]);
    ctx.show(`kubectl create service clusterip ${GROUP} --tcp=80:${String(appPort)}   # selects app=${GROUP}`, svc);
    ctx.must("kubectl create service", svc);
    const probe = JSON.stringify({ tcpSocket: { port: appPort }, periodSeconds: 1 });
    await ctx.admin([
      ...["bundle", "-n", "default", "-s", "default", "--no-deb", "-o", join(ctx.work, "wg.tgz")],
      ...["--workload-group", GROUP, "--labels", `app=${GROUP}`, "--ports", `http:${String(appPort)}`],
      ...["--probe", probe],
    ]);
    const group = await kubectl(["get", "workloadgroups", GROUP, "-n", "default", "-o", "yaml"]);
    ctx.show(`kubectl get workloadgroup ${GROUP} -o yaml`, group);
    s.saw.push(`WorkloadGroup default/${GROUP} created with probe tcpSocket :${String(appPort)}`);
  });

  await ctx.step("auto-register", "The VM connects: istiod creates its WorkloadEntry (no `register`)", async (s) => {
    const root = join(ctx.work, "vm-autoreg");
    await mkdir(join(root, "x"), { recursive: true });
    ctx.must("tar", await runHost("tar", ["-xzf", join(ctx.work, "wg.tgz"), "-C", join(root, "x")]));
    const put = async (path: string, member: string): Promise<void> => {
      await mkdir(join(root, path, ".."), { recursive: true });
      await writeFile(join(root, path), await readFile(join(root, "x", member)), { mode: 0o600 });
    };
    await put("var/lib/istio/envoy/cluster.env", "cluster.env");
    await put("etc/certs/root-cert.pem", "root-cert.pem");
    await put("var/lib/istio/tokens/istio-token", "istio-token");
    const clusterEnv = await readFile(join(root, "var/lib/istio/envoy/cluster.env"), "utf8");
    const network = /^ISTIO_META_NETWORK='?([^'\n]*)'?$/m.exec(clusterEnv)?.[1] ?? "";
    if (network !== "") ENTRY = `${ENTRY}-${network}`;
    ctx.show(
      "grep -E 'AUTO_REGISTER|NETWORK|PROXY_CONFIG|LABELS' cluster.env",
      clusterEnv
        .split("\n")
        .filter((l) => /AUTO_REGISTER|NETWORK|PROXY_CONFIG|LABELS/.test(l))
        .join("\n"),
    );
    const env = {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      ISTIO_VM_ROOT: root,
      ISTIO_AGENT_COMPONENTS: "health",
      DISCOVERY_ADDRESS: ctx.grpcTls,
      ISTIO_SVC_IP: VM_IP,
      STATUS_PORT: String(await freePort()),
    };
    ctx.show(
      `ISTIO_VM_ROOT=$WORK/vm-autoreg ISTIO_AGENT_COMPONENTS=health DISCOVERY_ADDRESS=${ctx.grpcTls} ISTIO_SVC_IP=${VM_IP} istio-vm agent &`,
    );
    agent = spawn(process.execPath, [ctx.cli, "agent"], { env, stdio: ["ignore", "ignore", "pipe"] });
    const log: string[] = [];
    agent.stderr?.on("data", (chunk: Buffer) => log.push(chunk.toString()));
    const running = agent;
    const created = await until("the WorkloadEntry", async () => {
      if (running.exitCode !== null) throw new Error(`istio-vm agent exited ${String(running.exitCode)}`);
      return (await healthy()) === "True" ? entry() : undefined;
    }).catch(async (error: unknown) => {
      const entries = await kubectl(["get", "workloadentries", "-A", "-o", "yaml"]);
      throw new Error(
        `${(error as Error).message}; agent log:\n${log.join("")}\nWorkloadEntries:\n${entries.stdout}${entries.stderr}`,
      );
    });
    const shown = await kubectl(["get", "workloadentries", ENTRY, "-n", "default", "-o", "yaml"]);
    ctx.show(`kubectl get workloadentry ${ENTRY} -o yaml`, shown);
    const endpoints = await eds();
    ctx.show(`EDS request for '${cluster}'`, endpoints);
    s.data["entry"] = created;
    s.data["eds"] = endpoints;
    s.saw.push(`WorkloadEntry default/${ENTRY}, owned by WorkloadGroup ${GROUP}, Healthy=True`);
    s.saw.push(`EDS ${cluster}: ${endpoints}`);
  });

  await ctx.step("health-flip", "The application stops: the probe fails, istiod drops the VM from EDS", async (s) => {
    if (appServer !== undefined) await closeServer(appServer);
    appServer = undefined;
    ctx.show(`(the application on :${String(appPort)} stops)`);
    await until("Healthy=False", async () => ((await healthy()) === "False" ? true : undefined));
    const down = await kubectl([
      ...["get", "workloadentries", ENTRY, "-n", "default"],
      ...["-o", "jsonpath={.status.conditions[0].status} {.status.conditions[0].message}"],
    ]);
    ctx.show(`kubectl get workloadentry ${ENTRY} -o jsonpath='{.status.conditions[0]}'`, down);
    const empty = await eds();
    ctx.show(`EDS request for '${cluster}'`, empty === "" ? "(no endpoints)" : empty);
    appServer = await listen(appPort);
    ctx.show(`(the application on :${String(appPort)} is back)`);
    await until("Healthy=True", async () => ((await healthy()) === "True" ? true : undefined));
    const back = await eds();
    ctx.show(`EDS request for '${cluster}'`, back);
    s.data["edsDown"] = empty;
    s.data["edsBack"] = back;
    s.saw.push(`probe failed → Healthy=False, EDS empty; probe passed → Healthy=True, EDS ${back}`);
  });

  await ctx.step("deregister", "The VM leaves: istiod deletes the entry 10 s after its stream closed", async (s) => {
    if (agent !== undefined) await stop(agent);
    ctx.show("kill -TERM <agent>");
    const disconnected = await until("istio.io/disconnectedAt", async () => {
      const annotations = ((await entry())?.["metadata"] as { annotations?: Record<string, string> } | undefined)
        ?.annotations;
      return annotations?.["istio.io/disconnectedAt"];
    });
    ctx.show(
      `kubectl get workloadentry ${ENTRY} -o jsonpath='{.metadata.annotations.istio\\.io/disconnectedAt}'`,
      disconnected,
    );
    const started = Date.now();
    await until("the entry's deletion", async () => ((await entry()) === undefined ? true : undefined), 30_000);
    const gone = await kubectl(["get", "workloadentries", "-n", "default"]);
    ctx.show("kubectl get workloadentries", gone);
    s.saw.push(
      `WorkloadEntry ${ENTRY} deleted ${String(Math.round((Date.now() - started) / 1000))} s after the disconnect was recorded`,
    );
  });
}
