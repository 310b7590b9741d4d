/**
 * A one-shot SDS fetch, for `istio-vm check`: open StreamSecrets on the agent's socket, ask for the named secrets,
 * take the first response, and close without ACKing (a check is not a subscriber). Under one deadline.
 */
import * as grpc from "@grpc/grpc-js";
import { reasonError } from "../platform/errors.js";
import { grpcStatusName } from "../xds/ads-client.js";
import type { DiscoveryRequest, DiscoveryResponse, SecretResource } from "../xds/protos.js";
import {
  SDS_METHOD,
  SECRET_TYPE_URL,
  decodeDiscoveryResponse,
  encodeDiscoveryRequest,
  unpackSecret,
} from "../xds/protos.js";

export interface FetchedSecrets {
  readonly version: string;
  readonly secrets: readonly SecretResource[];
}

/** The socket's errno (ENOENT, EACCES, ECONNREFUSED) when the connection failed, else the gRPC status name. */
export class SdsFetchError extends reasonError<string>("SdsFetchError") {}

export function fetchSecrets(
  socketPath: string,
  names: readonly string[],
  options: { readonly timeoutMs: number; readonly signal?: AbortSignal },
): Promise<FetchedSecrets> {
  const client = new grpc.Client(`unix:${socketPath}`, grpc.credentials.createInsecure(), {
    "grpc.enable_retries": 0,
  });
  return new Promise<FetchedSecrets>((resolve, reject) => {
    const call = client.makeBidiStreamRequest<DiscoveryRequest, DiscoveryResponse>(
      SDS_METHOD,
      encodeDiscoveryRequest,
      decodeDiscoveryResponse,
      new grpc.Metadata(),
      { deadline: Date.now() + options.timeoutMs },
    );
    let settled = false;
    const settle = (result: FetchedSecrets | Error): void => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener("abort", onAbort);
      call.cancel();
      client.close();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const onAbort = (): void => {
      settle(new SdsFetchError("CANCELLED", "the check was cancelled"));
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    call.on("data", (response: DiscoveryResponse) => {
      settle({ version: response.version_info, secrets: response.resources.map(unpackSecret) });
    });
    call.on("status", (status: grpc.StatusObject) => {
      const errno = /\b(ENOENT|EACCES|ECONNREFUSED|EPERM)\b/.exec(status.details)?.[1];
      const reason = errno ?? grpcStatusName(status.code);
      settle(new SdsFetchError(reason, `SDS stream ended: ${status.details || reason}`));
    });
    call.on("error", () => {
      // reported through "status"
    });
    call.write({
      version_info: "",
      node: { id: "istio-vm-check", cluster: "istio-vm-check", metadata: {} },
      resource_names: [...names],
      type_url: SECRET_TYPE_URL,
      response_nonce: "",
    });
  });
}
