/**
 * Every master given, asked about itself (MasterService.GetMasterStatus, no
 * token needed, a standby answers too): whether it leads, who does, and why
 * it does not or cannot change the map. What `ctl servers` and `cairn health
 * --master` show an operator during a failover or while etcd is in trouble.
 */
import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { MasterServiceClient, type GetMasterStatusResponse } from '../../proto/gen/cairn/v1/master.js';
import { CairnError, fromServiceError } from '../common/errors.js';
import { channelOptions, clientCredentials, type ClientTls } from '../common/grpc.js';
import { checkHealth } from '../common/health.js';
import { masterList } from '../common/masters.js';

export interface MasterView {
  address: string;
  leader: boolean;
  /** leader: leads and can change the map; standby: answers and does not lead; unreachable: no answer. */
  status: 'leader' | 'standby' | 'unreachable';
  /** Why it does not lead, cannot change the map, or does not answer; '' when all is well. */
  why: string;
  /** The term it leads under ('' when it does not lead). */
  term: string;
  /** Whom it names as the leader ('' when it knows none). */
  leaderAddress: string;
}

interface StatusAnswer {
  leading: boolean;
  leaderAddress: string;
  term: string;
  why: string;
}

/** Pure: one master's answer (or the error instead of one) as an operator reads it. */
export function masterView(address: string, answer: StatusAnswer | CairnError): MasterView {
  if (answer instanceof CairnError) return { address, leader: false, status: 'unreachable', why: answer.message, term: '', leaderAddress: '' };
  // A leader that lost etcd still holds its Master but cannot change the map: it is shown leading, with why.
  return { address, leader: answer.leading, status: answer.leading ? 'leader' : 'standby', why: answer.why, term: answer.term, leaderAddress: answer.leaderAddress };
}

export async function describeMasters(given: string, opts: { tls?: ClientTls; timeoutMs?: number } = {}): Promise<MasterView[]> {
  const timeoutMs = opts.timeoutMs ?? 2000;
  return Promise.all(
    masterList(given).map(async (address) => {
      const client = new MasterServiceClient(address, clientCredentials(opts.tls), channelOptions(4 * 1024 * 1024));
      try {
        const answer = await new Promise<GetMasterStatusResponse | ServiceError>((done) =>
          client.getMasterStatus({}, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => done(err ?? res)),
        );
        if (!(answer instanceof Error)) return masterView(address, answer);
        // A master from before GetMasterStatus: its Admin service's health says whether it leads, without why.
        if (answer.code === Status.UNIMPLEMENTED) return await fromHealth(address, opts.tls, timeoutMs);
        return masterView(address, fromServiceError(answer));
      } finally {
        client.close();
      }
    }),
  );
}

/**
 * Whether the master at `address` leads and can change the map: its Admin
 * service is SERVING (a standby's, or a leader's that lost etcd, is
 * NOT_SERVING while the process itself is SERVING). False when it does not answer.
 */
export async function leadsAt(address: string, opts: { tls?: ClientTls; timeoutMs?: number } = {}): Promise<boolean> {
  return (await checkHealth(address, { service: 'cairn.v1.AdminService', tls: opts.tls, timeoutMs: opts.timeoutMs ?? 1000 }).catch(() => '')) === 'SERVING';
}

async function fromHealth(address: string, tls: ClientTls | undefined, timeoutMs: number): Promise<MasterView> {
  const leading = await leadsAt(address, { tls, timeoutMs });
  return masterView(address, { leading, leaderAddress: leading ? address : '', term: '', why: '' });
}

/** The one line per master that ctl servers and health print. */
export function masterLine(m: MasterView): string {
  const term = m.term ? ` (term ${m.term})` : '';
  // A standby's why starts "standby: …" already.
  const why = m.why.startsWith(`${m.status}: `) ? m.why.slice(m.status.length + 2) : m.why;
  return `${m.address}  ${m.status}${term}${why ? `: ${why}` : ''}`;
}

/**
 * Pure: whether the control plane works, from every master's view. SERVING
 * when one master leads and can change the map; NOT_SERVING when masters
 * answer but none does (an election under way, etcd lost); UNREACHABLE when
 * none answers.
 */
export function controlPlaneStatus(masters: MasterView[]): 'SERVING' | 'NOT_SERVING' | 'UNREACHABLE' {
  if (masters.some((m) => m.leader && !m.why)) return 'SERVING';
  return masters.some((m) => m.status !== 'unreachable') ? 'NOT_SERVING' : 'UNREACHABLE';
}
