import { describe, expect, it } from '@jest/globals';
import { status } from '@grpc/grpc-js';
import { CairnError, fromServiceError, MAX_STATUS_MESSAGE_CHARS, toServiceError } from './errors.js';

describe('the error table on the wire', () => {
  it('carries code, details and the expiry reason there and back', () => {
    const se = toServiceError(new CairnError('UNAUTHENTICATED', 'token expired', { reason: 'TOKEN_EXPIRED' }));
    expect(se.code).toBe(status.UNAUTHENTICATED);
    const back = fromServiceError({ ...se, details: se.details });
    expect(back).toMatchObject({ code: 'UNAUTHENTICATED', message: 'token expired', details: { reason: 'TOKEN_EXPIRED' } });
  });

  it('bounds a message that quotes huge input, saying how much was cut', () => {
    const se = toServiceError(new CairnError('INVALID_ARGUMENT', `row: got "${'x'.repeat(500_000)}"`));
    expect(se.details.length).toBeLessThan(MAX_STATUS_MESSAGE_CHARS + 40);
    expect(se.details).toMatch(/^row: got "x+… \(\d+ more characters\)$/);
    expect(toServiceError(new CairnError('INVALID_ARGUMENT', 'short')).details).toBe('short');
  });

  it('hides unexpected errors behind one generic message', () => {
    const se = toServiceError(new Error('secret stack detail'));
    expect(se).toMatchObject({ code: status.INTERNAL, details: 'internal error (see the server log)' });
  });
});
