import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentError } from "../platform/errors.js";
import { nodeFileSystem } from "../platform/fs.js";
import { kubeconfigPaths, loadKubeconfig, parseKubeconfig, resolveContext } from "./kubeconfig.js";
import { parseYaml, renderYaml } from "./kubeconfig-yaml.js";

const dir = mkdtempSync(join(tmpdir(), "kubeconfig-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const path = join(dir, name);
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, text);
  return path;
}

// The shape kubectl and gcloud write: sequences at the parent key's indentation, quoted and flow values, comments.
const GKE = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://203.0.113.10
  name: gke_proj_zone_c1
contexts:
- context:
    cluster: gke_proj_zone_c1
    user: gke_proj_zone_c1
    namespace: apps   # trailing comment
  name: gke_proj_zone_c1
current-context: gke_proj_zone_c1
kind: Config
preferences: {}
users:
- name: gke_proj_zone_c1
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      args: ["--use_application_default_credentials", 'x y']
      env:
        - name: "FOO"
          value: 'it''s'
      installHint: |
        Install gke-gcloud-auth-plugin for use with kubectl by following
        https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl#install_plugin
      provideClusterInfo: true
`;

describe("parseYaml", () => {
  it("reads the kubeconfig shapes kubectl and cloud CLIs write", () => {
    const doc = parseYaml(GKE) as Record<string, unknown>;
    expect(doc["current-context"]).toBe("gke_proj_zone_c1");
    expect(doc["preferences"]).toEqual({});
    const users = doc["users"] as { user: { exec: Record<string, unknown> } }[];
    const exec = users[0]?.user.exec;
    expect(exec?.["args"]).toEqual(["--use_application_default_credentials", "x y"]);
    expect(exec?.["env"]).toEqual([{ name: "FOO", value: "it's" }]);
    expect(exec?.["installHint"]).toBe(
      "Install gke-gcloud-auth-plugin for use with kubectl by following\nhttps://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl#install_plugin\n",
    );
    expect(exec?.["provideClusterInfo"]).toBe(true);
  });

  it("round-trips what renderYaml writes, and reads JSON kubeconfigs", () => {
    const value = {
      apiVersion: "v1",
      clusters: [{ name: "dev", cluster: { server: "https://127.0.0.1:6443", "insecure-skip-tls-verify": false } }],
      users: [{ name: "admin", user: { token: "abc:def", args: ["--x", "true", "1.5", ""] } }],
      preferences: {},
      "current-context": "dev",
      empty: [],
      nothing: null,
    };
    expect(parseYaml(renderYaml(value))).toEqual(value);
    expect(parseYaml(JSON.stringify(value))).toEqual(value);
  });

  it("names the line of a syntax error", () => {
    expect(() => parseYaml("a: 1\n  b: 2\n")).toThrow(/line 2/);
    expect(() => parseYaml('a: "unterminated\n')).toThrow(/line 1/);
    expect(() => parseYaml("a: &anchor 1\n")).toThrow(/unsupported/);
  });
});

describe("kubeconfig merging and selection", () => {
  const first = write(
    "a/config",
    `clusters:
- name: shared
  cluster: {server: "https://first.example:6443", certificate-authority: ca.crt}
- name: only-a
  cluster: {server: "https://a.example"}
users:
- name: u
  user: {client-certificate: certs/u.crt, client-key: /abs/u.key, tokenFile: tok}
contexts:
- name: ctx
  context: {cluster: shared, user: u, namespace: team-a}
- name: no-ns
  context: {cluster: only-a, user: ""}
`,
  );
  const second = write(
    "b/config",
    `current-context: ctx
clusters:
- name: shared
  cluster: {server: "https://second.example"}
- name: only-b
  cluster: {server: "https://b.example", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: from-b}
contexts:
- name: ctx
  context: {cluster: only-b, user: u}
- name: b
  context: {cluster: only-b, user: u}
`,
  );
  const third = write("c/config", `current-context: b\n`);

  it("takes each name from the first file that defines it and the first current-context", async () => {
    const config = await loadKubeconfig({
      env: { KUBECONFIG: `${first}::${join(dir, "missing")}:${second}:${third}:${first}` },
      fs: nodeFileSystem,
    });
    expect(config.files).toEqual([first, second, third]);
    expect(config.currentContext).toBe("ctx");
    const ctx = resolveContext(config);
    expect(ctx.cluster.server).toBe("https://first.example:6443");
    // Relative paths resolve against the file that defined the entry.
    expect(ctx.cluster.certificateAuthority).toBe(join(dir, "a", "ca.crt"));
    expect(ctx.user.clientCertificate).toBe(join(dir, "a", "certs", "u.crt"));
    expect(ctx.user.clientKey).toBe("/abs/u.key");
    expect(ctx.user.tokenFile).toBe(join(dir, "a", "tok"));
    expect(ctx.user.token).toBeUndefined();
    expect(ctx.namespace).toBe("team-a");
    expect(resolveContext(config, { context: "b" }).cluster).toMatchObject({
      server: "https://b.example",
      insecureSkipTlsVerify: true,
    });
  });

  it("uses -n over the context's namespace, and default when neither is set", async () => {
    const config = await loadKubeconfig({ kubeconfig: first, env: {}, fs: nodeFileSystem });
    expect(resolveContext(config, { context: "ctx", namespace: "other" }).namespace).toBe("other");
    const anonymous = resolveContext(config, { context: "no-ns" });
    expect(anonymous.namespace).toBe("default");
    expect(anonymous.user).toEqual({});
  });

  it("looks in --kubeconfig, then KUBECONFIG, then ~/.kube/config", () => {
    expect(kubeconfigPaths({ kubeconfig: "k", env: { KUBECONFIG: "/x" }, cwd: "/w" }).paths).toEqual(["/w/k"]);
    expect(kubeconfigPaths({ env: { KUBECONFIG: "/x:/y", HOME: "/h" } }).paths).toEqual(["/x", "/y"]);
    expect(kubeconfigPaths({ env: { HOME: "/h" } }).paths).toEqual(["/h/.kube/config"]);
  });

  it("reports a missing explicit file, a missing context and a dangling reference clearly", async () => {
    const missing = loadKubeconfig({ kubeconfig: join(dir, "nope"), env: {}, fs: nodeFileSystem });
    await expect(missing).rejects.toMatchObject({ code: "KUBECONFIG_NOT_FOUND", subject: join(dir, "nope") });
    await expect(loadKubeconfig({ env: { HOME: join(dir, "nohome") }, fs: nodeFileSystem })).rejects.toThrow(
      /no kubeconfig found/,
    );
    const config = await loadKubeconfig({ kubeconfig: first, env: {}, fs: nodeFileSystem });
    expect(() => resolveContext(config)).toThrow(/sets no current-context \(contexts: ctx, no-ns\)/);
    let error: unknown;
    try {
      resolveContext(config, { context: "prod" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).message).toBe('context "prod" is not in the kubeconfig (contexts: ctx, no-ns)');
    expect((error as AgentError).hint).toMatch(/--context/);
    const dangling = parseKubeconfig("contexts:\n- name: c\n  context: {cluster: gone, user: u}\n", "/k");
    const merged = { files: ["/k"], clusters: new Map(), users: new Map(), contexts: new Map() };
    merged.contexts.set("c", { value: dangling.contexts[0]?.[1], file: "/k" });
    expect(() => resolveContext(merged, { context: "c" })).toThrow(
      /cluster "gone", which the kubeconfig does not define/,
    );
  });

  it("resolves an exec command with a slash against the kubeconfig's directory, and leaves bare names to PATH", async () => {
    const path = write(
      "exec/config",
      `current-context: c
clusters: [{name: k, cluster: {server: "https://k"}}]
contexts: [{name: c, context: {cluster: k, user: u}}, {name: d, context: {cluster: k, user: v}}]
users:
- {name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: ./bin/login}}}
- {name: v, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}}}
`,
    );
    const config = await loadKubeconfig({ kubeconfig: path, env: {}, fs: nodeFileSystem });
    expect(resolveContext(config).user.exec?.command).toBe(join(dir, "exec", "bin", "login"));
    expect(resolveContext(config, { context: "d" }).user.exec).toMatchObject({
      command: "aws",
      args: ["eks", "get-token"],
    });
  });

  it("reads an exec plugin section", () => {
    const parsed = parseKubeconfig(GKE, "/home/me/.kube/config");
    expect(parsed.users[0]?.[1].exec).toMatchObject({
      apiVersion: "client.authentication.k8s.io/v1beta1",
      command: "gke-gcloud-auth-plugin",
      env: [{ name: "FOO", value: "it's" }],
      provideClusterInfo: true,
    });
  });
});
