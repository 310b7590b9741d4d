import { describe, expect, it } from "vitest";
import { KubeApiError } from "./client.js";
import { execInfo, parseExecCredential } from "./exec-credential.js";
import type { ExecCredentialOptions } from "./exec-credential.js";
import { parseApiPath } from "./api-path.js";
import { rbacVerb, statusError, transportError } from "./api-errors.js";
import { nodeProcessRunner } from "../platform/process.js";

const server = "https://203.0.113.10:6443";

function status(code: number, reason: string, message: string, details: Record<string, unknown> = {}): string {
  return JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", message, reason, details, code });
}

/** The error for `method path` answered with a Status of `code` and `reason` by `server`. */
function failed(
  request: string,
  code: number,
  reason: string,
  message: string,
  details?: Record<string, unknown>,
): ReturnType<typeof statusError> {
  const [method = "", path = ""] = request.split(" ");
  return statusError({ method, path, status: code, body: status(code, reason, message, details), server });
}

describe("parseApiPath and rbacVerb", () => {
  it("takes core, group, namespaced, cluster-scoped and subresource paths apart", () => {
    expect(parseApiPath("/api/v1/namespaces/default/services/web?dryRun=All")).toEqual({
      group: "",
      version: "v1",
      namespace: "default",
      resource: "services",
      name: "web",
    });
    expect(parseApiPath("/apis/networking.k8s.io/v1/servicecidrs/kubernetes")).toEqual({
      group: "networking.k8s.io",
      version: "v1",
      resource: "servicecidrs",
      name: "kubernetes",
    });
    expect(parseApiPath("/api/v1/namespaces/ns1/serviceaccounts/vm/token")).toMatchObject({
      resource: "serviceaccounts",
      name: "vm",
      subresource: "token",
    });
    expect(parseApiPath("/api/v1/namespaces/ns1")).toEqual({
      group: "",
      version: "v1",
      resource: "namespaces",
      name: "ns1",
    });
    expect(parseApiPath("/version")).toBeUndefined();
  });

  it("maps methods to RBAC verbs", () => {
    const item = parseApiPath("/api/v1/namespaces/a/services/b");
    const list = parseApiPath("/api/v1/namespaces/a/services");
    expect(rbacVerb("GET", item)).toBe("get");
    expect(rbacVerb("GET", list)).toBe("list");
    expect(rbacVerb("POST", list)).toBe("create");
    expect(rbacVerb("PUT", item)).toBe("update");
    expect(rbacVerb("DELETE", item)).toBe("delete");
    expect(rbacVerb("DELETE", list)).toBe("deletecollection");
  });
});

describe("statusError", () => {
  it("403 names what to grant, with a group-qualified resource", () => {
    const error = statusError({
      method: "POST",
      path: "/apis/networking.istio.io/v1/namespaces/apps/workloadentries",
      status: 403,
      body: status(403, "Forbidden", 'workloadentries.networking.istio.io is forbidden: User "bob" cannot create ...'),
      server,
      contextName: "prod",
      userName: "bob",
    });
    expect(error).toBeInstanceOf(KubeApiError);
    expect(error.code).toBe("KUBE_FORBIDDEN");
    expect(error.message).toContain(
      'refused to let user "bob" (context "prod") create workloadentries.networking.istio.io in namespace "apps"',
    );
    expect(error.hint).toContain("verbs: [create] on resources: [workloadentries]");
  });

  it("404 tells a missing object from an API the cluster does not serve", () => {
    const missing = failed(
      "GET /api/v1/namespaces/default/secrets/istio.vm",
      404,
      "NotFound",
      'secrets "istio.vm" not found',
      { name: "istio.vm", kind: "secrets" },
    );
    expect(missing.message).toBe('secrets "istio.vm" not found in namespace "default"');
    expect(missing.subject).toBe('secrets "istio.vm" -n default');
    const unserved = failed(
      "GET /apis/networking.k8s.io/v1/servicecidrs/kubernetes",
      404,
      "NotFound",
      "the server could not find the requested resource",
    );
    expect(unserved.message).toContain("does not serve servicecidrs.networking.k8s.io");
    expect(unserved.hint).toMatch(/does not have this API/);
  });

  it("keeps the API server's own message for 422 (callers parse it) and maps 409 reasons", () => {
    const message =
      'Service "p" is invalid: spec.clusterIPs: Invalid value: []string{"0.0.0.1"}: failed to allocate IP 0.0.0.1: the provided IP (0.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12';
    const invalid = failed("POST /api/v1/namespaces/d/services", 422, "Invalid", message);
    expect(invalid.message).toBe(message);
    expect(invalid.code).toBe("KUBE_INVALID");
    const conflict = failed("PUT /api/v1/namespaces/d/endpoints/e", 409, "Conflict", "Operation cannot be fulfilled");
    expect(conflict.reason).toBe("Conflict");
    expect(conflict.hint).toMatch(/retry/);
  });

  it("survives a non-JSON error body (a proxy's HTML page)", () => {
    const error = statusError({
      method: "GET",
      path: "/api/v1/namespaces",
      status: 502,
      body: "<html>Bad Gateway</html>",
      server,
    });
    expect(error.message).toContain("<html>Bad Gateway</html>");
    expect(error.hint).toMatch(/API server had a problem/);
  });
});

describe("transportError", () => {
  it("classifies refused connections, TLS failures and timeouts", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 203.0.113.10:6443"), { code: "ECONNREFUSED" });
    expect(transportError(refused, server, false)).toMatchObject({ code: "KUBE_UNREACHABLE", subject: server });
    const tls = Object.assign(new Error("unable to verify the first certificate"), {
      code: "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    });
    const tlsError = transportError(tls, server, false);
    expect(tlsError.code).toBe("KUBE_TLS");
    expect(tlsError.message).toContain("(UNABLE_TO_VERIFY_LEAF_SIGNATURE)");
    expect(transportError(new Error("aborted"), server, true).code).toBe("KUBE_TIMEOUT");
  });
});

describe("exec credentials", () => {
  const options: ExecCredentialOptions = {
    exec: {
      apiVersion: "client.authentication.k8s.io/v1",
      command: "plugin",
      args: [],
      env: [],
      provideClusterInfo: true,
    },
    cluster: { server, insecureSkipTlsVerify: false, tlsServerName: "kubernetes" },
    caPem: "-----BEGIN CERTIFICATE-----\n...\n",
    env: {},
    runner: nodeProcessRunner,
    userName: "me",
  };

  it("passes the cluster to plugins that ask for it", () => {
    const info = JSON.parse(execInfo(options)) as {
      apiVersion: string;
      spec: { interactive: boolean; cluster: Record<string, unknown> };
    };
    expect(info.apiVersion).toBe("client.authentication.k8s.io/v1");
    expect(info.spec.interactive).toBe(false);
    expect(info.spec.cluster).toMatchObject({ server, "tls-server-name": "kubernetes" });
    expect(Buffer.from(String(info.spec.cluster["certificate-authority-data"]), "base64").toString()).toContain(
      "BEGIN CERTIFICATE",
    );
    expect(JSON.parse(execInfo({ ...options, exec: { ...options.exec, provideClusterInfo: false } }))).toMatchObject({
      spec: { interactive: false },
    });
  });

  it("reads the token and expiry, and rejects malformed answers clearly", () => {
    const ok = parseExecCredential(
      JSON.stringify({
        kind: "ExecCredential",
        apiVersion: "client.authentication.k8s.io/v1",
        status: { token: "t", expirationTimestamp: "2030-01-01T00:00:00Z" },
      }),
      options,
    );
    expect(ok).toEqual({ token: "t", expiresAt: Date.parse("2030-01-01T00:00:00Z") });
    expect(() => parseExecCredential("not json", options)).toThrow(/not an ExecCredential JSON/);
    expect(() =>
      parseExecCredential(
        JSON.stringify({
          kind: "ExecCredential",
          apiVersion: "client.authentication.k8s.io/v1beta1",
          status: { token: "t" },
        }),
        options,
      ),
    ).toThrow(/apiVersion/);
    expect(() =>
      parseExecCredential(
        JSON.stringify({
          kind: "ExecCredential",
          apiVersion: "client.authentication.k8s.io/v1",
          status: { clientCertificateData: "c" },
        }),
        options,
      ),
    ).toThrow(/both are needed/);
    expect(() =>
      parseExecCredential(
        JSON.stringify({ kind: "ExecCredential", apiVersion: "client.authentication.k8s.io/v1", status: {} }),
        options,
      ),
    ).toThrow(/neither status.token/);
  });
});
