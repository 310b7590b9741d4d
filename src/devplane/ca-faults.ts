/**
 * The dev CA's faults: what can be injected, the `KIND[:MS][*TIMES]` syntax of `ISTIO_VM_DEV_CA_FAULT` and
 * `istio-vm dev --ca-fault`, and the SetFault admin method (with its client) through which a test drives the fault
 * of a dev CA running in another process. The server (ca-server.ts) applies them.
 */
import * as grpc from "@grpc/grpc-js";
import { decodeSetFaultRequest, encodeSetFaultRequest } from "../certs/ca-messages.js";
import type { Logger } from "../platform/logger.js";
import { FAULT_SPEC_MAX_BYTES, NOT_LOOPBACK_MESSAGE, isLoopbackPeer } from "./fault-switch.js";

export type CaFaultKind = "deny" | "delay" | "unavailable" | "garbage" | "wrong-identity" | "expired" | "foreign-chain";

export const CA_FAULT_KINDS: readonly CaFaultKind[] = [
  "deny",
  "delay",
  "unavailable",
  "garbage",
  "wrong-identity",
  "expired",
  "foreign-chain",
];

export interface CaFault {
  readonly kind: CaFaultKind;
  /** `delay`: how long to hold each call before answering normally. */
  readonly delayMs?: number;
  /** Apply to this many calls, then clear; absent: until changed. */
  readonly times?: number;
}

/** Parses `deny`, `delay:5000`, `expired*3` (three calls), `none`. Throws with a usage message. */
export function parseCaFault(text: string): CaFault | undefined {
  const m = /^([a-z-]+)(?::(\d+))?(?:\*(\d+))?$/.exec(text.trim());
  if (m?.[1] === "none") return undefined;
  const kind = CA_FAULT_KINDS.find((k) => k === m?.[1]);
  if (m === null || kind === undefined) {
    throw new Error(`unknown CA fault '${text}': use none, ${CA_FAULT_KINDS.join(", ")} (delay:MS, KIND*TIMES)`);
  }
  if (kind === "delay" && m[2] === undefined) throw new Error("the delay fault needs milliseconds, e.g. delay:5000");
  return {
    kind,
    ...(m[2] === undefined ? {} : { delayMs: Number(m[2]) }),
    ...(m[3] === undefined ? {} : { times: Number(m[3]) }),
  };
}

/** Not an Istio method: the dev CA's fault-injection switch for tests that run `istio-vm dev` as a subprocess. */
export const DEV_CA_SET_FAULT_PATH = "/istio_vm.dev.DevCaAdmin/SetFault";

/** The admin service of a dev CA: SetFault replaces `target.fault`; loopback callers only. */
export function faultAdminService(
  target: { fault: CaFault | undefined },
  logger: Logger,
): { definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation } {
  const setFault = (call: grpc.ServerUnaryCall<string, object>, callback: grpc.sendUnaryData<object>): void => {
    if (!isLoopbackPeer(call.getPeer())) {
      callback({ code: grpc.status.PERMISSION_DENIED, details: NOT_LOOPBACK_MESSAGE });
      return;
    }
    if (Buffer.byteLength(call.request) > FAULT_SPEC_MAX_BYTES) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: `a fault is at most ${FAULT_SPEC_MAX_BYTES} bytes` });
      return;
    }
    try {
      target.fault = parseCaFault(call.request);
      logger.info("dev CA fault set", { fault: call.request });
      callback(null, {});
    } catch (error) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: (error as Error).message });
    }
  };
  const adminDefinition: grpc.ServiceDefinition = {
    SetFault: {
      path: DEV_CA_SET_FAULT_PATH,
      requestStream: false,
      responseStream: false,
      requestDeserialize: (data: Buffer) => decodeSetFaultRequest(data),
      requestSerialize: () => Buffer.alloc(0),
      responseSerialize: () => Buffer.alloc(0),
      responseDeserialize: () => ({}),
    },
  };

  return { definition: adminDefinition, implementation: { SetFault: setFault as grpc.UntypedHandleCall } };
}

/** Client of the dev CA's admin method: sets (or clears, with "none") the fault of a dev CA in another process. */
export async function setRemoteCaFault(options: {
  readonly address: string;
  readonly rootCertPem: string;
  readonly serverName?: string;
  readonly fault: string;
}): Promise<void> {
  const serverName = options.serverName ?? "istio-ca";
  const client = new grpc.Client(options.address, grpc.credentials.createSsl(Buffer.from(options.rootCertPem)), {
    "grpc.ssl_target_name_override": serverName,
    "grpc.default_authority": serverName,
  });
  try {
    await new Promise<void>((resolve, reject) => {
      client.makeUnaryRequest(
        DEV_CA_SET_FAULT_PATH,
        (fault: string) => encodeSetFaultRequest(fault),
        () => ({}),
        options.fault,
        new grpc.Metadata(),
        { deadline: Date.now() + 5000 },
        (error) => {
          if (error === null) resolve();
          else reject(new Error(`dev CA ${options.address}: ${error.details}`));
        },
      );
    });
  } finally {
    client.close();
  }
}
