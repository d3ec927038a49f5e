/** A plan before it runs: the moves with their bytes, and each shard's share after. */
import { Box, Text } from 'ink';
import { formatHash } from '../../services/common/ranges.js';
import { humanBytes, percent } from '../format.js';
import { TEXT } from '../operations.js';
import type { PlanView } from './model.js';

export interface PlanTableProps {
  plan: PlanView;
  /** Said instead of the moves when there are none. */
  emptyText?: string;
  /** Said above the moves. */
  heading?: string;
}

export function PlanTable({ plan, emptyText = TEXT.balanced, heading = TEXT.movesHeading }: PlanTableProps) {
  const w = Math.max(5, ...plan.shards.map((s) => s.id.length), ...plan.moves.map((m) => Math.max(m.from.length, m.to.length)));
  return (
    <Box flexDirection="column">
      {plan.moves.length === 0 ? (
        <Text>{emptyText}</Text>
      ) : (
        <>
          <Text>{heading}</Text>
          <Text bold>{`  ${'#'.padStart(3)}  ${'FROM'.padEnd(w)}  ${'TO'.padEnd(w)}  ${'RANGE'.padEnd(46)}  ${'BYTES'.padStart(8)}  ${'ROWS'.padStart(9)}`}</Text>
          {plan.moves.map((m, i) => (
            <Text key={i}>
              {`  ${String(i + 1).padStart(3)}  ${m.from.padEnd(w)}  ${m.to.padEnd(w)}  ${`[${formatHash(m.start)}, ${formatHash(m.end)}[`.padEnd(46)}  ${humanBytes(m.bytes).padStart(8)}  ${String(m.rows).padStart(9)}`}
            </Text>
          ))}
          <Text>{TEXT.planMoves(plan)}</Text>
        </>
      )}
      {plan.shards.length > 0 ? (
        <>
          <Text>{TEXT.sharesHeading(plan.moves.length)}</Text>
          <Text bold>{`  ${'SHARD'.padEnd(w)}  ${'BEFORE'.padStart(8)}  ${'AFTER'.padStart(8)}  ${'SHARE'.padStart(5)}`}</Text>
          {plan.shards.map((s) => (
            <Text key={s.id}>{`  ${s.id.padEnd(w)}  ${humanBytes(s.bytesBefore).padStart(8)}  ${humanBytes(s.bytesAfter).padStart(8)}  ${percent(s.shareAfter).padStart(5)}`}</Text>
          ))}
        </>
      ) : null}
    </Box>
  );
}
