import { describe, expect, it } from "vitest";
import { DEFAULT_RESTART_POLICY, nextRestart } from "./restart-policy.js";

describe("nextRestart", () => {
  it("doubles from 200 ms, capped at 30 s", () => {
    const delays: number[] = [];
    const failures: number[] = [];
    for (let i = 0; i < 9; i++) {
      failures.push(1000 + i);
      delays.push(nextRestart(DEFAULT_RESTART_POLICY, failures, 1000 + i)?.delayMs ?? -1);
    }
    expect(delays).toEqual([200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]);
  });

  it("gives up at the budget within the window, and forgets failures older than the window", () => {
    const tenQuick = Array.from({ length: 10 }, (_, i) => i * 1000);
    expect(nextRestart(DEFAULT_RESTART_POLICY, tenQuick, 9000)).toBeUndefined();
    const spread = Array.from({ length: 10 }, (_, i) => i * 120_000);
    expect(nextRestart(DEFAULT_RESTART_POLICY, spread, 9 * 120_000)).toEqual({ delayMs: 3200, attempt: 5 });
  });
});
