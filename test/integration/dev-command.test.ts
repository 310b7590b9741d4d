/**
 * `istio-vm dev` as a user runs it: the built CLI as a subprocess, plain kubectl against the kubeconfig it writes,
 * and a clean exit on SIGTERM/SIGINT. The kubectl tests run once per real client found (test/support/kubectl.ts):
 * Debian 12's kubectl 1.20 and the current one on PATH.
 */
import { execFile } from "node:child_process";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";
import type { KubectlClient } from "../support/kubectl.js";
import { KUBECTL_CLIENTS, kubectlRequirement } from "../support/kubectl.js";
import { requirements } from "../support/requirements.js";
import type { DevProcess } from "./dev-process.js";
import { startDev, startDevText } from "./dev-process.js";

const run = promisify(execFile);
const missing = requirements({ tools: ["openssl"] }) ?? kubectlRequirement();
const dir = mkdtempSync(join(tmpdir(), "dev-command-"));

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function kubectlWith(
  client: KubectlClient,
  kubeconfig: string,
  args: readonly string[],
  input?: string,
): Promise<Result> {
  const file = input === undefined ? undefined : join(dir, `input-${Math.random().toString(36).slice(2)}.yaml`);
  if (file !== undefined && input !== undefined) writeFileSync(file, input);
  // "FILE" in args stands for a file holding `input`.
  const argv = ["--kubeconfig", kubeconfig, ...args.map((a) => (a === "FILE" && file !== undefined ? file : a))];
  try {
    const { stdout, stderr } = await run(client.path, argv, {
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir },
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

const SERVICE = `apiVersion: v1
kind: Service
metadata:
  name: vm-web
spec:
  ports:
  - name: http
    port: 8080
`;
const SECRET = `apiVersion: v1
kind: Secret
metadata:
  name: vm-secret
stringData:
  password: s3cret
`;
const ENDPOINTS = `apiVersion: v1
kind: Endpoints
metadata:
  name: vm-web
subsets:
- addresses:
  - ip: 10.20.0.5
  ports:
  - name: http
    port: 8080
`;

/** `kubectl create token` (TokenRequest with a protobuf body) exists from kubectl 1.24 on. */
const CREATE_TOKEN_SINCE = 24;

for (const client of KUBECTL_CLIENTS)
  describe.skipIf(missing !== undefined)(`istio-vm dev --profile legacy with ${client.label}`, () => {
    let dev: DevProcess;
    const kc = join(dir, `legacy-1.${client.minor}.kubeconfig`);
    const kubectl = (kubeconfig: string, args: readonly string[], input?: string): Promise<Result> =>
      kubectlWith(client, kubeconfig, args, input);
    /** What `kubectl create token vm --audience istio-ca --duration 20m` sends, as JSON; stdout is the token. */
    const rawTokenRequest = async (kubeconfig: string): Promise<Result> => {
      const request = { apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest" };
      const spec = { audiences: ["istio-ca"], expirationSeconds: 1200 };
      const path = "/api/v1/namespaces/default/serviceaccounts/vm/token";
      const result = await kubectl(
        kubeconfig,
        ["create", "--raw", path, "-f", "FILE"],
        JSON.stringify({ ...request, spec }),
      );
      if (result.code !== 0) return result;
      const status = (JSON.parse(result.stdout) as { status?: { token?: string } }).status;
      return { ...result, stdout: status?.token ?? "" };
    };

    beforeAll(async () => {
      dev = await startDev([
        "--profile",
        "legacy",
        "--lb-ip",
        "10.10.0.6",
        "--lb-delay",
        "0",
        "--write-kubeconfig",
        kc,
      ]);
    });
    afterAll(async () => {
      await dev.stop("SIGKILL");
    });

    it("writes a 0600 kubeconfig and announces itself on one JSON line", () => {
      expect(statSync(kc).mode & 0o777).toBe(0o600);
      expect(dev.ready).toMatchObject({ ready: true, profile: "legacy", kubeconfig: kc, serviceCidr: "10.96.0.0/12" });
      expect(dev.ready.kubeApi[0]).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    });

    it("serves the legacy mesh-expansion services; the ILBs get their addresses in the pinned order", async () => {
      let table = "";
      for (let i = 0; i < 100; i++) {
        table = (await kubectl(kc, ["get", "svc", "-A"])).stdout;
        if (!table.includes("<pending>")) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const row = (name: string): string[] =>
        (table.split("\n").find((l) => l.includes(` ${name} `)) ?? "").split(/\s+/);
      expect(row("dns-ilb").slice(0, 5)).toEqual([
        "kube-system",
        "dns-ilb",
        "LoadBalancer",
        expect.stringMatching(/^10\./),
        "10.10.0.6",
      ]);
      expect(row("mixer-ilb")[4]).toBe("10.10.0.7");
      expect(row("istio-pilot-ilb")[4]).toBe("10.10.0.8");
      expect(row("istio-ca-ilb")[4]).toBe("10.10.0.9");
      expect(row("kube-dns")[3]).toBe("10.96.0.10");
      for (const name of ["istio-pilot", "istio-mixer", "istio-ca"]) expect(row(name)[2]).toBe("ClusterIP");
    });

    it("has istio.<sa> secrets whose certificates verify against the root with the SPIFFE identity", async () => {
      const get = await kubectl(kc, ["get", "secret", "istio.default", "-n", "default", "-o", "json"]);
      expect(get.code).toBe(0);
      const secret = JSON.parse(get.stdout) as {
        type: string;
        data: Record<string, string>;
        metadata: { annotations: Record<string, string> };
      };
      expect(secret.type).toBe("istio.io/key-and-cert");
      expect(secret.metadata.annotations["istio.io/service-account.name"]).toBe("default");
      const pem = (k: string): string => Buffer.from(secret.data[k] ?? "", "base64").toString();
      writeFileSync(join(dir, "root.pem"), pem("root-cert.pem"));
      writeFileSync(join(dir, "chain.pem"), pem("cert-chain.pem"));
      const verify = await run("openssl", ["verify", "-CAfile", join(dir, "root.pem"), join(dir, "chain.pem")]);
      expect(verify.stdout).toContain("OK");
      const cert = new X509Certificate(pem("cert-chain.pem"));
      expect(cert.subjectAltName).toBe("URI:spiffe://cluster.local/ns/default/sa/default");
      expect(cert.checkPrivateKey(createPrivateKey(pem("key.pem")))).toBe(true);
    });

    it("lets kubectl create, get and delete services, secrets and endpoints", async () => {
      for (const doc of [SERVICE, SECRET, ENDPOINTS]) {
        const created = await kubectl(kc, ["create", "-f", "FILE"], doc);
        expect(created.stderr).toBe("");
        expect(created.stdout).toMatch(/created/);
      }
      const svc = JSON.parse((await kubectl(kc, ["get", "svc", "vm-web", "-o", "json"])).stdout) as {
        spec: { clusterIP: string; ports: { targetPort: number; protocol: string }[] };
      };
      expect(svc.spec.clusterIP).toMatch(/^10\./);
      expect(svc.spec.ports[0]).toMatchObject({ targetPort: 8080, protocol: "TCP" });
      const secret = JSON.parse((await kubectl(kc, ["get", "secret", "vm-secret", "-o", "json"])).stdout) as {
        data: Record<string, string>;
      };
      expect(Buffer.from(secret.data["password"] ?? "", "base64").toString()).toBe("s3cret");
      expect((await kubectl(kc, ["get", "endpoints", "vm-web"])).stdout).toContain("10.20.0.5:8080");
      const twice = await kubectl(kc, ["create", "-f", "FILE"], SERVICE);
      expect(twice.code).not.toBe(0);
      expect(twice.stderr).toContain('services "vm-web" already exists');

      for (const [kind, name] of [
        ["svc", "vm-web"],
        ["secret", "vm-secret"],
        ["endpoints", "vm-web"],
      ] as const) {
        const deleted = await kubectl(kc, ["delete", kind, name]);
        expect(deleted.stdout).toMatch(/deleted/);
        const gone = await kubectl(kc, ["get", kind, name]);
        expect(gone.code).not.toBe(0);
        expect(gone.stderr).toMatch(/NotFound.*not found/);
      }
    });

    it("understands the protobuf bodies of kubectl's typed create commands (secret, service, serviceaccount, token)", async () => {
      expect(
        (await kubectl(kc, ["create", "secret", "generic", "proto-secret", "--from-literal=user=vm"])).stdout,
      ).toContain("created");
      const secret = JSON.parse((await kubectl(kc, ["get", "secret", "proto-secret", "-o", "json"])).stdout) as {
        type: string;
        data: Record<string, string>;
      };
      expect(secret).toMatchObject({ type: "Opaque", data: { user: Buffer.from("vm").toString("base64") } });

      expect((await kubectl(kc, ["create", "service", "nodeport", "proto-svc", "--tcp=80:8080"])).stdout).toContain(
        "created",
      );
      const svc = JSON.parse((await kubectl(kc, ["get", "svc", "proto-svc", "-o", "json"])).stdout) as {
        spec: {
          type: string;
          selector: Record<string, string>;
          ports: { port: number; targetPort: number; nodePort: number }[];
        };
      };
      expect(svc.spec.type).toBe("NodePort");
      expect(svc.spec.selector).toEqual({ app: "proto-svc" });
      expect(svc.spec.ports[0]).toMatchObject({ port: 80, targetPort: 8080 });
      expect(svc.spec.ports[0]?.nodePort).toBeGreaterThanOrEqual(30000);

      expect((await kubectl(kc, ["create", "serviceaccount", "vm", "-n", "default"])).stdout).toContain("created");
      // Older clients have no `create token`: the same TokenRequest as a raw JSON POST.
      const token =
        client.minor >= CREATE_TOKEN_SINCE
          ? await kubectl(kc, ["create", "token", "vm", "--audience", "istio-ca", "--duration", "20m"])
          : await rawTokenRequest(kc);
      expect(token.code, token.stderr).toBe(0);
      const claims = JSON.parse(Buffer.from(token.stdout.trim().split(".")[1] ?? "", "base64url").toString()) as {
        aud: string[];
        sub: string;
        exp: number;
        iat: number;
      };
      expect(claims).toMatchObject({ aud: ["istio-ca"], sub: "system:serviceaccount:default:vm" });
      expect(claims.exp - claims.iat).toBe(1200);
      for (const [kind, name] of [
        ["secret", "proto-secret"],
        ["svc", "proto-svc"],
        ["sa", "vm"],
      ]) {
        expect((await kubectl(kc, ["delete", kind ?? "", name ?? ""])).stdout).toContain("deleted");
      }
    });

    it("supports kubectl apply: create, then a changed port replaces the old one", async () => {
      const first = await kubectl(kc, ["apply", "-f", "FILE"], SERVICE.replace("vm-web", "applied"));
      expect(first.stdout).toContain("service/applied created");
      const second = await kubectl(
        kc,
        ["apply", "-f", "FILE"],
        SERVICE.replace("vm-web", "applied").replace("8080", "9090"),
      );
      expect(second.stdout).toContain("service/applied configured");
      const ports = await kubectl(kc, ["get", "svc", "applied", "-o", "jsonpath={.spec.ports[*].port}"]);
      expect(ports.stdout).toBe("9090");
      expect((await kubectl(kc, ["delete", "svc", "applied"])).stdout).toContain("deleted");
    });

    it("refuses writes for the read-only viewer context with kube-apiserver's 403 message", async () => {
      const read = await kubectl(kc, ["--context", "istio-vm-dev-viewer", "get", "svc", "-n", "istio-system"]);
      expect(read.code).toBe(0);
      const write = await kubectl(kc, ["--context", "istio-vm-dev-viewer", "create", "-f", "FILE"], SERVICE);
      expect(write.code).not.toBe(0);
      expect(write.stderr).toContain(
        'services is forbidden: User "viewer" cannot create resource "services" in API group "" in the namespace "default"',
      );
      const del = await kubectl(kc, [
        "--context",
        "istio-vm-dev-viewer",
        "delete",
        "svc",
        "istio-pilot",
        "-n",
        "istio-system",
      ]);
      expect(del.stderr).toContain(
        'services "istio-pilot" is forbidden: User "viewer" cannot delete resource "services"',
      );
    });

    it("accepts the bearer-token context", async () => {
      const whoami = await kubectl(kc, ["--context", "istio-vm-dev-token", "get", "ns", "istio-system", "-o", "name"]);
      expect(whoami.stdout.trim()).toBe("namespace/istio-system");
    });
  });

for (const client of KUBECTL_CLIENTS)
  describe.skipIf(missing !== undefined)(
    `istio-vm dev --profile istiod without the ServiceCIDR API, ${client.label}`,
    () => {
      let dev: DevProcess;
      const kc = join(dir, `istiod-1.${client.minor}.kubeconfig`);
      const kubectl = (kubeconfig: string, args: readonly string[], input?: string): Promise<Result> =>
        kubectlWith(client, kubeconfig, args, input);

      beforeAll(async () => {
        dev = await startDev([
          "--profile",
          "istiod",
          "--no-servicecidr-api",
          "--service-cidr",
          "10.100.0.0/16",
          "--lb-delay",
          "1h",
          "--write-kubeconfig",
          kc,
        ]);
      });
      afterAll(async () => {
        await dev.stop("SIGKILL");
      });

      it("serves istiod, a pending east-west gateway and istio-ca-root-cert in every namespace", async () => {
        const svc = await kubectl(kc, ["get", "svc", "-n", "istio-system"]);
        expect(svc.stdout).toMatch(
          /istiod\s+ClusterIP\s+10\.100\.\d+\.\d+\s+<none>\s+15010\/TCP,15012\/TCP,443\/TCP,15014\/TCP/,
        );
        expect(svc.stdout).toMatch(/istio-eastwestgateway\s+LoadBalancer\s+\S+\s+<pending>/);
        const cm = await kubectl(kc, [
          "get",
          "configmap",
          "istio-ca-root-cert",
          "-n",
          "default",
          "-o",
          "jsonpath={.data.root-cert\\.pem}",
        ]);
        expect(new X509Certificate(cm.stdout).ca).toBe(true);
      });

      it("has no ServiceCIDR API, so clients must fall back", async () => {
        const get = await kubectl(kc, ["get", "servicecidrs"]);
        expect(get.code).not.toBe(0);
        expect(get.stderr).toContain('the server doesn\'t have a resource type "servicecidrs"');
      });

      it("exits 0 on SIGTERM", async () => {
        expect(await dev.stop("SIGTERM")).toEqual({ code: 0, signal: null });
        expect(dev.stderr()).toContain("received SIGTERM, shutting down");
      });
    },
  );

describe.skipIf(missing !== undefined)("istio-vm dev lifecycle and usage", () => {
  it("exits 0 on SIGINT", async () => {
    const dev = await startDev(["--profile", "none"]);
    expect(dev.ready.kubeconfig).toBeNull();
    expect(await dev.stop("SIGINT")).toEqual({ code: 0, signal: null });
  });

  it("tells a person what it serves and how to use it", async () => {
    const kc = join(dir, "human.kubeconfig");
    const dev = await startDevText(["--profile", "istiod", "--write-kubeconfig", kc]);
    try {
      expect(dev.stdout).toContain("local test double of a Kubernetes cluster with Istio (profile istiod)");
      expect(dev.stdout).toMatch(/kubernetes API\s+https:\/\/127\.0\.0\.1:\d+/);
      expect(dev.stdout).toContain(`export KUBECONFIG=${kc}`);
      expect(dev.stdout).toContain("kubectl get svc -A");
    } finally {
      expect(await dev.stop("SIGTERM")).toEqual({ code: 0, signal: null });
    }
  });

  it("rejects bad flags with exit 2 and a clear message", async () => {
    const listen = await runCli(["dev", "--listen", "not-an-address"]);
    expect(listen.code).toBe(2);
    expect(listen.stderr).toContain('"not-an-address" is not an IP address');
    const cidr = await runCli(["dev", "--service-cidr", "10.96.0.0/40"]);
    expect(cidr.code).toBe(2);
    expect(cidr.stderr).toContain("--service-cidr");
    const delay = await runCli(["dev", "--lb-delay", "soon"]);
    expect(delay.code).toBe(2);
    expect(delay.stderr).toContain("--lb-delay");
  });

  it("says in --help that it is a test double, with examples", async () => {
    const help = await runCli(["dev", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("THIS IS A TEST DOUBLE, NOT A CLUSTER");
    expect(help.stdout).toContain("--write-kubeconfig");
    expect(help.stdout).toContain("Examples:");
  });
});
