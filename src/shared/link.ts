/**
 * `Link` header values (RFC 8288 section 3): each `<target>; param; param`, several per line
 * separated by commas, or several lines (node and fetch join those with ", "). Returns each
 * relation type's target, the first one where a type appears twice. Types compare
 * case-insensitively and a `rel` may hold several, space-separated (section 3.3); a link without
 * `rel` is skipped. Parameters are read up to the next comma: a quoted comma inside one is not
 * supported (the gateway never sends one).
 */
export function parseLinks(value: string | readonly string[] | null | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (value === null || value === undefined) return out;
  const text = typeof value === 'string' ? value : value.join(', ');
  for (const link of text.matchAll(/<([^>]*)>([^,]*)/g)) {
    const rel = /(?:^|;)\s*rel\s*=\s*(?:"([^"]*)"|([^\s;"]+))/i.exec(link[2] as string);
    if (!rel) continue;
    for (const type of (rel[1] ?? rel[2] ?? '').toLowerCase().split(/\s+/)) {
      if (type !== '' && !out.has(type)) out.set(type, link[1] as string);
    }
  }
  return out;
}

/**
 * The app's name in its public URL (docs/PROTOCOL.md section 1): the first path segment of a path URL
 * (`http://gateway/NAME/`), else the first host label (`http://NAME.domain/`).
 */
export function nameFromPublicUrl(link: string): string {
  const u = new URL(link);
  return decodeURIComponent(u.pathname.split('/')[1] ?? '') || (u.hostname.split('.')[0] ?? '');
}
