import { createServer } from "node:http";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseReadinessProbe } from "../config/readiness-probe.js";
import type { ProbeMethod } from "../config/readiness-probe.js";
import { nodeHttpClient } from "../platform/http.js";
import { nodeProcessRunner } from "../platform/process.js";
import { nodeTcpConnector } from "../platform/tcp.js";
import { runProbe } from "./probers.js";

const ports = { http: nodeHttpClient, tcp: nodeTcpConnector, runner: nodeProcessRunner };

function method(raw: unknown): ProbeMethod {
  const parsed = parseReadinessProbe(raw);
  if ("problems" in parsed) throw new Error(parsed.problems.join("; "));
  return parsed.probe.method;
}

const run = (raw: unknown, timeoutMs = 2000) =>
  runProbe(method(raw), ports, { timeoutMs, signal: new AbortController().signal });

describe("runProbe (real HTTP server, real commands)", () => {
  let server: Server;
  let port = 0;
  const seen: { url: string; agent: string; host: string }[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push({ url: req.url ?? "", agent: req.headers["user-agent"] ?? "", host: req.headers.host ?? "" });
      const status = req.url === "/ready" ? 204 : req.url === "/moved" ? 302 : 503;
      res.writeHead(status).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  });

  it("httpGet: healthy on [200, 400), with istio's user agent and a Host header when given", async () => {
    expect(await run({ httpGet: { path: "/ready", port, host: "127.0.0.1" } })).toEqual({ healthy: true });
    expect(await run({ httpGet: { path: "/moved", port, host: "127.0.0.1" } })).toEqual({ healthy: true });
    expect(await run({ httpGet: { path: "/down", port, host: "127.0.0.1" } })).toEqual({
      healthy: false,
      message: "status code was not from [200,400), bad code 503",
    });
    await run({
      httpGet: { path: "/ready", port, host: "127.0.0.1", httpHeaders: [{ name: "Host", value: "app.example" }] },
    });
    expect(seen[0]).toEqual({ url: "/ready", agent: "istio-probe/1.0", host: `127.0.0.1:${port}` });
    expect(seen.at(-1)?.host).toBe("app.example");
  });

  it("tcpSocket and httpGet: a closed port is unhealthy with the connect error", async () => {
    const closed = await new Promise<number>((resolve) => {
      const s = createServer();
      s.listen(0, "127.0.0.1", () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => {
          resolve(p);
        });
      });
    });
    const refused = await run({ tcpSocket: { host: "127.0.0.1", port: closed } });
    expect(refused.healthy).toBe(false);
    expect(refused.healthy ? "" : refused.message).toContain("ECONNREFUSED");
    expect(await run({ tcpSocket: { host: "127.0.0.1", port } })).toEqual({ healthy: true });
  });

  it("exec: exit 0 healthy, else the exit status and the last line of stderr; the timeout kills it", async () => {
    expect(await run({ exec: { command: ["true"] } })).toEqual({ healthy: true });
    expect(await run({ exec: { command: ["sh", "-c", "echo not ready >&2; exit 3"] } })).toEqual({
      healthy: false,
      message: "exit status 3: not ready",
    });
    expect(await run({ exec: { command: ["sleep", "5"] } }, 200)).toEqual({
      healthy: false,
      message: "command timeout exceeded: sleep 5",
    });
    expect(await run({ exec: { command: ["/no/such/command"] } })).toMatchObject({ healthy: false });
  });
});
