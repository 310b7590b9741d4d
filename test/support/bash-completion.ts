/**
 * Drives a bash completion script the way bash does on <TAB>: a non-interactive bash sources the script, finds the
 * function `complete -p istio-vm` registered, fills COMP_WORDS/COMP_CWORD/COMP_LINE/COMP_POINT and prints COMPREPLY.
 * `pathDir` holds the `istio-vm` the script calls back (`istio-vm --get-yargs-completions …`).
 */
import { spawnSync } from "node:child_process";

const DRIVER = `
set -u
source "$1"; shift
spec=$(complete -p istio-vm) || exit 3
fn=$(printf '%s\\n' "$spec" | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')
[ -n "$fn" ] || exit 4
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
COMP_LINE="$*"
COMP_POINT=\${#COMP_LINE}
COMPREPLY=()
"$fn" istio-vm "\${COMP_WORDS[COMP_CWORD]}" "\${COMP_WORDS[COMP_CWORD-1]:-}"
printf '%s\\n' "\${COMPREPLY[@]}"
`;

/** The words bash would offer for `words` (the last one is the word being completed, "" for a fresh word). */
export function bashComplete(script: string, pathDir: string, words: readonly string[]): string[] {
  const result = spawnSync("bash", ["--norc", "--noprofile", "-c", DRIVER, "bash", script, "istio-vm", ...words], {
    encoding: "utf8",
    env: { PATH: `${pathDir}:/usr/sbin:/usr/bin:/sbin:/bin`, HOME: "/nonexistent" },
    timeout: 60_000,
  });
  if (result.error !== undefined) throw result.error;
  if (result.status !== 0) throw new Error(`bash completion driver exited ${String(result.status)}: ${result.stderr}`);
  return result.stdout.split("\n").filter((w) => w !== "");
}
