import { describe, expect, it } from '@jest/globals';
import { CairnError } from '../common/errors.js';
import { DEFAULT_LOGIN_LIMITS, LoginGate, peerKey, type LoginLimits } from './logins.js';

const T0 = Date.UTC(2025, 0, 1);

class Clock {
  t = T0;
  readonly now = () => this.t;
}

/** Password checks the test decides: each one stays pending until settled, first started first. */
class Checks {
  readonly started: string[] = [];
  private readonly pending: Array<{ user: string; resolve(ok: boolean): void; reject(e: Error): void }> = [];
  running = 0;
  maxRunning = 0;

  /** The `verify` for an attempt by `user`. */
  for(user: string): () => Promise<boolean> {
    return () => {
      this.started.push(user);
      this.running++;
      this.maxRunning = Math.max(this.maxRunning, this.running);
      return new Promise<boolean>((resolve, reject) => this.pending.push({ user, resolve, reject }));
    };
  }

  get waiting(): string[] {
    return this.pending.map((p) => p.user);
  }

  /** Settles the oldest pending check (true: the password was right) and lets the gate move on. */
  async settle(ok: boolean | Error): Promise<string> {
    const p = this.pending.shift();
    if (!p) throw new Error('no check is running');
    this.running--;
    if (ok instanceof Error) p.reject(ok);
    else p.resolve(ok);
    await flush();
    return p.user;
  }

  async settleAll(ok: boolean): Promise<void> {
    while (this.pending.length) await this.settle(ok);
  }
}

const flush = () => new Promise<void>((r) => setImmediate(r));

interface Outcome {
  ok?: boolean;
  code?: string;
  message?: string;
  retryAfterMs?: number;
}

function track(p: Promise<boolean>): Outcome {
  const o: Outcome = {};
  p.then(
    (ok) => void (o.ok = ok),
    (e: Error) => {
      o.code = e instanceof CairnError ? e.code : `Error: ${e.message}`;
      o.message = e.message;
      o.retryAfterMs = e instanceof CairnError ? e.details.retryAfterMs : undefined;
    },
  );
  return o;
}

function setup(limits: Partial<LoginLimits> = {}) {
  const clock = new Clock();
  const gate = new LoginGate(limits, clock.now);
  const checks = new Checks();
  let port = 40000;
  const attempt = (user: string, host = '10.0.0.1', extra: { deadline?: number; cancelled?: () => boolean } = {}) =>
    track(gate.attempt({ user, peer: `${host}:${port++}`, ...extra }, checks.for(user)));
  return { clock, gate, checks, attempt };
}

/** Runs `n` attempts one after another, each check answered `ok`. */
async function sequential(s: ReturnType<typeof setup>, user: string, n: number, ok: boolean, host = '10.0.0.1'): Promise<Outcome[]> {
  const out: Outcome[] = [];
  for (let i = 0; i < n; i++) {
    const o = s.attempt(user, host);
    await flush();
    if (s.checks.waiting.length) await s.checks.settle(ok);
    await flush();
    out.push(o);
  }
  return out;
}

const counts = (outcomes: Outcome[]) => {
  const m: Record<string, number> = {};
  for (const o of outcomes) {
    const k = o.code ?? (o.ok === undefined ? 'pending' : String(o.ok));
    m[k] = (m[k] ?? 0) + 1;
  }
  return m;
};

describe('LoginGate: the queue', () => {
  it('runs at most `concurrency` checks at once, first come first served', async () => {
    const s = setup({ concurrency: 2 });
    const outs = ['a', 'b', 'c', 'd', 'e', 'f'].map((u, i) => s.attempt(u, `10.0.0.${i + 1}`));
    await flush();
    expect(s.checks.started).toEqual(['a', 'b']);
    expect(s.gate.load).toMatchObject({ running: 2, waiting: 4 });
    await s.checks.settle(true);
    expect(s.checks.started).toEqual(['a', 'b', 'c']);
    await s.checks.settleAll(true);
    expect(s.checks.started).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(s.checks.maxRunning).toBe(2);
    expect(outs.every((o) => o.ok === true)).toBe(true);
    expect(s.gate.load).toMatchObject({ running: 0, waiting: 0 });
  });

  it('a burst of correct logins for one user all succeed, a few checks at a time', async () => {
    const s = setup();
    const outs = Array.from({ length: 20 }, () => s.attempt('writer'));
    await s.checks.settleAll(true);
    await flush();
    expect(counts(outs)).toEqual({ true: 20 });
    expect(s.checks.started).toHaveLength(20);
    expect(s.checks.maxRunning).toBe(DEFAULT_LOGIN_LIMITS.concurrency);
  });

  it('a full queue refuses at once with NOT_READY, naming the limit, with a retry-after', async () => {
    const s = setup({ concurrency: 1, maxWaiting: 3 });
    const outs = ['a', 'b', 'c', 'd'].map((u, i) => s.attempt(u, `10.0.1.${i}`));
    const refused = s.attempt('e', '10.0.1.9');
    await flush();
    expect(refused.code).toBe('NOT_READY');
    expect(refused.message).toMatch(/^login busy: 3 logins are waiting for a password check \(the limit is 3\); retry in \d+ ms$/);
    expect(refused.retryAfterMs).toBeGreaterThanOrEqual(100);
    expect(s.checks.started).toEqual(['a']);
    await s.checks.settleAll(false);
    expect(counts(outs)).toEqual({ false: 4 });
  });

  it("caps one user's waiting attempts, and the names one host has waiting, but not the names of other hosts", async () => {
    const s = setup({ concurrency: 1, maxWaitingPerUser: 2, maxWaitingNamesPerHost: 2 });
    const blocker = s.attempt('blocker', '10.9.9.9');
    const a1 = s.attempt('a');
    const a2 = s.attempt('a');
    const a3 = s.attempt('a');
    const b = s.attempt('b');
    const c = s.attempt('c');
    const cElsewhere = s.attempt('c', '10.0.0.2');
    await flush();
    expect(a3.code).toBe('NOT_READY');
    expect(a3.message).toMatch(/2 logins for user "a" are waiting for a password check \(the limit is 2 per user\)/);
    expect(c.code).toBe('NOT_READY');
    expect(c.message).toMatch(/logins for 2 user names from 10\.0\.0\.1 are waiting for a password check \(the limit is 2 names per host\)/);
    expect(cElsewhere.code).toBeUndefined();
    await s.checks.settleAll(true);
    expect([blocker, a1, a2, b, cElsewhere].map((o) => o.ok)).toEqual([true, true, true, true, true]);
  });

  it('drops an attempt whose caller left or whose deadline passed while it waited, without a check', async () => {
    const s = setup({ concurrency: 1 });
    const blocker = s.attempt('blocker', '10.9.9.9');
    let gone = false;
    const left = s.attempt('a', '10.0.0.1', { cancelled: () => gone });
    const late = s.attempt('b', '10.0.0.2', { deadline: s.clock.t + 1000 });
    const fine = s.attempt('c', '10.0.0.3', { deadline: s.clock.t + 10_000 });
    gone = true;
    s.clock.t += 2000;
    await s.checks.settle(true);
    expect(left.code).toBe('CANCELLED');
    expect(late.code).toBe('DEADLINE_EXCEEDED');
    await s.checks.settleAll(true);
    expect([blocker.ok, fine.ok]).toEqual([true, true]);
    expect(s.checks.started).toEqual(['blocker', 'c']);
  });

  it('an error from the check comes back as it is, frees its slot, and counts as no failure', async () => {
    const s = setup();
    for (let i = 0; i < 8; i++) {
      const o = s.attempt('reader');
      await flush();
      await s.checks.settle(new Error('scrypt: out of memory'));
      expect(o.code).toBe('Error: scrypt: out of memory');
    }
    const after = await sequential(s, 'reader', 1, true);
    expect(after[0]!.ok).toBe(true);
    expect(s.gate.load.running).toBe(0);
  });

  it('refuses limits that are not positive integers', () => {
    expect(() => new LoginGate({ concurrency: 0 })).toThrow(/concurrency must be a positive integer/);
    expect(() => new LoginGate({ windowMs: Number.NaN })).toThrow(CairnError);
  });
});

describe('LoginGate: failure limits', () => {
  it('refuses a user with 5 failures within the window without a check, until the oldest leaves the window', async () => {
    const s = setup();
    for (let i = 0; i < 5; i++) {
      expect((await sequential(s, 'reader', 1, false))[0]!.ok).toBe(false);
      s.clock.t += 10_000;
    }
    // Failures at T0, +10 s, …, +40 s; now +50 s: the first leaves the window at +60 s.
    const refused = s.attempt('reader');
    const right = s.attempt('reader'); // even the right password: no check runs
    await flush();
    expect(s.checks.started).toHaveLength(5);
    for (const o of [refused, right]) {
      expect(o.code).toBe('LIMIT_EXCEEDED');
      expect(o.message).toBe('login refused: 5 failed logins for user "reader" within 60 s (the limit is 5 per 60 s per user); retry in 10 s');
      expect(o.retryAfterMs).toBe(10_000);
    }
    s.clock.t = T0 + 60_000;
    expect((await sequential(s, 'reader', 1, false))[0]!.ok).toBe(false);
    // Locked again until the failure at +10 s leaves the window.
    const again = s.attempt('reader');
    await flush();
    expect([again.code, again.retryAfterMs]).toEqual(['LIMIT_EXCEEDED', 10_000]);
    s.clock.t = T0 + 70_000;
    expect((await sequential(s, 'reader', 1, true))[0]!.ok).toBe(true);
  });

  it('counts unknown user names exactly like known ones', async () => {
    const s = setup();
    await sequential(s, 'nobody', 5, false);
    const o = s.attempt('nobody');
    await flush();
    expect(o.message).toBe('login refused: 5 failed logins for user "nobody" within 60 s (the limit is 5 per 60 s per user); retry in 60 s');
  });

  it('refusals cost no check and count as no failure: a flood keeps nothing locked longer', async () => {
    const s = setup();
    await sequential(s, 'reader', 5, false);
    for (let i = 0; i < 200; i++) {
      s.attempt('reader');
      s.clock.t += 250;
    }
    await flush();
    expect(s.checks.started).toHaveLength(5);
    s.clock.t = T0 + 60_000;
    expect((await sequential(s, 'reader', 1, true))[0]!.ok).toBe(true);
  });

  it('counts running checks: 300 concurrent wrong guesses for one user get 5 checks, and every other answer is a precise refusal', async () => {
    const s = setup();
    const outs = Array.from({ length: 300 }, () => s.attempt('reader'));
    await flush();
    expect(s.checks.started).toHaveLength(2);
    await s.checks.settleAll(false);
    await flush();
    expect(s.checks.started).toHaveLength(5);
    const c = counts(outs);
    expect(c.false).toBe(5);
    expect(c.false + c.LIMIT_EXCEEDED! + c.NOT_READY!).toBe(300);
    for (const o of outs.filter((x) => x.code === 'LIMIT_EXCEEDED')) expect(o.message).toMatch(/^login refused: 5 failed logins for user "reader"/);
    for (const o of outs.filter((x) => x.code === 'NOT_READY')) expect(o.message).toMatch(/logins for user "reader" are waiting .*the limit is 32 per user/);
  });

  it('another user on the flooding host is checked after at most the flooded user’s 5 checks, and logs in', async () => {
    const s = setup();
    const flood = Array.from({ length: 300 }, (_, i) => s.attempt(i % 2 ? 'reader' : 'nobody'));
    const writer = s.attempt('writer');
    await flush();
    for (let i = 0; i < 20 && writer.ok === undefined; i++) {
      const next = s.checks.waiting[0];
      await s.checks.settle(next === 'writer');
    }
    expect(writer.ok).toBe(true);
    // The two flooded names had 5 checks each at most before the writer's.
    expect(s.checks.started.indexOf('writer')).toBeLessThanOrEqual(10);
    await s.checks.settleAll(false);
    await flush();
    expect(Object.keys(counts(flood)).sort()).toEqual(['LIMIT_EXCEEDED', 'NOT_READY', 'false']);
    expect(s.checks.started.filter((u) => u !== 'writer')).toHaveLength(10);
  });

  it('refuses a host with 30 failures for names not familiar there; other hosts and users familiar there go on', async () => {
    const s = setup();
    expect((await sequential(s, 'writer', 1, true))[0]!.ok).toBe(true); // writer is familiar on 10.0.0.1
    for (let i = 0; i < 30; i++) await sequential(s, `spray-${i}`, 1, false);
    const checked = s.checks.started.length;
    const fresh = s.attempt('spray-30');
    const reader = s.attempt('reader');
    await flush();
    for (const o of [fresh, reader]) {
      expect(o.code).toBe('LIMIT_EXCEEDED');
      expect(o.message).toBe('login refused: 30 failed logins from 10.0.0.1 within 60 s (the limit is 30 per 60 s per host); retry in 60 s');
      expect(o.retryAfterMs).toBe(60_000);
    }
    expect(s.checks.started).toHaveLength(checked);
    expect((await sequential(s, 'writer', 1, true))[0]!.ok).toBe(true);
    expect((await sequential(s, 'spray-30', 1, false, '10.0.0.2'))[0]!.ok).toBe(false);
    // The spray charged each name once: none is locked by name.
    expect((await sequential(s, 'spray-1', 1, false, '10.0.0.2'))[0]!.ok).toBe(false);
  });

  it('a host spraying names cannot start more checks than its limit, however many wait', async () => {
    const s = setup({ maxWaitingNamesPerHost: 100 });
    const outs = Array.from({ length: 60 }, (_, i) => s.attempt(`spray-${i}`));
    await s.checks.settleAll(false);
    await flush();
    expect(s.checks.started).toHaveLength(30);
    expect(counts(outs)).toEqual({ false: 30, LIMIT_EXCEEDED: 30 });
  });

  it('failures from elsewhere do not lock a user out of a host where they logged in; failures there do', async () => {
    const s = setup();
    await sequential(s, 'writer', 1, true, '10.0.0.1');
    await sequential(s, 'writer', 5, false, '10.0.0.66');
    for (const host of ['10.0.0.66', '10.0.0.77']) {
      const o = s.attempt('writer', host);
      await flush();
      expect(o.message).toMatch(/^login refused: 5 failed logins for user "writer" within 60 s/);
    }
    expect((await sequential(s, 'writer', 1, true, '10.0.0.1'))[0]!.ok).toBe(true);
    await sequential(s, 'writer', 5, false, '10.0.0.1');
    const o = s.attempt('writer', '10.0.0.1');
    await flush();
    expect(o.message).toBe('login refused: 5 failed logins for user "writer" from 10.0.0.1 within 60 s (the limit is 5 per 60 s per user); retry in 60 s');
  });

  it('tells once each time a user or a host reaches its limit, with when it ends', async () => {
    const clock = new Clock();
    const told: unknown[] = [];
    const gate = new LoginGate({ peerFailures: 6 }, clock.now, (l) => told.push(l));
    const checks = new Checks();
    const attempt = async (user: string, host: string, ok: boolean) => {
      const o = track(gate.attempt({ user, peer: `${host}:1` }, checks.for(user)));
      await flush();
      if (checks.waiting.length) await checks.settle(ok);
      return o;
    };
    await attempt('writer', '10.0.0.1', true);
    for (let i = 0; i < 5; i++) await attempt('reader', '10.0.0.1', false);
    for (let i = 0; i < 3; i++) await attempt('reader', '10.0.0.1', false); // refused: no news
    clock.t += 1000;
    await attempt('nobody', '10.0.0.1', false);
    for (let i = 0; i < 5; i++) await attempt('writer', '10.0.0.1', false);
    expect(told).toEqual([
      { kind: 'user', name: 'reader', failures: 5, untilMs: T0 + 60_000 },
      { kind: 'host', name: '10.0.0.1', failures: 6, untilMs: T0 + 60_000 },
      { kind: 'user', name: 'writer', host: '10.0.0.1', failures: 5, untilMs: T0 + 61_000 },
    ]);
  });

  it('no user name reaches the count of another user on a host familiar to it', async () => {
    const s = setup();
    await sequential(s, 'writer', 1, true, '10.0.0.1');
    for (const forged of ['writer\u000010.0.0.1', '["n:writer","10.0.0.1"]', '["writer","10.0.0.1"]', 'n:writer']) {
      await sequential(s, forged, 5, false, '10.0.0.66');
      await sequential(s, forged, 5, false, '10.0.0.1');
    }
    expect((await sequential(s, 'writer', 1, true, '10.0.0.1'))[0]!.ok).toBe(true);
    expect((await sequential(s, 'writer', 1, true, '10.0.0.2'))[0]!.ok).toBe(true);
  });

  it('an observer that throws changes no answer', async () => {
    const clock = new Clock();
    const gate = new LoginGate({}, clock.now, () => {
      throw new Error('log is down');
    });
    const checks = new Checks();
    const outs: Outcome[] = [];
    for (let i = 0; i < 6; i++) {
      outs.push(track(gate.attempt({ user: 'reader', peer: '10.0.0.1:1' }, checks.for('reader'))));
      await flush();
      if (checks.waiting.length) await checks.settle(false);
    }
    expect(outs.map((o) => o.ok ?? o.code)).toEqual([false, false, false, false, false, 'LIMIT_EXCEEDED']);
  });

  it('forgets a familiar host after familiarMs', async () => {
    const s = setup({ familiarMs: 3_600_000 });
    await sequential(s, 'writer', 1, true, '10.0.0.1');
    await sequential(s, 'writer', 5, false, '10.0.0.66');
    expect((await sequential(s, 'writer', 1, true, '10.0.0.1'))[0]!.ok).toBe(true);
    s.clock.t += 3_600_000 + 1; // familiar no longer, and the failures have left their window
    await sequential(s, 'writer', 5, false, '10.0.0.66');
    const o = s.attempt('writer', '10.0.0.1');
    await flush();
    expect(o.code).toBe('LIMIT_EXCEEDED');
  });

  it('keeps at most maxTracked counters and familiar pairs', async () => {
    const s = setup({ maxTracked: 10, peerFailures: 1000 });
    for (let i = 0; i < 50; i++) await sequential(s, `name-${i}`, 1, false, `10.0.${i}.1`);
    for (let i = 0; i < 50; i++) await sequential(s, 'writer', 1, true, `10.1.${i}.1`);
    expect(s.gate.load).toMatchObject({ trackedUsers: 10, trackedPeers: 10, familiar: 10 });
  });

  it('counts a very long user name by digest and quotes it short', async () => {
    const s = setup();
    const long = 'x'.repeat(100_000);
    await sequential(s, long, 5, false);
    const o = s.attempt(long);
    const other = s.attempt(`${long}y`);
    await flush();
    expect(o.message).toMatch(/^login refused: 5 failed logins for user "x{64}…" within 60 s/);
    expect(other.code).toBeUndefined();
    await s.checks.settleAll(false);
  });
});

describe('peerKey', () => {
  it.each([
    ['127.0.0.1:5555', '127.0.0.1'],
    ['10.1.2.3:1', '10.1.2.3'],
    ['::ffff:10.1.2.3:40000', '10.1.2.3'],
    ['::1:5555', '0:0:0:0::/64'],
    ['[::1]:5555', '0:0:0:0::/64'],
    ['2001:db8:1:2:aaaa:bbbb:cccc:dddd:443', '2001:db8:1:2::/64'],
    ['2001:DB8:1:2::9:443', '2001:db8:1:2::/64'],
    ['[2001:db8::1]:80', '2001:db8:0:0::/64'],
    ['fe80::1%eth0:22', 'fe80:0:0:0::/64'],
    ['::ffff:1.2.3.4', '1.2.3.4'],
    ['unknown', 'unknown'],
    ['', 'unknown'],
    ['local', 'local'],
  ])('%s → %s', (peer, key) => {
    expect(peerKey(peer)).toBe(key);
  });
});
