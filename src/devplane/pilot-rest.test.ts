import { describe, expect, it } from "vitest";
import { pilotRestPerTest } from "../../test/support/pilot-rest.js";
import { FAULT_PATH, startPilotRest } from "./pilot-rest.js";
import { FAULT_SPEC_MAX_BYTES } from "./fault-switch.js";
import { ObjectStore } from "./store.js";

function seed(): ObjectStore {
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "istio-pilot", namespace: "istio-system" },
    spec: {
      clusterIP: "10.96.0.8",
      ports: [
        { name: "http-discovery", port: 8080 },
        { name: "grpc-xds", port: 15010 },
      ],
    },
  });
  store.create("endpoints", {
    metadata: { name: "istio-pilot", namespace: "istio-system" },
    subsets: [
      {
        addresses: [{ ip: "10.1.0.8" }],
        ports: [
          { name: "http-discovery", port: 8080 },
          { name: "grpc-xds", port: 15010 },
        ],
      },
    ],
  });
  store.create("services", {
    metadata: { name: "hello", namespace: "default" },
    spec: { clusterIP: "10.96.1.1", ports: [{ port: 80 }] },
  });
  store.create("endpoints", {
    metadata: { name: "hello", namespace: "default" },
    subsets: [{ addresses: [{ ip: "10.1.1.1" }, { ip: "10.1.1.2" }], ports: [{ port: 8080 }] }],
  });
  return store;
}

describe("dev Pilot v1 REST registration API", () => {
  const rest = pilotRestPerTest(seed);

  it("answers a service key with an encoded | with the endpoints of that port, in the original shape", async () => {
    const res = await fetch(
      `${rest.pilot.url}/v1/registration/istio-pilot.istio-system.svc.cluster.local%7Chttp-discovery`,
    );
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ hosts: [{ ip_address: "10.1.0.8", port: 8080 }] });
    expect(text).toContain('\n  "hosts"');
  });

  it("keys a single unnamed port by the host name alone, using the endpoint's target port", async () => {
    const res = await fetch(`${rest.pilot.url}/v1/registration/hello.default.svc.cluster.local`);
    expect(await res.json()).toEqual({
      hosts: [
        { ip_address: "10.1.1.1", port: 8080 },
        { ip_address: "10.1.1.2", port: 8080 },
      ],
    });
  });

  it("answers an unknown service or port with no hosts", async () => {
    for (const key of ["nope.default.svc.cluster.local%7Chttp", "istio-pilot.istio-system.svc.cluster.local%7Cother"]) {
      const res = await fetch(`${rest.pilot.url}/v1/registration/${key}`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ hosts: [] });
    }
  });

  it("lists every service port with its key", async () => {
    const res = await fetch(`${rest.pilot.url}/v1/registration`);
    const body = (await res.json()) as { "service-key": string }[];
    expect(body.map((e) => e["service-key"])).toEqual([
      "hello.default.svc.cluster.local",
      "istio-pilot.istio-system.svc.cluster.local|http-discovery",
      "istio-pilot.istio-system.svc.cluster.local|grpc-xds",
    ]);
  });

  it("follows endpoint changes (a VM registered later appears)", async () => {
    const ep = rest.store.get("endpoints", "default", "hello");
    rest.store.update("endpoints", { ...ep, subsets: [{ addresses: [{ ip: "10.2.0.9" }], ports: [{ port: 9090 }] }] });
    const res = await fetch(`${rest.pilot.url}/v1/registration/hello.default.svc.cluster.local`);
    expect(await res.json()).toEqual({ hosts: [{ ip_address: "10.2.0.9", port: 9090 }] });
  });

  it("answers 503 while a registry failure is injected, and recovers", async () => {
    rest.pilot.setFault("registry-unavailable");
    const res = await fetch(`${rest.pilot.url}/v1/registration/hello.default.svc.cluster.local`);
    expect(res.status).toBe(503);
    rest.pilot.setFault("none");
    expect((await fetch(`${rest.pilot.url}/v1/registration/hello.default.svc.cluster.local`)).status).toBe(200);
  });

  it("the fault switch reads a short body only, like the dev CA's: a longer one is refused with 413", async () => {
    const switched: string[][] = [];
    // A server of its own on the same store, with a fault switch.
    const pilot = await startPilotRest({
      store: rest.store,
      onFaultSwitch: (names) => {
        switched.push([...names]);
        return undefined;
      },
    });
    try {
      const ok = await fetch(`${pilot.url}${FAULT_PATH}`, {
        method: "POST",
        body: "registry-unavailable,stream-reset",
      });
      expect(ok.status).toBe(200);
      // The whole list reaches the plane's switch (the v1 mTLS front takes registry-unavailable too).
      expect(switched).toEqual([["registry-unavailable", "stream-reset"]]);
      const big = await fetch(`${pilot.url}${FAULT_PATH}`, { method: "POST", body: "x,".repeat(FAULT_SPEC_MAX_BYTES) });
      expect(big.status).toBe(413);
      expect(await big.text()).toContain(`at most ${FAULT_SPEC_MAX_BYTES} bytes`);
      expect(switched).toHaveLength(1);
      expect((await fetch(`${pilot.url}/v1/registration/hello.default.svc.cluster.local`)).status).toBe(503);
    } finally {
      await pilot.close();
    }
  });
});
