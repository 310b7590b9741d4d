import { describe, expect, it } from "vitest";
import { createLogger, redact } from "./logger.js";

describe("logger", () => {
  it("journal format: sd-daemon priority prefixes, one line per record", () => {
    const lines: string[] = [];
    const logger = createLogger({ level: "debug", format: "journal", write: (l) => lines.push(l) }).child("certs");
    logger.error("renewal failed", { reason: "CA unavailable" });
    logger.warn("expires soon");
    logger.info("two\nlines");
    logger.debug("detail", { n: 3 });
    expect(lines).toEqual([
      '<3>renewal failed component=certs reason="CA unavailable"\n',
      "<4>expires soon component=certs\n",
      "<6>two\\nlines component=certs\n",
      "<7>detail component=certs n=3\n",
    ]);
  });

  it("drops records below the level", () => {
    const lines: string[] = [];
    const logger = createLogger({
      level: "warn",
      format: "plain",
      write: (l) => lines.push(l),
      now: () => new Date(0),
    });
    logger.info("hidden");
    logger.warn("shown");
    expect(lines).toEqual(["1970-01-01T00:00:00.000Z WARN  shown\n"]);
  });

  it("redacts keys, certificates, JWTs and bearer tokens wherever they appear", () => {
    const pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----";
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl";
    const text = redact(`key ${pem} token ${jwt} header authorization: Bearer abc.def`);
    expect(text).toBe("key [redacted ec private key] token [redacted token] header authorization: Bearer [redacted]");
    const lines: string[] = [];
    createLogger({ level: "info", format: "journal", write: (l) => lines.push(l) }).info("got", { body: pem });
    expect(lines.join("")).not.toContain("MHcCAQEEIB");
  });
});
