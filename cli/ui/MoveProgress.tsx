/**
 * Moves drawn as progress bars: one line per move with its bar, bytes, rate,
 * ETA and phase (copy, catch-up, cutover, done), and a total bar.
 */
import { Box, Text } from 'ink';
import { humanBytes } from '../format.js';
import { etaSeconds, formatDuration, moveFraction, phaseOf, totalProgress, type MoveView } from './model.js';
import { ProgressBar } from './ProgressBar.js';

const PHASE_COLOR: Record<string, string> = { copy: 'cyan', 'catch-up': 'cyan', cutover: 'magenta', done: 'green', aborted: 'red', waiting: 'gray' };

const rate = (bytesPerSec: number): string => (bytesPerSec > 0 ? `${humanBytes(Math.round(bytesPerSec))}/s` : '-');

export interface MoveLineProps {
  move: MoveView;
  /** Label in the first column (e.g. `#1`); defaults to the move id. */
  label?: string;
  /** Width of the first column. */
  labelWidth?: number;
  barWidth?: number;
}

export function MoveLine({ move, label, labelWidth = 10, barWidth = 20 }: MoveLineProps) {
  const phase = phaseOf(move.state);
  const finished = phase === 'done' || phase === 'aborted';
  const copied = phase === 'done' ? move.bytes : Math.min(move.copiedBytes, move.bytes);
  return (
    <Text wrap="truncate-end">
      <Text>{`${(label ?? move.id).padEnd(labelWidth)} ${`${move.from} -> ${move.to}`.padEnd(12)} `}</Text>
      <ProgressBar fraction={moveFraction(move)} width={barWidth} color={phase === 'aborted' ? 'red' : 'green'} />
      <Text>{`  ${`${humanBytes(copied)}/${humanBytes(move.bytes)}`.padEnd(13)} `}</Text>
      <Text>{`${finished ? '' : rate(move.bytesPerSec)}`.padEnd(10)} </Text>
      <Text>{`${finished ? '' : `ETA ${formatDuration(etaSeconds(move))}`}`.padEnd(10)} </Text>
      <Text color={PHASE_COLOR[phase]}>{phase}</Text>
      {move.error ? <Text color="red">{`: ${move.error}`}</Text> : null}
    </Text>
  );
}

export interface TotalLineProps {
  moves: MoveView[];
  labelWidth?: number;
  barWidth?: number;
}

export function TotalLine({ moves, labelWidth = 10, barWidth = 20 }: TotalLineProps) {
  const t = totalProgress(moves);
  const finished = t.done + t.aborted === t.count;
  return (
    <Text wrap="truncate-end">
      <Text bold>{`${'Total'.padEnd(labelWidth)} ${`${t.count} moves`.padEnd(12)} `}</Text>
      <ProgressBar fraction={t.fraction} width={barWidth} color={t.aborted ? 'yellow' : 'green'} />
      <Text>{`  ${`${humanBytes(t.copiedBytes)}/${humanBytes(t.bytes)}`.padEnd(13)} `}</Text>
      <Text>{`${finished ? '' : rate(t.bytesPerSec)}`.padEnd(10)} </Text>
      <Text>{`${finished ? '' : `ETA ${formatDuration(t.etaSeconds)}`}`.padEnd(10)} </Text>
      <Text color={finished ? (t.aborted ? 'yellow' : 'green') : undefined}>
        {`${t.done}/${t.count} done${t.aborted ? `, ${t.aborted} aborted` : ''}`}
      </Text>
    </Text>
  );
}

export interface MoveListProps {
  moves: MoveView[];
  /** Draw the total bar under the moves. */
  total?: boolean;
  /** Show at most this many moves (the rest are counted). */
  limit?: number;
  /** Number the moves #1, #2… instead of showing their ids. */
  numbered?: boolean;
  barWidth?: number;
}

export function MoveList({ moves, total = false, limit = 12, numbered = false, barWidth }: MoveListProps) {
  const shown = moves.slice(0, limit);
  const labels = shown.map((m, i) => (numbered ? `#${i + 1}` : m.id));
  const labelWidth = Math.max(5, ...labels.map((l) => l.length));
  return (
    <Box flexDirection="column">
      {shown.map((m, i) => (
        <MoveLine key={m.id} move={m} label={labels[i]} labelWidth={labelWidth} barWidth={barWidth} />
      ))}
      {moves.length > shown.length ? <Text dimColor>{`… and ${moves.length - shown.length} more`}</Text> : null}
      {total && moves.length > 0 ? <TotalLine moves={moves} labelWidth={labelWidth} barWidth={barWidth} /> : null}
    </Box>
  );
}
