/**
 * The SDS server against a client built from Envoy's own protos (test/support/sds-client.ts), over a real Unix
 * socket: what Envoy decodes, push on renewal, ACK/NACK, unknown names, and who may connect.
 */
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { nodeFileSystem } from "../platform/fs.js";
import type { LogFields } from "../platform/logger.js";
import { createLogger } from "../platform/logger.js";
import { SdsTestClient, connectAs, decodeSecret } from "../../test/support/sds-client.js";
import { requirements } from "../../test/support/requirements.js";
import { fetchSecrets } from "./client.js";
import type { SdsSecrets } from "./server.js";
import { ROOT_SECRET, SdsServer, WORKLOAD_SECRET } from "./server.js";

const pem = (label: string, body: string): string => `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
const FIRST: SdsSecrets = {
  keyPem: pem("PRIVATE KEY", "a2V5LTE="),
  chainPem: pem("CERTIFICATE", "bGVhZi0x") + pem("CERTIFICATE", "aW50ZXJtZWRpYXRl"),
  rootPem: pem("CERTIFICATE", "cm9vdC0x"),
};
const RENEWED: SdsSecrets = {
  ...FIRST,
  keyPem: pem("PRIVATE KEY", "a2V5LTI="),
  chainPem: pem("CERTIFICATE", "bGVhZi0y"),
};

let dir: string;
let server: SdsServer;
let socketPath: string;
const clients: SdsTestClient[] = [];
const lines: { message: string; fields: LogFields }[] = [];

/** Yields to the event loop until the server has seen what the client sent (no timing involved). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setImmediate(resolve));
}

function client(): SdsTestClient {
  const c = new SdsTestClient(socketPath);
  clients.push(c);
  return c;
}

async function startServer(options: { owner?: { uid: number; gid: number } } = {}): Promise<void> {
  server = new SdsServer({
    socketPath,
    fs: nodeFileSystem,
    logger: createLogger({
      level: "debug",
      format: "plain",
      write: (line) => {
        const match = /\] (.*)$/.exec(line);
        lines.push({ message: match?.[1] ?? line, fields: {} });
      },
    }),
    ...options,
  });
  await server.listen();
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sds-"));
  await chmod(dir, 0o755);
  socketPath = join(dir, "workload-spiffe-uds", "socket");
  lines.length = 0;
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

describe("SDS server", () => {
  it("serves `default` as a TlsCertificate and `ROOTCA` as a validation context, decoded with Envoy's protos", async () => {
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    const first = await envoy.next();
    expect(first.type_url).toBe("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    expect(first.resources.map(decodeSecret)).toEqual([{ name: "default", chain: FIRST.chainPem, key: FIRST.keyPem }]);
    const roots = client();
    roots.request([ROOT_SECRET]);
    expect((await roots.next()).resources.map(decodeSecret)).toEqual([{ name: "ROOTCA", trustedCa: FIRST.rootPem }]);
    expect(server.servedChain()).toBe(FIRST.chainPem);
  });

  it("pushes a renewal to open streams as a new version; a stream whose secret did not change gets nothing", async () => {
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    const first = await envoy.next();
    envoy.request([WORKLOAD_SECRET], { version: first.version_info, nonce: first.nonce });
    const roots = client();
    roots.request([ROOT_SECRET]);
    const rootFirst = await roots.next();
    roots.request([ROOT_SECRET], { version: rootFirst.version_info, nonce: rootFirst.nonce });

    server.update(RENEWED);
    const pushed = await envoy.next();
    expect(pushed.version_info).not.toBe(first.version_info);
    expect(pushed.nonce).not.toBe(first.nonce);
    expect(pushed.resources.map(decodeSecret)).toEqual([
      { name: "default", chain: RENEWED.chainPem, key: RENEWED.keyPem },
    ]);
    // The ROOTCA stream's next response is the one after the trust bundle changes: had the leaf's renewal been
    // pushed to it, that response (with the old bundle) would come first.
    const newRoot = pem("CERTIFICATE", "cm9vdC0y");
    server.update({ ...RENEWED, rootPem: newRoot });
    expect((await roots.next()).resources.map(decodeSecret)).toEqual([{ name: "ROOTCA", trustedCa: newRoot }]);
    expect(server.servedChain()).toBe(RENEWED.chainPem);
  });

  it("counts ACKs, and logs and counts a NACK with Envoy's error without re-sending that version", async () => {
    await startServer();
    const counts = { acked: 0, nacked: 0, pushed: 0 };
    server = new SdsServer({
      socketPath,
      fs: nodeFileSystem,
      logger: createLogger({
        level: "info",
        format: "plain",
        write: (line) => lines.push({ message: line, fields: {} }),
      }),
      observer: {
        acked: () => counts.acked++,
        nacked: () => counts.nacked++,
        pushed: () => counts.pushed++,
      },
    });
    await server.listen();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    const first = await envoy.next();
    envoy.request([WORKLOAD_SECRET], { version: first.version_info, nonce: first.nonce });
    await until(() => server.status().ackedStreams === 1);
    server.update(RENEWED);
    const second = await envoy.next();
    envoy.request([WORKLOAD_SECRET], {
      version: first.version_info,
      nonce: second.nonce,
      error: "Failed to load private key",
    });
    await until(() => server.status().nacks === 1);
    expect(server.status().ackedStreams).toBe(0);
    // A later renewal is still pushed after the NACK: the stream is alive and the server went on.
    server.update(FIRST);
    const third = await envoy.next();
    expect(third.resources.map(decodeSecret)[0]?.chain).toBe(FIRST.chainPem);
    expect(counts).toEqual({ acked: 1, nacked: 1, pushed: 3 });
    const status = server.status();
    expect(status.nacks).toBe(1);
    expect(status.lastNack).toBe("Failed to load private key");
    expect(lines.some((l) => l.message.includes("NACK") && l.message.includes("Failed to load private key"))).toBe(
      true,
    );
  });

  it("a client that goes away (cancel, or a one-shot fetch) is forgotten: status counts open streams only", async () => {
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    await envoy.next();
    const fetched = await fetchSecrets(socketPath, [WORKLOAD_SECRET], { timeoutMs: 5000 });
    expect(fetched.secrets.map((s) => s.name)).toEqual([WORKLOAD_SECRET]);
    await until(() => server.status().streams === 1);
    envoy.close();
    await until(() => server.status().streams === 0);
  });

  it("a stale nonce is ignored: it is neither an ACK nor a NACK", async () => {
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    const first = await envoy.next();
    server.update(RENEWED);
    const second = await envoy.next();
    envoy.request([WORKLOAD_SECRET], { version: first.version_info, nonce: first.nonce, error: "late" });
    envoy.request([WORKLOAD_SECRET], { version: second.version_info, nonce: second.nonce });
    // One stream's requests are handled in order: once the ACK counts, the stale NACK before it was seen.
    await until(() => server.status().ackedStreams === 1);
    expect(server.status().nacks).toBe(0);
  });

  it("a request for an unknown name waits: no response, no error, the stream stays open", async () => {
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request(["file-cert:/etc/certs/cert-chain.pem"]);
    // Re-subscribing with ROOTCA added: the first response on this stream must be the one for ROOTCA, so nothing was
    // sent for the unknown name alone.
    envoy.request(["file-cert:/etc/certs/cert-chain.pem", ROOT_SECRET]);
    const response = await envoy.next();
    expect(response.resources.map((r) => decodeSecret(r).name)).toEqual([ROOT_SECRET]);
    expect(envoy.status).toBeUndefined();
  });

  it("before the first certificate `default` is unknown: the request waits and is answered once it arrives", async () => {
    await startServer();
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    const answered = envoy.next();
    // The server has the stream (it saw the request) before it has anything to answer with.
    await until(() => server.status().subscribedStreams === 1);
    expect(envoy.pending()).toBe(0);
    server.update(FIRST);
    expect((await answered).resources.map(decodeSecret)[0]?.chain).toBe(FIRST.chainPem);
  });
});

const needsRoot = requirements({ root: true });

describe.skipIf(needsRoot !== undefined)("SDS socket permissions", () => {
  it("the socket is 0600 and its directory 0700, both Envoy's user's: only that user (and root) connects", async () => {
    await startServer({ owner: { uid: 4321, gid: 4321 } });
    server.update(FIRST);
    const socket = await stat(socketPath);
    const parent = await stat(join(dir, "workload-spiffe-uds"));
    expect([socket.isSocket(), socket.mode & 0o777, socket.uid, socket.gid]).toEqual([true, 0o600, 4321, 4321]);
    expect([parent.mode & 0o777, parent.uid]).toEqual([0o700, 4321]);
    expect(connectAs(socketPath, 4321)).toBe("connected");
    expect(connectAs(socketPath, 65534)).toBe("EACCES");
  });

  it("a stale socket left by a killed agent is replaced", async () => {
    await mkdir(join(dir, "workload-spiffe-uds"), { mode: 0o700 });
    await writeFile(socketPath, "left over");
    await startServer();
    server.update(FIRST);
    const envoy = client();
    envoy.request([WORKLOAD_SECRET]);
    expect((await envoy.next()).resources).toHaveLength(1);
  });
});
