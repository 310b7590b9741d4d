import yargs from "yargs";
import type { CommandModule } from "yargs";
import { describe, expect, it } from "vitest";
import { parseYaml } from "../kube/yaml.js";
import { silentLogger } from "../platform/logger.js";
import { certsCommand } from "./certs.js";
import { clusterEnvCommand } from "./cluster-env.js";
import type { CommandRuntime } from "./context.js";
import { dnsmasqCommand } from "./dnsmasq.js";
import { deregisterCommand, registerCommand } from "./register.js";
import type { KubeConnector } from "./admin-options.js";
import { FakeKubeClient, SteppingClock, seedIstiodCluster, seedLegacyCluster } from "../../test/fakes/kube-client.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { fakePorts } from "../../test/fakes/ports.js";

type Factory = (runtime: () => CommandRuntime, connect: KubeConnector) => CommandModule<object, never>;

/** Runs one admin command through yargs as main.ts does, with a fake cluster and file system. */
async function run(factory: Factory, argv: string[], client: FakeKubeClient, fs = new MemoryFileSystem()) {
  const out: string[] = [];
  const err: string[] = [];
  const runtime: CommandRuntime = {
    ...fakePorts({ fs, clock: new SteppingClock(Date.now()) }),
    notifier: () => {
      throw new Error("no notifier in this test");
    },
    out: (t) => out.push(t),
    err: (t) => err.push(t),
    isTty: false,
    options: { json: argv.includes("--json"), logLevel: undefined },
    logger: silentLogger,
    exitCode: 0,
  };
  await yargs(argv)
    .option("json", { type: "boolean", default: false })
    .command(
      factory(
        () => runtime,
        () => Promise.resolve(client),
      ),
    )
    .strict()
    .exitProcess(false)
    .fail((message: string | null, error: Error | undefined) => {
      throw error ?? new Error(message ?? "usage");
    })
    .parseAsync();
  return { out: out.join(""), err: err.join(""), fs };
}

describe("register --dry-run", () => {
  it("prints YAML documents that parse back to the Service and Endpoints, and writes nothing", async () => {
    const client = new FakeKubeClient();
    const { out, err } = await run(
      registerCommand as Factory,
      ["register", "web", "10.0.0.5", "8080", "grpc:9090", "-l", "app=web", "--dry-run"],
      client,
    );
    const docs = out.split("---\n").map((d) => parseYaml(d) as { kind: string; spec?: unknown; subsets?: unknown });
    expect(docs.map((d) => d.kind)).toEqual(["Service", "Endpoints"]);
    expect(docs[0]?.spec).toEqual({
      ports: [
        { name: "http", port: 8080, protocol: "TCP", targetPort: 8080 },
        { name: "grpc", port: 9090, protocol: "TCP", targetPort: 9090 },
      ],
    });
    expect(docs[1]?.subsets).toEqual([
      {
        addresses: [{ ip: "10.0.0.5" }],
        ports: [
          { name: "http", port: 8080, protocol: "TCP" },
          { name: "grpc", port: 9090, protocol: "TCP" },
        ],
      },
    ]);
    expect(err).toContain("Registering for service 'web' ip '10.0.0.5'");
    expect(client.store.list("services")).toEqual([]);
  });

  it("reports in JSON, and deregister --dry-run shows the Endpoints without the IP", async () => {
    const client = new FakeKubeClient();
    const { out } = await run(registerCommand as Factory, ["register", "web", "10.0.0.5", "80", "--json"], client);
    expect(JSON.parse(out)).toMatchObject({ service: "web", namespace: "default", endpoints: 1, dryRun: false });
    const dry = await run(deregisterCommand as Factory, ["deregister", "web", "10.0.0.5", "--dry-run"], client);
    expect(parseYaml(dry.out.replace(/^#.*\n/, ""))).toMatchObject({ kind: "Endpoints", subsets: [] });
    expect(client.store.get("endpoints", "default", "web")["subsets"]).toHaveLength(1);
  });
});

describe("generated files", () => {
  it("cluster-env -o writes 0644 and refuses a directory", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    const fs = new MemoryFileSystem();
    fs.dirs.add("/out");
    await run(
      clusterEnvCommand as Factory,
      ["cluster-env", "-o", "/out/cluster.env", "--service-cidr", "10.0.0.0/16"],
      client,
      fs,
    );
    expect(fs.files.get("/out/cluster.env")?.mode).toBe(0o644);
    expect(fs.files.get("/out/cluster.env")?.data.toString()).toContain("ISTIO_SERVICE_CIDR=10.0.0.0/16\n");
    await expect(
      run(clusterEnvCommand as Factory, ["cluster-env", "-o", "/out", "--service-cidr", "10.0.0.0/16"], client, fs),
    ).rejects.toMatchObject({ code: "OUTPUT_IS_DIRECTORY" });
  });

  it("cluster-env --revision uses istiod-<rev> and fails clearly when it does not exist", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    client.store.create("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "istiod-canary", namespace: "istio-system" },
    });
    const { out } = await run(clusterEnvCommand as Factory, ["cluster-env", "--revision", "canary"], client);
    expect(out).toContain("ISTIOD_SAN='istiod-canary.istio-system.svc'\n");
    await expect(
      run(clusterEnvCommand as Factory, ["cluster-env", "--revision", "stable"], client),
    ).rejects.toMatchObject({
      code: "REVISION_NOT_FOUND",
    });
  });

  it("dnsmasq prints the file on standard output without -o", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    const { out } = await run(dnsmasqCommand as Factory, ["dnsmasq", "--wait", "0"], client);
    expect(out).toBe(
      "address=/istiod/192.0.2.10\naddress=/istiod.istio-system/192.0.2.10\naddress=/istiod.istio-system.svc/192.0.2.10\n",
    );
  });

  it("certs writes the token 0600 and never prints it", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    const { out, err, fs } = await run(certsCommand as Factory, ["certs", "-o", "/vm", "--json"], client);
    const token = fs.files.get("/vm/istio-token");
    expect(token?.mode).toBe(0o600);
    expect(out + err).not.toContain(token?.data.toString() ?? "unreachable");
    expect(JSON.parse(out)).toMatchObject({ profile: "istiod", files: [{ mode: "0644" }, { mode: "0600" }] });
  });

  it("certs rejects a token lifetime below the API server's minimum", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    await expect(run(certsCommand as Factory, ["certs", "--token-duration", "5m"], client)).rejects.toMatchObject({
      kind: "usage",
    });
  });
});
