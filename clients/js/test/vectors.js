// Loading tests/vectors/*.json with numbers kept exact: JSON.parse turns 1700000000123456789
// into a rounded double and 104.0 into 104, and the vectors depend on both.
// `typed` values carry the JSON literal's kind (int(...) / float64(...)) for the encoder;
// `plain` values are what the decoder returns (numbers; bigints beyond 2^53).

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Float64, Int } from "../src/msgpack.js";

export const VECTORS_DIR = fileURLToPath(new URL("../../../tests/vectors/", import.meta.url));

class Num {
  constructor(text) {
    this.text = text;
    this.isInt = /^-?\d+$/.test(text);
  }
}

function parseJson(text) {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj = {};
      ws();
      if (text[i] === "}") return i++, obj;
      for (;;) {
        ws();
        const k = value();
        ws();
        if (text[i++] !== ":") throw new SyntaxError(`':' expected at ${i}`);
        obj[k] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "}") return obj;
        else throw new SyntaxError(`',' or '}' expected at ${i}`);
      }
    }
    if (c === "[") {
      i++;
      const arr = [];
      ws();
      if (text[i] === "]") return i++, arr;
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i++] === "]") return arr;
        else throw new SyntaxError(`',' or ']' expected at ${i}`);
      }
    }
    if (c === '"') {
      const m = /^"(?:[^"\\]|\\.)*"/.exec(text.slice(i));
      i += m[0].length;
      return JSON.parse(m[0]);
    }
    const m = /^(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null)/.exec(text.slice(i));
    if (!m) throw new SyntaxError(`unexpected ${c} at ${i}`);
    i += m[0].length;
    if (m[0] === "true") return true;
    if (m[0] === "false") return false;
    if (m[0] === "null") return null;
    return new Num(m[0]);
  };
  const v = value();
  ws();
  if (i !== text.length) throw new SyntaxError("trailing text");
  return v;
}

function map(v, f) {
  if (v instanceof Num) return f(v);
  if (Array.isArray(v)) return v.map((x) => map(x, f));
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, map(x, f)]));
  return v;
}

function plainNum(n) {
  if (!n.isInt) return Number(n.text);
  const b = BigInt(n.text);
  return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
}

/** Values as the decoder returns them. */
export const plain = (v) => map(v, plainNum);
/** Values with each number marked as the JSON literal wrote it (int or float64). */
export const typed = (v) => map(v, (n) => (n.isInt ? new Int(BigInt(n.text)) : new Float64(Number(n.text))));

/** One vectors file, numbers left as literals (pass through plain() or typed()). */
export function load(name) {
  const doc = parseJson(readFileSync(VECTORS_DIR + name, "utf8"));
  return map(doc.vectors, (n) => n); // keep Num literals
}

/** Metadata fields (names, hex, flags) as ordinary JS values. */
export const meta = (v) => map(v, plainNum);

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const unhex = (h) => new Uint8Array(Buffer.from(h, "hex"));

/** snake_case -> camelCase, for the vectors' field names. */
export const camel = (s) => s.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
