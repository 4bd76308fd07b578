import { ClaimError } from './node.js';

/** What connect says about a claim the gateway refused: in its own terms (--key, --token), not the protocol's. */
export function claimMessage(e: Error): string {
  if (!(e instanceof ClaimError)) return e.message;
  const said = e.message.replace(/^the gateway refused the claim: /, '');
  switch (e.code) {
    case 'PTTH_ERR_KEY_REQUIRED':
      return (
        `the gateway refused the claim: ${e.status}: this gateway needs an access key: ` +
        'pass --key KEY or set PTTH_KEY ' +
        '(its operator makes keys with `ptth-proxy key`)'
      );
    case 'PTTH_ERR_KEY_INVALID':
      return (
        `the gateway refused the claim: ${e.status}: the gateway does not know this access key: ` +
        'check --key KEY or PTTH_KEY'
      );
    case 'PTTH_ERR_TOKEN_MISMATCH':
      return (
        `the gateway refused the claim: ${said}\n` +
        '  The name is in use: another connect holds it, or an earlier run whose lease has not run out.\n' +
        '  --token is the secret that holds a name across restarts: run again with the same --token as the holder, ' +
        'or pick another --name.'
      );
    default:
      return e.message;
  }
}
