/**
 * The message of something thrown or rejected. Anything may be thrown, not only an Error (and an
 * Error from another realm fails `instanceof`), so this reads `message` when there is a string
 * one and falls back to the value as a string.
 */
export function errorMessage(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'message' in err && typeof err.message === 'string') {
    return err.message;
  }
  return String(err);
}
