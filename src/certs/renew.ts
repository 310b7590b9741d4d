/**
 * One renewal: a new key, a CSR for the workload identity, a call to the CA with the best credential at hand, and the
 * answer accepted into the store only after it verifies. Shared by the agent's loop and `istio-vm certs renew`.
 */
import type { Clock } from "../platform/clock.js";
import type { FileSystem } from "../platform/fs.js";
import type { CaClient, CaCredential, CaFailureReason, CaProtocol } from "./ca-client.js";
import { CaCallError } from "./ca-client.js";
import { createCsr } from "./csr.js";
import type { WorkloadKeySpec } from "./keys.js";
import { generateWorkloadKey } from "./keys.js";
import type { CertPair, CertStore } from "./store.js";
import type { CertificateInfo, RejectReason } from "./verify.js";
import { CertificateRejected, chainWithoutRoots, verifyPair } from "./verify.js";

export type RenewFailureReason = CaFailureReason | RejectReason | "no-credential" | "no-root" | "write";

/** A failed renewal; `reason` is the metric label, the message says what happened (never with key material). */
export class RenewError extends Error {
  readonly reason: RenewFailureReason;
  constructor(reason: RenewFailureReason, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "RenewError";
    this.reason = reason;
  }
}

export interface RenewContext {
  readonly store: CertStore;
  readonly protocol: CaProtocol;
  /**
   * The CA client for one attempt, trusting the root-cert.pem read for it (a new root is picked up). It may hand out
   * the same client again: the CA connection is kept between renewals (see ca-client.ts) until `close`.
   */
  readonly connect: (rootPem: string) => CaClient;
  /** Ends the CA connection kept between renewals (absent: `connect` keeps none). */
  readonly close?: () => void;
  readonly clock: Clock;
  readonly fs: FileSystem;
  readonly identity: string;
  readonly keySpec: WorkloadKeySpec;
  readonly ttlMs: number;
  /** ISTIO_TOKEN_FILE; only the istiod protocol uses it. */
  readonly tokenFile: string;
}

/** What the store holds now, judged by the same checks a new pair must pass. */
export type CurrentPair =
  | { readonly state: "valid"; readonly pair: CertPair; readonly info: CertificateInfo }
  | { readonly state: "invalid"; readonly pair: CertPair; readonly problem: CertificateRejected }
  | { readonly state: "missing"; readonly problem: string };

export async function inspectCurrent(
  context: Pick<RenewContext, "store" | "clock" | "identity">,
): Promise<CurrentPair> {
  const pair = await context.store.read();
  if (pair === undefined) {
    return { state: "missing", problem: `no key and certificate in ${context.store.paths.dir}` };
  }
  const rootPem = await context.store.readRoot();
  if (rootPem === undefined) {
    return {
      state: "invalid",
      pair,
      problem: new CertificateRejected("malformed", `${context.store.paths.root} is missing`),
    };
  }
  try {
    const verified = verifyPair({ ...pair, rootPem, expectedIdentity: context.identity, now: context.clock.now() });
    return { state: "valid", pair, info: verified.info };
  } catch (error) {
    if (error instanceof CertificateRejected) return { state: "invalid", pair, problem: error };
    throw error;
  }
}

async function readToken(context: RenewContext): Promise<string | undefined> {
  if (context.protocol !== "istiod") return undefined;
  const text = await context.fs.readTextIfExists(context.tokenFile);
  const token = text?.trim();
  return token === undefined || token === "" ? undefined : token;
}

/**
 * The credentials to try, best first: the current pair while it is valid (mTLS, what both CAs accept for renewals),
 * then the service-account token (istiod), which re-bootstraps a VM whose certificate has expired.
 */
export async function credentialsFor(context: RenewContext, current: CurrentPair): Promise<CaCredential[]> {
  const credentials: CaCredential[] = [];
  if (current.state === "valid") credentials.push({ kind: "mtls", ...current.pair });
  const token = await readToken(context);
  if (token !== undefined) credentials.push({ kind: "token", token });
  return credentials;
}

function describeCurrentProblem(current: CurrentPair): string {
  if (current.state === "missing") return current.problem;
  if (current.state === "invalid") return `the current certificate is unusable (${current.problem.message})`;
  return "the current certificate is valid";
}

export interface RenewResult {
  readonly info: CertificateInfo;
  readonly credential: CaCredential["kind"];
}

/** Runs one renewal; throws `RenewError`. The pair on disk changes only when the new one verified. */
export async function renewOnce(context: RenewContext, signal?: AbortSignal): Promise<RenewResult> {
  const current = await inspectCurrent(context);
  const credentials = await credentialsFor(context, current);
  if (credentials.length === 0) {
    const why = describeCurrentProblem(current);
    throw new RenewError(
      "no-credential",
      context.protocol === "istiod"
        ? `cannot authenticate to the CA: ${why}, and there is no token in ${context.tokenFile}`
        : `cannot authenticate to the CA: ${why} (the legacy CA accepts only a valid certificate)`,
    );
  }
  const rootPem = await context.store.readRoot();
  if (rootPem === undefined) {
    throw new RenewError("no-root", `${context.store.paths.root} is missing: it is installed by \`istio-vm install\``);
  }

  const client = context.connect(rootPem);
  const key = await generateWorkloadKey(context.keySpec);
  const csrPem = await createCsr(key, context.identity);
  let certificates: string[] | undefined;
  let used: CaCredential["kind"] = "mtls";
  let lastError: CaCallError | undefined;
  for (const credential of credentials) {
    try {
      certificates = await client.sign({
        csrPem,
        ttlMs: context.ttlMs,
        credential,
        ...(signal === undefined ? {} : { signal }),
      });
      used = credential.kind;
      break;
    } catch (error) {
      if (!(error instanceof CaCallError)) throw error;
      lastError = error;
      // Only an authentication failure is worth a second credential; anything else fails the attempt.
      if (error.reason !== "unauthenticated") break;
    }
  }
  if (certificates === undefined) {
    const error = lastError ?? new CaCallError("error", "no answer");
    throw new RenewError(error.reason, error.message, error);
  }

  const pair: CertPair = { keyPem: key.pem, chainPem: chainWithoutRoots(certificates, rootPem) };
  try {
    const verified = await context.store.accept(pair, { expectedIdentity: context.identity, now: context.clock.now() });
    return { info: verified.info, credential: used };
  } catch (error) {
    if (error instanceof CertificateRejected) {
      throw new RenewError(error.reason, `rejected the CA's certificate: ${error.message}`, error);
    }
    const code = (error as NodeJS.ErrnoException).code;
    throw new RenewError(
      "write",
      `could not store the new pair in ${context.store.paths.dir}: ${code ?? (error as Error).message}`,
      error,
    );
  }
}
