/**
 * The admin commands end to end against a separate `istio-vm dev` process (both built from dist/), the way a user
 * tries them: start the dev control plane with --write-kubeconfig, point KUBECONFIG at it, generate every file, and
 * check the registration with plain kubectl.
 */
import type { ChildProcess } from "node:child_process";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, runCli } from "../support/cli.js";
import type { CliResult } from "../support/cli.js";
import { KUBECTL_CLIENTS, kubectlRequirement } from "../support/kubectl.js";

const execFileAsync = promisify(execFile);

interface DevProcess {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly kubeconfig: string;
  cli(args: readonly string[]): Promise<CliResult>;
}

async function startDev(profile: "legacy" | "istiod"): Promise<DevProcess> {
  const dir = await mkdtemp(join(tmpdir(), `istio-vm-dev-${profile}-`));
  const kubeconfig = join(dir, "kubeconfig");
  const child = spawn(
    process.execPath,
    [CLI, "dev", "--profile", profile, "--port", "0", "--json", "--write-kubeconfig", kubeconfig],
    { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  await new Promise<void>((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => {
      reject(new Error(`istio-vm dev did not get ready: ${stderr}`));
    }, 60_000);
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('"ready":true')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`istio-vm dev exited ${String(code)}: ${stderr}`));
    });
  });
  return {
    child,
    dir,
    kubeconfig,
    cli: (args) =>
      runCli(args, {
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir, KUBECONFIG: kubeconfig },
        cwd: dir,
      }),
  };
}

async function stopDev(dev: DevProcess | undefined): Promise<void> {
  if (dev === undefined) return;
  if (dev.child.exitCode === null && dev.child.signalCode === null) {
    const exited = new Promise((resolve) => dev.child.once("exit", resolve));
    dev.child.kill("SIGTERM");
    await exited;
  }
  await rm(dev.dir, { recursive: true, force: true });
}

const kubectlMissing = kubectlRequirement();

for (const profile of ["legacy", "istiod"] as const) {
  describe(`against istio-vm dev --profile ${profile}`, () => {
    let dev: DevProcess | undefined;
    const d = (): DevProcess => {
      if (dev === undefined) throw new Error("dev plane not started");
      return dev;
    };
    beforeAll(async () => {
      dev = await startDev(profile);
    });
    afterAll(async () => {
      await stopDev(dev);
    });

    it("generates cluster.env, kubedns and the bootstrap credentials into one directory", async () => {
      const out = join(d().dir, "vm");
      const env = await d().cli(["cluster-env", "-o", join(d().dir, "cluster.env")]);
      expect(env.code, env.stderr).toBe(0);
      const dns = await d().cli([
        "dnsmasq",
        "-o",
        join(d().dir, "kubedns"),
        "--wait",
        "30s",
        "--poll-interval",
        "500ms",
      ]);
      expect(dns.code, dns.stderr).toBe(0);
      const certs = await d().cli(["certs", "default", "default", "--all", "-o", out]);
      expect(certs.code, certs.stderr).toBe(0);

      const clusterEnv = await readFile(join(d().dir, "cluster.env"), "utf8");
      const kubedns = await readFile(join(d().dir, "kubedns"), "utf8");
      if (profile === "legacy") {
        expect(clusterEnv).toMatch(/^ISTIO_SERVICE_CIDR=[0-9a-f.:/,]+\nISTIO_SYSTEM_NAMESPACE=istio-system\n/);
        expect(clusterEnv).toContain("ISTIO_CONTROL_PLANE=legacy\n");
        expect(kubedns.split("\n")[0]).toMatch(/^server=\/svc\.cluster\.local\/\S+$/);
        expect(kubedns).toContain("address=/istio-pilot.istio-system/");
        expect((await readdir(out)).sort()).toEqual(["cert-chain.pem", "key.pem", "root-cert.pem"]);
        expect(((await stat(join(out, "key.pem"))).mode & 0o777).toString(8)).toBe("600");
      } else {
        expect(clusterEnv).toContain("ISTIO_CONTROL_PLANE='istiod'\n");
        expect(kubedns).toContain("address=/istiod.istio-system.svc/");
        expect((await readdir(out)).sort()).toEqual(["istio-token", "root-cert.pem"]);
        expect(((await stat(join(out, "istio-token"))).mode & 0o777).toString(8)).toBe("600");
      }
    });

    it.skipIf(kubectlMissing !== undefined).each(KUBECTL_CLIENTS.map((client) => ({ client, label: client.label })))(
      "register and deregister are visible to $label",
      async ({ client }) => {
        const kubectl = async (...args: string[]): Promise<string> =>
          (await execFileAsync(client.path, ["--kubeconfig", d().kubeconfig, ...args], { encoding: "utf8" })).stdout;
        for (let i = 0; i < 2; i++) {
          const reg = await d().cli(["register", "mysqldb", "10.138.0.13", "3306", "-n", "default"]);
          expect(reg.code, reg.stderr).toBe(0);
        }
        const ips = await kubectl(
          "get",
          "endpoints",
          "mysqldb",
          "-n",
          "default",
          "-o",
          "jsonpath={.subsets[*].addresses[*].ip}",
        );
        expect(ips.trim()).toBe("10.138.0.13");
        const annotation = await kubectl(
          "get",
          "service",
          "mysqldb",
          "-n",
          "default",
          "-o",
          "jsonpath={.metadata.annotations.alpha\\.istio\\.io/kubernetes-serviceaccounts}",
        );
        expect(annotation).toBe("default");
        const dereg = await d().cli(["deregister", "mysqldb", "10.138.0.13"]);
        expect(dereg.code, dereg.stderr).toBe(0);
        const after = await kubectl("get", "endpoints", "mysqldb", "-n", "default", "-o", "jsonpath={.subsets}");
        expect(after.trim()).toMatch(/^(\[\])?$/);
      },
    );
  });
}
