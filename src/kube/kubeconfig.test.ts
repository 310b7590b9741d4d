import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentError } from "../platform/errors.js";
import { nodeFileSystem } from "../platform/fs.js";
import type { ResolvedContext } from "./kubeconfig.js";
import { kubeconfigPaths, loadKubeconfig, parseKubeconfig, resolveContext } from "./kubeconfig.js";
import { parseYaml } from "./yaml.js";

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

/** Kubeconfigs as the cloud CLIs and kind write them (test/fixtures/kubeconfig), resolved to their current context. */
const fixtures = join(import.meta.dirname, "..", "..", "test", "fixtures", "kubeconfig");
async function fixture(name: string, context?: string): Promise<ResolvedContext> {
  const config = await loadKubeconfig({ kubeconfig: join(fixtures, name), env: {}, fs: nodeFileSystem });
  return resolveContext(config, context === undefined ? {} : { context });
}
const pem = (base64: string | undefined): string => Buffer.from(base64 ?? "", "base64").toString("utf8");

describe("real-world kubeconfigs", () => {
  it("aws eks update-kubeconfig: ARN names, an aws exec plugin with args and env", async () => {
    const ctx = await fixture("eks.yaml");
    expect(ctx.contextName).toBe("arn:aws:eks:us-west-2:111122223333:cluster/mesh-prod");
    expect(ctx.cluster.server).toBe("https://0123456789ABCDEF0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com");
    expect(pem(ctx.cluster.certificateAuthorityData)).toMatch(/^-----BEGIN CERTIFICATE-----\n/);
    expect(ctx.user.exec).toEqual({
      apiVersion: "client.authentication.k8s.io/v1beta1",
      command: "aws",
      args: ["--region", "us-west-2", "eks", "get-token", "--cluster-name", "mesh-prod", "--output", "json"],
      env: [{ name: "AWS_PROFILE", value: "prod-admin" }],
      provideClusterInfo: false,
    });
  });

  it("gcloud get-credentials: gke-gcloud-auth-plugin with an install hint folded over two lines", async () => {
    const ctx = await fixture("gke.yaml");
    expect(ctx.user.exec).toEqual({
      apiVersion: "client.authentication.k8s.io/v1beta1",
      command: "gke-gcloud-auth-plugin",
      args: [],
      env: [],
      installHint:
        "Install gke-gcloud-auth-plugin for use with kubectl by following " +
        "https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl#install_plugin",
      provideClusterInfo: true,
    });
  });

  it("az aks get-credentials + kubelogin convert-kubeconfig: env null, a |2 install hint, an admin with a client certificate", async () => {
    const user = await fixture("aks.yaml");
    expect(user.cluster.server).toBe("https://mesh-prod-dns-4f3c2a1b.hcp.westeurope.azmk8s.io:443");
    expect(user.user.exec).toEqual({
      apiVersion: "client.authentication.k8s.io/v1beta1",
      command: "kubelogin",
      args: ["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"],
      env: [],
      installHint:
        "\nkubelogin is not installed which is required to connect to AAD enabled cluster.\n\n" +
        "To learn more, please go to https://aka.ms/aks/kubelogin\n",
      interactiveMode: "IfAvailable",
      provideClusterInfo: false,
    });
    const admin = await fixture("aks.yaml", "mesh-prod-admin");
    expect(pem(admin.user.clientCertificateData)).toMatch(/^-----BEGIN CERTIFICATE-----\n/);
    expect(pem(admin.user.clientKeyData)).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(admin.user.token).toMatch(/^[0-9a-f]{64}$/);
  });

  it("kind get kubeconfig: a loopback server and client certificate data", async () => {
    const ctx = await fixture("kind.yaml");
    expect(ctx).toMatchObject({ contextName: "kind-mesh", namespace: "default" });
    expect(ctx.cluster.server).toBe("https://127.0.0.1:39321");
    expect(pem(ctx.user.clientCertificateData)).toBe(pem((await fixture("eks.yaml")).cluster.certificateAuthorityData));
  });

  it("a hand-kept file: anchors and merge keys, base64 over several lines, quoting styles, nulls, yes", async () => {
    const staging = await fixture("hand-edited.yaml");
    const sso = {
      apiVersion: "client.authentication.k8s.io/v1",
      command: "kubectl",
      args: ["oidc-login", "get-token", "--oidc-issuer-url=https://sso.example.com", "--oidc-client-id=kubernetes"],
      env: [{ name: "BROWSER", value: "none" }],
      interactiveMode: "Never",
    };
    expect(staging).toMatchObject({ contextName: "staging", namespace: "istio-system", userName: "sso-staging" });
    expect(staging.cluster).toEqual({
      server: "https://staging.example.com:6443",
      tlsServerName: "api.staging.internal",
      certificateAuthorityData: expect.stringMatching(/\n/) as unknown,
      insecureSkipTlsVerify: false,
    });
    // Node's base64 decoder, like Go's, skips the newlines.
    expect(pem(staging.cluster.certificateAuthorityData)).toBe(
      pem((await fixture("kind.yaml")).cluster.certificateAuthorityData),
    );
    expect(staging.user.exec).toEqual({ ...sso, provideClusterInfo: true });
    const prod = await fixture("hand-edited.yaml", "prod");
    expect(prod).toMatchObject({ clusterName: "prod", userName: "sso-prod", namespace: "default" });
    // `yes` is a boolean in YAML 1.1, which is what kubectl reads kubeconfigs as.
    expect(prod.cluster.insecureSkipTlsVerify).toBe(true);
    expect(prod.user.exec).toEqual({ ...sso, provideClusterInfo: false });
    const parsed = parseKubeconfig(await readFile(join(fixtures, "hand-edited.yaml"), "utf8"), "/k");
    expect(parsed.users.find(([name]) => name === "nobody")?.[1]).toEqual({});
  });

  it("reads JSON kubeconfigs (kubectl config view -o json)", () => {
    const parsed = parseKubeconfig(JSON.stringify(parseYaml(GKE), null, 4), "/k.json");
    expect(parsed).toEqual(parseKubeconfig(GKE, "/k"));
    expect(parsed.contexts).toEqual([
      ["gke_proj_zone_c1", { cluster: "gke_proj_zone_c1", user: "gke_proj_zone_c1", namespace: "apps" }],
    ]);
  });
});

const ALIAS_BOMB = Array.from({ length: 30 }, (_, i) =>
  i === 0 ? "l0: &l0 [x, x]" : `l${i}: &l${i} [*l${i - 1}, *l${i - 1}]`,
).join("\n");

describe("a malformed kubeconfig", () => {
  const cases: [string, string, RegExp][] = [
    ["bad indentation", "clusters:\n- name: a\n   cluster: {}\n", /^cannot parse kubeconfig \/k:2:9: Nested mappings/],
    ["a tab for indentation", "users:\n\t- name: a\n", /^cannot parse kubeconfig \/k:2:1: .*tab/i],
    [
      "an unterminated quote",
      'current-context: "dev\nkind: Config\n',
      /^cannot parse kubeconfig \/k:3:1: Missing closing "quote/,
    ],
    ["a duplicate key", "kind: Config\nkind: Config\n", /^cannot parse kubeconfig \/k:2:1: Map keys must be unique/],
    ["two documents", "kind: Config\n---\nkind: Config\n", /^cannot parse kubeconfig \/k:2:1: .*multiple documents/],
    ["an undefined alias", "users: *nobody\n", /^cannot parse kubeconfig \/k:1:8: alias \*nobody refers to no anchor/],
    // Each level doubles the one before: 60 aliases that would expand to 2^30 nodes ("billion laughs").
    ["an alias bomb", ALIAS_BOMB, /Excessive alias count .*more than 100 aliases/],
  ];
  it.each(cases)("%s: a config error naming the file, line and column", (_name, text, message) => {
    let error: unknown;
    try {
      parseKubeconfig(text, "/k");
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect(error).toMatchObject({ code: "KUBECONFIG_INVALID", kind: "config", subject: "/k" });
    expect((error as AgentError).message).toMatch(message);
    expect((error as AgentError).message).not.toContain("\n");
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
