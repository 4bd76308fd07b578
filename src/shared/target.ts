/*
 * A request target (`/path?query`, RFC 9112 section 3.2) split at its first `?`. The gateway
 * routes by the path and reads claim parameters from the query; the query is kept raw here
 * (URLSearchParams decodes it where it is read).
 */

/** The path of a request target: everything before the first `?` (`/` when there is no target). */
export function targetPath(url: string | undefined): string {
  if (url === undefined) return '/';
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/** The query of a request target, without its `?`: '' when there is none. */
export function targetQuery(url: string | undefined): string {
  if (url === undefined) return '';
  const q = url.indexOf('?');
  return q === -1 ? '' : url.slice(q + 1);
}
