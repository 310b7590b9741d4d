/** `istio-vm envoy bootstrap` as the built CLI: what an operator sees, and the --json bootstrap Envoy would accept. */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";
import { checkAgainstProto, checkAgainstV2Proto } from "../support/envoy-proto.js";
import { checkAgainstV1Schema } from "../support/envoy-v1-schema.js";

const ENV = { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ISTIO_VM_ROOT: "/nonexistent-vm-root" };

describe("istio-vm envoy bootstrap", () => {
  it("--json prints the bootstrap alone, valid against Envoy's Bootstrap proto", async () => {
    const r = await runCli(["envoy", "bootstrap", "--json"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", POD_NAME: "web-1", ISTIO_META_OWNER: "team-a" },
    });
    expect(r.code).toBe(0);
    const bootstrap = JSON.parse(r.stdout) as { node: { id: string; metadata: Record<string, string> } };
    expect(bootstrap.node.id).toBe("sidecar~10.1.2.3~web-1.default~default.svc.cluster.local");
    expect(bootstrap.node.metadata["OWNER"]).toBe("team-a");
    expect(checkAgainstProto(bootstrap).errors).toEqual([]);
  });

  it("prints the file and the Envoy command line of the epoch asked for", async () => {
    const r = await runCli(["envoy", "bootstrap", "--epoch", "3"], { env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3" } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("/nonexistent-vm-root/etc/istio/proxy/envoy-rev3.json (mode 0600, owner istio-proxy)");
    expect(r.stdout).toMatch(/^# {3}\/usr\/local\/bin\/envoy -c \S+envoy-rev3\.json --restart-epoch 3 /m);
    expect(r.stdout).toContain("server DNS SAN istiod.istio-system.svc");
  });

  it("says which API the bootstrap uses and why: legacy defaults to v1 (schema-valid), istiod to v3", async () => {
    const legacy = await runCli(["envoy", "bootstrap"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ISTIO_CONTROL_PLANE: "legacy" },
    });
    expect(legacy.code).toBe(0);
    expect(legacy.stdout).toContain(
      "# API v1: Envoy v1 JSON configuration, polling Pilot's v1 REST API (/v1/listeners, /v1/clusters, /v1/routes, /v1/registration): Istio 0.2–0.7, Envoy ≤ 1.7; the legacy profile's default (ENVOY_XDS_API unset)",
    );
    expect(legacy.stdout).toContain("--max-obj-name-len 189");
    expect(legacy.stdout).toContain("# discovery: istio-pilot.istio-system:15003 over mTLS");
    const json = await runCli(["envoy", "bootstrap", "--json"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ISTIO_CONTROL_PLANE: "legacy" },
    });
    expect(checkAgainstV1Schema("bootstrap", JSON.parse(json.stdout))).toEqual([]);
    const v2 = await runCli(["envoy", "bootstrap"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ISTIO_CONTROL_PLANE: "legacy", ENVOY_XDS_API: "v2" },
    });
    expect(v2.code, v2.stderr).toBe(0);
    expect(v2.stdout).toContain("# API v2: xDS v2 over ADS: Istio 0.8 Pilot, Envoy ≤ 1.16; set by ENVOY_XDS_API");
    expect(v2.stdout).toContain("# discovery: istio-pilot.istio-system:15011 over mTLS");
    expect(v2.stdout).toContain("--max-obj-name-len 189");
    const v2Json = await runCli(["envoy", "bootstrap", "--json"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ISTIO_CONTROL_PLANE: "legacy", ENVOY_XDS_API: "v2" },
    });
    expect(checkAgainstV2Proto(JSON.parse(v2Json.stdout)).errors).toEqual([]);
    const v3 = await runCli(["envoy", "bootstrap"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ISTIO_CONTROL_PLANE: "legacy", ENVOY_XDS_API: "v3" },
    });
    expect(v3.stdout).toContain("# API v3: xDS v3 over ADS: istiod, current Envoy; set by ENVOY_XDS_API");
    const istiod = await runCli(["envoy", "bootstrap"], { env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3" } });
    expect(istiod.stdout).toContain("# API v3: xDS v3 over ADS: istiod, current Envoy; the istiod profile's default");
    const bad = await runCli(["envoy", "bootstrap"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", ENVOY_XDS_API: "v1" },
    });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("ENVOY_XDS_API");
  });

  it("plain text under CONTROL_PLANE_AUTH_POLICY=NONE: no TLS in the bootstrap; istiod's xDS goes through the agent", async () => {
    const r = await runCli(["envoy", "bootstrap", "--json"], {
      env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3", CONTROL_PLANE_AUTH_POLICY: "NONE" },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("transport_socket");
    // The agent's xDS proxy dials istiod:15010; Envoy dials the agent's socket.
    expect(r.stdout).toContain('"discoveryAddress": "istiod.istio-system.svc:15010"');
    expect(r.stdout).toMatch(/"pipe": \{\s*"path": "[^"]*\/run\/istio-vm\/xds\/XDS"/);
    const legacy = await runCli(["envoy", "bootstrap", "--json"], {
      env: {
        ...ENV,
        ISTIO_SVC_IP: "10.1.2.3",
        CONTROL_PLANE_AUTH_POLICY: "NONE",
        ISTIO_CONTROL_PLANE: "legacy",
        ENVOY_XDS_API: "v3",
      },
    });
    expect(legacy.code, legacy.stderr).toBe(0);
    expect(legacy.stdout).not.toContain("transport_socket");
    expect(legacy.stdout).toContain('"port_value": 15010');
  });

  it("istiod profile: ISTIO_VERSION, PROXY_CONFIG over Istio's defaults and node.cluster by Istio's rule", async () => {
    const dir = await mkdtemp(join(tmpdir(), "istio-vm-envoy-cli-"));
    try {
      const clusterEnv = join(dir, "cluster.env");
      await writeFile(
        clusterEnv,
        "ISTIO_CONTROL_PLANE='istiod'\nPOD_NAMESPACE='default'\nISTIO_VERSION='1.24.2'\n" +
          `ISTIO_METAJSON_LABELS='{"app":"mysql"}'\nPROXY_CONFIG='{"holdApplicationUntilProxyStarts":true}'\n`,
      );
      const env = { ...ENV, ISTIO_CLUSTER_CONFIG: clusterEnv, ISTIO_SVC_IP: "10.1.2.3" };
      const json = await runCli(["envoy", "bootstrap", "--json"], { env });
      expect(json.code, json.stderr).toBe(0);
      const node = (JSON.parse(json.stdout) as { node: { cluster: string; metadata: Record<string, unknown> } }).node;
      expect(node.cluster).toBe("mysql.default");
      expect(node.metadata["ISTIO_VERSION"]).toBe("1.24.2");
      expect(node.metadata["PROXY_CONFIG"]).toMatchObject({
        holdApplicationUntilProxyStarts: true,
        serviceCluster: "istio-proxy",
        discoveryAddress: "istiod.istio-system.svc:15012",
      });
      const text = await runCli(["envoy", "bootstrap"], { env });
      expect(text.stdout).toContain("# node.cluster mysql.default (Istio's rule");
      expect(text.stdout).toContain("# ISTIO_VERSION 1.24.2\n");
      expect(text.stdout).toContain("# PROXY_CONFIG: Istio's defaults + PROXY_CONFIG + this agent's");
      expect(text.stdout).not.toContain("--service-cluster");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("exits 2 without ISTIO_SVC_IP and for a bad --epoch", async () => {
    const noIp = await runCli(["envoy", "bootstrap"], { env: ENV });
    expect(noIp.code).toBe(2);
    expect(noIp.stderr).toContain("ISTIO_SVC_IP");
    const bad = await runCli(["envoy", "bootstrap", "--epoch", "-1"], { env: { ...ENV, ISTIO_SVC_IP: "10.1.2.3" } });
    expect(bad.code).toBe(2);
  });
});
