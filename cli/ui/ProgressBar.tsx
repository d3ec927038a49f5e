/** A progress bar drawn from a fraction: `██████░░░░░░  50%`. */
import { Text } from 'ink';

export interface ProgressBarProps {
  /** 0..1; values outside are clamped. */
  fraction: number;
  /** Cells in the bar. */
  width?: number;
  /** Colour of the filled part. */
  color?: string;
}

/** Whole percent, rounded down so that only a finished bar says 100%. */
export function percentOf(fraction: number): number {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  return f >= 1 ? 100 : Math.floor(f * 100);
}

export function ProgressBar({ fraction, width = 24, color = 'green' }: ProgressBarProps) {
  const pct = percentOf(fraction);
  const filled = pct === 100 ? width : Math.min(width - 1, Math.round((pct / 100) * width));
  return (
    <Text>
      <Text color={color}>{'█'.repeat(filled)}</Text>
      <Text dimColor>{'░'.repeat(width - filled)}</Text>
      <Text>{` ${String(pct).padStart(3)}%`}</Text>
    </Text>
  );
}
