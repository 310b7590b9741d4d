import { describe, expect, it } from "vitest";
import { KubeApiError } from "./client.js";
import type { RegistrationInput } from "./register-inputs.js";
import { guessPortName, parseKeyValues, parsePortSpecs } from "./register-inputs.js";
import type { EndpointsObject } from "./register-objects.js";
import { SERVICE_ACCOUNT_ANNOTATION } from "./register-objects.js";
import { planAddAddress, planRemoveAddress, workloadEntryName } from "./register-plan.js";
import { deregister, register } from "./register.js";
import { FakeKubeClient, SteppingClock } from "../../test/fakes/kube-client.js";

const input = (
  overrides: Partial<RegistrationInput & { workloadEntry: boolean }> = {},
): RegistrationInput & { workloadEntry: boolean } => ({
  service: "mysqldb",
  namespace: "default",
  ip: "10.138.0.13",
  ports: [{ name: "mysql", port: 3306 }],
  labels: {},
  annotations: {},
  serviceAccount: "default",
  workloadEntry: false,
  ...overrides,
});

function options(log: string[] = [], clock = new SteppingClock()) {
  return { dryRun: false, clock, log: (line: string) => log.push(line), random: () => 0.5 };
}

function endpoints(client: FakeKubeClient, name = "mysqldb", ns = "default"): EndpointsObject {
  return client.store.get("endpoints", ns, name) as unknown as EndpointsObject;
}

describe("port specs", () => {
  it("guesses names as the original did", () => {
    expect([80, 443, 3306, 8080, 9090].map(guessPortName)).toEqual(["http", "https", "mysql", "http", "9090"]);
  });
  it("keeps explicit names and avoids a duplicate guessed name", () => {
    expect(parsePortSpecs(["80", "8080", "grpc:9090"])).toEqual([
      { name: "http", port: 80 },
      { name: "http-8080", port: 8080 },
      { name: "grpc", port: 9090 },
    ]);
  });
  it("reports every bad item", () => {
    expect(() => parsePortSpecs(["http:0", "x", "Bad_Name:80"])).toThrow(/'http:0'.*'x'.*Bad_Name/);
    expect(() => parsePortSpecs(["80", "80"])).toThrow(/given twice/);
  });
});

describe("parseKeyValues", () => {
  it("splits lists, repeats flags, and gives a bare key an empty value", () => {
    expect(parseKeyValues(["app=web,version=v1", "team"], "labels")).toEqual({ app: "web", version: "v1", team: "" });
    expect(() => parseKeyValues(["bad key=1"], "labels")).toThrow(/not a valid Kubernetes key/);
  });
});

describe("planners", () => {
  const base: EndpointsObject = {
    apiVersion: "v1",
    kind: "Endpoints",
    metadata: { name: "s" },
    subsets: [
      { addresses: [{ ip: "10.0.0.1" }, { ip: "10.0.0.2" }, { ip: "10.0.0.1" }], ports: [{ name: "http", port: 80 }] },
      { addresses: [{ ip: "10.0.0.1" }], ports: [{ name: "grpc", port: 9090 }] },
    ],
  };

  it("removes duplicates of the IP in the matching subset and reports them", () => {
    const plan = planAddAddress(base, "10.0.0.1", [{ name: "http", port: 80 }]);
    expect(plan.duplicatesRemoved).toBe(1);
    expect(plan.changed).toBe(true);
    expect(plan.endpoints.subsets?.[0]?.addresses).toEqual([{ ip: "10.0.0.1" }, { ip: "10.0.0.2" }]);
    expect(plan.endpoints.subsets?.[1]).toEqual(base.subsets?.[1]);
  });

  it("adds a new subset for a new port set", () => {
    const plan = planAddAddress(base, "10.0.0.3", [{ name: "mysql", port: 3306 }]);
    expect(plan.endpoints.subsets).toHaveLength(3);
    expect(plan.messages.join("\n")).toContain("No pre existing exact matching ports list found");
  });

  it("removes every occurrence and drops empty subsets", () => {
    const { endpoints: after, removed } = planRemoveAddress(base, "10.0.0.1");
    expect(removed).toBe(3);
    expect(after.subsets).toEqual([{ addresses: [{ ip: "10.0.0.2" }], ports: [{ name: "http", port: 80 }] }]);
  });

  it("names WorkloadEntries <service>-<ip with . and : as ->", () => {
    expect(workloadEntryName("web", "10.0.0.1")).toBe("web-10-0-0-1");
    expect(workloadEntryName("web", "2001:db8::1")).toBe("web-2001-db8--1");
  });
});

describe("register", () => {
  it("creates the selector-less Service and the Endpoints, with the original's log lines", async () => {
    const client = new FakeKubeClient();
    const log: string[] = [];
    const report = await register(client, input({ labels: { app: "db" }, annotations: { note: "" } }), options(log));
    const service = client.store.get("services", "default", "mysqldb");
    expect(service["spec"]).toMatchObject({ ports: [{ name: "mysql", port: 3306 }] });
    expect((service["spec"] as Record<string, unknown>)["selector"]).toBeUndefined();
    expect(service.metadata.annotations).toEqual({ note: "", [SERVICE_ACCOUNT_ANNOTATION]: "default" });
    expect(service.metadata.labels).toEqual({ app: "db" });
    expect(endpoints(client).subsets).toEqual([
      { addresses: [{ ip: "10.138.0.13" }], ports: [{ name: "mysql", port: 3306, protocol: "TCP" }] },
    ]);
    expect(report.endpoints).toBe(1);
    expect(log[0]).toBe("Registering for service 'mysqldb' ip '10.138.0.13', ports list [{3306 mysql}]");
    expect(log).toContain(
      "Got 'services \"mysqldb\" not found' looking up svc 'mysqldb' in namespace 'default', attempting to create it",
    );
    expect(log.at(-1)).toBe("Successfully updated mysqldb, now with 1 endpoints");
  });

  it("is idempotent: a second registration changes nothing", async () => {
    const client = new FakeKubeClient();
    await register(client, input(), options());
    const before = endpoints(client).metadata.resourceVersion;
    const report = await register(client, input(), options());
    expect(report.actions.map((a) => a.action)).toEqual(["unchanged", "unchanged"]);
    expect(endpoints(client).metadata.resourceVersion).toBe(before);
    expect(endpoints(client).subsets?.[0]?.addresses).toEqual([{ ip: "10.138.0.13" }]);
  });

  it("never modifies an existing Service, and warns when it lacks the service account", async () => {
    const client = new FakeKubeClient();
    client.store.create("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "mysqldb", namespace: "default", annotations: { [SERVICE_ACCOUNT_ANNOTATION]: "other" } },
      spec: { ports: [{ port: 3306 }] },
    });
    const log: string[] = [];
    await register(client, input(), options(log));
    expect(client.store.get("services", "default", "mysqldb").metadata.annotations).toEqual({
      [SERVICE_ACCOUNT_ANNOTATION]: "other",
    });
    expect(log.some((l) => l.startsWith("Warning: existing service default/mysqldb does not list"))).toBe(true);
  });

  it("takes the port names of an existing Service, so the Endpoints match its ports", async () => {
    const client = new FakeKubeClient();
    client.store.create("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "mysqldb", namespace: "default", annotations: { [SERVICE_ACCOUNT_ANNOTATION]: "default" } },
      spec: { ports: [{ name: "tcp-db", port: 3306, targetPort: 3306 }] },
    });
    const log: string[] = [];
    await register(client, input(), options(log));
    expect(endpoints(client).subsets?.[0]?.ports).toEqual([{ name: "tcp-db", port: 3306, protocol: "TCP" }]);
    expect(log).toContain("Using the service's name 'tcp-db' for port 3306 (instead of 'mysql')");
    await register(client, input({ ip: "10.0.0.9", ports: [{ name: "http", port: 8080 }] }), options(log));
    expect(log.some((l) => l.includes("does not expose port 8080"))).toBe(true);
  });

  it("re-reads and retries when another writer changes the Endpoints in between", async () => {
    const client = new FakeKubeClient({
      intercept: (r) => {
        // Two concurrent writers sneak in before our first two updates.
        if (r.verb === "update" && injected < 2) {
          injected++;
          const current = client.store.get("endpoints", "default", "mysqldb");
          (current["subsets"] as { addresses: { ip: string }[] }[])[0]?.addresses.push({ ip: `10.9.9.${injected}` });
          client.store.update("endpoints", current);
        }
      },
    });
    let injected = 0;
    await register(client, input({ ip: "10.0.0.1" }), options());
    const log: string[] = [];
    const report = await register(client, input({ ip: "10.0.0.2" }), options(log));
    expect(report.retries).toBe(2);
    expect(log.filter((l) => l.includes("resourceVersion conflict"))).toHaveLength(2);
    expect(endpoints(client).subsets?.[0]?.addresses?.map((a) => a.ip)).toEqual([
      "10.0.0.1",
      "10.9.9.1",
      "10.9.9.2",
      "10.0.0.2",
    ]);
  });

  it("gives up after the bounded number of attempts", async () => {
    const client = new FakeKubeClient({
      intercept: (r) => {
        if (r.verb === "update")
          throw new KubeApiError({ status: 409, reason: "Conflict", message: "modified", subject: r.path });
      },
    });
    await register(client, input({ ip: "10.0.0.1" }), options());
    await expect(register(client, input({ ip: "10.0.0.2" }), { ...options(), maxAttempts: 3 })).rejects.toMatchObject({
      code: "UPDATE_CONFLICT",
    });
  });

  it("changes nothing with --dry-run, but sends the writes for validation", async () => {
    const client = new FakeKubeClient();
    const report = await register(client, input(), { ...options(), dryRun: true });
    expect(report.actions.map((a) => a.action)).toEqual(["create", "create"]);
    expect(client.store.tryGet("services", "default", "mysqldb")).toBeUndefined();
    expect(client.store.tryGet("endpoints", "default", "mysqldb")).toBeUndefined();
    expect(client.requests.filter((r) => r.verb === "create").every((r) => r.dryRun)).toBe(true);
  });

  it("writes a WorkloadEntry with identity, labels and named ports, idempotently", async () => {
    const client = new FakeKubeClient();
    const withEntry = input({
      workloadEntry: true,
      labels: { version: "v1" },
      serviceAccount: "db-vm",
      ports: [
        { name: "mysql", port: 3306 },
        { name: "http", port: 8080 },
      ],
    });
    await register(client, withEntry, options());
    const entry = client.store.get("workloadentries", "default", "mysqldb-10-138-0-13");
    expect(entry).toMatchObject({
      apiVersion: "networking.istio.io/v1",
      kind: "WorkloadEntry",
      spec: {
        address: "10.138.0.13",
        serviceAccount: "db-vm",
        labels: { app: "mysqldb", version: "v1" },
        ports: { mysql: 3306, http: 8080 },
      },
    });
    const again = await register(client, withEntry, options());
    expect(again.actions.at(-1)?.action).toBe("unchanged");
  });
});

describe("deregister", () => {
  it("removes the IP, keeps the Service, deletes the WorkloadEntry, and reports an unknown IP", async () => {
    const client = new FakeKubeClient();
    await register(client, input({ ip: "10.0.0.1", workloadEntry: true }), options());
    await register(client, input({ ip: "10.0.0.2" }), options());
    const report = await deregister(
      client,
      { service: "mysqldb", namespace: "default", ip: "10.0.0.1", workloadEntry: true },
      options(),
    );
    expect(report.removed).toBe(1);
    expect(report.endpoints).toBe(1);
    expect(client.store.tryGet("workloadentries", "default", "mysqldb-10-0-0-1")).toBeUndefined();
    expect(client.store.tryGet("services", "default", "mysqldb")).toBeDefined();

    const log: string[] = [];
    const again = await deregister(
      client,
      { service: "mysqldb", namespace: "default", ip: "10.0.0.1", workloadEntry: false },
      options(log),
    );
    expect(again.removed).toBe(0);
    expect(log).toContain("Could not find ip 10.0.0.1 in svc mysqldb endpoints");

    await deregister(
      client,
      { service: "mysqldb", namespace: "default", ip: "10.0.0.2", workloadEntry: false },
      options(),
    );
    expect(endpoints(client).subsets).toEqual([]);
  });

  it("treats a service without Endpoints as nothing to do", async () => {
    const client = new FakeKubeClient();
    const report = await deregister(
      client,
      { service: "ghost", namespace: "default", ip: "10.0.0.1", workloadEntry: false },
      options(),
    );
    expect(report.actions[0]?.action).toBe("absent");
    expect(client.requests.every((r) => r.verb === "get")).toBe(true);
  });
});
