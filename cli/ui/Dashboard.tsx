/**
 * The live dashboard, drawn from one snapshot of the master: the shards
 * table, the map (epoch and who owns which part of the hash space), and the
 * moves in flight with their progress bars. A replicated cluster's table
 * counts each shard's primaries, followers and learners, and a line under
 * the map says how many ranges are short of in-sync copies; a single-copy
 * cluster's dashboard looks as it did before replication.
 */
import { Box, Text } from 'ink';
import { diskFree, humanBytes, percent } from '../format.js';
import { ago, clock, isReplicated, mapStrip, replicationSummary, shardMark, type ServerRow, type Snapshot } from './model.js';
import { ErrorLine } from './ErrorLine.js';
import { MoveList } from './MoveProgress.js';

export interface DashboardProps {
  master: string;
  user: string;
  /** The last poll, if any answered yet. */
  snapshot?: Snapshot;
  /** The time the ages are counted from, ms since the Unix epoch. */
  now: number;
  /** Why the last refresh failed (the last snapshot stays on screen). */
  error?: string;
  /** Cells of the map strip. */
  stripWidth?: number;
  /** Said while there is no snapshot yet (default: waiting for the first refresh). */
  waiting?: string;
  /** An operation whose moves are drawn elsewhere (the one being followed): counted, not listed. */
  followed?: string;
}

const HEAD = ['#', 'ID', 'ADDRESS', 'STATUS', 'BYTES', 'ROWS', 'RANGES', 'SHARE', 'OPS/S', 'HEARTBEAT', 'DISK FREE'];
// ADDRESS grows with the addresses shown; 15 fits 127.0.0.1:7001 and leaves room for DISK FREE in 100 columns.
const MIN_WIDTH = [2, 6, 15, 6, 8, 9, 6, 5, 7, 10, 9];
const DISK = HEAD.length - 1;
/**
 * RANGES counts the ranges a shard is the primary of; a replicated cluster's
 * table shows all its copies there instead, `primaries/followers/learners`,
 * under a head as narrow as RANGES so the table still fits 100 columns (the
 * replication line spells the head out).
 */
const RANGES = 6;
const COPIES_HEAD = 'P/F/L';
const copies = (s: ServerRow): string => `${s.primaries ?? s.ranges}/${s.followers ?? 0}/${s.learners ?? 0}`;
/** Numbers are right-aligned. */
const RIGHT = new Set([4, 5, 6, 7, 8]);

export function Dashboard({ master, user, snapshot, now, error, stripWidth = 64, followed, waiting = 'Waiting for the first refresh…' }: DashboardProps) {
  const title = (
    <Text>
      <Text bold color="cyan">
        Cairn admin
      </Text>
      <Text>{` · master ${master} · user ${user}`}</Text>
      {snapshot ? <Text>{` · map epoch ${snapshot.epoch} · refreshed ${clock(snapshot.at)}`}</Text> : null}
    </Text>
  );
  if (!snapshot) {
    return (
      <Box flexDirection="column" borderStyle="round" borderColor="gray" paddingX={1}>
        {title}
        {error ? <ErrorLine message={error} /> : <Text dimColor>{waiting}</Text>}
      </Box>
    );
  }
  const replicated = isReplicated(snapshot);
  const head = replicated ? HEAD.map((h, i) => (i === RANGES ? COPIES_HEAD : h)) : HEAD;
  const replication = replicationSummary(snapshot);
  const rows = snapshot.servers.map((s, i) => [
    shardMark(i),
    s.id,
    s.address,
    s.status,
    humanBytes(s.bytes),
    String(s.rows),
    replicated ? copies(s) : String(s.ranges),
    percent(s.share),
    String(Math.round(s.opsPerSec)),
    ago(s.lastHeartbeatMs, now),
    diskFree(s, true),
  ]);
  const width = head.map((h, i) => Math.max(MIN_WIDTH[i]!, h.length, ...rows.map((r) => r[i]!.length)));
  const cell = (i: number, text: string) => (RIGHT.has(i) ? text.padStart(width[i]!) : text.padEnd(width[i]!));
  const cells = (r: string[], from: number, to: number) => r.slice(from, to).map((t, k) => cell(from + k, t)).join(' ');
  const inFlight = snapshot.moves;
  const listed = inFlight.filter((m) => !followed || m.operationId !== followed);
  const below = inFlight.length - listed.length;
  return (
    <Box flexDirection="column" borderStyle="round" borderColor="gray" paddingX={1}>
      {title}
      <Text bold>{cells(head, 0, head.length)}</Text>
      {rows.length === 0 ? <Text dimColor>No shard has registered yet.</Text> : null}
      {rows.map((r) => (
        <Text key={r[1]} wrap="truncate-end">
          <Text>{cells(r, 0, 3) + ' '}</Text>
          <Text color={r[3] === 'up' ? 'green' : 'red'}>{cell(3, r[3]!)}</Text>
          <Text>{' ' + cells(r, 4, DISK) + ' '}</Text>
          {/* A full disk refuses writes: red, like a shard that is down. */}
          <Text color={r[DISK]!.endsWith('FULL') ? 'red' : undefined}>{cell(DISK, r[DISK]!)}</Text>
        </Text>
      ))}
      <Text wrap="truncate-end">
        <Text>{`Map: ${snapshot.ranges.length} ranges `.padEnd(16)}</Text>
        <Text color="cyan">{`|${mapStrip(snapshot.servers, snapshot.ranges, stripWidth)}|`}</Text>
        <Text dimColor>{`  ${snapshot.servers.map((s, i) => `${shardMark(i)}=${s.id}`).join(' ')}`}</Text>
      </Text>
      {replication ? (
        <Text wrap="truncate-end">
          <Text color={replication.short ? 'yellow' : undefined}>{replication.summary}</Text>
          <Text dimColor>{'  P/F/L = primary/follower/learner copies'}</Text>
        </Text>
      ) : null}
      {/* Wrapped, not cut: the bounds are long, and at most two are listed. */}
      {replication?.short ? <Text color="yellow">{replication.short}</Text> : null}
      <Text>{inFlight.length ? `Moves in flight: ${inFlight.length}${below ? ` (${below} of ${followed}, followed below)` : ''}` : 'Moves in flight: none'}</Text>
      {listed.length ? <MoveList moves={listed} limit={8} barWidth={20} /> : null}
      {error ? <ErrorLine message={`refresh failed: ${error}`} /> : null}
    </Box>
  );
}
