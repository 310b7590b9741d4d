/**
 * A gRPC server on a Unix socket that only one user may use (the agent's SDS and xDS-proxy sockets, istiod profile):
 * its own directory 0700 and the socket 0600, both owned by that user, so only Envoy's user (and root) can connect.
 * A stale socket from an earlier run is replaced.
 */
import { dirname } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { ServerCredentials } from "@grpc/grpc-js";
import type { FileOwner, FileSystem } from "../platform/fs.js";

export async function bindPrivateSocket(
  server: grpc.Server,
  socketPath: string,
  fs: FileSystem,
  owner: FileOwner | undefined,
): Promise<void> {
  const dir = dirname(socketPath);
  await fs.mkdirp(dir, 0o700);
  await fs.chmod(dir, 0o700);
  if (owner !== undefined) await fs.chown(dir, owner);
  await fs.remove(socketPath);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, ServerCredentials.createInsecure(), (error) => {
      if (error === null) resolve();
      else reject(error);
    });
  });
  await fs.chmod(socketPath, 0o600);
  if (owner !== undefined) await fs.chown(socketPath, owner);
}
