/**
 * The whole mesh-expansion recipe end to end, exactly as `npm start` shows it (test/e2e/recipe.ts is the driver of
 * both): istio-vm dev in a "cluster" namespace, a booted Debian 12 container as the VM, cluster-env, dnsmasq, certs,
 * bundle, install, the agent with the Envoy stand-in, istio-vm check, ISTIO_INBOUND_PORTS=3306 and a reload, a TCP
 * service registered with `istio-vm register`, its name resolved on the VM, Pilot listing the VM (v1 REST and EDS),
 * and a connection from the cluster captured on the VM. Each step's outcome is asserted from the driver's report.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requirements } from "../support/requirements.js";
import { HARNESS_TOOLS } from "./debian-harness.js";
import type { Profile, RecipeReport, StepRecord } from "./recipe.js";
import { Cleanups, HOST_TOOLS, runRecipe } from "./recipe.js";

const missing = requirements({ root: true, tools: [...HARNESS_TOOLS, ...HOST_TOOLS, "dpkg-deb"] });

const PROFILES: readonly { profile: Profile; capturePort: number; credentials: readonly string[] }[] = [
  { profile: "legacy", capturePort: 15001, credentials: ["key.pem", "cert-chain.pem", "root-cert.pem"] },
  { profile: "istiod", capturePort: 15006, credentials: ["istio-token", "root-cert.pem"] },
];

describe.skipIf(missing !== undefined).each(PROFILES)(
  "the recipe end to end ($profile), as npm start runs it",
  ({ profile, capturePort, credentials }) => {
    let report: RecipeReport | undefined;
    let transcript = "";
    const cleanups = new Cleanups();

    beforeAll(async () => {
      report = await runRecipe({
        profile,
        root: true,
        cleanups,
        print: (text) => {
          transcript += text;
        },
      });
    }, 20 * 60_000);

    afterAll(async () => {
      await cleanups.run();
    });

    const step = (id: string): StepRecord => {
      const s = report?.steps.find((x) => x.id === id);
      if (s === undefined) throw new Error(`step ${id} did not run:\n${transcript}`);
      expect(s.status, `${s.reason ?? ""}\n--- transcript\n${transcript}`).toBe("ok");
      return s;
    };

    it("every step ran and passed, none skipped", () => {
      expect(report?.steps.map((s) => [s.id, s.status])).toEqual(
        [
          "package",
          "vm",
          "network",
          "control-plane",
          ...(profile === "istiod" ? ["dns-ilb"] : []),
          "generate",
          "bundle",
          "stand-in",
          "install",
          "check",
          ...(profile === "istiod" ? ["rotation"] : []),
          "inbound-ports",
          "service",
          "register",
          "dns",
          "pilot",
          ...(profile === "legacy" ? ["envoy-v1"] : []),
          "capture",
        ].map((id) => [id, "ok"]),
      );
      expect(report?.ok).toBe(true);
    });

    it("the admin commands produced cluster.env, kubedns and the profile's credentials, and a bundle with the .deb", () => {
      const generate = step("generate");
      expect(generate.data["clusterEnv"]).toMatch(new RegExp(`^ISTIO_CONTROL_PLANE='?${profile}'?$`, "m"));
      expect(generate.data["kubedns"]).toMatch(/^server=\/svc\.cluster\.local\/10\.254\.\d+\.[67]$/m);
      for (const file of credentials) expect(generate.data["files"]).toContain(file);
      const listing = String(step("bundle").data["listing"]);
      for (const member of ["cluster.env", "kubedns", "sidecar.env", ...credentials, ".deb"]) {
        expect(listing).toContain(member);
      }
    });

    it("install leaves the agent active and enabled with the stand-in Envoy, and istio-vm check passes", () => {
      expect(step("install").data["unit"]).toMatchObject({
        ActiveState: "active",
        SubState: "running",
        UnitFileState: "enabled",
      });
      // systemctl status shows the identity and the certificate's expiry, and Envoy's epoch.
      expect(String((step("install").data["unit"] as Record<string, string>)["StatusText"])).toMatch(
        /^ready: .*cert spiffe:\/\/cluster\.local\/ns\/default\/sa\/default expires \S+.*envoy.* ready/,
      );
      // The stand-in runs as istio-proxy inside the unit's cgroup.
      const envoys = String(step("install").data["envoyProcesses"]).trim().split("\n");
      expect(envoys.length).toBeGreaterThan(0);
      for (const line of envoys) expect(line).toBe("istio-proxy istio-vm-agent.service");
      const check = step("check");
      expect(check.data["code"]).toBe(0);
      expect(transcript).toContain("Envoy STAND-IN");
    });

    it.runIf(profile === "istiod")(
      "a renewal reaches the running Envoy over SDS: new serial, same PID and epoch; its xDS came through the agent",
      () => {
        const rotation = step("rotation");
        const before = rotation.data["before"] as { serial: string; epoch: number; pids: string };
        const after = rotation.data["after"] as { serial: string; epoch: number; pids: string };
        expect(before.serial).toMatch(/^[0-9a-f]+$/);
        expect(after.serial).toBe(rotation.data["store"]);
        expect(after.serial).not.toBe(before.serial);
        expect(after.epoch).toBe(0);
        expect(after.pids).toBe(before.pids);
        // Envoy's CDS came through the agent's xDS proxy from the dev istiod, and the proxy's stream is up.
        expect(rotation.data["clusters"]).toContain("outbound|443||kubernetes.default.svc.cluster.local");
        expect(rotation.data["xdsProxy"]).toMatch(/istiod \S+ answered CDS, LDS/);
      },
    );

    it("ISTIO_INBOUND_PORTS=3306 and a reload add the inbound capture of 3306", () => {
      expect(step("inbound-ports").data["rules"]).toMatch(
        /-A ISTIO_INBOUND -p tcp -m tcp --dport 3306 -j ISTIO_(IN_)?REDIRECT/,
      );
    });

    it("mysqldb.default.svc.cluster.local resolves on the VM to a clusterIP in the service CIDR", () => {
      expect(step("dns").data["address"]).toMatch(/^10\.(9[6-9]|10[0-9]|11[01])\.\d+\.\d+$/);
    });

    it("Pilot lists the VM as the endpoint: v1 registration API and EDS", () => {
      const pilot = step("pilot");
      const vmIp = String(step("network").data["vmIp"]);
      expect(pilot.data["registration"]).toEqual([{ ip_address: vmIp, port: 3306 }]);
      expect(pilot.data["eds"]).toEqual([`${vmIp}:3306`]);
    });

    it.runIf(profile === "legacy")(
      "legacy (ENVOY_XDS_API=v1): the VM's Envoy got its inbound listener for 3306 and the out.mysqldb cluster from Pilot's v1 LDS/CDS",
      () => {
        const envoy = step("envoy-v1");
        const vmIp = String(step("network").data["vmIp"]);
        expect(envoy.data["listeners"]).toContain(`tcp_${vmIp}_3306`);
        expect(envoy.data["listeners"]).toContain("virtual");
        expect(envoy.data["clusters"]).toContain("out.mysqldb.default.svc.cluster.local|mysql");
        expect(envoy.data["clusters"]).toContain("in.3306");
      },
    );

    it("a connection from the cluster to the VM's 3306 arrives at the capture port, not at the service", () => {
      const capture = step("capture");
      const clusterIp = String(step("network").data["clusterIp"]);
      expect(String(capture.data["held"])).toMatch(
        new RegExp(`:${String(capturePort)}\\s+${clusterIp.replace(/\./g, "\\.")}:\\d+`),
      );
      expect(capture.data["reachedService"]).toBe(0);
      expect(String(capture.data["counters"])).toMatch(/dpt:3306/);
    });

    it("cleaned up: no namespace or container of the recipe is left", async () => {
      await cleanups.run();
      const { execFileSync } = await import("node:child_process");
      // Only this run's namespace counts: another run (a demo, a second test process) may be going on.
      const clusterNs = String(step("network").data["clusterNs"]);
      expect(clusterNs).toMatch(/^recipe-cluster-[0-9a-f]{6}$/);
      expect(execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n")).not.toContainEqual(
        expect.stringMatching(new RegExp(`^${clusterNs}\\b`)),
      );
      expect(transcript).toMatch(/cleanup: power off and remove the VM container/);
    });
  },
);

describe("the recipe without root, as npm start runs it for an unprivileged user", () => {
  it("runs what needs no privilege against the dev plane on loopback and names every skipped step", async () => {
    let transcript = "";
    const report = await runRecipe({
      profile: "legacy",
      root: false,
      print: (text) => {
        transcript += text;
      },
    });
    expect(
      report.steps.map((s) => [s.id, s.status]),
      transcript,
    ).toEqual([
      ["control-plane", "ok"],
      ["generate", "ok"],
      ["bundle", "ok"],
      ["vm", "skipped"],
      ["network", "skipped"],
      ["install", "skipped"],
      ["check", "skipped"],
      ["inbound-ports", "skipped"],
      ["service", "skipped"],
      ["register", "ok"],
      ["dns", "ok"],
      ["pilot", "ok"],
      ["capture", "skipped"],
    ]);
    expect(report.ok).toBe(true);
    for (const s of report.steps.filter((x) => x.status === "skipped")) expect(s.reason).toMatch(/needs/);
    const pilot = report.steps.find((s) => s.id === "pilot");
    expect(pilot?.data["registration"]).toEqual([{ ip_address: "10.0.0.5", port: 3306 }]);
    expect(pilot?.data["eds"]).toEqual(["10.0.0.5:3306"]);
    expect(pilot?.data["checkCode"]).toBe(0);
    expect(report.steps.find((s) => s.id === "dns")?.data["address"]).toMatch(/^10\.(9[6-9]|1[01]\d)\./);
    expect(transcript).toMatch(/cleanup: stop istio-vm dev/);
  }, 120_000);
});

describe("the recipe without root on the istiod profile: auto-registration and health", () => {
  it("creates the WorkloadGroup, istiod registers the VM, a probe flip moves it out of EDS and back, and it leaves", async () => {
    let transcript = "";
    const report = await runRecipe({
      profile: "istiod",
      root: false,
      print: (text) => {
        transcript += text;
      },
    });
    expect(report.ok, transcript).toBe(true);
    const ids = report.steps.filter((s) => s.status === "ok").map((s) => s.id);
    expect(ids).toEqual(expect.arrayContaining(["workload-group", "auto-register", "health-flip", "deregister"]));
    const registered = report.steps.find((s) => s.id === "auto-register");
    expect(registered?.data["entry"]).toMatchObject({
      metadata: {
        name: "vm-app-10.0.0.6-network1",
        annotations: { "istio.io/autoRegistrationGroup": "vm-app", "proxy.istio.io/health-checks-enabled": "true" },
        ownerReferences: [{ kind: "WorkloadGroup", name: "vm-app", controller: true }],
      },
    });
    expect(registered?.data["eds"]).toMatch(/^10\.0\.0\.6:\d+$/);
    const flip = report.steps.find((s) => s.id === "health-flip");
    expect(flip?.data["edsDown"]).toBe("");
    expect(flip?.data["edsBack"]).toBe(registered?.data["eds"]);
    expect(transcript).toMatch(/cleanup: stop the health agent/);
  }, 180_000);
});
