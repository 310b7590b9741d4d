/**
 * The dev Kubernetes API over HTTPS: authentication (client certificates signed by the dev cluster CA with CN = user
 * and O = groups, static bearer tokens, service-account JWTs with the API server audience; anonymous → 401),
 * authorization before the body is read (kube-rbac.ts), discovery and OpenAPI documents, then the verbs of `KubeApi`
 * with Table output for kubectl and watches as chunked JSON lines.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import type { KubeApi } from "./kube-api.js";
import { DEV_KUBERNETES_VERSION, resolveTarget } from "./kube-api.js";
import { bodyType, checkBodyType, parseJson, readBody, readObject, send, wantsTable } from "./kube-api-http.js";
import type { Target } from "./kube-objects.js";
import type { DevUser, RbacTable } from "./kube-rbac.js";
import { forbidden, isAllowed } from "./kube-rbac.js";
import {
  apiGroupDocument,
  apiGroupListDocument,
  apiResourceListDocument,
  apiVersionOf,
  apiVersionsDocument,
  OPENAPI_V2_PROTOBUF,
  OPENAPI_V2_PROTOBUF_ACCEPT,
  openApiV2Document,
  openApiV3Document,
  openApiV3Index,
} from "./kube-resources.js";
import { fieldValue, matches, parseSelector } from "./kube-selectors.js";
import { ApiStatusError, badRequest, methodNotAllowed, pathNotFound } from "./kube-status.js";
import { toTable } from "./kube-table.js";
import type { ServiceAccountTokens } from "./sa-tokens.js";
import { API_SERVER_AUDIENCE } from "./sa-tokens.js";
import type { StoreEvent } from "./store.js";
import { listenOn } from "../platform/tcp.js";

const OPENAPI_HASH = "istio-vm-dev-1";

export interface KubeApiServerOptions {
  readonly api: KubeApi;
  readonly tokens: ServiceAccountTokens;
  readonly tls: { readonly certPem: string; readonly keyPem: string; readonly clientCaPem: string };
  /** Static bearer tokens → users. */
  readonly staticTokens: ReadonlyMap<string, DevUser>;
  readonly rbac: RbacTable;
  readonly listen: readonly { readonly host: string; readonly port: number }[];
  /** Called once per request (method, path, user, status), for logs. */
  readonly onRequest?: (entry: { method: string; path: string; user: string; status: number }) => void;
  readonly now?: () => number;
}

export interface KubeApiServer {
  /** One https:// URL per listening address, with the actual port. */
  readonly urls: readonly string[];
  /** Requests served (each counts), for benchmarks. */
  readonly requests: () => number;
  close(): Promise<void>;
}

export async function startKubeApiServer(options: KubeApiServerOptions): Promise<KubeApiServer> {
  const { api } = options;
  const now = options.now ?? Date.now;
  let served = 0;
  const watches = new Set<ServerResponse>();

  const authenticate = (req: IncomingMessage): DevUser | undefined => {
    const header = req.headers.authorization;
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)$/i.exec(header);
      if (match?.[1] === undefined) return undefined;
      const token = match[1];
      const user = options.staticTokens.get(token);
      if (user !== undefined) return user;
      try {
        const sa = options.tokens.verify(token, API_SERVER_AUDIENCE);
        return {
          name: `system:serviceaccount:${sa.namespace}:${sa.serviceAccount}`,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${sa.namespace}`, "system:authenticated"],
        };
      } catch {
        return undefined;
      }
    }
    const socket = req.socket as unknown as TLSSocket;
    if (socket.authorized) {
      const cert = socket.getPeerCertificate();
      const subject = cert.subject as Record<string, string | string[] | undefined> | undefined;
      const cn = subject?.["CN"];
      const org = subject?.["O"];
      if (typeof cn === "string" && cn !== "") {
        return {
          name: cn,
          groups: [...(org === undefined ? [] : Array.isArray(org) ? org : [org]), "system:authenticated"],
        };
      }
    }
    return undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, serverAddress: string): Promise<number> => {
    const url = new URL(req.url ?? "/", "https://dev.invalid");
    const method = req.method ?? "GET";
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const user = authenticate(req);
    if (user === undefined) {
      throw new ApiStatusError(401, "Unauthorized", "Unauthorized");
    }
    // Discovery and version: readable by every authenticated user (system:discovery).
    if (method === "GET") {
      if (path === "/version")
        return reply(res, 200, { ...DEV_KUBERNETES_VERSION, platform: "linux/amd64", goVersion: "go1.24" });
      if (path === "/api") return reply(res, 200, apiVersionsDocument(serverAddress));
      if (path === "/apis") return reply(res, 200, apiGroupListDocument(api.served));
      const core = /^\/api\/([^/]+)$/.exec(path);
      if (core?.[1] !== undefined) return replyOr404(res, apiResourceListDocument(api.served, "", core[1]));
      const groupOnly = /^\/apis\/([^/]+)$/.exec(path);
      if (groupOnly?.[1] !== undefined) return replyOr404(res, apiGroupDocument(api.served, groupOnly[1]));
      const gv = /^\/apis\/([^/]+)\/([^/]+)$/.exec(path);
      if (gv?.[1] !== undefined && gv[2] !== undefined)
        return replyOr404(res, apiResourceListDocument(api.served, gv[1], gv[2]));
      if (path === "/openapi/v2") {
        const accept = req.headers.accept ?? "";
        const protobuf = accept.includes(OPENAPI_V2_PROTOBUF_ACCEPT) || accept.includes(OPENAPI_V2_PROTOBUF);
        const body = openApiV2Document(protobuf ? "protobuf" : "json");
        res.writeHead(200, {
          "content-type": protobuf ? OPENAPI_V2_PROTOBUF : "application/json",
          "content-length": body.length,
        });
        res.end(body);
        return 200;
      }
      if (path === "/openapi/v3") return reply(res, 200, openApiV3Index(api.served, OPENAPI_HASH));
      const openapi = /^\/openapi\/v3\/(?:api\/([^/]+)|apis\/([^/]+)\/([^/]+))$/.exec(path);
      if (openapi !== null) {
        const doc =
          openapi[1] !== undefined
            ? openApiV3Document(api.served, "", openapi[1])
            : openApiV3Document(api.served, openapi[2] ?? "", openapi[3] ?? "");
        return replyOr404(res, doc);
      }
      if (path === "/healthz" || path === "/readyz" || path === "/livez") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok");
        return 200;
      }
    }
    const target = resolveTarget(api, path);
    if (target === undefined) throw pathNotFound();
    const watch = url.searchParams.get("watch");
    const isWatch = method === "GET" && (watch === "true" || watch === "1");
    let verb: string;
    switch (method) {
      case "GET":
        verb = isWatch ? "watch" : target.name === undefined ? "list" : "get";
        break;
      case "POST":
        verb = "create";
        break;
      case "PUT":
        verb = "update";
        break;
      case "PATCH":
        verb = "patch";
        break;
      case "DELETE":
        verb = target.name === undefined ? "deletecollection" : "delete";
        break;
      default:
        throw methodNotAllowed();
    }
    const rbacResource =
      target.subresource === undefined ? target.def.name : `${target.def.name}/${target.subresource}`;
    // As kube-apiserver, authorization happens before the body is read: a forbidden create names no object.
    if (!isAllowed(options.rbac, user, { verb, resource: rbacResource, namespace: target.namespace })) {
      throw forbidden(user, {
        verb,
        def: target.def,
        ...(target.subresource === undefined ? {} : { subresource: target.subresource }),
        ...(target.namespace === undefined ? {} : { namespace: target.namespace }),
        ...(target.name === undefined || method === "POST" ? {} : { name: target.name }),
      });
    }
    if (method === "POST" || method === "PUT" || method === "PATCH") checkBodyType(req, method === "PATCH");
    const dryRun = url.searchParams.getAll("dryRun").includes("All");
    if (!dryRun && url.searchParams.has("dryRun")) {
      throw badRequest(`Invalid dry run value: ${url.searchParams.get("dryRun") ?? ""} (only "All" is supported)`);
    }
    switch (verb) {
      case "get": {
        const object = api.get(target);
        return reply(
          res,
          200,
          wantsTable(req) ? toTable(target.def, [object], api.store.resourceVersion, now()) : object,
        );
      }
      case "list": {
        const { items, resourceVersion } = api.list(target, {
          labelSelector: url.searchParams.get("labelSelector"),
          fieldSelector: url.searchParams.get("fieldSelector"),
        });
        if (wantsTable(req)) return reply(res, 200, toTable(target.def, items, resourceVersion, now()));
        return reply(res, 200, {
          kind: `${target.def.kind}List`,
          apiVersion: apiVersionOf(target.def),
          metadata: { resourceVersion },
          items,
        });
      }
      case "watch":
        startWatch(target, url, res);
        return 200;
      case "create": {
        const created = api.create(target, await readObject(req), { dryRun });
        return reply(res, 201, created);
      }
      case "update":
        return reply(res, 200, api.update(target, await readObject(req), { dryRun }));
      case "patch":
        return reply(
          res,
          200,
          api.patch(target, parseJson(await readBody(req)), {
            dryRun,
            strategic: bodyType(req) === "application/strategic-merge-patch+json",
          }),
        );
      case "delete": {
        const deleted = api.delete(target, { dryRun });
        return reply(res, 200, {
          kind: "Status",
          apiVersion: "v1",
          metadata: {},
          status: "Success",
          details: {
            name: deleted.metadata.name,
            ...(target.def.group === "" ? {} : { group: target.def.group }),
            kind: target.def.name,
            uid: deleted.metadata.uid,
          },
        });
      }
      default:
        throw new ApiStatusError(405, "MethodNotAllowed", `${verb} is not supported by the dev API server`);
    }
  };

  const startWatch = (target: Target, url: URL, res: ServerResponse): void => {
    const labels = parseSelector(url.searchParams.get("labelSelector"));
    const fields = parseSelector(url.searchParams.get("fieldSelector"));
    res.writeHead(200, {
      "content-type": "application/json",
      "transfer-encoding": "chunked",
      "cache-control": "no-cache, private",
    });
    const accept = (event: StoreEvent): boolean =>
      event.resource === target.def.name &&
      (target.namespace === undefined || event.object.metadata.namespace === target.namespace) &&
      (target.name === undefined || event.object.metadata.name === target.name) &&
      matches(labels, (k) => event.object.metadata.labels?.[k]) &&
      matches(fields, (k) => fieldValue(event.object, k));
    const unsubscribe = api.store.watch((event) => {
      if (!accept(event)) return;
      res.write(
        `${JSON.stringify({ type: event.type, object: { ...event.object, apiVersion: apiVersionOf(target.def), kind: target.def.kind } })}\n`,
      );
    });
    // Headers go out only now, after the subscription: a client that has them will see every later change.
    res.flushHeaders();
    const timeoutSeconds = Number(url.searchParams.get("timeoutSeconds") ?? "1800");
    const timer = setTimeout(() => res.end(), Math.min(Math.max(timeoutSeconds, 1), 3600) * 1000);
    watches.add(res);
    res.on("close", () => {
      clearTimeout(timer);
      unsubscribe();
      watches.delete(res);
    });
  };

  const reply = (res: ServerResponse, code: number, body: unknown): number => {
    send(res, code, body);
    return code;
  };
  const replyOr404 = (res: ServerResponse, body: unknown): number => {
    if (body === undefined) throw pathNotFound();
    return reply(res, 200, body);
  };

  const servers: https.Server[] = [];
  const urls: string[] = [];
  try {
    for (const address of options.listen) {
      const server = https.createServer({
        cert: options.tls.certPem,
        key: options.tls.keyPem,
        ca: options.tls.clientCaPem,
        requestCert: true,
        rejectUnauthorized: false,
      });
      server.keepAliveTimeout = 30_000;
      const hostForUrl = isIP(address.host) === 6 ? `[${address.host}]` : address.host;
      server.on("request", (req: IncomingMessage, res: ServerResponse) => {
        served++;
        const local = `${hostForUrl}:${String((server.address() as { port: number } | null)?.port ?? address.port)}`;
        let user = "-";
        handle(req, res, local).then(
          (status) => options.onRequest?.({ method: req.method ?? "", path: req.url ?? "", user, status }),
          (error: unknown) => {
            const status =
              error instanceof ApiStatusError
                ? error
                : new ApiStatusError(500, "InternalError", `Internal error occurred: ${(error as Error).message}`);
            user = "-";
            if (!res.headersSent) send(res, status.code, status.toStatus());
            else res.end();
            options.onRequest?.({ method: req.method ?? "", path: req.url ?? "", user, status: status.code });
          },
        );
      });
      const { port } = await listenOn(server, address.port, address.host);
      servers.push(server);
      urls.push(`https://${hostForUrl}:${port}`);
    }
  } catch (error) {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    throw error;
  }
  return {
    urls,
    requests: () => served,
    async close() {
      for (const res of watches) res.end();
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => {
                resolve();
              });
              s.closeAllConnections();
            }),
        ),
      );
    },
  };
}
