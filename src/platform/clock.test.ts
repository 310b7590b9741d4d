import { describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { MAX_TIMER_DELAY_MS, nodeTimers, scheduleOnce, systemClock } from "./clock.js";

const DAY = 24 * 3600_000;

describe("systemClock (real timers)", () => {
  it("a sleep longer than 2^31−1 ms does not resolve early (setTimeout alone fires after 1 ms)", async () => {
    const controller = new AbortController();
    let resolved = false;
    const sleeping = systemClock.sleep(MAX_TIMER_DELAY_MS + 1, controller.signal).then(
      () => (resolved = true),
      (error: unknown) => error,
    );
    // A short real observation, and a shorter sleep that must win.
    await systemClock.sleep(200);
    expect(resolved).toBe(false);
    controller.abort(new Error("enough"));
    expect(await sleeping).toMatchObject({ message: "enough" });
    expect(resolved).toBe(false);
  });

  it("the raw timer refuses what it cannot honour instead of firing early", () => {
    expect(() => nodeTimers.setTimer(MAX_TIMER_DELAY_MS + 1, () => undefined)).toThrow(RangeError);
    expect(() => nodeTimers.setTimer(-1, () => undefined)).toThrow(RangeError);
    expect(() => nodeTimers.setTimer(1.5, () => undefined)).toThrow(RangeError);
  });

  it("a NaN delay is a RangeError, not a 1 ms timer", async () => {
    await expect(systemClock.sleep(Number.NaN)).rejects.toThrow(RangeError);
  });
});

describe("FakeClock: as limited as the real timers", () => {
  it("refuses a single timer above 2^31−1 ms", () => {
    const clock = new FakeClock();
    expect(() => clock.setTimer(MAX_TIMER_DELAY_MS + 1, () => undefined)).toThrow(/setTimeout would fire after 1 ms/);
  });

  it("a 90-day sleep is four timers (3 × ~24.8 days + the rest) and resolves at 90 days, not before", async () => {
    const clock = new FakeClock();
    const start = clock.now();
    let done = false;
    const sleeping = clock.sleep(90 * DAY).then(() => (done = true));
    clock.advanceTo(start + 90 * DAY - 1);
    await Promise.resolve();
    expect(done).toBe(false);
    clock.advanceTo(start + 90 * DAY);
    await sleeping;
    expect(done).toBe(true);
    expect(clock.delays).toEqual([...Array<number>(3).fill(MAX_TIMER_DELAY_MS), 90 * DAY - 3 * MAX_TIMER_DELAY_MS]);
  });

  it("an abort between steps rejects and leaves no timer behind", async () => {
    const clock = new FakeClock();
    const controller = new AbortController();
    const sleeping = clock.sleep(60 * DAY, controller.signal);
    clock.advance(30 * DAY);
    expect(clock.pending).toBe(1);
    controller.abort(new Error("stop"));
    await expect(sleeping).rejects.toThrow("stop");
    expect(clock.pending).toBe(0);
  });

  it("scheduleOnce fires once after any delay; a cancelled one never fires", async () => {
    const clock = new FakeClock();
    const fired: string[] = [];
    scheduleOnce(clock, 40 * DAY, () => fired.push("long"));
    const cancel = scheduleOnce(clock, 1000, () => fired.push("cancelled"));
    cancel();
    clock.advance(40 * DAY);
    await new Promise((resolve) => setImmediate(resolve));
    expect(fired).toEqual(["long"]);
    expect(clock.pending).toBe(0);
  });
});
