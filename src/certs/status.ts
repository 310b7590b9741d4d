/** What `istio-vm certs status` reports: the pair on disk judged by the checks a new pair must pass. Pure data. */
import type { ConfigValues } from "../config/registry.js";
import { hostPort } from "../config/types.js";
import type { CurrentPair, RenewContext } from "./renew.js";
import { inspectCurrent } from "./renew.js";
import { nextRenewalAt } from "./schedule.js";
import { renewalPolicy } from "./setup.js";
import type { CertificateInfo } from "./verify.js";
import { describeLeaf } from "./verify.js";

export interface CertificateSummary {
  readonly uris: readonly string[];
  readonly subject: string;
  readonly issuer: string;
  readonly serialNumber: string;
  readonly keyType: string;
  readonly chainLength: number;
  readonly notBefore: string;
  readonly notAfter: string;
}

export interface CertStatusReport {
  /** The identity this VM is configured for. */
  readonly identity: string;
  readonly controlPlane: ConfigValues["ISTIO_CONTROL_PLANE"];
  readonly caAddress: string;
  readonly paths: { readonly key: string; readonly chain: string; readonly root: string };
  readonly state: CurrentPair["state"];
  /** Why the pair is not valid (state invalid or missing). */
  readonly problem?: string;
  /** Chain verifies to root-cert.pem, identity matches, currently valid, key matches. */
  readonly chainOk: boolean;
  readonly certificate?: CertificateSummary;
  readonly expiresInSeconds?: number;
  /** The agent's renewal time without jitter, and the ± spread the jitter adds. */
  readonly renewal?: { readonly at: string; readonly inSeconds: number; readonly jitterSeconds: number };
  /** istiod: the service-account token used when there is no valid certificate. */
  readonly token?: {
    readonly path: string;
    readonly present: boolean;
    readonly expiresAt?: string;
    readonly expired?: boolean;
  };
}

function summarize(info: CertificateInfo): CertificateSummary {
  return {
    uris: info.uris,
    subject: info.subject,
    issuer: info.issuer,
    serialNumber: info.serialNumber,
    keyType: info.keyType,
    chainLength: info.chainLength,
    notBefore: info.notBefore.toISOString(),
    notAfter: info.notAfter.toISOString(),
  };
}

/** The `exp` claim of a JWT, read without verifying it (the CA verifies; this is for the status line only). */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

async function tokenStatus(context: RenewContext, now: number): Promise<NonNullable<CertStatusReport["token"]>> {
  const text = (await context.fs.readTextIfExists(context.tokenFile))?.trim();
  if (text === undefined || text === "") return { path: context.tokenFile, present: false };
  const exp = tokenExpiry(text);
  return {
    path: context.tokenFile,
    present: true,
    ...(exp === undefined ? {} : { expiresAt: new Date(exp).toISOString(), expired: exp <= now }),
  };
}

export async function certStatus(config: ConfigValues, context: RenewContext): Promise<CertStatusReport> {
  const current = await inspectCurrent(context);
  const now = context.clock.now();
  const info =
    current.state === "valid"
      ? current.info
      : current.state === "invalid"
        ? describeLeaf(current.pair.chainPem)
        : undefined;
  const base = {
    identity: context.identity,
    controlPlane: config.ISTIO_CONTROL_PLANE,
    caAddress: hostPort.render(config.CA_ADDR),
    paths: { key: context.store.paths.key, chain: context.store.paths.chain, root: context.store.paths.root },
    state: current.state,
    chainOk: current.state === "valid",
    ...(current.state === "missing" ? { problem: current.problem } : {}),
    ...(current.state === "invalid" ? { problem: current.problem.message } : {}),
    ...(config.ISTIO_CONTROL_PLANE === "istiod" ? { token: await tokenStatus(context, now) } : {}),
  };
  if (info === undefined) return base;
  const validity = { notBefore: info.notBefore.getTime(), notAfter: info.notAfter.getTime() };
  const policy = renewalPolicy(config);
  const at = nextRenewalAt(validity, policy, () => 0.5);
  return {
    ...base,
    certificate: summarize(info),
    expiresInSeconds: Math.round((validity.notAfter - now) / 1000),
    renewal: {
      at: new Date(at).toISOString(),
      inSeconds: Math.round((at - now) / 1000),
      jitterSeconds: Math.round((policy.graceJitter * (validity.notAfter - validity.notBefore)) / 1000),
    },
  };
}

/** "3h12m", "45s", "2d4h". Truncated, never rounded up: 23h59m59.6s left is "23h59m", not "1d0h". */
export function formatDuration(seconds: number): string {
  const s = Math.abs(Math.trunc(seconds));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${rest}s`;
  return `${rest}s`;
}
