/**
 * How a configuration value is shown to a person: in error messages and in `istio-vm config`'s table. Characters a
 * terminal would act on or hide (C0/C1 controls such as ESC, DEL, format characters such as U+FEFF or bidi overrides,
 * line and paragraph separators, lone surrogates, no-break space) are written as escapes, so a value can neither
 * repaint the screen nor look like something it is not. `--json` output keeps values exact; this is only for people.
 */

const NAMED: Readonly<Record<string, string>> = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/** Control, format, separator and surrogate code points, and U+00A0 (looks like a space but is not one). */
const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\u00a0]/gu;

function escapeCodePoint(ch: string): string {
  const named = NAMED[ch];
  if (named !== undefined) return named;
  const code = ch.codePointAt(0) ?? 0;
  return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
}

/** `value` with every hidden character escaped (`\x1b`, `\u{feff}`, `\r`). Backslashes are left as they are. */
export function escapeHidden(value: string): string {
  return value.replace(HIDDEN, escapeCodePoint);
}

/**
 * At most `max` code points of `value` (after escaping), with a marker saying how long the value really is.
 * Only the head is escaped, so a huge value costs no more than a short one.
 */
export function printable(value: string, max = Number.POSITIVE_INFINITY): string {
  let head = "";
  let count = 0;
  for (const ch of value) {
    if (count >= max) {
      return `${escapeHidden(head)}… (${value.length} characters in all)`;
    }
    head += ch;
    count++;
  }
  return escapeHidden(head);
}

/** Whether `printable(value, max)` cuts the value. */
export function exceeds(value: string, max: number): boolean {
  if (value.length <= max) return false;
  let count = 0;
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    // A surrogate pair is one code point.
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < value.length) {
      const next = value.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    if (++count > max) return true;
  }
  return false;
}

/** A value quoted for an error message: escaped, and cut at 80 characters. */
export function quoted(value: string): string {
  return `'${printable(value, 80)}'`;
}
