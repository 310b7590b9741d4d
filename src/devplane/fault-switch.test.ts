import { describe, expect, it } from "vitest";
import { isLoopbackPeer } from "./fault-switch.js";

describe("isLoopbackPeer", () => {
  it.each([
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1",
    "127.0.0.1:5000",
    "[::1]:5000",
    "[::ffff:127.0.0.1]:5000",
    "ipv4:127.0.0.1:5000",
    "ipv6:[::1]:5000",
  ])("%s is loopback", (peer) => {
    expect(isLoopbackPeer(peer)).toBe(true);
  });

  it.each([
    undefined,
    "",
    "10.0.0.5",
    "10.0.0.5:5000",
    "128.0.0.1",
    "::2",
    "fe80::1",
    "::ffff:10.0.0.1",
    "[fd00::1]:5000",
    "ipv4:192.168.1.1:5000",
    "unix:/tmp/sock",
    "127.0.0.1.example.org",
  ])("%s is not", (peer) => {
    expect(isLoopbackPeer(peer)).toBe(false);
  });
});
