/**
 * Row leases: one record per row in the `leases` sublevel (JSON: lease id and
 * expiry), taken, extended and released under the row's lock, and written
 * with sync by the store, since a lost lease would break exclusion. This
 * module holds what a lease is and the rules of holding one; ShardStore runs
 * them inside its row mutations.
 */
import * as crypto from 'node:crypto';
import { CairnError } from '../common/errors.js';
import { leaseKey } from './keys.js';
import { show, type Subs } from './store-db.js';
import type { RowPlan } from './store-plan.js';

export interface Lease {
  id: string;
  exp: number;
}

/** The row's lease record, expired or not. */
export async function getLease(subs: Subs, prefix: Buffer): Promise<Lease | undefined> {
  const v = subs.leases.getSync(leaseKey(prefix));
  return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as Lease);
}

/** Whether the row has a lease record (expired or not). */
export function hasLease(subs: Subs, prefix: Buffer): boolean {
  return subs.leases.getSync(leaseKey(prefix)) !== undefined;
}

/** A new lease from now; CONFLICT while another unexpired lease is held. */
export function takeLease(row: string, cur: Lease | undefined, now: number, leaseMs: number): Lease {
  if (cur && cur.exp > now) {
    throw new CairnError('CONFLICT', `row ${show(row)} is leased by another holder until ${new Date(cur.exp).toISOString()}`);
  }
  return { id: crypto.randomUUID(), exp: now + leaseMs };
}

/** Refuses unless `leaseId` is the row's lease (and, with mustBeLive, unexpired). */
export function checkHeld(row: string, cur: Lease | undefined, leaseId: string, now: number, mustBeLive: boolean): void {
  if (!cur) throw new CairnError('NOT_FOUND', `row ${show(row)} has no lease`);
  if (cur.id !== leaseId) {
    if (cur.exp > now) throw new CairnError('CONFLICT', `row ${show(row)} is leased by another holder, not by lease ${leaseId}`);
    throw new CairnError('NOT_FOUND', `lease ${leaseId} on row ${show(row)} is not held`);
  }
  if (mustBeLive && cur.exp <= now) throw new CairnError('NOT_FOUND', `lease ${leaseId} on row ${show(row)} expired at ${new Date(cur.exp).toISOString()}`);
}

/** Adds the write of the row's lease record to its plan. */
export function planPutLease(plan: RowPlan, lease: Lease): void {
  plan.other.push({ sublevel: 'leases', key: leaseKey(plan.prefix), value: Buffer.from(JSON.stringify(lease)) });
}

/** Adds the delete of the row's lease record to its plan. */
export function planDropLease(plan: RowPlan): void {
  plan.other.push({ sublevel: 'leases', key: leaseKey(plan.prefix) });
}
