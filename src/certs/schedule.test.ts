import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { cryptoRandom } from "./component.js";
import {
  DEFAULT_BACKOFF,
  backoffDelay,
  delayUntil,
  effectiveGraceRatio,
  maxBackoffStep,
  nextRenewalAt,
} from "./schedule.js";

const HOUR = 3_600_000;
const day = { notBefore: Date.UTC(2026, 10, 27), notAfter: Date.UTC(2026, 10, 28) };

describe("nextRenewalAt", () => {
  it("renews at half the lifetime by default (no jitter)", () => {
    expect(nextRenewalAt(day, { graceRatio: 0.5, graceJitter: 0 }, () => 0.3)).toBe(day.notBefore + 12 * HOUR);
  });

  it("reproduces the original agent's worked example: 1 h certificate, renew after 30 min", () => {
    const validity = { notBefore: Date.UTC(2017, 9, 13, 21, 32, 29), notAfter: Date.UTC(2017, 9, 13, 22, 32, 29) };
    const at = nextRenewalAt(validity, { graceRatio: 0.5, graceJitter: 0 }, Math.random);
    // now = 21:32:29.862 → wait 29m59.138s (docs/protocols.md, "The workload certificate")
    expect(delayUntil(at, Date.UTC(2017, 9, 13, 21, 32, 29, 862))).toBe(29 * 60_000 + 59_138);
  });

  it("a larger grace ratio renews earlier: 0.25 left → at 75 % of the lifetime", () => {
    expect(nextRenewalAt(day, { graceRatio: 0.25, graceJitter: 0 }, () => 0.5)).toBe(day.notBefore + 18 * HOUR);
  });

  it("jitter spreads ±jitter × lifetime around the base time (±15 min for 1 % of 24 h)", () => {
    const policy = { graceRatio: 0.5, graceJitter: 0.01 };
    const earliest = nextRenewalAt(day, policy, () => 0.999_999_999);
    const latest = nextRenewalAt(day, policy, () => 0);
    expect(latest - (day.notBefore + 12 * HOUR)).toBe(0.01 * 24 * HOUR);
    expect(day.notBefore + 12 * HOUR - earliest).toBeCloseTo(0.01 * 24 * HOUR, -1);
  });

  test.prop([
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.double({ min: 0, max: 1, noNaN: true }),
    fc.double({ min: 0, max: 0.999, noNaN: true }),
  ])("the renewal time always lies within the validity period", (grace, jitter, r) => {
    const at = nextRenewalAt(day, { graceRatio: grace, graceJitter: jitter }, () => r);
    expect(at).toBeGreaterThanOrEqual(day.notBefore);
    expect(at).toBeLessThanOrEqual(day.notAfter);
    expect(effectiveGraceRatio({ graceRatio: grace, graceJitter: jitter }, () => r)).toBeGreaterThanOrEqual(0);
  });

  it("never waits a negative time for a certificate that is already due", () => {
    expect(delayUntil(1000, 5000)).toBe(0);
  });
});

describe("backoffDelay", () => {
  const policy = { initialMs: 1000, maxMs: 60_000, jitter: 0 };

  it("doubles from the initial delay up to the cap", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => backoffDelay(n, policy, () => 0.5))).toEqual([
      1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000,
    ]);
  });

  it("keeps retrying at the cap however many attempts failed (the original gave up after 5)", () => {
    expect(backoffDelay(10_000, policy, () => 0.5)).toBe(60_000);
    expect(backoffDelay(Number.MAX_SAFE_INTEGER, DEFAULT_BACKOFF, () => 0.5)).toBe(DEFAULT_BACKOFF.maxMs);
  });

  test.prop([fc.integer({ min: 1, max: 10_000 }), fc.double({ min: 0, max: 0.999, noNaN: true })])(
    "jittered delays stay within ±jitter of the un-jittered delay and below one maximum step",
    (failures, r) => {
      const base = backoffDelay(failures, { ...DEFAULT_BACKOFF, jitter: 0 }, () => 0.5);
      const d = backoffDelay(failures, DEFAULT_BACKOFF, () => r);
      expect(d).toBeGreaterThanOrEqual(Math.floor(base * (1 - DEFAULT_BACKOFF.jitter)));
      expect(d).toBeLessThanOrEqual(Math.ceil(base * (1 + DEFAULT_BACKOFF.jitter)));
      expect(d).toBeLessThanOrEqual(maxBackoffStep(DEFAULT_BACKOFF));
    },
  );
});

describe("cryptoRandom", () => {
  it("returns uniform numbers in [0, 1)", () => {
    const values = Array.from({ length: 2000 }, () => cryptoRandom());
    expect(values.every((v) => v >= 0 && v < 1)).toBe(true);
    expect(new Set(values).size).toBe(values.length);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    expect(mean).toBeGreaterThan(0.4);
    expect(mean).toBeLessThan(0.6);
  });
});
