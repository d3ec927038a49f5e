/** The command line: `Manager(3 servers)> serv▌`, and the candidates of an ambiguous Tab. */
import { Box, Text } from 'ink';

export interface PromptProps {
  label: string;
  value: string;
  /** Draw each typed character as `*` (passwords). */
  mask?: boolean;
  /** Candidates from the last Tab with several matches. */
  options?: string[];
  /** A one-line note under the prompt (e.g. how to leave). */
  notice?: string;
  /** False while a command runs: the line is drawn dim (typing ahead still works). */
  active?: boolean;
}

export function Prompt({ label, value, mask = false, options = [], notice, active = true }: PromptProps) {
  return (
    <Box flexDirection="column">
      <Text>
        <Text bold color={active ? 'green' : 'gray'}>
          {label}
        </Text>
        <Text>{' ' + (mask ? '*'.repeat([...value].length) : value)}</Text>
        {active ? <Text inverse> </Text> : null}
      </Text>
      {options.length ? <Text dimColor>{options.join('  ')}</Text> : null}
      {notice ? <Text dimColor>{notice}</Text> : null}
    </Box>
  );
}
