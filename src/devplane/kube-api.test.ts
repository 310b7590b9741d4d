import { X509Certificate } from "node:crypto";
import protobuf from "protobufjs";
import { afterEach, describe, expect, it } from "vitest";
import { startControllers } from "./controllers.js";
import type { Controllers } from "./controllers.js";
import { ClusterIpAllocator, parseCidr } from "./ip-allocator.js";
import { KubeApi } from "./kube-api.js";
import type { Target } from "./kube-api.js";
import { defaultRbac, forbidden, isAllowed } from "./kube-rbac.js";
import { ApiStatusError } from "./kube-status.js";
import { mergePatch, strategicMergePatch } from "./merge-patch.js";
import { openApiV2Document } from "./kube-resources.js";
import { createMeshCa } from "./mesh-ca.js";
import { createServiceAccountTokens } from "./sa-tokens.js";
import { pinnedLoadBalancerIps, seedCluster, seedObjects } from "./seed.js";
import { ObjectStore } from "./store.js";
import type { KubeObject } from "./store.js";

function newApi(options: { disabledGroups?: Set<string> } = {}): KubeApi {
  const api = new KubeApi({
    store: new ObjectStore(),
    allocator: new ClusterIpAllocator([parseCidr("10.96.0.0/12")]),
    tokens: createServiceAccountTokens(),
    ...options,
  });
  seedCluster(
    api,
    seedObjects("none", {
      serviceCidrs: [parseCidr("10.96.0.0/12")],
      serviceCidrApi: true,
      trustDomain: "cluster.local",
    }),
  );
  return api;
}

function target(api: KubeApi, resource: string, namespace?: string, name?: string, subresource?: string): Target {
  return { def: api.def(resource), namespace, name, subresource };
}

function thrown(fn: () => unknown): ApiStatusError {
  try {
    fn();
  } catch (error) {
    if (error instanceof ApiStatusError) return error;
    throw error;
  }
  throw new Error("expected an ApiStatusError");
}

describe("KubeApi", () => {
  it("validates names and namespaces as kube-apiserver does", () => {
    const api = newApi();
    const bad = thrown(() => api.create(target(api, "services", "default"), { metadata: { name: "Bad_Name" } }));
    expect(bad.code).toBe(422);
    expect(bad.message).toMatch(/^Service "Bad_Name" is invalid: metadata.name: Invalid value/);
    const noNs = thrown(() => api.create(target(api, "secrets", "nowhere"), { metadata: { name: "s" } }));
    expect([noNs.code, noNs.message]).toEqual([404, 'namespaces "nowhere" not found']);
    const mismatch = thrown(() =>
      api.create(target(api, "secrets", "default"), { metadata: { name: "s", namespace: "other" } }),
    );
    expect(mismatch.message).toBe(
      "the namespace of the provided object does not match the namespace sent on the request",
    );
    const generated = api.create(target(api, "configmaps", "default"), { metadata: { generateName: "cm-" } });
    expect(generated.metadata.name).toMatch(/^cm-[0-9a-f]{5}$/);
  });

  it("allocates clusterIPs, keeps them immutable and frees them on delete", () => {
    const api = newApi();
    const created = api.create(target(api, "services", "default"), {
      metadata: { name: "web" },
      spec: { ports: [{ port: 80 }] },
    });
    const spec = created["spec"] as {
      clusterIP: string;
      clusterIPs: string[];
      ports: { targetPort: number; protocol: string }[];
    };
    expect(spec.clusterIPs).toEqual([spec.clusterIP]);
    expect(spec.ports[0]).toEqual({ port: 80, targetPort: 80, protocol: "TCP" });
    const change = thrown(() =>
      api.update(target(api, "services", "default", "web"), {
        ...created,
        spec: { ...spec, clusterIP: "10.96.0.99", clusterIPs: ["10.96.0.99"] },
      }),
    );
    expect(change.message).toContain("may not change once set");
    const taken = thrown(() =>
      api.create(target(api, "services", "default"), {
        metadata: { name: "other" },
        spec: { clusterIP: spec.clusterIP },
      }),
    );
    expect(taken.message).toContain(`failed to allocate IP ${spec.clusterIP}: provided IP is already allocated`);
    api.delete(target(api, "services", "default", "web"));
    expect(
      (
        api.create(target(api, "services", "default"), {
          metadata: { name: "other" },
          spec: { clusterIP: spec.clusterIP },
        })["spec"] as {
          clusterIP: string;
        }
      ).clusterIP,
    ).toBe(spec.clusterIP);
    const headless = api.create(target(api, "services", "default"), {
      metadata: { name: "h" },
      spec: { clusterIP: "None" },
    });
    expect((headless["spec"] as { clusterIPs: string[] }).clusterIPs).toEqual(["None"]);
    const v6 = thrown(() =>
      api.create(target(api, "services", "default"), { metadata: { name: "v6" }, spec: { clusterIP: "100::1" } }),
    );
    expect(v6.message).toBe(
      'Service "v6" is invalid: spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster',
    );
  });

  it("updates status only through /status, and detects stale resourceVersions", () => {
    const api = newApi();
    const created = api.create(target(api, "services", "default"), {
      metadata: { name: "lb" },
      spec: { type: "LoadBalancer", ports: [{ port: 80 }] },
    });
    const withStatus = api.update(target(api, "services", "default", "lb", "status"), {
      ...created,
      spec: { type: "ClusterIP" },
      status: { loadBalancer: { ingress: [{ ip: "10.0.0.1" }] } },
    });
    expect((withStatus["spec"] as { type: string }).type).toBe("LoadBalancer");
    expect(withStatus["status"]).toEqual({ loadBalancer: { ingress: [{ ip: "10.0.0.1" }] } });
    const stale = thrown(() => api.update(target(api, "services", "default", "lb"), created));
    expect(stale.code).toBe(409);
    expect(stale.message).toBe(
      'Operation cannot be fulfilled on services "lb": the object has been modified; please apply your changes to the latest version and try again',
    );
  });

  it("applies merge patches, removing keys set to null", () => {
    expect(mergePatch({ a: 1, b: { c: 2, d: 3 } }, { b: { c: null, e: 4 }, f: [1] })).toEqual({
      a: 1,
      b: { d: 3, e: 4 },
      f: [1],
    });
    const api = newApi();
    api.create(target(api, "configmaps", "default"), {
      metadata: { name: "cm", labels: { a: "1" } },
      data: { k: "v" },
    });
    const patched = api.patch(target(api, "configmaps", "default", "cm"), {
      metadata: { labels: { a: null, b: "2" } },
    });
    expect(patched.metadata.labels).toEqual({ b: "2" });
    expect(patched["data"]).toEqual({ k: "v" });
  });

  it("merges service ports by port number in strategic merge patches, as kubectl apply expects", () => {
    const current = { spec: { ports: [{ port: 80, name: "http", targetPort: 80 }], type: "ClusterIP" } };
    const patch = {
      spec: {
        "$setElementOrder/ports": [{ port: 81 }, { port: 443 }],
        ports: [
          { $patch: "delete", port: 80 },
          { port: 81, name: "http" },
          { port: 443, name: "https" },
        ],
      },
    };
    expect(strategicMergePatch(current, patch)).toEqual({
      spec: {
        ports: [
          { port: 81, name: "http" },
          { port: 443, name: "https" },
        ],
        type: "ClusterIP",
      },
    });
    expect(strategicMergePatch(current, { spec: { ports: [{ port: 80, name: "web" }] } })).toEqual({
      spec: { ports: [{ port: 80, name: "web", targetPort: 80 }], type: "ClusterIP" },
    });
  });

  it("turns stringData into base64 data and rejects data that is not base64", () => {
    const api = newApi();
    const secret = api.create(target(api, "secrets", "default"), { metadata: { name: "s" }, stringData: { pw: "x" } });
    expect(secret).toMatchObject({ type: "Opaque", data: { pw: "eA==" } });
    expect(secret["stringData"]).toBeUndefined();
    expect(
      thrown(() =>
        api.create(target(api, "secrets", "default"), { metadata: { name: "t" }, data: { pw: "not base64!" } }),
      ).code,
    ).toBe(422);
  });

  it("issues TokenRequests with kube-apiserver's limits", () => {
    const api = newApi();
    api.create(target(api, "serviceaccounts", "default"), { metadata: { name: "default" } });
    const sa = target(api, "serviceaccounts", "default", "default", "token");
    const short = thrown(() => api.create(sa, { spec: { expirationSeconds: 60 } }));
    expect(short.message).toContain("may not specify a duration less than 10 minutes");
    const response = api.create(sa, { spec: {} }) as KubeObject & {
      spec: { audiences: string[]; expirationSeconds: number };
    };
    expect(response.spec).toMatchObject({ audiences: ["istio-ca"], expirationSeconds: 3600 });
  });

  it("does not delete the namespaces a cluster needs, and removes a namespace's objects with it", () => {
    const api = newApi();
    expect(thrown(() => api.delete(target(api, "namespaces", undefined, "default"))).message).toBe(
      'namespaces "default" is forbidden: this namespace may not be deleted',
    );
    api.create(target(api, "namespaces"), { metadata: { name: "apps" } });
    api.create(target(api, "secrets", "apps"), { metadata: { name: "s" } });
    api.delete(target(api, "namespaces", undefined, "apps"));
    expect(api.store.list("secrets", "apps")).toEqual([]);
  });

  it("filters lists by label and field selectors", () => {
    const api = newApi();
    api.create(target(api, "configmaps", "default"), { metadata: { name: "a", labels: { app: "x" } } });
    api.create(target(api, "configmaps", "default"), { metadata: { name: "b", labels: { app: "y" } } });
    const names = (q: { labelSelector?: string; fieldSelector?: string }): string[] =>
      api.list(target(api, "configmaps", "default"), q).items.map((o) => o.metadata.name);
    expect(names({ labelSelector: "app=x" })).toEqual(["a"]);
    expect(names({ labelSelector: "app!=x" })).toEqual(["b"]);
    expect(names({ labelSelector: "app" })).toEqual(["a", "b"]);
    expect(names({ fieldSelector: "metadata.name=b" })).toEqual(["b"]);
  });
});

describe("RBAC", () => {
  it("lets admins do everything and viewers only read, with kube-apiserver's 403 wording", () => {
    const rbac = defaultRbac();
    const admin = { name: "admin", groups: ["system:masters"] };
    const viewer = { name: "viewer", groups: [] };
    expect(isAllowed(rbac, admin, { verb: "delete", resource: "namespaces", namespace: undefined })).toBe(true);
    expect(isAllowed(rbac, viewer, { verb: "list", resource: "secrets", namespace: "default" })).toBe(true);
    expect(isAllowed(rbac, viewer, { verb: "update", resource: "endpoints", namespace: "default" })).toBe(false);
    expect(
      isAllowed(rbac, { name: "stranger", groups: [] }, { verb: "get", resource: "services", namespace: "x" }),
    ).toBe(false);
    const api = newApi();
    expect(forbidden(viewer, { verb: "get", def: api.def("secrets"), namespace: "default", name: "s" }).message).toBe(
      'secrets "s" is forbidden: User "viewer" cannot get resource "secrets" in API group "" in the namespace "default"',
    );
    expect(forbidden(viewer, { verb: "list", def: api.def("servicecidrs") }).message).toBe(
      'servicecidrs.networking.k8s.io is forbidden: User "viewer" cannot list resource "servicecidrs" in API group "networking.k8s.io" at the cluster scope',
    );
  });
});

describe("controllers", () => {
  let controllers: Controllers | undefined;
  afterEach(() => {
    controllers?.close();
  });

  it("gives every service account an istio.<sa> secret (legacy) and LoadBalancers their pinned address", async () => {
    const api = newApi();
    const meshCa = await createMeshCa();
    const clusterCa = await createMeshCa({ commonName: "cluster" });
    controllers = startControllers({
      api,
      meshCa,
      clusterCaPem: clusterCa.rootCertPem,
      profile: "legacy",
      workloadCertTtlMs: 3600_000,
      workloadKeyAlgorithm: "ec-p256",
      lb: { delayMs: 0, poolBase: "10.128.0.6", pinned: pinnedLoadBalancerIps("legacy", "10.128.0.6") },
    });
    const assigned = new Promise<KubeObject>((resolve) => {
      api.store.watch((event) => {
        const ingress = (event.object["status"] as { loadBalancer?: { ingress?: unknown[] } } | undefined)?.loadBalancer
          ?.ingress;
        if (event.resource === "services" && ingress !== undefined && ingress.length > 0) resolve(event.object);
      });
    });
    api.create(target(api, "namespaces"), { metadata: { name: "istio-system" } });
    api.create(target(api, "services", "istio-system"), {
      metadata: { name: "istio-pilot-ilb" },
      spec: { type: "LoadBalancer", ports: [{ port: 8080 }] },
    });
    api.create(target(api, "serviceaccounts", "istio-system"), { metadata: { name: "vm" } });
    await controllers.idle();
    const secret = api.store.get("secrets", "istio-system", "istio.vm") as KubeObject & {
      data: Record<string, string>;
    };
    const cert = new X509Certificate(Buffer.from(secret.data["cert-chain.pem"] ?? "", "base64"));
    expect(cert.subjectAltName).toBe("URI:spiffe://cluster.local/ns/istio-system/sa/vm");
    expect(api.store.tryGet("serviceaccounts", "istio-system", "default")).toBeDefined();
    expect(api.store.tryGet("configmaps", "istio-system", "kube-root-ca.crt")).toBeDefined();
    const lb = await assigned;
    expect(lb.metadata.name).toBe("istio-pilot-ilb");
    expect(lb["status"]).toEqual({ loadBalancer: { ingress: [{ ip: "10.128.0.8", ipMode: "VIP" }] } });
  });
});

describe("/openapi/v2 (what kubectl before 1.27 validates create -f and apply -f with)", () => {
  it("is a Swagger 2.0 document in gnostic's protobuf encoding, and in JSON", () => {
    // Decoded with the field numbers of gnostic's openapiv2/OpenAPIv2.proto: Document.swagger = 1, .info = 2.
    const reader = protobuf.Reader.create(openApiV2Document("protobuf"));
    const fields: Record<number, string> = {};
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag >>> 3 === 1) fields[1] = reader.string();
      else if (tag >>> 3 === 2) {
        const info = protobuf.Reader.create(reader.bytes());
        info.uint32();
        fields[21] = info.string();
      } else reader.skipType(tag & 7);
    }
    expect(fields[1]).toBe("2.0");
    expect(fields[21]).toBe("Kubernetes (istio-vm dev)");
    expect(JSON.parse(openApiV2Document("json").toString())).toMatchObject({ swagger: "2.0", definitions: {} });
  });
});
