import { describe, expect, it } from "vitest";
import { MAX_TIMER_MS, systemClock } from "./clock.js";

describe("systemClock.sleep", () => {
  it("waits for delays longer than a Node timer takes (a renewal months away) instead of firing at once", async () => {
    const abort = new AbortController();
    let done = false;
    const long = systemClock.sleep(MAX_TIMER_MS + 60_000, abort.signal).then(
      () => (done = true),
      () => undefined,
    );
    await systemClock.sleep(200);
    expect(done).toBe(false);
    abort.abort(new Error("stop"));
    await long;
  });

  it("resolves after a short delay and rejects with the signal's reason when aborted", async () => {
    await expect(systemClock.sleep(1)).resolves.toBeUndefined();
    const abort = new AbortController();
    const pending = systemClock.sleep(60_000, abort.signal);
    abort.abort(new Error("cancelled"));
    await expect(pending).rejects.toThrow("cancelled");
  });
});
