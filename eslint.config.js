// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "coverage/**", ".cache/**", "scripts/*.mjs", "test/fixtures/**/*.mjs"] },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/restrict-template-expressions": ["error", { allowNumber: true, allowBoolean: true }],
      "no-console": "error",
      "no-restricted-imports": [
        "error",
        {
          paths: [
            { name: "node:child_process", message: "Spawn processes through src/platform (the process port)." },
            { name: "child_process", message: "Spawn processes through src/platform (the process port)." },
            { name: "node:timers", message: "Wait through the Clock port (src/platform/clock.ts)." },
            { name: "node:timers/promises", message: "Wait through the Clock port (src/platform/clock.ts)." },
          ],
        },
      ],
    },
  },
  {
    files: ["src/platform/**", "src/main.ts", "test/**", "scripts/**", "bench/**", "src/devplane/**"],
    rules: { "no-restricted-imports": "off", "no-console": "off" },
  },
  {
    files: ["src/cli/**"],
    rules: { "no-console": "off" },
  },
  {
    // Every wait goes through the Clock port (src/platform/clock.ts): a raw setTimeout above 2^31-1 ms fires after
    // 1 ms, and a raw timer is invisible to the fake clock.
    files: ["src/**"],
    ignores: ["src/platform/**", "src/devplane/**", "src/**/*.test.ts"],
    rules: {
      "no-restricted-globals": [
        "error",
        ...["setTimeout", "setInterval", "setImmediate"].map((name) => ({
          name,
          message: "Wait through the Clock port (clock.sleep, scheduleOnce in src/platform/clock.ts).",
        })),
      ],
      "no-restricted-properties": [
        "error",
        ...["setTimeout", "setInterval"].map((property) => ({
          object: "globalThis",
          property,
          message: "Wait through the Clock port (clock.sleep, scheduleOnce in src/platform/clock.ts).",
        })),
      ],
    },
  },
  { files: ["eslint.config.js"], ...tseslint.configs.disableTypeChecked },
);
