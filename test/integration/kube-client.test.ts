/**
 * The real KubeClient (createKubeClient) against the dev Kubernetes API over real TLS: every authentication method,
 * and the errors an operator must be able to act on.
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { request } from "node:https";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KubeObject } from "../../src/devplane/store.js";
import { startDevPlane } from "../../src/devplane/dev-plane.js";
import type { DevPlane } from "../../src/devplane/dev-plane.js";
import { parseCidr } from "../../src/devplane/ip-allocator.js";
import type { KubeClient } from "../../src/kube/client.js";
import { KubeApiError, isConflict, isNotFound } from "../../src/kube/client.js";
import { createKubeClient } from "../../src/kube/connect.js";
import { renderYaml } from "../../src/kube/yaml.js";
import { AgentError } from "../../src/platform/errors.js";
import { nodeFileSystem } from "../../src/platform/fs.js";
import type { Logger } from "../../src/platform/logger.js";
import { nodeProcessRunner } from "../../src/platform/process.js";
import { FakeKubeClient } from "../fakes/kube-client.js";

const dry = { dryRun: true } as const;

const dir = mkdtempSync(join(tmpdir(), "kube-client-"));
let plane: DevPlane;
let server: string;
let caPem: string;

function recordingLogger(lines: string[]): Logger {
  const logger: Logger = {
    error: (m) => lines.push(`error ${m}`),
    warn: (m) => lines.push(`warn ${m}`),
    info: (m) => lines.push(`info ${m}`),
    debug: () => undefined,
    child: () => logger,
  };
  return logger;
}

const quietLogger = recordingLogger([]);

beforeAll(async () => {
  plane = await startDevPlane({
    profile: "istiod",
    listen: [{ host: "127.0.0.1", port: 0 }],
    serviceCidrs: [parseCidr("10.96.0.0/12")],
    serviceCidrApi: true,
    lbIpBase: "10.128.0.6",
    lbDelayMs: 0,
    trustDomain: "cluster.local",
    workloadCertTtlMs: 3600_000,
    services: [],
    logger: quietLogger,
  });
  server = plane.kubeApi.urls[0] ?? "";
  caPem = plane.context.clusterCa.rootCertPem;
});

afterAll(async () => {
  await plane.close();
  rmSync(dir, { recursive: true, force: true });
});

const b64 = (text: string): string => Buffer.from(text).toString("base64");

/** Writes a one-context kubeconfig with the given user (and optionally cluster overrides) and returns its path. */
function kubeconfig(name: string, user: Record<string, unknown>, cluster: Record<string, unknown> = {}): string {
  const path = join(dir, `${name}.yaml`);
  writeFileSync(
    path,
    renderYaml({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "dev", cluster: { server, "certificate-authority-data": b64(caPem), ...cluster } }],
      users: [{ name, user }],
      contexts: [{ name: "ctx", context: { cluster: "dev", user: name } }],
      "current-context": "ctx",
    }),
  );
  return path;
}

function client(path: string, logger: Logger = quietLogger): ReturnType<typeof createKubeClient> {
  return createKubeClient({
    kubeconfig: path,
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir },
    fs: nodeFileSystem,
    runner: nodeProcessRunner,
    logger,
    timeoutMs: 10_000,
  });
}

async function caught(promise: Promise<unknown>): Promise<AgentError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AgentError) return error;
    throw error;
  }
  throw new Error("expected the call to fail");
}

/** A small exec credential plugin: prints what the state file says, counting its runs. */
function execPlugin(name: string, outputs: readonly unknown[]): { path: string; runs: () => number } {
  const script = join(dir, `${name}.mjs`);
  const counter = join(dir, `${name}.count`);
  writeFileSync(counter, "0");
  writeFileSync(
    script,
    `#!${process.execPath}
import { readFileSync, writeFileSync } from "node:fs";
const outputs = ${JSON.stringify(outputs)};
const n = Number(readFileSync(${JSON.stringify(counter)}, "utf8"));
writeFileSync(${JSON.stringify(counter)}, String(n + 1));
const info = JSON.parse(process.env.KUBERNETES_EXEC_INFO ?? "{}");
if (process.env.PLUGIN_MODE !== "ok") { process.stderr.write("PLUGIN_MODE not passed\\n"); process.exit(3); }
if (info.kind !== "ExecCredential") { process.stderr.write("no KUBERNETES_EXEC_INFO\\n"); process.exit(4); }
const out = outputs[Math.min(n, outputs.length - 1)];
if (out === "fail") { process.stderr.write("login required: run my-cloud login\\n"); process.exit(1); }
out.apiVersion = info.apiVersion;
process.stdout.write(JSON.stringify(out));
`,
  );
  chmodSync(script, 0o755);
  return { path: script, runs: () => Number(readFileSync(counter, "utf8")) };
}

function apiError(error: unknown): KubeApiError {
  if (!(error instanceof KubeApiError)) throw new Error(`expected a KubeApiError, got ${String(error)}`);
  return error;
}

function credential(status: Record<string, unknown>): unknown {
  return { kind: "ExecCredential", status };
}

describe("authentication", () => {
  it("uses a client certificate from the kubeconfig (data and file forms)", async () => {
    const certFile = join(dir, "admin.crt");
    const keyFile = join(dir, "admin.key");
    writeFileSync(certFile, plane.credentials.adminCertPem);
    writeFileSync(keyFile, plane.credentials.adminKeyPem);
    const fromData = await client(
      kubeconfig("admin-data", {
        "client-certificate-data": b64(plane.credentials.adminCertPem),
        "client-key-data": b64(plane.credentials.adminKeyPem),
      }),
    );
    const list = await fromData.list<KubeObject>("/api/v1/namespaces/istio-system/services");
    expect(list.items.map((s) => s.metadata.name)).toEqual(["istio-eastwestgateway", "istiod"]);
    // Relative paths are relative to the kubeconfig file.
    const fromFiles = await client(
      kubeconfig("admin-files", { "client-certificate": "admin.crt", "client-key": keyFile }),
    );
    expect((await fromFiles.get<KubeObject>("/api/v1/namespaces/default")).metadata.name).toBe("default");
    expect(fromFiles.namespace).toBe("default");
  });

  it("uses a bearer token and a token file", async () => {
    const token = await client(kubeconfig("token", { token: plane.credentials.tokenUserToken }));
    await token.create("/api/v1/namespaces/default/configmaps", { metadata: { name: "from-token" }, data: { a: "1" } });
    const tokenFile = join(dir, "token.txt");
    writeFileSync(tokenFile, `${plane.credentials.tokenUserToken}\n`);
    const fromFile = await client(kubeconfig("token-file", { tokenFile: "token.txt" }));
    expect((await fromFile.get<KubeObject>("/api/v1/namespaces/default/configmaps/from-token")).metadata.name).toBe(
      "from-token",
    );
  });

  it("runs an exec credential plugin with its env and KUBERNETES_EXEC_INFO, and caches the token until it expires", async () => {
    const later = new Date(Date.now() + 3600_000).toISOString();
    const plugin = execPlugin("cached", [
      credential({ token: plane.credentials.tokenUserToken, expirationTimestamp: later }),
    ]);
    const kube = await client(
      kubeconfig("exec", {
        exec: {
          apiVersion: "client.authentication.k8s.io/v1",
          command: plugin.path,
          args: [],
          env: [{ name: "PLUGIN_MODE", value: "ok" }],
          interactiveMode: "Never",
          provideClusterInfo: true,
        },
      }),
    );
    await kube.list("/api/v1/namespaces");
    await kube.list("/api/v1/namespaces/default/services");
    expect(plugin.runs()).toBe(1);
  });

  it("re-runs the plugin once after a 401 and then succeeds (v1beta1)", async () => {
    const plugin = execPlugin("rotating", [
      credential({ token: "expired-token" }),
      credential({ token: plane.credentials.tokenUserToken }),
    ]);
    const kube = await client(
      kubeconfig("exec-rotate", {
        exec: {
          apiVersion: "client.authentication.k8s.io/v1beta1",
          command: plugin.path,
          env: [{ name: "PLUGIN_MODE", value: "ok" }],
        },
      }),
    );
    const list = await kube.list<KubeObject>("/api/v1/namespaces");
    expect(list.items.length).toBeGreaterThan(0);
    expect(plugin.runs()).toBe(2);
  });

  it("accepts a client certificate from an exec plugin", async () => {
    const plugin = execPlugin("cert", [
      credential({
        clientCertificateData: plane.credentials.adminCertPem,
        clientKeyData: plane.credentials.adminKeyPem,
      }),
    ]);
    const kube = await client(
      kubeconfig("exec-cert", {
        exec: {
          apiVersion: "client.authentication.k8s.io/v1",
          command: plugin.path,
          env: [{ name: "PLUGIN_MODE", value: "ok" }],
        },
      }),
    );
    expect((await kube.get<KubeObject>("/api/v1/namespaces/kube-system")).metadata.name).toBe("kube-system");
  });

  it("reports a failing plugin with its stderr and the kubeconfig's install hint", async () => {
    const plugin = execPlugin("failing", ["fail"]);
    const kube = await client(
      kubeconfig("exec-fail", {
        exec: {
          apiVersion: "client.authentication.k8s.io/v1",
          command: plugin.path,
          env: [{ name: "PLUGIN_MODE", value: "ok" }],
          installHint: "install my-cloud-cli",
        },
      }),
    );
    const error = await caught(kube.list("/api/v1/namespaces"));
    expect(error.code).toBe("KUBE_EXEC_CREDENTIAL");
    expect(error.message).toContain("exited with status 1: login required: run my-cloud login");
    expect(error.hint).toBe("install my-cloud-cli");
  });

  it("tunnels through the kubeconfig's proxy-url with CONNECT, and reports a proxy that refuses", async () => {
    const tunnels: string[] = [];
    const sockets = new Set<import("node:net").Socket>();
    let allow = true;
    const proxy = createHttpServer();
    proxy.on("connect", (req, clientSocket: import("node:net").Socket, head: Buffer) => {
      tunnels.push(`${req.url ?? ""} ${req.headers["proxy-authorization"] ?? "-"}`);
      sockets.add(clientSocket);
      if (!allow) {
        clientSocket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
        return;
      }
      const [host = "", port = ""] = (req.url ?? "").split(":");
      const upstream = connect(Number(port), host, () => {
        sockets.add(upstream);
        clientSocket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        upstream.write(head);
        upstream.pipe(clientSocket);
        clientSocket.pipe(upstream);
      });
      upstream.on("error", () => clientSocket.destroy());
      clientSocket.on("error", () => upstream.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    try {
      const port = (proxy.address() as { port: number }).port;
      const kube = await client(
        kubeconfig(
          "proxied",
          { token: plane.credentials.tokenUserToken },
          { "proxy-url": `http://ops:pw@127.0.0.1:${port}` },
        ),
      );
      expect((await kube.get<KubeObject>("/api/v1/namespaces/default")).metadata.name).toBe("default");
      expect(tunnels).toEqual([`${new URL(server).host} Basic ${Buffer.from("ops:pw").toString("base64")}`]);
      allow = false;
      const refused = await caught(kube.list("/api/v1/namespaces"));
      expect(refused.code).toBe("KUBE_PROXY");
      expect(refused.message).toContain(`refused to tunnel to ${new URL(server).host}: 403`);
      const socks = await caught(
        client(kubeconfig("socks", { token: "x" }, { "proxy-url": "socks5://127.0.0.1:1080" })),
      );
      expect(socks.message).toContain("http:// proxies only");
    } finally {
      for (const socket of sockets) socket.destroy();
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  it("warns about insecure-skip-tls-verify but connects", async () => {
    const lines: string[] = [];
    const kube = await client(
      kubeconfig(
        "insecure",
        { token: plane.credentials.tokenUserToken },
        { "certificate-authority-data": null, "insecure-skip-tls-verify": true },
      ),
      recordingLogger(lines),
    );
    await kube.list("/api/v1/namespaces");
    expect(lines.join("\n")).toMatch(/warn .*insecure-skip-tls-verify/);
  });
});

describe("errors an operator can act on", () => {
  it("401: a bad token names the server and hints at the credentials", async () => {
    const kube = await client(kubeconfig("bad-token", { token: "not-a-valid-token" }));
    const error = await caught(kube.list("/api/v1/namespaces"));
    expect(error).toBeInstanceOf(KubeApiError);
    expect(apiError(error).status).toBe(401);
    expect(error.code).toBe("KUBE_UNAUTHORIZED");
    expect(error.message).toContain(server);
    expect(error.message).toContain('user "bad-token"');
    expect(error.hint).toMatch(/token or client certificate/);
  });

  it("401: no credentials at all", async () => {
    const kube = await client(kubeconfig("anonymous", {}));
    expect((await caught(kube.list("/api/v1/namespaces"))).code).toBe("KUBE_UNAUTHORIZED");
  });

  it("403: names the verb, resource and namespace to be granted", async () => {
    const kube = await client(kubeconfig("viewer", { token: plane.credentials.viewerToken }));
    await kube.list("/api/v1/namespaces/default/endpoints");
    const error = await caught(
      kube.create("/api/v1/namespaces/default/endpoints", { metadata: { name: "vm" }, subsets: [] }),
    );
    expect(apiError(error).status).toBe(403);
    expect(error.code).toBe("KUBE_FORBIDDEN");
    expect(error.message).toContain('create endpoints in namespace "default"');
    expect(error.message).toContain(
      'endpoints is forbidden: User "viewer" cannot create resource "endpoints" in API group "" in the namespace "default"',
    );
    expect(error.hint).toContain('grant create endpoints in namespace "default" to user "viewer"');
    const token = await caught(kube.create("/api/v1/namespaces/default/serviceaccounts/default/token", { spec: {} }));
    expect(token.message).toContain('create serviceaccounts/token in namespace "default"');
  });

  it("404: names the object, kind and namespace", async () => {
    const kube = await client(kubeconfig("admin-404", { token: plane.credentials.tokenUserToken }));
    const error = await caught(kube.get("/api/v1/namespaces/istio-system/services/istio-pilot"));
    expect(isNotFound(error)).toBe(true);
    expect(error.message).toBe('services "istio-pilot" not found in namespace "istio-system"');
    const api = await caught(kube.get("/apis/example.com/v1/widgets/x"));
    expect(isNotFound(api)).toBe(true);
  });

  it("unreachable: names the address", async () => {
    const closed = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, "127.0.0.1", () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => {
          resolve(port);
        });
      });
    });
    const kube = await client(kubeconfig("closed", { token: "x" }, { server: `https://127.0.0.1:${closed}` }));
    const error = await caught(kube.list("/api/v1/namespaces"));
    expect(error.code).toBe("KUBE_UNREACHABLE");
    expect(error.message).toContain(`https://127.0.0.1:${closed}`);
    expect(error.message).toContain("ECONNREFUSED");
    expect(error.subject).toBe(`https://127.0.0.1:${closed}`);
  });

  it("TLS failure: a CA that did not sign the server names the server and the reason", async () => {
    const kube = await client(
      kubeconfig(
        "wrong-ca",
        { token: plane.credentials.tokenUserToken },
        { "certificate-authority-data": b64(plane.context.meshCa.rootCertPem) },
      ),
    );
    const error = await caught(kube.list("/api/v1/namespaces"));
    expect(error.code).toBe("KUBE_TLS");
    expect(error.message).toContain(server);
    expect(error.message).toMatch(/certificate/i);
    expect(error.hint).toContain("certificate-authority");
  });

  it("409: concurrent updates of one resourceVersion: exactly one wins", async () => {
    const kube = await client(kubeconfig("admin-409", { token: plane.credentials.tokenUserToken }));
    const created = await kube.create<KubeObject>("/api/v1/namespaces/default/endpoints", {
      metadata: { name: "race" },
      subsets: [],
    });
    const update = (ip: string): Promise<unknown> =>
      kube.update("/api/v1/namespaces/default/endpoints/race", { ...created, subsets: [{ addresses: [{ ip }] }] });
    const results = await Promise.allSettled([update("10.0.0.1"), update("10.0.0.2")]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const rejected = results.find((r) => r.status === "rejected");
    expect(isConflict(rejected?.reason)).toBe(true);
    expect((rejected?.reason as Error).message).toContain('Operation cannot be fulfilled on endpoints "race"');
    const again = await caught(kube.create("/api/v1/namespaces/default/endpoints", { metadata: { name: "race" } }));
    expect(apiError(again).reason).toBe("AlreadyExists");
  });
});

describe("API semantics the admin commands rely on", () => {
  it("rejects a dry-run Service outside the service CIDR with kube-apiserver's message, and persists nothing", async () => {
    const kube = await client(kubeconfig("admin-cidr", { token: plane.credentials.tokenUserToken }));
    const service = {
      metadata: { name: "probe" },
      spec: { clusterIP: "10.0.0.1", clusterIPs: ["10.0.0.1"], ports: [{ port: 1 }] },
    };
    const error = await caught(kube.create("/api/v1/namespaces/default/services", service, { dryRun: true }));
    expect(apiError(error).status).toBe(422);
    expect(error.message).toBe(
      'Service "probe" is invalid: spec.clusterIPs: Invalid value: []string{"10.0.0.1"}: failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12',
    );
    const ok = await kube.create<{ spec: { clusterIP: string } }>(
      "/api/v1/namespaces/default/services",
      { metadata: { name: "probe" }, spec: { ports: [{ port: 1 }] } },
      { dryRun: true },
    );
    expect(ok.spec.clusterIP).toMatch(/^10\.(9[6-9]|10[0-9]|11[01])\./);
    expect(isNotFound(await caught(kube.get("/api/v1/namespaces/default/services/probe")))).toBe(true);
    const cidr = await kube.get<{ spec: { cidrs: string[] } }>("/apis/networking.k8s.io/v1/servicecidrs/kubernetes");
    expect(cidr.spec.cidrs).toEqual(["10.96.0.0/12"]);
  });

  it("the tests' FakeKubeClient answers as the dev server does over HTTPS (same semantics, same messages)", async () => {
    const real = await client(kubeconfig("admin-fake", { token: plane.credentials.tokenUserToken }));
    const fake = new FakeKubeClient({ serviceRanges: ["10.96.0.0/12"] });
    const service = (name: string, ip?: string): unknown => ({
      metadata: { name },
      spec: { ...(ip === undefined ? {} : { clusterIP: ip, clusterIPs: [ip] }), ports: [{ port: 1 }] },
    });
    const requests: [string, (kube: KubeClient) => Promise<unknown>][] = [
      ["out of range", (kube) => kube.create("/api/v1/namespaces/default/services", service("p", "10.0.0.1"), dry)],
      ["IPv6 off", (kube) => kube.create("/api/v1/namespaces/default/services", service("p", "fd00::1"), dry)],
      ["bad name", (kube) => kube.create("/api/v1/namespaces/default/services", service("Bad_Name"), dry)],
      ["no namespace", (kube) => kube.create("/api/v1/namespaces/nowhere/configmaps", { metadata: { name: "x" } })],
      ["missing", (kube) => kube.get("/api/v1/namespaces/default/secrets/missing")],
      ["no SA", (kube) => kube.create("/api/v1/namespaces/default/serviceaccounts/nobody/token", { spec: {} })],
      ["no resource", (kube) => kube.get("/apis/example.com/v1/widgets/w")],
      ["protected", (kube) => kube.delete("/api/v1/namespaces/default", dry)],
    ];
    // Messages name the server and the kubeconfig's user and context; everything else must be the same.
    const answer = async (kube: KubeClient, call: (kube: KubeClient) => Promise<unknown>): Promise<unknown> => {
      const error = await caught(call(kube));
      return {
        code: error.code,
        status: apiError(error).status,
        message: error.message
          .replaceAll(kube.server, "<server>")
          .replace('user "admin-fake" (context "ctx")', "this user"),
      };
    };
    for (const [what, call] of requests) {
      expect({ what, ...((await answer(fake, call)) as object) }).toEqual({
        what,
        ...((await answer(real, call)) as object),
      });
    }
  });

  it("issues TokenRequest JWTs the dev CA can verify, with the requested audience and lifetime", async () => {
    const kube = await client(kubeconfig("admin-token", { token: plane.credentials.tokenUserToken }));
    const response = await kube.create<{ status: { token: string; expirationTimestamp: string } }>(
      "/api/v1/namespaces/default/serviceaccounts/default/token",
      {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec: { audiences: ["istio-ca"], expirationSeconds: 3600 },
      },
    );
    const verified = plane.context.tokens.verify(response.status.token, "istio-ca");
    expect(verified).toMatchObject({ namespace: "default", serviceAccount: "default" });
    expect(Math.abs(verified.expiresAt - Date.parse(response.status.expirationTimestamp))).toBeLessThan(1000);
    expect(() => plane.context.tokens.verify(response.status.token, "other")).toThrow(/audiences/);
    const missing = await caught(kube.create("/api/v1/namespaces/default/serviceaccounts/nobody/token", { spec: {} }));
    expect(missing.message).toContain('serviceaccounts "nobody" not found');
  });

  it("keeps a Service's status on spec updates and its spec on status updates", async () => {
    const kube = await client(kubeconfig("admin-status", { token: plane.credentials.tokenUserToken }));
    const gw = await kube.get<KubeObject>("/api/v1/namespaces/istio-system/services/istio-eastwestgateway");
    const updated = await kube.update<KubeObject>("/api/v1/namespaces/istio-system/services/istio-eastwestgateway", {
      ...gw,
      metadata: { ...gw.metadata, labels: { changed: "yes" } },
      status: {},
    });
    expect(updated["status"]).toEqual(gw["status"]);
    expect(updated.metadata.labels).toEqual({ changed: "yes" });
  });

  it("streams watch events (what kubectl get -w uses) filtered by name", async () => {
    const url = new URL(
      "/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3Dwatched",
      server,
    );
    const events: { type: string; object: KubeObject }[] = [];
    let subscribed: () => void = () => undefined;
    const watching = new Promise<void>((resolve) => (subscribed = resolve));
    const done = new Promise<void>((resolve, reject) => {
      const req = request(
        url,
        { ca: caPem, cert: plane.credentials.adminCertPem, key: plane.credentials.adminKeyPem },
        (res) => {
          subscribed();
          let buffer = "";
          res.on("data", (chunk: Buffer) => {
            buffer += chunk.toString();
            const lines = buffer.split("\n");
            buffer = lines.pop() ?? "";
            for (const line of lines) events.push(JSON.parse(line) as { type: string; object: KubeObject });
            if (events.length >= 2) {
              req.destroy();
              resolve();
            }
          });
          res.on("error", reject);
        },
      );
      req.on("error", (error) => {
        if (events.length < 2) reject(error);
      });
      req.end();
    });
    const kube = await client(kubeconfig("admin-watch", { token: plane.credentials.tokenUserToken }));
    // The server sends the response headers only after it has subscribed to changes.
    await watching;
    await kube.create("/api/v1/namespaces/default/configmaps", { metadata: { name: "ignored" } });
    await kube.create("/api/v1/namespaces/default/configmaps", { metadata: { name: "watched" }, data: { a: "1" } });
    await kube.delete("/api/v1/namespaces/default/configmaps/watched");
    await done;
    expect(events.map((e) => [e.type, e.object.kind, e.object.metadata.name])).toEqual([
      ["ADDED", "ConfigMap", "watched"],
      ["DELETED", "ConfigMap", "watched"],
    ]);
  });
});
