/*
 * Bytes and latin1 strings, both ways: HTTP heads are bytes, and a head built or read as a string
 * keeps each byte as one character (RFC 9110 section 5.5: field values are octets).
 */

/** Bytes as a string of one character per byte. */
export function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return s;
}

/** A string of characters up to U+00FF as bytes (higher ones keep their low byte). */
export function fromLatin1(s: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}
