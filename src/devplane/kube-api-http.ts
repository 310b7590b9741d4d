/** The HTTP side of dev API requests: JSON replies, request bodies (JSON, protobuf, merge patches) and their limits. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { PROTOBUF_CONTENT_TYPE, ProtobufError, decodeKubernetesProtobuf } from "./kube-protobuf.js";
import { ApiStatusError, badRequest } from "./kube-status.js";

export function send(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-cache, private",
  });
  res.end(text);
}

export function readBody(req: IncomingMessage, limit = 3 * 1024 * 1024): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new ApiStatusError(413, "RequestEntityTooLarge", "the request body is too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      resolve(Buffer.concat(chunks));
    });
    req.on("error", reject);
  });
}

export function parseJson(body: Buffer): unknown {
  const text = body.toString("utf8");
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw badRequest(`the request body is not JSON: ${(error as Error).message}`);
  }
}

export function bodyType(req: IncomingMessage): string {
  return (req.headers["content-type"] ?? "application/json").split(";")[0]?.trim() ?? "";
}

/**
 * Request bodies: JSON, and protobuf for the built-in kinds kubectl's typed commands send. Anything else gets 415,
 * as kube-apiserver answers media types it does not know.
 */
export function checkBodyType(req: IncomingMessage, patch: boolean): void {
  const type = bodyType(req);
  const accepted = patch
    ? ["application/merge-patch+json", "application/strategic-merge-patch+json"]
    : ["application/json", PROTOBUF_CONTENT_TYPE, ""];
  if (accepted.includes(type)) return;
  throw new ApiStatusError(
    415,
    "UnsupportedMediaType",
    `the body of the request was in an unknown format - accepted media types include: ${accepted.filter((t) => t !== "").join(", ")}`,
  );
}

export async function readObject(req: IncomingMessage): Promise<unknown> {
  const body = await readBody(req);
  if (bodyType(req) !== PROTOBUF_CONTENT_TYPE) return parseJson(body);
  try {
    return decodeKubernetesProtobuf(body);
  } catch (error) {
    if (error instanceof ProtobufError) {
      throw new ApiStatusError(
        415,
        "UnsupportedMediaType",
        `${error.message} (the istio-vm dev API server decodes protobuf only for the kinds it serves)`,
      );
    }
    throw error;
  }
}

export function wantsTable(req: IncomingMessage): boolean {
  return /as=Table/.test(req.headers.accept ?? "");
}
