/**
 * A dev mesh CA serving both protocols on 127.0.0.1 and a temporary OUTPUT_CERTS directory holding root-cert.pem and
 * an installed pair (plain files, as `istio-vm install` leaves them), plus a RenewContext pointing at both.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CaProtocol } from "../../src/certs/ca-client.js";
import { createCaClient, keptCaConnection } from "../../src/certs/ca-client.js";
import type { WorkloadKeySpec } from "../../src/certs/keys.js";
import type { RenewContext } from "../../src/certs/renew.js";
import { CertStore } from "../../src/certs/store.js";
import type { DevCaServer, DevCaServerOptions } from "../../src/devplane/ca-server.js";
import { startDevCaServer } from "../../src/devplane/ca-server.js";
import type { MeshCa } from "../../src/devplane/mesh-ca.js";
import { createMeshCa } from "../../src/devplane/mesh-ca.js";
import type { ServiceAccountTokens } from "../../src/devplane/sa-tokens.js";
import { DEFAULT_TOKEN_AUDIENCE, createServiceAccountTokens } from "../../src/devplane/sa-tokens.js";
import type { Clock } from "../../src/platform/clock.js";
import { systemClock } from "../../src/platform/clock.js";
import { nodeFileSystem } from "../../src/platform/fs.js";
import { nodeLinkFileSystem } from "../../src/platform/links.js";

export const NAMESPACE = "vmns";
export const SERVICE_ACCOUNT = "vm-sa";

export interface CertFixture {
  readonly mesh: MeshCa;
  readonly server: DevCaServer;
  readonly tokens: ServiceAccountTokens;
  readonly dir: string;
  readonly identity: string;
  readonly tokenFile: string;
  readonly context: RenewContext;
  /** Writes key.pem and cert-chain.pem as plain files (the layout `istio-vm install` leaves). */
  installPair(validity?: { notBefore: Date; notAfter: Date }): Promise<{ keyPem: string; chainPem: string }>;
  /** Writes a fresh service-account token for the workload into tokenFile. */
  writeToken(): Promise<string>;
  close(): Promise<void>;
}

export async function createCertFixture(options: {
  readonly protocol: CaProtocol;
  readonly clock?: Clock;
  readonly keySpec?: WorkloadKeySpec;
  readonly ttlMs?: number;
  readonly timeoutMs?: number;
  readonly server?: Partial<DevCaServerOptions>;
}): Promise<CertFixture> {
  const mesh = await createMeshCa();
  const tokens = createServiceAccountTokens();
  const server = await startDevCaServer({
    mesh,
    verifyToken: (token) => {
      try {
        return Promise.resolve(tokens.verify(token, DEFAULT_TOKEN_AUDIENCE));
      } catch {
        return Promise.resolve(undefined);
      }
    },
    ...options.server,
  });
  const dir = await mkdtemp(join(tmpdir(), "istio-vm-certs-"));
  await writeFile(join(dir, "root-cert.pem"), mesh.rootCertPem);
  const identity = mesh.spiffeId(NAMESPACE, SERVICE_ACCOUNT);
  const tokenFile = join(dir, "istio-token");
  const serverName = options.protocol === "legacy" ? "istio-ca" : "istiod.istio-system.svc";
  const clock = options.clock ?? systemClock;
  // As the agent's context (src/certs/setup.ts): the CA connection is kept between renewals.
  const ca = keptCaConnection((rootPem) =>
    createCaClient(options.protocol, {
      address: { host: "127.0.0.1", port: server.port },
      serverName,
      rootPem,
      timeoutMs: options.timeoutMs ?? 5000,
      clusterId: "Kubernetes",
      now: () => clock.now(),
    }),
  );
  const context: RenewContext = {
    store: new CertStore({ dir, fs: nodeFileSystem, links: nodeLinkFileSystem }),
    protocol: options.protocol,
    connect: (rootPem) => ca.connect(rootPem),
    close: () => {
      ca.close();
    },
    clock,
    fs: nodeFileSystem,
    identity,
    keySpec: options.keySpec ?? { type: "EC" },
    ttlMs: options.ttlMs ?? 24 * 3600_000,
    tokenFile,
  };
  return {
    mesh,
    server,
    tokens,
    dir,
    identity,
    tokenFile,
    context,
    async installPair(validity) {
      const issued = await mesh.issueKeyPair({ identity, ...(validity ?? {}) });
      await writeFile(join(dir, "key.pem"), issued.keyPem, { mode: 0o600 });
      await writeFile(join(dir, "cert-chain.pem"), issued.chainPem);
      return { keyPem: issued.keyPem, chainPem: issued.chainPem };
    },
    async writeToken() {
      const { token } = tokens.issue({
        namespace: NAMESPACE,
        serviceAccount: SERVICE_ACCOUNT,
        audiences: [DEFAULT_TOKEN_AUDIENCE],
        expirationSeconds: 3600,
      });
      await writeFile(tokenFile, token, { mode: 0o600 });
      return token;
    },
    async close() {
      ca.close();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
