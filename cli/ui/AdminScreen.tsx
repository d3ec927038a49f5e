/**
 * The whole console screen, drawn from props: the log that scrolls (Ink's
 * Static), then the live part: dashboard, the operation being followed or the
 * question being asked, and the prompt.
 */
import { Box, Static, Text } from 'ink';
import { Confirm } from './Confirm.js';
import { Dashboard, type DashboardProps } from './Dashboard.js';
import { LogEntry } from './LogEntry.js';
import type { ConsoleMode, LogRecord } from './model.js';
import { MoveList } from './MoveProgress.js';
import { Prompt, type PromptProps } from './Prompt.js';

export interface AdminScreenProps {
  log: LogRecord[];
  dashboard: DashboardProps;
  mode: ConsoleMode;
  prompt: PromptProps;
}

export function AdminScreen({ log, dashboard, mode, prompt }: AdminScreenProps) {
  return (
    <>
      <Static items={log}>{(item) => <LogEntry key={item.id} item={item} />}</Static>
      <Box flexDirection="column">
        <Dashboard {...dashboard} />
        {mode.kind === 'following' ? (
          <Box flexDirection="column">
            <Text bold>{mode.title}</Text>
            {mode.moves.length ? <MoveList moves={mode.moves} total numbered limit={20} /> : <Text dimColor>Waiting for the first progress report…</Text>}
            <Text dimColor>Ctrl-C stops following; the moves keep running on the master.</Text>
          </Box>
        ) : null}
        {mode.kind === 'confirm' ? <Confirm question={mode.question} /> : null}
        {mode.kind === 'busy' ? <Text color="yellow">{`… ${mode.what}`}</Text> : null}
        {mode.kind === 'connecting' ? <Text color="yellow">{`… connecting to ${dashboard.master} as ${dashboard.user}`}</Text> : null}
        {mode.kind === 'prompt' || mode.kind === 'busy' || mode.kind === 'password' ? <Prompt {...prompt} active={mode.kind !== 'busy'} /> : null}
      </Box>
    </>
  );
}
