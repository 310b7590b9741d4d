import { describe, expect, it } from "vitest";
import { DEFAULT_LB_OPTIONS, kubednsTargets, planKubedns, resolveLoadBalancers } from "./kubedns.js";
import {
  FakeKubeClient,
  ISTIOD_ADDRESSES,
  LEGACY_ADDRESSES,
  SteppingClock,
  lbService,
  seedIstiodCluster,
  seedLegacyCluster,
} from "../../test/fakes/kube-client.js";

/** The file setupMeshEx.sh wrote in 0.2.12–0.7.1 (docs/protocols.md, "kubedns"). */
const ORIGINAL_EXAMPLE = `server=/svc.cluster.local/10.128.0.6
address=/istio-mixer/10.128.0.7
address=/istio-pilot/10.128.0.8
address=/istio-ca/10.128.0.9
address=/istio-mixer.istio-system/10.128.0.7
address=/istio-pilot.istio-system/10.128.0.8
address=/istio-ca.istio-system/10.128.0.9
`;

async function resolveFor(client: FakeKubeClient, profile: "legacy" | "istiod", clock = new SteppingClock()) {
  return resolveLoadBalancers(client, kubednsTargets(profile, DEFAULT_LB_OPTIONS), {
    clock,
    waitMs: 60_000,
    intervalMs: 5_000,
  });
}

describe("kubedns, legacy profile", () => {
  it("is byte for byte the original format", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    const resolved = await resolveFor(client, "legacy");
    const text = planKubedns("legacy", resolved.addresses, "istio-system");
    expect(text).toBe(ORIGINAL_EXAMPLE);
    await expect(text).toMatchFileSnapshot("__golden__/kubedns.legacy");
  });

  it("reads each load balancer by name: the request count does not depend on the cluster size", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    for (let i = 0; i < 200; i++) client.store.create("services", lbService("default", `svc-${i}`, "10.0.0.1"));
    await resolveFor(client, "legacy");
    expect(client.requests.every((r) => r.verb === "get")).toBe(true);
    expect(client.requests).toHaveLength(4);
  });

  it("uses citadel-ilb (0.8) when istio-ca-ilb does not exist", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    client.store.delete("services", "istio-system", "istio-ca-ilb");
    client.store.create("services", lbService("istio-system", "citadel-ilb", "10.128.0.19"));
    const resolved = await resolveFor(client, "legacy");
    expect(resolved.addresses.ca).toBe("10.128.0.19");
  });

  it("fails at once naming a missing required Service", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    client.store.delete("services", "istio-system", "mixer-ilb");
    await expect(resolveFor(client, "legacy")).rejects.toMatchObject({
      code: "LB_SERVICE_MISSING",
      message: expect.stringContaining("istio-system/mixer-ilb") as unknown,
    });
  });
});

describe("kubedns, istiod profile", () => {
  it("points istiod's names at the gateway, and svc.cluster.local at kube-dns when it has a load balancer", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    client.store.create("services", lbService("kube-system", "dns-ilb", ISTIOD_ADDRESSES.dns));
    const resolved = await resolveFor(client, "istiod");
    const text = planKubedns("istiod", resolved.addresses, "istio-system");
    await expect(text).toMatchFileSnapshot("__golden__/kubedns.istiod");
    expect(text).toContain(`server=/svc.cluster.local/${ISTIOD_ADDRESSES.dns}\n`);
    expect(text).toContain(`address=/istiod.istio-system.svc/${ISTIOD_ADDRESSES.gateway}\n`);
  });

  it("leaves out the server= line without a DNS load balancer, and accepts IPv6", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    client.store.delete("services", "istio-system", "istio-eastwestgateway");
    client.store.create("services", lbService("istio-system", "istio-eastwestgateway", "2001:db8::10"));
    const resolved = await resolveFor(client, "istiod");
    expect(resolved.absent).toEqual(["kube-system/dns-ilb"]);
    const text = planKubedns("istiod", resolved.addresses, "istio-system");
    expect(text).toBe(
      "address=/istiod/2001:db8::10\naddress=/istiod.istio-system/2001:db8::10\naddress=/istiod.istio-system.svc/2001:db8::10\n",
    );
  });

  it("uses --gateway-ip without reading the gateway, and rejects a non-IP", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    const targets = kubednsTargets("istiod", { ...DEFAULT_LB_OPTIONS, gatewayAddress: "203.0.113.7" });
    const resolved = await resolveLoadBalancers(client, targets, {
      clock: new SteppingClock(),
      waitMs: 0,
      intervalMs: 1,
    });
    expect(resolved.addresses.istiod).toBe("203.0.113.7");
    expect(client.requests.map((r) => r.path)).not.toContain(
      "/api/v1/namespaces/istio-system/services/istio-eastwestgateway",
    );
    const bad = kubednsTargets("istiod", { ...DEFAULT_LB_OPTIONS, gatewayAddress: "gw.example.com" });
    await expect(
      resolveLoadBalancers(client, bad, { clock: new SteppingClock(), waitMs: 0, intervalMs: 1 }),
    ).rejects.toMatchObject({ code: "LB_ADDRESS_INVALID" });
  });

  it("names a revisioned istiod as istiod-<rev>", () => {
    expect(planKubedns("istiod", { istiod: "192.0.2.10" }, "istio-system", "istiod-canary")).toBe(
      "address=/istiod-canary/192.0.2.10\naddress=/istiod-canary.istio-system/192.0.2.10\naddress=/istiod-canary.istio-system.svc/192.0.2.10\n",
    );
  });

  it("refuses a load balancer that has only a host name", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    const gw = client.store.get("services", "istio-system", "istio-eastwestgateway");
    gw["status"] = { loadBalancer: { ingress: [{ hostname: "abc.elb.amazonaws.com" }] } };
    client.store.update("services", gw);
    await expect(resolveFor(client, "istiod")).rejects.toMatchObject({ code: "LB_HOSTNAME_ONLY" });
  });
});

describe("waiting for pending load balancers", () => {
  it("polls with progress until the address appears", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    const pilot = client.store.get("services", "istio-system", "istio-pilot-ilb");
    pilot["status"] = { loadBalancer: {} };
    client.store.update("services", pilot);
    const clock = new SteppingClock();
    clock.onSleep = () => {
      if (clock.sleeps.length === 3) {
        const current = client.store.get("services", "istio-system", "istio-pilot-ilb");
        current["status"] = { loadBalancer: { ingress: [{ ip: LEGACY_ADDRESSES.pilot }] } };
        client.store.update("services", current);
      }
    };
    const progress: string[] = [];
    const resolved = await resolveLoadBalancers(client, kubednsTargets("legacy", DEFAULT_LB_OPTIONS), {
      clock,
      waitMs: 120_000,
      intervalMs: 5_000,
      progress: (line) => progress.push(line),
    });
    expect(resolved.addresses.pilot).toBe(LEGACY_ADDRESSES.pilot);
    expect(progress).toHaveLength(3);
    expect(progress[0]).toBe("waiting for a load-balancer address: istio-system/istio-pilot-ilb (0s of 2m)");
    expect(progress[1]).toContain("(5s of 2m)");
    // Only the pending Service is read again.
    const pilotReads = client.requests.filter((r) => r.path.endsWith("/istio-pilot-ilb")).length;
    expect(pilotReads).toBe(4);
    expect(client.requests).toHaveLength(4 + 3);
  });

  it("gives up after --wait naming every Service still pending", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    for (const [ns, name] of [
      ["istio-system", "istio-ca-ilb"],
      ["kube-system", "dns-ilb"],
    ] as const) {
      const svc = client.store.get("services", ns, name);
      svc["status"] = { loadBalancer: {} };
      client.store.update("services", svc);
    }
    const clock = new SteppingClock();
    const error = await resolveLoadBalancers(client, kubednsTargets("legacy", DEFAULT_LB_OPTIONS), {
      clock,
      waitMs: 30_000,
      intervalMs: 10_000,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "LB_ADDRESS_PENDING" });
    expect((error as Error).message).toContain("kube-system/dns-ilb");
    expect((error as Error).message).toContain("istio-system/istio-ca-ilb");
    expect(clock.sleeps.reduce((a, b) => a + b, 0)).toBe(30_000);
  });
});
