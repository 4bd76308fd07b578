/**
 * Does nothing. The one listener for events whose outcome another path already handles (an
 * 'error' that 'close' reports too), and the callback where one is required but nothing is owed.
 */
export function noop(): void {}
