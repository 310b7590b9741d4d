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
  { files: ["eslint.config.js"], ...tseslint.configs.disableTypeChecked },
);
