/**
 * Tests that need root or a system tool skip locally when it is missing, but under CI=true they fail instead:
 * CI must never pass by skipping what it cannot run.
 */
import { execFileSync } from "node:child_process";

const inCi = process.env["CI"] === "true";

function hasTool(name: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns undefined when everything is there, else the reason to skip. Under CI=true a missing requirement throws,
 * so the suite fails loudly. Use: `const missing = requirements({ root: true, tools: ["iptables"] });
 * describe.skipIf(missing !== undefined)(...)`.
 */
export function requirements(needs: { root?: boolean; tools?: readonly string[] }): string | undefined {
  const missing: string[] = [];
  if (needs.root === true && process.getuid?.() !== 0) missing.push("root");
  for (const tool of needs.tools ?? []) if (!hasTool(tool)) missing.push(tool);
  if (missing.length === 0) return undefined;
  const reason = `needs ${missing.join(", ")}`;
  if (inCi) throw new Error(`CI=true and this test ${reason}; scripts/test.sh must install it`);
  return reason;
}
