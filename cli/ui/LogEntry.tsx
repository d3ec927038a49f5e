/**
 * One entry of the console's log, the part of the screen that scrolls: an
 * echoed command, output lines, an error, a plan, or an operation's result.
 */
import { Box, Text } from 'ink';
import { ErrorLine } from './ErrorLine.js';
import type { LogItem } from './model.js';
import { MoveList } from './MoveProgress.js';
import { PlanTable } from './PlanTable.js';

export interface LogEntryProps {
  item: LogItem;
}

export function LogEntry({ item }: LogEntryProps) {
  switch (item.kind) {
    case 'echo':
      return (
        <Text>
          <Text bold color="green">
            {item.prompt}
          </Text>
          <Text>{' ' + item.line}</Text>
        </Text>
      );
    case 'lines':
      return (
        <Box flexDirection="column">
          {item.lines.map((l, i) => (
            <Text key={i}>{l}</Text>
          ))}
        </Box>
      );
    case 'error':
      return <ErrorLine message={item.message} />;
    case 'plan':
      return <PlanTable plan={item.plan} emptyText={item.emptyText} heading={item.heading} />;
    case 'moves':
      return (
        <Box flexDirection="column">
          <Text bold>{item.title}</Text>
          {item.moves.length ? <MoveList moves={item.moves} total={item.total} numbered={item.total} limit={50} /> : <Text>No moves.</Text>}
          {item.summary ? <Text>{item.summary}</Text> : null}
        </Box>
      );
  }
}
