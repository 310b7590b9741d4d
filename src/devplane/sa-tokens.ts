/**
 * Service-account tokens as the Kubernetes API server issues them for TokenRequest: ES256 JWTs with iss, sub
 * (`system:serviceaccount:<ns>:<sa>`), aud, iat, nbf, exp and the `kubernetes.io` claim. The dev CA verifies them with
 * `verify(jwt, audience)` (what istiod does through TokenReview); the public key is also exposed as a JWKS.
 */
import type { KeyObject } from "node:crypto";
import { createHash, generateKeyPairSync, sign, verify as verifySignature } from "node:crypto";

export const DEFAULT_TOKEN_AUDIENCE = "istio-ca";
/** The audience the dev API server itself accepts for bearer tokens (kube-apiserver's default). */
export const API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local";
export const TOKEN_ISSUER = "https://kubernetes.default.svc.cluster.local";

export interface IssueTokenOptions {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly uid?: string;
  readonly audiences: readonly string[];
  readonly expirationSeconds: number;
}

export interface VerifiedToken {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly audiences: readonly string[];
  readonly expiresAt: number;
}

export class TokenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenError";
  }
}

export interface ServiceAccountTokens {
  readonly issuer: string;
  readonly publicKey: KeyObject;
  readonly jwks: { readonly keys: readonly Record<string, unknown>[] };
  issue(options: IssueTokenOptions): { token: string; expiresAt: number };
  /** Checks signature, issuer, expiry and that `audience` is one of the token's audiences. Throws TokenError. */
  verify(jwt: string, audience: string): VerifiedToken;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString("base64url");
}

export function createServiceAccountTokens(options: { readonly now?: () => number } = {}): ServiceAccountTokens {
  const now = options.now ?? Date.now;
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = publicKey.export({ format: "jwk" });
  const kid = createHash("sha256")
    .update(publicKey.export({ format: "der", type: "spki" }))
    .digest("base64url");
  const header = b64url(JSON.stringify({ alg: "ES256", kid }));
  return {
    issuer: TOKEN_ISSUER,
    publicKey,
    jwks: { keys: [{ ...jwk, kid, alg: "ES256", use: "sig" }] },
    issue(request) {
      const iat = Math.floor(now() / 1000);
      const exp = iat + request.expirationSeconds;
      const payload = b64url(
        JSON.stringify({
          aud: request.audiences,
          exp,
          iat,
          iss: TOKEN_ISSUER,
          nbf: iat,
          sub: `system:serviceaccount:${request.namespace}:${request.serviceAccount}`,
          "kubernetes.io": {
            namespace: request.namespace,
            serviceaccount: { name: request.serviceAccount, uid: request.uid ?? "" },
          },
        }),
      );
      const signature = sign("sha256", Buffer.from(`${header}.${payload}`), {
        key: privateKey,
        dsaEncoding: "ieee-p1363",
      });
      return { token: `${header}.${payload}.${b64url(signature)}`, expiresAt: exp * 1000 };
    },
    verify(jwt, audience) {
      const parts = jwt.split(".");
      if (parts.length !== 3) throw new TokenError("not a JWT");
      const [h = "", p = "", s = ""] = parts;
      const ok = verifySignature(
        "sha256",
        Buffer.from(`${h}.${p}`),
        { key: publicKey, dsaEncoding: "ieee-p1363" },
        Buffer.from(s, "base64url"),
      );
      if (!ok) throw new TokenError("invalid signature");
      let claims: { aud?: unknown; exp?: unknown; nbf?: unknown; iss?: unknown; sub?: unknown };
      try {
        claims = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as typeof claims;
      } catch {
        throw new TokenError("unreadable claims");
      }
      if (claims.iss !== TOKEN_ISSUER) throw new TokenError(`unexpected issuer ${String(claims.iss)}`);
      const seconds = now() / 1000;
      if (typeof claims.exp !== "number" || claims.exp <= seconds) throw new TokenError("token has expired");
      if (typeof claims.nbf === "number" && claims.nbf > seconds + 60) throw new TokenError("token is not valid yet");
      const audiences = Array.isArray(claims.aud)
        ? claims.aud.map(String)
        : typeof claims.aud === "string"
          ? [claims.aud]
          : [];
      if (!audiences.includes(audience)) {
        throw new TokenError(`token audiences [${audiences.join(", ")}] do not include ${audience}`);
      }
      const match = typeof claims.sub === "string" ? /^system:serviceaccount:([^:]+):([^:]+)$/.exec(claims.sub) : null;
      if (match?.[1] === undefined || match[2] === undefined) throw new TokenError("not a service-account token");
      return { namespace: match[1], serviceAccount: match[2], audiences, expiresAt: claims.exp * 1000 };
    },
  };
}
