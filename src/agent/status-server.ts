import { createServer } from "node:http";
import { listenOn } from "../platform/tcp.js";

export interface Readiness {
  readonly ready: boolean;
  /** One line per component: "certificates: ok …" */
  readonly details: readonly string[];
}

export interface StatusServerOptions {
  readonly host: string;
  readonly port: number;
  readonly readiness: () => Readiness;
  readonly metrics: () => string;
}

export interface StatusServer {
  readonly address: string;
  close(): Promise<void>;
}

/**
 * The agent's status endpoint (the port pilot-agent used, 15020, on loopback only):
 * GET /healthz/ready → 200 when every component is ready, else 503, with one line per component;
 * GET /healthz/live → 200 while the process serves requests; GET /metrics → Prometheus text.
 */
export async function startStatusServer(options: StatusServerOptions): Promise<StatusServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("method not allowed\n");
      return;
    }
    if (path === "/healthz/ready") {
      const r = options.readiness();
      res
        .writeHead(r.ready ? 200 : 503, { "content-type": "text/plain; charset=utf-8" })
        .end(`${r.ready ? "ready" : "not ready"}\n${r.details.map((d) => `${d}\n`).join("")}`);
      return;
    }
    if (path === "/healthz/live") {
      res.writeHead(200, { "content-type": "text/plain" }).end("live\n");
      return;
    }
    if (path === "/metrics" || path === "/stats/prometheus") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(options.metrics());
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /healthz/ready or /metrics\n");
  });
  server.keepAliveTimeout = 5000;
  const info = await listenOn(server, options.port, options.host);
  return {
    address: `${info.address}:${info.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          resolve();
        });
      }),
  };
}
